"""How many threads a small CPU forward gets when it finds the machine idle: whichever measured faster here.

Why: ~15 ms after its last parallel region libgomp's helper threads stop spinning and sleep (its spin count, ~300,000
iterations), and the next multi-threaded forward waits for them to be woken. On bare metal that takes microseconds. In a
VM whose idle vCPU the host has descheduled it can take longer than the forward: a live server on a 2-vCPU Firecracker
VM (Zen 4 EPYC), MiniLM fp32, single ~16-token requests 50 ms apart, spent 15-18 ms in the forward on 2 threads and
9.5-10 ms on 1 (client p50 20.3-21.9 vs 13.8-15.0 ms), while the same forward back to back runs faster on 2 threads.
A 1-thread forward wakes nobody; on a many-core machine with cheap wakes it is the slower choice. So it is measured:
the small forwards that find the process idle (no forward of any model running, none ended for `IDLE_AFTER_S`)
alternate between one thread and all of them until each has `MIN_SAMPLES`, then take the mode with the lower median of
its last `SAMPLES`, and every `EXPLORE_EVERY`-th one tries the other mode, so a change (a busier host, a different load)
is seen.

Waking the lane in the background while the cold forward ran on one thread was tried and dropped: the first request's
p50 rose ~1 ms (13.6-13.8 -> 14.6-14.8 ms) and the requests right after it gained nothing (12.1-13.0 vs 12.3-12.4 ms).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

SMALL_TOKENS = 64  # a forward of at most this many tokens is a candidate (a longer one spreads its work well)
IDLE_AFTER_S = 0.02  # no forward for this long: the helpers have stopped spinning (~15 ms of spin here)
MIN_SAMPLES = 3
SAMPLES = 9
EXPLORE_EVERY = 32
ONE, ALL = "one thread", "all threads"


class _Activity:
    """Forwards in flight and when the last one ended, for the whole process: the OpenMP helpers are the process's, so
    one model's forward keeps them awake for every other model's."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.last_end = -math.inf


_activity = _Activity()


class ColdStart:
    """Per encoder (its own forward times): `with cold.threads_for(threads, tokens) as n:` runs the forward on n
    threads and times it when it was a cold, small one."""

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = {ONE: deque(maxlen=SAMPLES), ALL: deque(maxlen=SAMPLES)}
        self._cold_forwards = 0

    @contextmanager
    def threads_for(self, threads: int, tokens: int) -> Iterator[int]:
        with _activity.lock:
            cold = (threads > 1 and tokens <= SMALL_TOKENS and _activity.running == 0
                    and time.monotonic() - _activity.last_end > IDLE_AFTER_S)
            mode = self._choose() if cold else None
            _activity.running += 1
        start = time.perf_counter()
        try:
            yield 1 if mode == ONE else threads
        finally:
            elapsed = time.perf_counter() - start
            with _activity.lock:
                _activity.running -= 1
                _activity.last_end = time.monotonic()
                if mode is not None:
                    self._times[mode].append(elapsed)

    def _choose(self) -> str:
        one, every = self._times[ONE], self._times[ALL]
        if len(one) < MIN_SAMPLES or len(every) < MIN_SAMPLES:
            return ONE if len(one) <= len(every) else ALL
        self._cold_forwards += 1
        faster, slower = (ONE, ALL) if statistics.median(one) <= statistics.median(every) else (ALL, ONE)
        return slower if self._cold_forwards % EXPLORE_EVERY == 0 else faster

    def summary(self) -> dict[str, float | None]:
        """Median seconds of each mode's recent cold forwards (None until it has one)."""
        with _activity.lock:
            return {mode: statistics.median(t) if t else None for mode, t in self._times.items()}
