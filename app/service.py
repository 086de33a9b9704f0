"""What a request for embeddings goes through, HTTP-free, so every API surface calls the same steps:

    plan      shapes, counts and character caps, cache look-ups, a token estimate: no tokenising yet
    admit     a guess at the tokens is held against the queue (routes take it from the body's size before reading
              it): 429 at once when it cannot fit, before the expensive work
    tokenize  bounded slices of text (off the event loop past a few KB), stopping at the first input or total that
              breaks a limit, so a hostile request costs at most max_tokens_per_request tokens of work
    submit    the batcher; then the chunk mean and Matryoshka/normalise for all inputs at once, and the cache

The input rules themselves are in model/inputs.py, shared with the offline jobs; the routes only translate.
`ModelService` holds what every model's service shares (the rerank service in app/rerank.py builds on it too).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from app import quantize
from app.batcher import Batcher, DeadlineExceeded, Draining, Overloaded, WorkerDied
from app.cache import EmbeddingCache
from app.errors import LONG_HINT, APIError
from app.metrics import Metrics
from app.schemas import EmbeddingRequest
from app.settings import Settings
from model import inputs

INTERACTIVE_MAX_INPUTS = 8  # requests this small (and short) jump ahead of bulk work
INTERACTIVE_MAX_TOKENS = 1024
INLINE_TOKENIZE_CHARS = 2048  # below this, tokenising on the event loop is cheaper than handing it to a thread
# Admission's guess at a request's tokens before it is tokenised (the real count replaces it when the items are
# queued): 4 characters (or body bytes) a token, English prose on BERT vocabularies (4-5 measured; README: character
# caps). A guess is capped at max_tokens_per_request (and max_queue_tokens), so it never refuses a request an empty
# queue could take. Denser text (code 2.9-3.5, CJK ~1.2) is guessed short: such a request, admitted into a nearly full
# queue, gets its 429 after tokenising instead, at most max_tokens_per_request tokens of work. A guess on the long
# side would refuse work a tight queue (the overload test: 2,000 tokens) could hold.
ADMISSION_CHARS_PER_TOKEN = 4


@dataclass
class Prepared:
    """One input, ready for the batcher: its windows (one unless chunked) and its cache key."""

    windows: list[list[int]]
    tokens: int
    cache_key: tuple | None = None
    vector: np.ndarray | None = None  # set on a cache hit


@dataclass
class Plan:
    """A request checked and looked up, not yet tokenised: what is left to do and what admission holds for it."""

    prepared: list[Prepared]
    texts: list[str] | None = None  # the inputs still to embed (cache misses): texts, or token-id lists
    ids: list[list[int]] | None = None
    todo: list[int] = field(default_factory=list)  # their indices in `prepared`
    prefix: str = ""
    mode: str = "error"
    left: bool = False  # truncation keeps the end of the text
    limit: int | None = None  # the request's own token limit (truncate_prompt_tokens); None: the model's
    estimate: int = 0


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
        self.reserved_tokens = 0  # admission's guesses for requests still being parsed or tokenised

    def check_texts(
        self,
        texts: Sequence[str],
        param: str = "input",
        noun: str = "Input",
        mode: str = "chunk",
        left: bool = False,
        hint: str = LONG_HINT,
        limit: int | None = None,
    ) -> list[str]:
        """Empty, NUL and lone-surrogate texts are refused; then the character caps, before any tokenising: each text
        against max_input_tokens x max_chars_per_token (refused under 'error', cut under 'truncate'; 'chunk' keeps
        every character), and the request's total against max_tokens_per_request x max_chars_per_token. The texts
        as they will be tokenised."""
        per_token, out = self.settings.max_chars_per_token, []
        for i, text in enumerate(texts):
            try:
                inputs.check_text(text)
                out.append(inputs.cap_text(text, mode, limit or self.info.max_input_tokens, per_token, left))
            except inputs.Rejected as exc:
                exc.param = param
                raise rejected(exc, i, hint if exc.code == "context_length_exceeded" else "", noun) from None
        total, cap = sum(map(len, out)), self.settings.max_tokens_per_request * per_token
        if total > cap:
            raise APIError(
                400,
                f"The request has {total} characters of text, over the per-request maximum of {cap} "
                f"({self.settings.max_tokens_per_request} tokens x {per_token} characters a token)",
                param=param,
                code="max_tokens_per_request",
            )
        return out

    def token_limit(self, value: int | None, param: str) -> int | None:
        """A request's own token count (vLLM's truncate_prompt_tokens, Cohere's max_tokens and max_tokens_per_doc):
        1 to the model's input limit; vLLM's -1 is that limit."""
        limit, vllm = self.info.max_input_tokens, param == "truncate_prompt_tokens"
        if value == -1 and vllm:
            return limit
        if value is not None and not 1 <= value <= limit:
            raise APIError(
                400, f"'{param}' is {value}: it must be between 1 and this model's maximum of {limit} tokens"
                + (", or -1 for that maximum" if vllm else ""), param=param, code="invalid_value",
            )
        return value

    def check_count(self, n: int, param: str = "input") -> None:
        if n > self.settings.max_inputs_per_request:
            raise APIError(
                400,
                f"Too many inputs: {n}, the maximum is {self.settings.max_inputs_per_request}",
                param=param,
                code="too_many_inputs",
            )

    def check_total(self, total: int, param: str = "input", exact: bool = True, seen: int = 0, n: int = 0) -> None:
        """The per-request token cap. `exact` False: tokenising stopped once past it, after `seen` of `n` inputs."""
        most = self.settings.max_tokens_per_request
        if total > most:
            counted = f"{total} tokens" if exact else f"over {most} tokens ({total} in the first {seen} of {n} inputs)"
            raise APIError(
                400,
                f"The request has {counted}, over the per-request maximum of {most}",
                param=param,
                code="max_tokens_per_request",
            )

    # ---- admission --------------------------------------------------------------------------------------------
    def admit(self, tokens: int) -> Admission:
        """Hold a guess at a request's tokens against the queue until its items are queued: 429 at once when the
        queue, with every request still being parsed or tokenised, has no room for it. Routes call it with the body's
        size (`tokens_in_body`) before they read the body; `embed` narrows it to the request's own estimate."""
        tokens = max(1, min(tokens, self.most_admitted))
        self.check_room(tokens)
        return Admission(self, tokens)

    @property
    def most_admitted(self) -> int:
        """The largest guess admission holds: a guess alone never refuses a request an empty queue could take."""
        return min(self.settings.max_tokens_per_request, self.settings.max_queue_tokens)

    def check_room(self, tokens: int) -> None:
        try:
            self.batcher.check_room(self.reserved_tokens + tokens)
        except Overloaded as exc:
            raise self.overloaded(exc) from None

    def overloaded(self, exc: Overloaded) -> APIError:
        self.metrics.rejected.labels(self.name, "overloaded").inc()
        return APIError(
            429,
            "The server is overloaded; retry after the Retry-After seconds",
            code="overloaded",
            headers={"Retry-After": str(max(1, round(exc.retry_after)))},
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
            raise self.overloaded(exc) from None
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
        """OpenAI's four input shapes -> texts or token-id lists (no copies: the body's lists are ours)."""
        if isinstance(raw, str):
            return [raw], None
        if isinstance(raw[0], str):
            return raw, None
        if isinstance(raw[0], int):
            return None, [raw]
        return None, raw

    def fit(
        self, ids: list[int], index: int, mode: str, from_text: bool, left: bool = False, limit: int | None = None
    ) -> list[list[int]]:
        """Apply the long-input rule (model/inputs.py) at the model's limit, or the request's own."""
        try:
            return inputs.fit(self.encoder, ids, mode, from_text, left, limit)
        except inputs.Rejected as exc:
            raise rejected(exc, index, LONG_HINT) from None

    # ---- tokenising, bounded ----------------------------------------------------------------------------------
    def _tokenize_and_fit(
        self, texts: Sequence[str], prefix: str, mode: str | None, where: Sequence[int], left: bool, limit: int | None
    ) -> list[list[list[int]]]:
        """Each text's windows (its whole ids when `mode` is None). Tokenises lazily (model/tokenizer.py: a bounded
        slice of text per call) and stops at the first text over the model's limit under 'error', or once the total
        passes max_tokens_per_request."""
        budget, total, out = self.settings.max_tokens_per_request, 0, []
        for k, ids in enumerate(self.encoder.iter_tokenize(texts, prefix, stop_after=budget)):
            windows = [ids] if mode is None else self.fit(ids, where[k], mode, True, left, limit)
            total += sum(map(len, windows))
            # a text past the budget on its own was cut short there: its count is a lower bound
            self.check_total(total, exact=k + 1 == len(texts) and len(ids) <= budget, seen=k + 1, n=len(texts))
            out.append(windows)
        return out

    async def tokenize(
        self,
        texts: Sequence[str],
        prefix: str,
        mode: str | None = None,
        where: Sequence[int] = (),
        left: bool = False,
        limit: int | None = None,
    ) -> list[list[list[int]]]:
        """Token ids of texts that passed `check_texts`, under the long-input rule `mode` at the model's limit (or
        the request's own `limit`): each text's windows, one unless chunked (`where` numbers the texts in errors).
        Under the per-request token cap; off the event loop unless the texts are short."""
        if self.encoder.tokenizer is None:
            raise APIError(400, "This model has no tokenizer: send token ids", param="input", code="invalid_input")
        where = where or range(len(texts))
        return await self.off_loop_if_long(
            sum(map(len, texts)), self._tokenize_and_fit, texts, prefix, mode, where, left, limit
        )

    async def token_ids(self, texts: Sequence[str], input_type: str | None) -> list[list[int]]:
        """/tokenize: every token of each text (prefix and special tokens included, none cut), under the caps that
        embedding in 'chunk' mode has."""
        self.check_count(len(texts))
        texts = self.check_texts(texts)
        _, prefix = self.prefix_for(input_type)
        return [windows[0] for windows in await self.tokenize(texts, prefix)]

    # ---- the work ---------------------------------------------------------------------------------------------
    def plan(self, req: EmbeddingRequest, use_cache: bool = True) -> Plan:
        """Everything that needs no tokenising: shapes, counts, caps, cache look-ups and the admission estimate."""
        texts, id_lists = self.split_input(req.input)
        n = len(texts if texts is not None else id_lists or [])
        self.check_count(n)
        self.check_dimensions(req.dimensions)
        # vLLM's truncate_prompt_tokens: the request's own limit, applied under long_input (default: truncate)
        own = self.token_limit(req.truncate_prompt_tokens, "truncate_prompt_tokens")
        mode = req.long_input or ("truncate" if own else self.settings.long_input_default)
        left = req.truncation_direction == "left"
        limit = own or self.info.max_input_tokens
        variant = (req.dimensions, mode, req.normalize, req.truncation_direction, limit)  # all that changes a vector
        plan = Plan([], mode=mode, left=left, limit=own)
        keys: list[tuple] = []
        if texts is not None:
            texts = self.check_texts(texts, mode=mode, left=left, limit=own)
            task, plan.prefix = self.prefix_for(req.input_type)
            keys = [(self.name, task, text, *variant) for text in texts]
        else:
            assert id_lists is not None
            self.check_total(ids_tokens(id_lists, mode, limit))
            for i, ids in enumerate(id_lists):
                try:
                    inputs.check_ids(ids, self.info.vocab_size)
                except inputs.Rejected as exc:
                    raise rejected(exc, i) from None
            if self.cache.enabled:  # tuples copy the ids: only when they are used
                keys = [(self.name, "", tuple(ids), *variant) for ids in id_lists]
        use_cache = use_cache and self.cache.enabled
        plan.prepared = [Prepared([], 0, keys[i] if use_cache else None) for i in range(n)]
        if use_cache:
            for p in plan.prepared:
                hit = self.cache.get(p.cache_key)
                if hit is not None:
                    p.vector, p.tokens = hit
            hits = sum(p.vector is not None for p in plan.prepared)
            self.metrics.cache_hits.labels(self.name).inc(hits)
            self.metrics.cache_misses.labels(self.name).inc(n - hits)
        plan.todo = [i for i, p in enumerate(plan.prepared) if p.vector is None]
        if texts is not None:
            plan.texts = [texts[i] for i in plan.todo]
            plan.estimate = sum(map(len, plan.texts)) // ADMISSION_CHARS_PER_TOKEN + 2 * len(plan.texts)
        else:
            assert id_lists is not None
            plan.ids = [id_lists[i] for i in plan.todo]
            plan.estimate = ids_tokens(plan.ids, mode, limit)
        return plan

    async def windows(self, plan: Plan) -> None:
        """Tokenise (or cut) the plan's inputs into their windows, filling `prepared`."""
        if plan.texts is not None:
            fitted = (
                await self.tokenize(plan.texts, plan.prefix, plan.mode, plan.todo, plan.left, plan.limit)
                if plan.texts else []
            )
        else:
            fitted = [
                self.fit(ids, i, plan.mode, False, plan.left, plan.limit) for i, ids in zip(plan.todo, plan.ids or [])
            ]
        for i, windows in zip(plan.todo, fitted):
            plan.prepared[i].windows = windows
            plan.prepared[i].tokens = sum(map(len, windows))

    async def prepare(self, req: EmbeddingRequest, use_cache: bool = True) -> list[Prepared]:
        """A request's inputs checked, looked up and tokenised into their windows (no admission, no batcher)."""
        plan = self.plan(req, use_cache)
        await self.windows(plan)
        return plan.prepared

    async def embed(self, req: EmbeddingRequest, admission: Admission | None = None) -> EmbeddingResult:
        """The embeddings of a request, in input order. `admission`: what the route held before reading the body."""
        plan = self.plan(req)
        todo = [plan.prepared[i] for i in plan.todo]
        if todo:
            with admission or self.admit(plan.estimate) as held:
                held.resize(plan.estimate)
                await self.windows(plan)
                items = [w for p in todo for w in p.windows]
                held.release()  # the items are queued (and counted there) in the same step as this
                pooled = await self.submit(items, self.priority(items, req.priority))
            means, at = [], 0
            for p in todo:
                means.append(inputs.mean_of_windows(pooled[at : at + len(p.windows)], [len(w) for w in p.windows]))
                at += len(p.windows)
            # one call for the whole request, not one per input (2,048 calls held the event loop ~35 ms)
            vectors = self.encoder.finish(np.stack(means), req.dimensions, req.normalize)
            for p, vector in zip(todo, vectors):
                p.vector = vector
                if self.cache.enabled:
                    self.cache.put(p.cache_key, vector, p.tokens)
            if self.cache.enabled:
                self.metrics.cache_bytes.labels(self.name).set(self.cache.bytes)
        tokens = sum(p.tokens for p in plan.prepared)
        self.metrics.tokens.labels(self.name).inc(tokens)
        self.metrics.embeddings.labels(self.name).inc(len(plan.prepared))
        return EmbeddingResult([p.vector for p in plan.prepared if p.vector is not None], tokens)


class Admission:
    """Tokens a request holds against the queue while it is parsed and tokenised (`ModelService.admit`)."""

    def __init__(self, service: ModelService, tokens: int):
        self.service, self.tokens = service, tokens
        service.reserved_tokens += tokens

    def resize(self, tokens: int) -> None:
        """Hold `tokens` instead (a better estimate); 429 if the queue has no room for the increase."""
        tokens = max(0, min(tokens, self.service.most_admitted))
        if tokens > self.tokens:
            self.service.check_room(tokens - self.tokens)
        self.service.reserved_tokens += tokens - self.tokens
        self.tokens = tokens

    def release(self) -> None:
        self.service.reserved_tokens -= self.tokens
        self.tokens = 0

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def tokens_in_body(content_length: str | None) -> int:
    """Admission's guess at a request's tokens from its body's size, before reading it: ADMISSION_CHARS_PER_TOKEN
    bytes a token (token ids take 5-6 bytes each with the comma: a long guess); 0 when the size is unknown."""
    return int(content_length) // ADMISSION_CHARS_PER_TOKEN if content_length and content_length.isdigit() else 0


def ids_tokens(id_lists: Sequence[Sequence[int]], mode: str, limit: int) -> int:
    """The tokens token-id inputs will take: each cut at `limit` under 'truncate', whole otherwise."""
    return sum(min(len(x), limit) if mode == "truncate" else len(x) for x in id_lists)


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
