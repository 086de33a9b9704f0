"""Dynamic batcher: token-id lists from many requests -> encoder batches on one or more worker threads.

Pure asyncio (no torch, no fastapi). All items share one queue; the event loop forms the batches and
hands them to `workers` worker threads (one by default), so the loop never blocks on the encoder.

Scheduling:
- class: interactive (priority 0) first. Bulk (1) runs when no interactive item waits, or when its
  oldest item has waited `starvation_ms`, bulk got no batch in the last `starvation_ms` and the batch
  dispatched last was interactive: bulk always progresses (at least every other batch), yet a query
  behind 10,000 bulk items waits about two batch times, however long a batch takes. (Without the
  every-other-batch rule, batches longer than `starvation_ms` made every dispatch "starved" bulk.)
- batch: the class's oldest item plus its nearest neighbours by length (small padding), grown while
  `cost(lengths) <= max_batch_tokens` and size <= `max_batch_size`; an oversized item runs alone.
- timing: a full batch goes at once; an idle worker waits up to `max_wait_ms` from the oldest item's
  arrival for company, but only while traffic is dense: a request arriving more than `max_wait_ms`
  after the one before it goes at once (waiting for company that is not coming only adds latency).
  At most one (full) batch waits ahead of the running ones; a bulk batch waiting there is taken back
  into the queue when an interactive item arrives.
- host work ahead: with `prepare`, a packer thread runs `prepare(ids)` (the host side: packing, pinning) for each
  batch as soon as it is formed, and `run_batch(prepare(ids), width)` then gets its result: the batch waiting ahead
  is packed while the one before it computes. Without it, `run_batch(ids, width)` does everything.
- workers: with more than one, up to that many batches compute at once, each on its own thread. A batch
  holds `width` of the `workers` compute slots and `run_batch(ids, width)` is told how many. A batch formed
  while every slot is free is split into one part per slot (every other item of the length-sorted run, so
  the parts match in length) computed side by side; one formed while others compute takes one slot; a
  single input on free slots takes them all. On CPU, parts side by side each on their share of the cores
  beat one batch on all of them (no op waits at a barrier for a core the event loop took). Slots are taken
  whole before a batch starts, so cores are never oversubscribed.
- shared slots: several batchers (one per served model) may share one `ComputeSlots` pool, so two models
  never compute more batches at once than the machine has slots; waiters are served first come, first served.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import queue
import threading
import time
import traceback
from bisect import bisect_left, insort
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

R = TypeVar("R")
log = logging.getLogger(__name__)

INTERACTIVE, BULK = 0, 1
_PENDING, _RUNNING, _CANCELLED = "pending", "running", "cancelled"


class Overloaded(Exception):
    """The queue holds too many tokens; the caller should answer 429 with `Retry-After`."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"server overloaded, retry after {retry_after:.1f} s")
        self.retry_after = retry_after


class Draining(Exception):
    """The batcher is shutting down and admits no new work."""


class DeadlineExceeded(Exception):
    """The request's deadline passed while some of its inputs were still queued."""


class WorkerDied(Exception):
    """The encoder worker thread is gone."""


@dataclass
class BatchStats:
    size: int
    real_tokens: int
    cost_tokens: int
    queue_waits_s: list[float]
    compute_s: float
    priority_counts: dict[int, int] = field(default_factory=dict)
    oom_splits: int = 0


@dataclass(eq=False, slots=True)
class _Request:
    future: asyncio.Future[list[Any]]
    results: list[Any]
    left: int
    deadline: float | None
    items: list[_Item] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False, slots=True)
class _Item:
    req: _Request
    index: int
    ids: Sequence[int]
    length: int
    priority: int
    arrival: float
    seq: int
    queued: bool = False


@dataclass(eq=False, slots=True)
class _Failed:  # an exception among a batch's outcomes (wrapped, since R itself may be anything)
    exc: BaseException


@dataclass(eq=False, slots=True)
class _Job:
    items: list[_Item]
    dispatched: float
    preemptible: bool  # a bulk batch formed while no interactive item waited
    width: int = 1  # compute slots it holds while running (1..workers)
    state: str = _PENDING
    prepared: Any = None  # what `prepare` made of its items ahead of time (a `_Failed` if that failed)


