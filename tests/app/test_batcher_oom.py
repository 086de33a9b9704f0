"""Out-of-memory recovery frees the failed attempt: a fake forward allocates its working set (real tensors) before it
fails, as a real one does, and weak references show whether that working set is still alive when the retry starts or
when the failure reaches the event loop. Garbage collection is off, so only reference counting frees anything: what a
cycle would keep, stays."""

from __future__ import annotations

import asyncio
import gc
import traceback
import weakref
from collections.abc import Iterator, Sequence

import pytest
import torch

from app.batcher import Batcher
from model.encoder import Encoder


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class LeakyForward:
    """Allocates 1 MiB of activations per item, then fails: out of memory for batches of more than `fits` items or
    holding the id 999, `ValueError` for any batch holding the id 666. Records, at the start of each call, how many
    earlier attempts' tensors are still alive."""

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.working_sets: list[weakref.ref[torch.Tensor]] = []
        self.alive_at_start: list[int] = []
        self.sizes: list[int] = []

    def __call__(self, batch: list[Sequence[int]], width: int = 1) -> list[int]:
        self.alive_at_start.append(sum(ref() is not None for ref in self.working_sets))
        self.sizes.append(len(batch))
        activations = torch.ones(len(batch), 1 << 18)  # (B, 256k) fp32: what the failed forward had allocated
        self.working_sets.append(weakref.ref(activations))
        if any(666 in ids for ids in batch):
            raise ValueError("bad batch")
        if len(batch) > self.fits or any(999 in ids for ids in batch):
            raise torch.OutOfMemoryError(f"CUDA out of memory (test): batch of {len(batch)}")
        return [int(activations[i, 0]) * sum(ids) for i, ids in enumerate(batch)]

    def alive(self) -> int:
        return sum(ref() is not None for ref in self.working_sets)


def make(forward: LeakyForward) -> Batcher[int]:
    return Batcher(forward, cost=sum, max_batch_tokens=10_000, max_batch_size=64, max_wait_ms=20,
                   max_queue_tokens=100_000, is_out_of_memory=Encoder.is_out_of_memory)


def test_out_of_memory_retry_starts_after_the_failed_attempt_is_freed(no_gc: None) -> None:
    forward = LeakyForward(fits=2)

    async def main() -> None:
        b = make(forward)
        await b.start()
        assert await b.submit([[i, 1] for i in range(8)]) == [i + 1 for i in range(8)]  # one batch of 8
        await b.drain(1)

    asyncio.run(asyncio.wait_for(main(), 10))
    assert forward.sizes[:3] == [8, 4, 2]  # 8 -> 4 -> 2 fits, then the other halves
    assert len(forward.sizes) == 1 + 2 + 4  # the whole, two halves that fail, four quarters that fit
    assert forward.alive_at_start == [0] * len(forward.sizes), "a failed forward's tensors were alive at a retry"


def test_a_failure_reaches_the_event_loop_without_the_failed_forwards_tensors(no_gc: None) -> None:
    forward = LeakyForward(fits=1)

    async def main() -> None:
        b = make(forward)
        await b.start()
        with pytest.raises(ValueError) as bad:
            await b.submit([[666]])
        assert forward.alive() == 0, "the exception handed to the event loop pins the failed forward's tensors"
        assert "in __call__" in "".join(traceback.format_exception(bad.value))  # the log still shows where it failed
        with pytest.raises(torch.OutOfMemoryError):  # a single input that does not fit: it fails, its tensors freed
            await b.submit([[999]])
        assert forward.alive() == 0
        assert await b.submit([[2], [3]]) == [2, 3]  # split, each half fits
        await b.drain(1)

    asyncio.run(asyncio.wait_for(main(), 10))
