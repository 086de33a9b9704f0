"""model/cpu_lanes.py: multi-threaded CPU work from any calling thread runs on one lane per thread count (so the process
keeps one OpenMP pool, not one per batcher worker), single-threaded work where it is called."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from model import cpu_lanes


def where(threads: int) -> tuple[int, int, bool]:
    """(thread id, intra-op threads, inference mode) seen inside a lane call."""
    return cpu_lanes.run(
        threads, lambda: (threading.get_ident(), torch.get_num_threads(), torch.is_inference_mode_enabled())
    )


def test_two_thread_work_from_different_callers_runs_on_one_lane():
    with ThreadPoolExecutor(1) as a, ThreadPoolExecutor(1) as b:
        first = a.submit(where, 2).result()
        second = b.submit(where, 2).result()
        callers = {a.submit(threading.get_ident).result(), b.submit(threading.get_ident).result()}
    assert first[0] == second[0] and first[0] not in callers  # the same lane, never the caller
    assert first[1] == second[1] == 2


def test_calls_side_by_side_get_lanes_of_their_own():
    barrier = threading.Barrier(2, timeout=10)

    def meet() -> int:
        barrier.wait()  # both calls are inside a lane at once: neither queues behind the other
        return threading.get_ident()

    with ThreadPoolExecutor(2) as callers:
        lanes = list(callers.map(lambda _: cpu_lanes.run(2, meet), range(2)))
    assert len(set(lanes)) == 2


def test_one_thread_work_runs_on_the_caller_and_leaves_its_count():
    before = torch.get_num_threads()
    ident, threads, _ = where(1)
    assert ident == threading.get_ident() and threads == 1
    assert torch.get_num_threads() == before


def test_a_lane_runs_in_the_callers_inference_mode():
    with torch.inference_mode():
        assert where(2)[2]
    assert not where(2)[2]
