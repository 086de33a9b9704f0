"""Freed memory back to the operating system: a thread that calls glibc's `malloc_trim(0)` every few seconds.

Why: glibc keeps the pages of freed blocks in its heaps for reuse and returns to the system only a free stretch at a
heap's top. A server's allocations differ with every request (bodies, token lists, the activations of each batch
shape), so free pages in the middle of the heaps pile up and RSS creeps: a 40-minute soak (bench/soak.py, MiniLM
fp32, AMD EPYC Zen 4, 2 vCPUs) grew +10.8 MB per 1,000 requests after a 15-minute warm-up, and one `malloc_trim(0)`
called from outside 3.5 minutes into a soak took the server from 933 MB to 628 MB. `malloc_trim(0)` hands every
whole free page of every arena back (glibc >= 2.8), so RSS follows what is live. MALLOC_ARENA_MAX=2 made no
difference (bench/results/2026-12-02-soak-arenas-*).

Cost: a trim holds one arena's lock at a time while it walks that arena's free blocks; ctypes releases the GIL for the
call, so the event loop and the encoder run on. Pages given back are faulted in again when next used.

On a C library without `malloc_trim` (musl, macOS) this does nothing."""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("app")


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: libc's, without a library search
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


MALLOC_TRIM = _malloc_trim()


class HeapTrimmer:
    """Calls `malloc_trim(0)` every `interval_s` from its own daemon thread until `stop()`."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return MALLOC_TRIM is not None and self.interval_s > 0

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="heap-trim", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        assert MALLOC_TRIM is not None
        while not self._stop.wait(self.interval_s):
            start = time.perf_counter()
            MALLOC_TRIM(0)
            log.debug("malloc_trim took %.1f ms", (time.perf_counter() - start) * 1000)
