"""Property tests: for any arrival pattern, every surviving item is answered once, right and in order,
and no batch breaks the budget (unless it is a single oversized item) or the size limit."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.batcher import Batcher


class FakeOOM(Exception):
    pass


@dataclass
class Req:
    delay_ms: float  # after the previous request
    lengths: list[int]
    priority: int
    cancel_after_ms: float | None


requests = st.lists(
    st.builds(
        Req,
        delay_ms=st.sampled_from([0.0, 0.0, 0.3, 1.0, 3.0]),
        lengths=st.lists(st.integers(1, 64), min_size=1, max_size=8),
        priority=st.integers(0, 1),
        cancel_after_ms=st.none() | st.floats(0, 5),
    ),
    min_size=1,
    max_size=25,
)


def padded(lengths: list[int]) -> int:
    return len(lengths) * max(lengths)


def packed(lengths: list[int]) -> int:
    return sum(lengths)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=requests,
    cost=st.sampled_from([padded, packed]),
    max_batch_tokens=st.integers(32, 512),
    max_batch_size=st.integers(1, 16),
    max_wait_ms=st.sampled_from([0.0, 0.5, 2.0]),
    compute_ms=st.sampled_from([0.0, 0.5, 2.0]),
    oom_above=st.none() | st.integers(1, 6),
    workers=st.sampled_from([1, 2, 3]),
)
def test_every_item_answered_once_within_limits(
    reqs: list[Req],
    cost: Callable[[list[int]], int],
    max_batch_tokens: int,
    max_batch_size: int,
    max_wait_ms: float,
    compute_ms: float,
    oom_above: int | None,
    workers: int,
) -> None:
    batches: list[list[list[int]]] = []
    lock = threading.Lock()

    def encode(batch: list[Sequence[int]], width: int) -> list[int]:
        if oom_above is not None and len(batch) > oom_above:
            raise FakeOOM  # the batcher splits and retries; only successful batches are recorded below
        with lock:
            batches.append([list(ids) for ids in batch])
        if compute_ms:
            time.sleep(compute_ms / 1000)
        return [ids[0] * 1000 + len(ids) for ids in batch]

    # each item's first token is its unique id, so the encoder's view can be traced back to requests
    next_id = iter(range(1, 10**6))
    inputs = [[[next(next_id)] + [0] * (n - 1) for n in r.lengths] for r in reqs]

    async def main() -> list[object]:
        b = Batcher(
            encode,
            cost=cost,
            max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue_tokens=10**6,
            is_out_of_memory=lambda e: isinstance(e, FakeOOM),
            starvation_ms=5,
            workers=workers,
        )
        await b.start()
        loop = asyncio.get_running_loop()
        tasks = []
        for r, items in zip(reqs, inputs, strict=True):
            if r.delay_ms:
                await asyncio.sleep(r.delay_ms / 1000)
            task = asyncio.create_task(b.submit(items, priority=r.priority))
            if r.cancel_after_ms is not None:
                loop.call_later(r.cancel_after_ms / 1000, task.cancel)
            tasks.append(task)
        outs = await asyncio.gather(*tasks, return_exceptions=True)
        assert b.queue_items == 0 and b.queue_tokens == 0
        await b.drain(5)
        return outs

    outs = asyncio.run(asyncio.wait_for(main(), 20))

    seen = Counter(ids[0] for batch in batches for ids in batch)
    assert all(n == 1 for n in seen.values()), "an item was computed twice"
    for r, items, out in zip(reqs, inputs, outs, strict=True):
        if isinstance(out, asyncio.CancelledError):
            assert r.cancel_after_ms is not None
            continue
        assert not isinstance(out, BaseException), out
        assert out == [ids[0] * 1000 + len(ids) for ids in items]
        assert all(seen[ids[0]] == 1 for ids in items)
    for batch in batches:
        lengths = [len(ids) for ids in batch]
        assert len(batch) <= max_batch_size
        assert len(batch) == 1 or cost(lengths) <= max_batch_tokens
