"""What a request for embeddings goes through: validate -> prefix and tokenize -> length rules -> cache -> batcher ->
Matryoshka/normalise -> encode. HTTP-free, so the rules read in one place; the routes only translate. `ModelService`
holds what every model's service shares (the rerank service in app/rerank.py builds on it too)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app import quantize
from app.batcher import Batcher, DeadlineExceeded, Draining, Overloaded, WorkerDied
from app.cache import EmbeddingCache
from app.errors import APIError
from app.metrics import Metrics
from app.schemas import EmbeddingRequest
from app.settings import Settings
from model import inputs

INTERACTIVE_MAX_INPUTS = 8  # requests this small (and short) jump ahead of bulk work
INTERACTIVE_MAX_TOKENS = 1024
INLINE_TOKENIZE_CHARS = 2048  # below this, tokenising on the event loop is cheaper than handing it to a thread


@dataclass
class Prepared:
    """One input, ready for the batcher: its windows (one unless chunked) and its cache key."""

    windows: list[list[int]]
    tokens: int
    cache_key: tuple | None = None
    vector: np.ndarray | None = None  # set on a cache hit


class AllTokens(list):
    """A batcher item whose per-token vectors are wanted (TEI's /embed_all), not its pooled vector."""


@dataclass
class EmbeddingResult:
    vectors: list[np.ndarray]
    prompt_tokens: int


class ModelService:
    """What every model's service shares, whatever it computes: the text rules, tokenising off the event loop when
    it is long, the priority rule, and submitting to the model's batcher (its refusals as API errors)."""

    def __init__(self, encoder, batcher: Batcher, settings: Settings, metrics: Metrics, name: str):
        self.encoder, self.batcher, self.settings, self.metrics = encoder, batcher, settings, metrics
        self.info = encoder.info
        self.name = name  # the served name: the cache keys and the metrics' `model` label

    @staticmethod
    def check_texts(texts: Sequence[str], param: str = "input", noun: str = "Input") -> None:
        for i, text in enumerate(texts):
            try:
                inputs.check_text(text)
            except inputs.Rejected as exc:
                exc.param = param
                raise rejected(exc, i, noun=noun) from None

    def check_count(self, n: int, param: str = "input") -> None:
        if n > self.settings.max_inputs_per_request:
            raise APIError(
                400,
                f"Too many inputs: {n}, the maximum is {self.settings.max_inputs_per_request}",
                param=param,
                code="too_many_inputs",
            )

    def check_total(self, total: int, param: str = "input") -> None:
        if total > self.settings.max_tokens_per_request:
            raise APIError(
                400,
                f"The request has {total} tokens, over the per-request maximum of "
                f"{self.settings.max_tokens_per_request}",
                param=param,
                code="max_tokens_per_request",
            )

    @staticmethod
    async def off_loop_if_long(chars: int, fn, *args):
        """`fn(*args)` inline when the text is short (microseconds: a thread hop would cost more), else in a thread
        so the event loop keeps serving."""
        if chars <= INLINE_TOKENIZE_CHARS:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    @staticmethod
    def priority(items: Sequence[Sequence[int]], requested: str | None) -> int:
        """interactive (0) / bulk (1) as asked, else by size: a few short inputs are interactive."""
        given = {"interactive": 0, "bulk": 1}.get(requested or "")
        if given is not None:
            return given
        small = len(items) <= INTERACTIVE_MAX_INPUTS and sum(map(len, items)) <= INTERACTIVE_MAX_TOKENS
        return 0 if small else 1

    async def submit(self, items: Sequence[Sequence[int]], priority: int) -> list:
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
        try:
            return await self.batcher.submit(items, priority=priority, deadline=deadline)
        except Overloaded as exc:
            self.metrics.rejected.labels(self.name, "overloaded").inc()
            retry = str(max(1, round(exc.retry_after)))
            raise APIError(
                429,
                "The server is overloaded; retry after the Retry-After seconds",
                code="overloaded",
                headers={"Retry-After": retry},
            ) from None
        except Draining:
            self.metrics.rejected.labels(self.name, "draining").inc()
            raise APIError(503, "The server is shutting down", code="draining", headers={"Retry-After": "1"}) from None
        except DeadlineExceeded:
            self.metrics.rejected.labels(self.name, "timeout").inc()
            raise APIError(
                503,
                f"The request waited over {self.settings.request_timeout_s:g} s in the queue and was dropped",
                code="queue_timeout",
                headers={"Retry-After": "1"},
            ) from None
        except WorkerDied:
            raise APIError(503, "The encoder worker is not running", code="worker_died") from None


class EmbeddingService(ModelService):
    def __init__(
        self, encoder, batcher: Batcher, settings: Settings, metrics: Metrics, cache: EmbeddingCache, name: str
    ):
        super().__init__(encoder, batcher, settings, metrics, name)
        self.cache = cache
        self.quantizer = quantize.Quantizer(self._calibration)

    async def _calibration(self, texts: Sequence[str], key: quantize.Key) -> np.ndarray:
        """The calibration texts embedded as a request with this task, dimensions and normalisation would be."""
        task, dimensions, normalize = key
        req = EmbeddingRequest.model_validate(
            {"input": list(texts), "input_type": task or None, "dimensions": dimensions, "normalize": normalize,
             "long_input": "truncate"}
        )
        return np.stack((await self.embed(req)).vectors)

    async def token_vectors(self, req: EmbeddingRequest) -> EmbeddingResult:
        """Each input's per-token last hidden states, (T_i, E) (TEI's /embed_all): never chunked, never cached."""
        if (req.long_input or self.settings.long_input_default) == "chunk":
            req = req.model_copy(update={"long_input": "error"})
        prepared = await self.prepare(req, use_cache=False)
        items = [AllTokens(p.windows[0]) for p in prepared]
        vectors = await self.submit(items, self.priority(items, req.priority))
        tokens = sum(p.tokens for p in prepared)
        self.metrics.tokens.labels(self.name).inc(tokens)
        return EmbeddingResult(vectors, tokens)

    async def typed(self, vectors: list[np.ndarray], kind: str, req: EmbeddingRequest) -> list:
        """Finished float vectors in one of Cohere's embedding types (app/quantize.py)."""
        if kind == "float" or not vectors:
            return vectors
        texts, _ = self.split_input(req.input)
        task = self.prefix_for(req.input_type)[0] if texts is not None else ""
        return await quantize.as_type(np.stack(vectors), kind, self.quantizer, (task, req.dimensions, req.normalize))

    # ---- request rules (model/inputs.py holds them, shared with the offline jobs) ------------------------------
    def prefix_for(self, input_type: str | None) -> tuple[str, str]:
        """(task name, prefix) for a request's input_type, or the server default."""
        try:
            return inputs.task_prefix(self.info.prompts, input_type or self.settings.default_input_type)
        except inputs.Rejected as exc:
            raise rejected(exc) from None

    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is not None and not 1 <= dimensions <= self.info.hidden_size:
            raise APIError(
                400,
                f"dimensions must be between 1 and {self.info.hidden_size}, got {dimensions}",
                param="dimensions",
                code="invalid_value",
            )
        if dimensions is not None and dimensions < self.info.hidden_size and self.settings.strict_dimensions:
            trained = self.info.matryoshka_dimensions
            if not self.info.matryoshka or (trained and dimensions not in trained):
                why = f"only to {list(trained)}" if self.info.matryoshka else "for no smaller width (Matryoshka)"
                raise APIError(
                    400,
                    f"This model was trained {why}: dimensions={dimensions} would give poor embeddings "
                    "(--strict-dimensions)",
                    param="dimensions",
                    code="invalid_value",
                )

    @staticmethod
    def split_input(raw) -> tuple[list[str] | None, list[list[int]] | None]:
        """OpenAI's four input shapes -> texts or token-id lists."""
        if isinstance(raw, str):
            return [raw], None
        if isinstance(raw[0], str):
            return list(raw), None
        if isinstance(raw[0], int):
            return None, [list(raw)]
        return None, [list(x) for x in raw]

    async def tokenize(self, texts: Sequence[str], prefix: str) -> list[list[int]]:
        if self.encoder.tokenizer is None:
            raise APIError(400, "This model has no tokenizer: send token ids", param="input", code="invalid_input")
        return await self.off_loop_if_long(sum(map(len, texts)), self.encoder.tokenize, texts, prefix)

    def fit(self, ids: list[int], index: int, mode: str, from_text: bool, left: bool = False) -> list[list[int]]:
        """Apply the long-input rule (model/inputs.py)."""
        try:
            return inputs.fit(self.encoder, ids, mode, from_text, left)
        except inputs.Rejected as exc:
            raise rejected(exc, index, "Shorten it, or set long_input to 'truncate' or 'chunk'.") from None

    async def prepare(self, req: EmbeddingRequest, use_cache: bool = True) -> list[Prepared]:
        texts, id_lists = self.split_input(req.input)
        self.check_count(len(texts) if texts is not None else len(id_lists or []))
        self.check_dimensions(req.dimensions)
        task, prefix = self.prefix_for(req.input_type) if texts is not None else ("", "")
        mode = req.long_input or self.settings.long_input_default
        variant = (req.dimensions, mode, req.normalize, req.truncation_direction)  # all that changes a vector
        keys: list[tuple] = []
        if texts is not None:
            self.check_texts(texts)
            keys = [(self.name, task, text, *variant) for text in texts]
        else:
            assert id_lists is not None
            for i, ids in enumerate(id_lists):
                try:
                    inputs.check_ids(ids, self.info.vocab_size)
                except inputs.Rejected as exc:
                    raise rejected(exc, i) from None
            keys = [(self.name, "", tuple(ids), *variant) for ids in id_lists]

        prepared = [Prepared([], 0, key) for key in keys]
        if self.cache.enabled and use_cache:
            for p in prepared:
                hit = self.cache.get(p.cache_key)
                if hit is not None:
                    p.vector, p.tokens = hit
            hits = sum(p.vector is not None for p in prepared)
            self.metrics.cache_hits.labels(self.name).inc(hits)
            self.metrics.cache_misses.labels(self.name).inc(len(prepared) - hits)
        todo = [i for i, p in enumerate(prepared) if p.vector is None]
        if texts is not None and todo:
            ids_todo = await self.tokenize([texts[i] for i in todo], prefix)
        else:
            ids_todo = [id_lists[i] for i in todo] if id_lists is not None else []
        total = 0
        for i, ids in zip(todo, ids_todo):
            prepared[i].windows = self.fit(ids, i, mode, texts is not None, req.truncation_direction == "left")
            prepared[i].tokens = sum(len(w) for w in prepared[i].windows)
            total += prepared[i].tokens
        self.check_total(total)
        return prepared

    # ---- the work ---------------------------------------------------------------------------------------------
    async def embed(self, req: EmbeddingRequest) -> EmbeddingResult:
        prepared = await self.prepare(req)
        items = [w for p in prepared if p.vector is None for w in p.windows]
        if items:
            pooled = await self.submit(items, self.priority(items, req.priority))
            at = 0
            for p in prepared:
                if p.vector is not None:
                    continue
                mean = inputs.mean_of_windows(pooled[at : at + len(p.windows)], [len(w) for w in p.windows])
                at += len(p.windows)
                p.vector = self.encoder.finish(mean[None, :], req.dimensions, req.normalize)[0]
                if self.cache.enabled:
                    self.cache.put(p.cache_key, p.vector, p.tokens)
            if self.cache.enabled:
                self.metrics.cache_bytes.labels(self.name).set(self.cache.bytes)
        tokens = sum(p.tokens for p in prepared)
        self.metrics.tokens.labels(self.name).inc(tokens)
        self.metrics.embeddings.labels(self.name).inc(len(prepared))
        return EmbeddingResult([p.vector for p in prepared if p.vector is not None], tokens)


def rejected(exc: inputs.Rejected, index: int | None = None, hint: str = "", noun: str = "Input") -> APIError:
    """An input rule's refusal as a 400 naming the input."""
    message = exc.reason if index is None else f"{noun} {index} {exc.reason}"
    return APIError(400, f"{message}. {hint}" if hint else message, param=exc.param, code=exc.code)


BYTE_TYPES = {"int8": np.int8, "binary": np.int8, "uint8": np.uint8, "ubinary": np.uint8}


def encode_vectors(vectors: list, encoding_format: str, kind: str = "float") -> list:
    """Vectors of `kind` (float arrays, or int lists from `typed`) as the response carries them."""
    if encoding_format == "base64" and kind in BYTE_TYPES:  # one byte per value
        return [base64.b64encode(np.asarray(v, dtype=BYTE_TYPES[kind]).tobytes()).decode("ascii") for v in vectors]
    if encoding_format == "base64":  # little-endian float32, what the openai SDK decodes
        return [base64.b64encode(v.astype("<f4", copy=False).tobytes()).decode("ascii") for v in vectors]
    return list(vectors)  # float32 arrays; orjson writes them directly (OPT_SERIALIZE_NUMPY)
