"""Encoders for deterministic timing and faults: each wraps a real encoder and changes one thing."""

from __future__ import annotations

import threading
import time


class FakeOutOfMemory(RuntimeError):
    """Stands in for torch.OutOfMemoryError, which CPU runs cannot raise on demand."""


class WrappedEncoder:
    """Delegates everything to a real encoder; `delay_s` slows each batch, `fail(batch)` may return an exception
    to raise, `oom_above` raises FakeOutOfMemory for batches with more items than that. Records every batch."""

    def __init__(self, real, delay_s: float = 0.0, fail=None, oom_above: int | None = None):
        self.real, self.delay_s, self.fail, self.oom_above = real, delay_s, fail, oom_above
        self.batches: list[list[list[int]]] = []
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.real, name)

    def pooled(self, batch, threads=None):
        with self.lock:
            self.batches.append([list(x) for x in batch])
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise FakeOutOfMemory(f"CUDA out of memory (fake): batch of {len(batch)}")
        if self.fail is not None:
            exc = self.fail(batch)
            if exc is not None:
                raise exc
        if self.delay_s:
            time.sleep(self.delay_s)  # the worker thread, not the event loop
        return self.real.pooled(batch, threads=threads)

    def warmup(self) -> None:
        pass

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, FakeOutOfMemory) or self.real.is_out_of_memory(exc)

    def seen(self, ids: list[int]) -> bool:
        with self.lock:
            return any(list(ids) in batch for batch in self.batches)
