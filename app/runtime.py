"""The server's live parts (encoder, batcher, service, metrics, cache) and its life cycle: load -> warm -> ready ->
drain. Handlers reach it through `get_runtime`, never through globals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from fastapi import Request

from app.batcher import Batcher, BatchStats
from app.cache import EmbeddingCache
from app.metrics import Metrics
from app.middleware import Uploads
from app.service import EmbeddingService
from app.settings import Settings

log = logging.getLogger("app")
HURRY_S = 1.0  # a second signal: what is not answered within this gets its 503
ANSWER_WRITE_S = 1.0  # for the 503s of a drain's deadline to go out


def served_name(settings: Settings) -> str:
    """What clients send as `model` and what /v1/models and /metrics show: --served-model-name, else the packaged
    model's name, a local folder's basename (never its filesystem path), or the hub id as given."""
    if settings.served_model_name:
        return settings.served_model_name
    model = settings.model
    if model.startswith("packaged:"):
        return model.split(":", 1)[1]
    folder = Path(model).expanduser()
    return folder.resolve().name if folder.is_dir() else model


class Runtime:
    def __init__(self, settings: Settings, encoder=None, on_fatal: Callable[[str], None] | None = None):
        self.settings = settings
        self.model_name = served_name(settings)
        self.encoder = encoder
        self.metrics = Metrics()
        self.cache = EmbeddingCache(settings.cache_bytes)
        self.batcher: Batcher | None = None
        self._service: EmbeddingService | None = None
        self.ready = False
        self.draining = False
        self.fatal: str | None = None
        self.on_fatal = on_fatal
        self.created = int(time.time())
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.uploads = Uploads(settings.upload_buffer_bytes)
        self.unanswered: set[asyncio.Task] = set()  # requests in flight that have no response started yet
        self.drain_deadline = float("inf")
        self._hurried = asyncio.Event()

    @property
    def service(self) -> EmbeddingService:
        """Routes reach it only after `require_ready`, so it exists by then."""
        if self._service is None:
            raise RuntimeError("the embedding service is not started")
        return self._service

    @property
    def encoder_workers(self) -> int:
        """--encoder-workers, or by default 2 on a CPU with 2+ threads (batches side by side under load, measured
        +14-19% embeddings/s at concurrency 16 on 2 cores) and 1 on CUDA (one stream: nothing to gain)."""
        if self.settings.encoder_workers is not None:
            return self.settings.encoder_workers
        assert self.encoder is not None
        return 2 if self.encoder.info.device == "cpu" and self.encoder.threads >= 2 else 1

    @property
    def alive(self) -> bool:
        """Liveness: no fatal error, and the worker thread (once started) is still running."""
        return self.fatal is None and (self.batcher is None or self.batcher.alive)

    def request_started(self) -> None:
        self.in_flight += 1
        self.idle.clear()
        self.metrics.in_flight.set(self.in_flight)

    def request_finished(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)
        if self.in_flight == 0:
            self.idle.set()

    def _load(self):
        from model.encoder import Encoder

        s = self.settings
        return Encoder.load(
            s.model,
            device=s.device,
            dtype=s.dtype,
            max_input_tokens=s.max_input_tokens,
            revision=s.revision,
            compile=s.compile,
        )

    async def start(self) -> None:
        """Load (unless an encoder was given), warm up, start the batcher; then, and only then, report ready."""
        try:
            if self.encoder is None:
                self.encoder = await asyncio.to_thread(self._load)
            await asyncio.to_thread(self.encoder.warmup)
        except Exception as exc:  # a model that cannot load ends the process with one line
            self.fatal = f"model failed to load: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            log.error(self.fatal)
            if self.on_fatal is not None:
                self.on_fatal(self.fatal)
            return
        s, info = self.settings, self.encoder.info
        encoder, workers = self.encoder, self.encoder_workers

        def run_batch(ids: list[Sequence[int]], width: int) -> list[np.ndarray]:
            # a batch holding `width` of the `workers` slots computes on that share of the cores
            return list(encoder.pooled(ids, threads=max(1, encoder.threads * width // workers)))

        self.batcher = Batcher(
            run_batch,
            cost=self.encoder.batch_cost,
            max_batch_tokens=s.max_batch_tokens,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            max_queue_tokens=s.max_queue_tokens,
            is_out_of_memory=self.encoder.is_out_of_memory,
            on_batch=self._on_batch,
            workers=workers,
        )
        await self.batcher.start()
        batcher = self.batcher  # queue gauges are read at scrape time, on the API port and on --metrics-port alike
        self.metrics.queue_depth.set_function(lambda: batcher.queue_items)
        self.metrics.queue_tokens.set_function(lambda: batcher.queue_tokens)
        self._service = EmbeddingService(self.encoder, self.batcher, s, self.metrics, self.cache)
        self.metrics.model_info.labels(
            self.model_name, info.model_type, info.device, info.dtype, str(info.max_input_tokens), str(info.hidden_size)
        ).set(1)
        self.ready = True
        log.info(
            "ready: %s on %s (%s), max %d tokens per input",
            self.model_name,
            info.device,
            info.dtype,
            info.max_input_tokens,
        )

    def _on_batch(self, stats: BatchStats) -> None:
        self.metrics.observe_batch(
            stats.size, stats.real_tokens, stats.cost_tokens, stats.queue_waits_s, stats.compute_s
        )

    async def drain(self, deadline: float | None = None) -> None:
        """Stop taking work (/ready and new requests get 503), cut the bodies still arriving (503), and answer what
        was admitted by `deadline` (loop time; default `shutdown_grace_s` from now; `hurry` brings it closer). What
        is still queued or computing then gets a 503, so every admitted request has its answer."""
        loop = asyncio.get_running_loop()
        self.draining, self.ready = True, False
        self.drain_deadline = loop.time() + self.settings.shutdown_grace_s if deadline is None else deadline
        self.uploads.cut_all()
        while not self.idle.is_set() and (left := self.drain_deadline - loop.time()) > 0:
            self._hurried.clear()
            waits = {asyncio.ensure_future(self.idle.wait()), asyncio.ensure_future(self._hurried.wait())}
            await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
        if self.unanswered:
            log.warning("shutdown deadline: answering the %d requests still unanswered with 503", len(self.unanswered))
            for task in self.unanswered:
                task.cancel()  # the middleware answers each a 503
        if self.batcher is not None:
            await self.batcher.drain(0)  # nothing is left for it; its workers stop
        with contextlib.suppress(TimeoutError):  # those 503s being written
            await asyncio.wait_for(self.idle.wait(), ANSWER_WRITE_S)

    def hurry(self) -> None:
        """A second SIGTERM or SIGINT: the drain ends within HURRY_S, still answering every admitted request."""
        self.drain_deadline = min(self.drain_deadline, asyncio.get_running_loop().time() + HURRY_S)
        self._hurried.set()


async def get_runtime(request: Request) -> Runtime:
    # async on purpose, like every dependency here: FastAPI runs sync dependencies in a thread pool, and those thread
    # hops (fighting the encoder thread for the GIL) were the bottleneck at 64 concurrent clients
    return request.app.state.runtime
