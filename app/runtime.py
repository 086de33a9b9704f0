"""The server's live parts and their life cycle: load -> warm -> ready -> drain, for every served model.

Each model (`--model NAME=SOURCE`, repeatable) gets its own encoder, batcher, service, cache and metrics series;
they share the process's compute slots (`ComputeSlots`), so two models never run more batches at once than the
cores allow. Handlers reach it through `get_runtime`, never through globals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request

from app.batcher import Batcher, BatchStats, ComputeSlots
from app.cache import EmbeddingCache
from app.errors import APIError
from app.heap import HeapTrimmer
from app.metrics import NO_MODEL, Metrics
from app.middleware import Uploads
from app.rerank import RerankService
from app.service import AllTokens, EmbeddingService
from app.settings import Settings

log = logging.getLogger("app")
EMBEDDING, RERANKER = "embedding", "reranker"
HURRY_S = 1.0  # a second signal: what is not answered within this gets its 503
ANSWER_WRITE_S = 1.0  # for the 503s of a drain's deadline to go out
# A GPU batch grows to this many tokens. On CPU a forward takes at most 1,024 (model/encoder.py CPU_FORWARD_TOKENS), so
# a larger batch only holds its first inputs' answers until its last forward ends; and with two workers, batches of
# very different sizes side by side make a tail: the clients of the short one cycle, those of the long one wait
# (~180-token inputs at c=16, scheduling alone, the forward a sleep: p50/p95/p99 401/729/829 ms at 16,384 tokens,
# 392/402-434/411-481 at 512, the same embeddings/s).
GPU_BATCH_TOKENS, CPU_BATCH_TOKENS = 16384, 512
DESCRIBED = {EMBEDDING: "an embedding model", RERANKER: "a reranker (cross-encoder)"}


@dataclass
class ServedModel:
    """One served model: what clients call it, where it came from, and its running parts once started."""

    name: str
    source: str
    encoder: Any = None
    batcher: Batcher | None = None
    service: Any = None  # EmbeddingService or RerankService, by kind; set once the model is warm
    ready: bool = False

    @property
    def kind(self) -> str:
        """"embedding" or "reranker" (cross-encoder)."""
        return getattr(self.encoder.info, "kind", EMBEDDING)

    def require(self, kind: str) -> ServedModel:
        """This model, if it is of `kind`; else a 400 naming what it is."""
        if self.kind != kind:
            raise APIError(
                400,
                f"The model `{self.name}` is {DESCRIBED[self.kind]}; this route needs {DESCRIBED[kind]}",
                param="model",
                code="wrong_model_kind",
            )
        return self


class Runtime:
    def __init__(
        self,
        settings: Settings,
        encoder=None,
        on_fatal: Callable[[str], None] | None = None,
        encoders: Mapping[str, Any] | None = None,
    ):
        """`encoder` injects the first model's encoder, `encoders` any model's by served name (tests)."""
        self.settings = settings
        given = dict(encoders or {})
        self.models: dict[str, ServedModel] = {}
        for i, (name, source) in enumerate(settings.models):
            injected = encoder if i == 0 and encoder is not None else given.pop(name, None)
            self.models[name] = ServedModel(name, source, injected)
        if given:
            raise ValueError(f"encoders given for models that are not configured: {sorted(given)}")
        self.metrics = Metrics(list(self.models))
        self.caches = {name: EmbeddingCache(settings.cache_bytes) for name in self.models}
        self.slots: ComputeSlots | None = None
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
        self.heap_trimmer = HeapTrimmer(settings.heap_trim_interval_s)

    # ---- the models -------------------------------------------------------------------------------------------
    @property
    def default(self) -> ServedModel:
        return next(iter(self.models.values()))

    @property
    def model_name(self) -> str:
        return self.default.name

    def model(self, name: str | None, kind: str | None = None) -> ServedModel:
        """The model a request names; unknown names are a 404. A request that names none gets the first model of the
        kind its route needs (so TEI's `/rerank`, which has no `model` field, reaches the reranker beside an
        embedder), else the first model."""
        if name is None:
            return next((m for m in self.models.values() if m.kind == kind), self.default)
        served = self.models.get(name)
        if served is None:
            raise APIError(
                404,
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return served

    @property
    def encoder(self):
        """The default model's encoder."""
        return self.default.encoder

    @property
    def service(self) -> EmbeddingService:
        """The default model's service. Routes reach it only after `require_ready`, so it exists by then."""
        if self.default.service is None:
            raise RuntimeError("the embedding service is not started")
        return self.default.service

    @property
    def ready(self) -> bool:
        """Every model is warm."""
        return all(m.ready for m in self.models.values())

    @property
    def encoder_workers(self) -> int:
        """The compute slots of the machine, shared by every model: --encoder-workers, or by default 2 on a CPU with
        2+ threads (batches side by side under load, measured +14-19% embeddings/s at concurrency 16 on 2 cores) and
        1 on CUDA (one stream: nothing to gain)."""
        if self.settings.encoder_workers is not None:
            return self.settings.encoder_workers
        encoder = self.default.encoder
        assert encoder is not None
        return 2 if encoder.info.device == "cpu" and encoder.threads >= 2 else 1

    @property
    def max_batch_tokens(self) -> int:
        """--max-batch-tokens, or by default CPU_BATCH_TOKENS on a CPU and GPU_BATCH_TOKENS on CUDA."""
        if self.settings.max_batch_tokens is not None:
            return self.settings.max_batch_tokens
        encoder = self.default.encoder
        assert encoder is not None
        return CPU_BATCH_TOKENS if encoder.info.device == "cpu" else GPU_BATCH_TOKENS

    @property
    def alive(self) -> bool:
        """Liveness: no fatal error, and every worker thread (once started) is still running."""
        return self.fatal is None and all(m.batcher is None or m.batcher.alive for m in self.models.values())

    # ---- requests in flight -----------------------------------------------------------------------------------
    def request_started(self) -> None:
        self.in_flight += 1
        self.idle.clear()
        self.metrics.in_flight.labels(NO_MODEL).inc()

    def bind(self, state: MutableMapping[str, Any], served: ServedModel) -> ServedModel:
        """Record which model a request reached (its `model` label from now on)."""
        if state.get("model", NO_MODEL) != served.name:
            self.metrics.in_flight.labels(state.get("model", NO_MODEL)).dec()
            self.metrics.in_flight.labels(served.name).inc()
            state["model"] = served.name
        return served

    def request_finished(self, model: str = NO_MODEL) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.labels(model).dec()
        if self.in_flight == 0:
            self.idle.set()

    # ---- life cycle -------------------------------------------------------------------------------------------
    def _load(self, source: str):
        from model.cpu_aot import default_cache_dir as default_cpu_aot_dir
        from model.encoder import Encoder

        s = self.settings
        return Encoder.load(
            source,
            device=s.device,
            dtype=s.dtype,
            max_input_tokens=s.max_input_tokens,
            revision=s.revision,
            compile=s.compile,
            cpu_aot_dir=(s.cpu_aot_dir or default_cpu_aot_dir()) if s.cpu_aot else None,
        )

    async def start(self) -> None:
        """Load (unless given) and warm every model, then start their batchers on one shared slot pool; each model
        is ready once its batcher runs, and the server once all are."""
        try:
            for served in self.models.values():
                if served.encoder is None:
                    served.encoder = await asyncio.to_thread(self._load, served.source)
                await asyncio.to_thread(served.encoder.warmup)
        except Exception as exc:  # a model that cannot load ends the process with one line
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            which = f"model {served.name}" if len(self.models) > 1 else "model"
            self.fatal = f"{which} failed to load: {reason}"
            log.error(self.fatal)
            if self.on_fatal is not None:
                self.on_fatal(self.fatal)
            return
        self.slots = ComputeSlots(self.encoder_workers)
        for served in self.models.values():
            await self._start_model(served, self.slots)
        self.heap_trimmer.start()

    async def _start_model(self, served: ServedModel, slots: ComputeSlots) -> None:
        s, encoder, name, workers = self.settings, served.encoder, served.name, slots.size
        info = encoder.info

        def run_batch(ids: list[Sequence[int]], width: int) -> list[np.ndarray]:
            # a batch holding `width` of the `workers` slots computes on that share of the cores
            threads = max(1, encoder.threads * width // workers)
            whole = [i for i, x in enumerate(ids) if isinstance(x, AllTokens)]  # /embed_all: per-token vectors
            if not whole:
                return list(encoder.pooled(ids, threads=threads))
            out: list = [None] * len(ids)
            pooled = [i for i, x in enumerate(ids) if not isinstance(x, AllTokens)]
            if pooled:
                for i, v in zip(pooled, encoder.pooled([ids[i] for i in pooled], threads=threads)):
                    out[i] = v
            for i, v in zip(whole, encoder.token_vectors([ids[i] for i in whole], threads=threads)):
                out[i] = v
            return out

        def prepare(ids: list[Sequence[int]]):  # host side ahead of time; batches with /embed_all items run whole
            return ids if any(isinstance(x, AllTokens) for x in ids) else encoder.prepare(ids)

        def run_pairs(pairs: list, width: int) -> list[float]:  # a cross-encoder: (query, document) pairs -> logits
            return list(encoder.score(pairs, threads=max(1, encoder.threads * width // workers)))

        def run_prepared(packed, width: int) -> list[np.ndarray]:  # the device side; packed ahead by the batcher
            return run_batch(packed, width) if isinstance(packed, list) else list(encoder.run(packed))

        def on_batch(stats: BatchStats) -> None:
            self.metrics.observe_batch(
                name, stats.size, stats.real_tokens, stats.cost_tokens, stats.queue_waits_s, stats.compute_s
            )

        reranker = served.kind == RERANKER
        # on a GPU: pack batch n+1 on the host while batch n computes (embedding batches: token ids only)
        ahead = encoder.packs_ahead and not reranker
        served.batcher = batcher = Batcher(
            run_pairs if reranker else run_prepared if ahead else run_batch,
            cost=encoder.batch_cost,
            max_batch_tokens=self.max_batch_tokens,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            max_queue_tokens=s.max_queue_tokens,
            is_out_of_memory=encoder.is_out_of_memory,
            on_batch=on_batch,
            workers=workers,
            prepare=prepare if ahead else None,
            slots=slots,
        )
        await batcher.start()
        # queue gauges are read at scrape time, on the API port and on --metrics-port alike
        self.metrics.queue_depth.labels(name).set_function(lambda: batcher.queue_items)
        self.metrics.queue_tokens.labels(name).set_function(lambda: batcher.queue_tokens)
        served.service = (
            RerankService(encoder, batcher, s, self.metrics, name)
            if reranker
            else EmbeddingService(encoder, batcher, s, self.metrics, self.caches[name], name)
        )
        self.metrics.model_info.labels(
            name, served.kind, info.model_type, info.device, info.dtype, str(info.max_input_tokens),
            str(info.hidden_size),
        ).set(1)
        served.ready = True
        log.info(
            "ready: %s (%s) on %s (%s), max %d tokens per input, %d compute slots shared by %d models",
            name, served.kind, info.device, info.dtype, info.max_input_tokens, workers, len(self.models),
        )

    async def drain(self, deadline: float | None = None) -> None:
        """Stop taking work (/ready and new requests get 503), cut the bodies still arriving (503), and answer what
        was admitted by `deadline` (loop time; default `shutdown_grace_s` from now; `hurry` brings it closer). What
        is still unanswered then gets a 503, so every admitted request has its answer; the workers stop."""
        loop = asyncio.get_running_loop()
        self.draining = True
        for served in self.models.values():
            served.ready = False
        wanted = loop.time() + self.settings.shutdown_grace_s if deadline is None else deadline
        self.drain_deadline = min(self.drain_deadline, wanted)  # a second signal may have come first
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
        # nothing is left for the batchers: their workers stop
        await asyncio.gather(*(m.batcher.drain(0) for m in self.models.values() if m.batcher is not None))
        self.heap_trimmer.stop()
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
