"""Where a CPU forward runs: every call that computes on more than one intra-op thread goes to a *lane*, a thread kept
for that thread count, so the process holds one OpenMP pool per thread count in use, not one per calling thread.

Why: PyTorch's OpenMP (libgomp) gives every thread that starts a parallel region its own pool of helper threads, kept
until that thread exits. Once the pools hold more threads than the machine has cores, libgomp cuts its spin-wait from
~300,000 iterations to 100: each helper sleeps the moment an op ends and every op of a forward waits for it to be woken.
A server's batcher workers each ran whole-machine batches in turn, so each held a pool. Measured on a 2-vCPU Zen 4 EPYC,
MiniLM 1 x 16 tokens fp32, phases interleaved in one process: p50 6.2 ms alone, 11.5 ms while a second thread with a
2-thread pool merely exists (5.5 ms when that thread only ever ran 1-thread ops). Two live servers in turns, one short
input at a time back to back: p50 13.2 / 12.9 / 13.5 ms before, 10.5 / 11.4 / 11.5 ms with lanes.

A call on one thread runs where it is, on one thread (no pool is made; the caller's own count is put back). A call on
n > 1 threads runs on a free lane of n threads (a new lane when all are busy: batches side by side keep running side by
side). The caller waits; autograd and inference modes are per thread, so the lane runs in the caller's."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from model.cpu_parallel import callers_modes

T = TypeVar("T")

_lock = threading.Lock()
_idle: dict[int, list[ThreadPoolExecutor]] = {}  # thread count -> lanes waiting for work


def _lane(threads: int) -> ThreadPoolExecutor:
    with _lock:
        idle = _idle.setdefault(threads, [])
        if idle:
            return idle.pop()
    lane = ThreadPoolExecutor(1, thread_name_prefix=f"cpu-lane-{threads}")
    lane.submit(_set_threads, threads).result()
    return lane


def _set_threads(threads: int) -> None:
    if torch.get_num_threads() != threads:  # get first: PyTorch's lazy per-thread set-up would undo an earlier set
        torch.set_num_threads(threads)


def run(threads: int, fn: Callable[[], T]) -> T:
    """fn() computed on `threads` intra-op threads: here when 1, else on a lane of that many."""
    if threads <= 1:
        own = torch.get_num_threads()
        if own == 1:
            return fn()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(own)  # the caller's count (and the process default it also sets) back
    lane = _lane(threads)
    try:
        return lane.submit(callers_modes(fn)).result()
    finally:
        with _lock:
            _idle[threads].append(lane)