class ComputeSlots:
    """The machine's compute slots, shared by every batcher that runs on the same cores. A batch takes all the
    slots it needs at once (so no deadlock), and waiters are served in arrival order (so a batch that needs every
    slot is not starved by a stream of one-slot batches from another model)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"slots must be >= 1, got {size}")
        self.size = size
        self._free = size
        self._cond = threading.Condition()
        self._waiting: collections.deque[object] = collections.deque()

    @property
    def free(self) -> int:
        return self._free

    def take(self, width: int) -> None:
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            self._cond.wait_for(lambda: self._waiting[0] is ticket and self._free >= width)
            self._waiting.popleft()
            self._free -= width
            self._cond.notify_all()  # the next in line may fit in what is left

    def give(self, width: int) -> None:
        with self._cond:
            self._free += width
            self._cond.notify_all()


class Batcher(Generic[R]):
    def __init__(
        self,
        run_batch: Callable[[Any, int], Sequence[R]],
        *,
        cost: Callable[[list[int]], int],
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_tokens: int,
        is_out_of_memory: Callable[[BaseException], bool] = lambda e: False,
        on_batch: Callable[[BatchStats], None] | None = None,
        starvation_ms: float = 200.0,
        workers: int = 1,
        prepare: Callable[[list[Sequence[int]]], Any] | None = None,
        slots: ComputeSlots | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if slots is not None and slots.size != workers:
            raise ValueError(f"a shared slot pool of {slots.size} needs workers={slots.size}, got {workers}")
        self._workers = workers
        self._run_batch, self._cost, self._is_oom, self._on_batch = run_batch, cost, is_out_of_memory, on_batch
        self.max_batch_tokens, self.max_batch_size = max_batch_tokens, max_batch_size
        self.max_queue_tokens = max_queue_tokens
        self._max_wait, self._starvation = max_wait_ms / 1000, starvation_ms / 1000
        # per class: items sorted by (length, seq) to pick neighbours, and a heap by seq to find the oldest
        # (lazy deletion: entries whose item left the queue are dropped when they reach the top)
        self._by_len: tuple[list[tuple[int, int, _Item]], ...] = ([], [])
        self._fifo: tuple[list[tuple[int, int, _Item]], ...] = ([], [])
        self._queue_tokens = 0
        self._seq = itertools.count()
        self._inflight: list[_Job] = []  # the running jobs (at most `workers`), then at most one waiting ahead
        self._open: set[_Request] = set()
        self._last_bulk = float("-inf")
        self._last_class = INTERACTIVE  # the class of the batch dispatched last
        self._last_arrival = float("-inf")
        self._sparse = True  # the latest request came more than max_wait after the one before it
        self._rate: float | None = None  # recent throughput, real tokens per compute second
        self._draining = False
        self._death: BaseException | None = None
        self._lock = threading.Lock()  # guards _Job.state between the loop (take-back) and the worker (claim)
        self._shared_slots = slots is not None  # shared with other batchers (models) on the same cores
        self._slots = slots or ComputeSlots(workers)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        # with `prepare`, a packer thread takes the formed jobs, prepares them and hands them on to the workers
        self._prepare = prepare
        self._ready: queue.Queue[_Job | None] = self._jobs if prepare is None else queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()
        self._quiet.set()

    @property
    def queue_items(self) -> int:
        return len(self._by_len[0]) + len(self._by_len[1])

    @property
    def queue_tokens(self) -> int:
        return self._queue_tokens

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads) and self._death is None

    @property
    def in_flight_batches(self) -> int:
        return len(self._inflight)

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("Batcher.start() called twice")
        self._loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-worker-{i}", daemon=True) for i in range(self._workers)
        ]
        if self._prepare is not None:
            self._threads.append(threading.Thread(target=self._pack_ahead, name="batcher-packer", daemon=True))
        for thread in self._threads:
            thread.start()
        self._task = self._loop.create_task(self._dispatcher(), name="batcher-dispatcher")
        self._task.add_done_callback(self._on_dispatcher_exit)

    def check_room(self, tokens: int) -> None:
        """Raise Overloaded unless `tokens` more fit in the queue: submit's own test, for callers that admit work
        before they have its token ids."""
        if self._queue_tokens + tokens > self.max_queue_tokens:
            excess = self._queue_tokens + tokens - self.max_queue_tokens
            raise Overloaded(max(1.0, excess / self._rate) if self._rate else 1.0)

    async def submit(
        self, items: Sequence[Sequence[int]], *, priority: int = 0, deadline: float | None = None
    ) -> list[R]:
        if self._loop is None:
            raise RuntimeError("call Batcher.start() first")
        if self._draining:
            raise Draining("server is shutting down")
        if not self.alive:
            raise WorkerDied("encoder worker is not running") from self._death
        if priority not in (INTERACTIVE, BULK):
            raise ValueError(f"priority must be 0 (interactive) or 1 (bulk), got {priority}")
        if not items:
            return []
        self.check_room(sum(len(ids) for ids in items))  # all or nothing
        now = self._loop.time()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded("deadline passed before the request was queued")
        self._sparse, self._last_arrival = now - self._last_arrival > self._max_wait, now
        req = _Request(self._loop.create_future(), [None] * len(items), len(items), deadline)
        req.items = [_Item(req, i, ids, len(ids), priority, now, next(self._seq)) for i, ids in enumerate(items)]
        for it in req.items:
            self._enqueue(it)
        self._open.add(req)
        self._quiet.clear()
        if deadline is not None:
            req.timer = self._loop.call_at(deadline, self._expire, req)
        if priority == INTERACTIVE:
            self._take_back_bulk()
        self._wake.set()
        try:
            return await req.future
        finally:
            if req.future.cancelled():  # the client went away: its queued items are never computed
                self._release(req)

    async def drain(self, timeout: float) -> None:
        self._draining = True
        if self._loop is None or not self._threads:
            return
        end = self._loop.time() + timeout
        try:
            if self._open:
                await asyncio.wait_for(self._quiet.wait(), timeout)
        except TimeoutError:
            self._fail_all(lambda: Draining("server shut down before this input was computed"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _ in self._threads:
            self._jobs.put(None)  # each worker finishes what it holds, then exits
        for thread in self._threads:
            left = end - self._loop.time()
            if left > 0:  # (to_thread waits for a free executor thread, which busy tokenisation may all hold)
                await asyncio.to_thread(thread.join, left)

    # queue bookkeeping (event loop thread only)

    def _enqueue(self, it: _Item) -> None:
        it.queued = True
        insort(self._by_len[it.priority], (it.length, it.seq, it))
        heapq.heappush(self._fifo[it.priority], (it.seq, next(self._seq), it))  # unique 2nd key: items never compared
        self._queue_tokens += it.length

    def _unqueue(self, it: _Item) -> None:
        if it.queued:
            it.queued = False
            keys = self._by_len[it.priority]
            del keys[bisect_left(keys, (it.length, it.seq))]
            self._queue_tokens -= it.length
            if not keys:  # drop the stale heap entries too, so finished requests are not kept alive
                self._fifo[it.priority].clear()

    def _oldest(self, cls: int) -> _Item:
        heap = self._fifo[cls]
        while not heap[0][2].queued:
            heapq.heappop(heap)
        return heap[0][2]

    def _release(self, req: _Request) -> None:
        if req.timer is not None:
            req.timer.cancel()
        for it in req.items:
            self._unqueue(it)
        self._open.discard(req)
        if not self._open:
            self._quiet.set()

    def _settle(self, req: _Request, result: list[Any] | None = None, exc: BaseException | None = None) -> None:
        if req.future.done():
            return
        self._release(req)
        if exc is None:
            req.future.set_result(result or [])
        else:
            req.future.set_exception(exc)

    def _fail_all(self, make: Callable[[], BaseException]) -> None:
        self._inflight.clear()  # late results of these jobs find their requests settled and are dropped
        for req in list(self._open):
            self._settle(req, exc=make())

    def _expire(self, req: _Request) -> None:
        if not req.future.done() and any(it.queued for it in req.items):  # wholly in a running batch: let it finish
            self._settle(req, exc=DeadlineExceeded("request deadline passed while its inputs were queued"))

    def _take_back_bulk(self) -> None:
        """An interactive item arrived: return a bulk batch still waiting ahead of the worker to the queue."""
        if self._slots_claimed() <= self._workers or not self._inflight[-1].preemptible:
            return
        assert self._loop is not None
        job, now = self._inflight[-1], self._loop.time()
        with self._lock:
            if job.state != _PENDING:
                return
            job.state = _CANCELLED  # the worker skips it
        self._inflight.pop()
        for it in job.items:
            if not it.req.future.done():
                self._enqueue(it)  # same seq and arrival: nothing loses its place
        for it in job.items:
            if it.req.deadline is not None and it.req.deadline <= now:
                self._expire(it.req)

    # batch forming (event loop thread)

    async def _dispatcher(self) -> None:
        while self._death is None:
            self._wake.clear()
            delay = self._dispatch_ready()
            if delay is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    def _dispatch_ready(self) -> float | None:
        """Dispatch what is ready; return how long to wait for company, or None to wait for an event."""
        assert self._loop is not None
        while self._slots_claimed() <= self._workers and self.queue_items:  # past that, one batch waits ahead
            now = self._loop.time()
            cls = self._pick_class(now)
            items, full, oldest = self._plan(cls)
            idle = self._slots_claimed() < self._workers  # a slot is free now
            if full or (idle and (self._sparse or now >= oldest + self._max_wait)):
                self._dispatch(items, cls, now)
            else:  # a partial batch only goes to an idle worker, so a busy one gets a fuller batch next
                return oldest + self._max_wait - now if idle else None
        return None

    def _slots_claimed(self) -> int:
        """Compute slots the batches in flight hold or wait for (> workers: one batch waits ahead)."""
        return sum(job.width for job in self._inflight)

    def _pick_class(self, now: float) -> int:
        if not self._by_len[BULK]:
            return INTERACTIVE
        if not self._by_len[INTERACTIVE]:
            return BULK
        starved = (
            self._last_class == INTERACTIVE
            and now - self._last_bulk >= self._starvation
            and now - self._oldest(BULK).arrival >= self._starvation
        )
        return BULK if starved else INTERACTIVE

    def _plan(self, cls: int) -> tuple[list[_Item], bool, float]:
        """The class's oldest item and its nearest neighbours by length (a contiguous, length-sorted run)."""
        keys, anchor = self._by_len[cls], self._oldest(cls)
        lo = hi = bisect_left(keys, (anchor.length, anchor.seq))
        lens = [anchor.length]
        full = self._cost(lens) >= self.max_batch_tokens  # full means: no more company would fit
        down_ok, up_ok = lo > 0, hi + 1 < len(keys)
        while len(lens) < self.max_batch_size and (down_ok or up_ok):
            # the closer length wins; ties go to the shorter item, which never raises the padding
            down = down_ok and (not up_ok or anchor.length - keys[lo - 1][0] <= keys[hi + 1][0] - anchor.length)
            j = lo - 1 if down else hi + 1
            if self._cost(lens + [keys[j][0]]) <= self.max_batch_tokens:
                lens.append(keys[j][0])
                lo, hi = (j, hi) if down else (lo, j)
                down_ok, up_ok = (lo > 0, up_ok) if down else (down_ok, hi + 1 < len(keys))
            else:  # items further out on this side cost at least as much
                full = True
                down_ok, up_ok = (False, up_ok) if down else (down_ok, False)
        return [k[2] for k in keys[lo : hi + 1]], full or len(lens) >= self.max_batch_size, anchor.arrival

    def _dispatch(self, items: list[_Item], cls: int, now: float) -> None:
        for it in items:
            self._unqueue(it)
        items = [it for it in items if not it.req.future.done()]  # cancelled between task.cancel() and cleanup
        if not items:
            return
        if cls == BULK:
            self._last_bulk = now
        self._last_class = cls
        preemptible = cls == BULK and not self._by_len[INTERACTIVE]
        others_busy = self._shared_slots and self._slots.free < self._workers  # another model's batch computes
        if self._slots_claimed() > 0 or others_busy:  # others compute: this batch gets one slot
            parts, width = [items], 1
        elif len(items) >= self._workers > 1:  # every slot free: split it, one part per slot, side by side
            parts, width = [items[i :: self._workers] for i in range(self._workers)], 1  # items are length-sorted
        else:  # a lone input on free slots: all of them
            parts, width = [items], self._workers
        for part in parts:
            job = _Job(part, now, preemptible=preemptible, width=width)
            self._inflight.append(job)
            self._jobs.put(job)

    def _on_dispatcher_exit(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:  # a bug here would otherwise leave every request hanging
            log.error("batcher dispatcher crashed", exc_info=exc)
            self._on_death(exc)

    # worker thread and its results

    def _work(self) -> None:
        try:
            while (job := self._ready.get()) is not None:
                self._take_slots(job.width)
                try:
                    with self._lock:
                        if job.state != _PENDING:
                            continue
                        job.state = _RUNNING
                    t0 = time.perf_counter()
                    prepared, job.prepared = job.prepared, None  # held no longer than the batch computes
                    outcomes, splits = self._compute([it.ids for it in job.items], job.width, prepared)
                    del prepared
                    self._post(self._finish, job, outcomes, splits, time.perf_counter() - t0)
                finally:
                    self._give_slots(job.width)
        except BaseException as exc:  # SystemExit and the like from run_batch: this thread is gone
            log.error("batcher worker died", exc_info=exc)
            self._post(self._on_death, exc)

    def _pack_ahead(self) -> None:
        """With `prepare`: each job's host-side work (packing) runs here as soon as the job is formed, so the batch
        waiting ahead is packed while the one before it computes; the workers then only run the device side."""
        assert self._prepare is not None
        try:
            while (job := self._jobs.get()) is not None:
                if job.state != _PENDING:  # taken back into the queue already
                    continue
                try:
                    job.prepared = self._prepare([it.ids for it in job.items])
                except Exception as exc:  # noqa: BLE001 -- fails this batch's requests only, in the worker
                    _clear_frames(exc)
                    job.prepared = _Failed(exc)
                self._ready.put(job)
        except BaseException as exc:
            log.error("batcher packer died", exc_info=exc)
            self._post(self._on_death, exc)
        finally:
            for _ in range(self._workers):
                self._ready.put(None)  # the workers end after the jobs already handed on

    def _take_slots(self, width: int) -> None:
        self._slots.take(width)

    def _give_slots(self, width: int) -> None:
        self._slots.give(width)

    def _compute(self, ids: list[Sequence[int]], width: int, prepared: Any = None) -> tuple[list[Any], int]:
        """Outcomes per item (results or `_Failed`) and the number of out-of-memory splits. `prepared`: what the
        packer made of `ids` ahead of time (with `prepare`; halves of a split are prepared here).

        Out of memory splits the batch in halves, retried *after* the `except` block: inside it the exception's
        traceback would keep the failed forward's frames, and with them its whole working set, alive during the retry
        (level after level). Every failure's frames are cleared, so neither a retry nor the `_Failed` handed to the
        event loop pins the tensors of a failed forward; the traceback itself stays printable."""
        try:
            if isinstance(prepared, _Failed):
                raise prepared.exc
            if self._prepare is not None and prepared is None:
                prepared = self._prepare(ids)
            out = self._run_batch(ids if self._prepare is None else prepared, width)
            if len(out) != len(ids):
                raise RuntimeError(f"run_batch returned {len(out)} results for {len(ids)} inputs")
            return list(out), 0
        except Exception as exc:  # noqa: BLE001 -- any encoder error belongs to this batch's requests only
            _clear_frames(exc)
            if not (len(ids) > 1 and self._is_oom(exc)):
                return [_Failed(exc)] * len(ids), 0
        # out of memory, and the failed attempt is freed: halves may fit where the whole did not
        del prepared
        mid = len(ids) // 2
        (a, sa), (b, sb) = self._compute(ids[:mid], width), self._compute(ids[mid:], width)
        return a + b, sa + sb + 1

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _finish(self, job: _Job, outcomes: list[Any], splits: int, compute_s: float) -> None:
        if job in self._inflight:
            self._inflight.remove(job)
        self._wake.set()
        real = sum(it.length for it in job.items)
        if compute_s > 0:
            rate = real / compute_s
            self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate
        for it, out in zip(job.items, outcomes):
            req = it.req
            if req.future.done():
                continue
            if isinstance(out, _Failed):
                self._settle(req, exc=out.exc)  # its other queued items go too
                continue
            req.results[it.index] = out
            req.left -= 1
            if req.left == 0:
                self._settle(req, result=req.results)
        if self._on_batch is not None:
            counts = {c: sum(it.priority == c for it in job.items) for c in (INTERACTIVE, BULK)}
            lens = [it.length for it in job.items]
            waits = [job.dispatched - it.arrival for it in job.items]
            stats = BatchStats(len(lens), real, self._cost(lens), waits, compute_s, counts, splits)
            try:
                self._on_batch(stats)
            except Exception:
                log.exception("batch observer failed")

    def _on_death(self, exc: BaseException) -> None:
        if self._death is not None:
            return
        self._death = exc
        for _ in self._threads:
            self._jobs.put(None)  # if the dispatcher died, let the worker threads end too

        def died() -> WorkerDied:
            err = WorkerDied(f"encoder worker died: {exc!r}")
            err.__cause__ = exc
            return err

        self._fail_all(died)
        self._wake.set()


def _clear_frames(exc: BaseException) -> None:
    """Drop the local variables of every finished frame in the tracebacks of `exc` and of the exceptions chained to
    it (where a failed forward's tensors live); file, line and function names stay for the log."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        todo += [e.__cause__, e.__context__]
