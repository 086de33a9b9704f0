"""Independent pieces of one CPU forward run side by side, each on its own single-threaded worker.

Why: an op split over intra-op threads ends in a fork/join that waits for the slowest thread, so a forward made of many
mid-sized ops (an MoE layer: 8 experts x 2 GEMMs plus the gather and the weighted sum) pays one join per op, and on a
core shared with other work (the event loop, another process) each join can wait a scheduler slice. Pieces that need
nothing from each other (the experts' GEMMs) run better as tasks: one single-threaded worker per share, one join.

Each worker sets its own intra-op count to 1 once (PyTorch's count is per thread, but the last `set_num_threads` call
is also the default a new thread starts with, which the caller puts back). Autograd and inference modes are per
thread too: each piece runs in the caller's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
# each calling thread its own workers: encoder workers running side by side never queue on each other
_local = threading.local()


def _workers(n: int) -> list[ThreadPoolExecutor]:
    """The calling thread's n single-threaded workers (an executor of one thread each, so piece i always has a thread
    of its own)."""
    workers: dict[int, list[ThreadPoolExecutor]] = _local.__dict__.setdefault("workers", {})
    if n not in workers:
        own = torch.get_num_threads()

        def single_threaded() -> None:
            torch.get_num_threads()  # PyTorch's lazy per-thread set-up first, or it would later undo the 1 below
            torch.set_num_threads(1)

        workers[n] = [ThreadPoolExecutor(1, thread_name_prefix="cpu-parallel") for _ in range(n)]
        for f in [w.submit(single_threaded) for w in workers[n]]:
            f.result()
        torch.set_num_threads(own)  # the caller's own count back as the process default
    return workers[n]


def run_side_by_side(fn: Callable[[T], None], pieces: Sequence[T]) -> None:
    """fn(p) for every piece, each on its own single-threaded worker, back when all are done (a single piece runs on
    the calling thread, at its own thread count)."""
    if len(pieces) == 1:
        fn(pieces[0])
        return
    in_callers_modes = callers_modes(fn)
    for f in [w.submit(in_callers_modes, p) for w, p in zip(_workers(len(pieces)), pieces)]:
        f.result()


def callers_modes(fn: Callable[P, R]) -> Callable[P, R]:
    """fn, to be called on another thread in the calling thread's autograd and inference modes (both are per
    thread)."""
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def in_callers_modes(*args: P.args, **kwargs: P.kwargs) -> R:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(*args, **kwargs)

    return in_callers_modes
