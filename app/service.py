"""What a request for embeddings goes through, HTTP-free, so every API surface calls the same steps:

    plan      shapes, counts and character caps, cache look-ups, a token estimate: no tokenising yet
    admit     the estimate is reserved against the queue: 429 at once when it cannot fit, before the expensive work
    tokenize  bounded slices of text (off the event loop past a few KB), stopping at the first input or total that
              breaks a limit, so a hostile request costs at most max_tokens_per_request tokens of work
    submit    the batcher; then the chunk mean and Matryoshka/normalise for all inputs at once, and the cache

The input rules themselves are in model/inputs.py, shared with the offline jobs; the routes only translate.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

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
# Admission's guess at a request's tokens before it is tokenised (the real count replaces it when the items are
# queued): 4 characters (or body bytes) a token, English prose on BERT vocabularies (4-5 measured; README: character
# caps). A guess is capped at max_tokens_per_request (and max_queue_tokens), so it never refuses a request an empty
# queue could take. Denser text (code 2.9-3.5, CJK ~1.2) is guessed short: such a request, admitted into a nearly full
# queue, gets its 429 after tokenising instead, at most max_tokens_per_request tokens of work. A guess on the long
# side would refuse work a tight queue (the overload test: 2,000 tokens) could hold.
ADMISSION_CHARS_PER_TOKEN = 4
LONG_HINT = "Shorten it, or set long_input to 'truncate' or 'chunk'."


@dataclass
class Prepared:
    """One input, ready for the batcher: its windows (one unless chunked) and its cache key."""

    windows: list[list[int]]
    tokens: int
    cache_key: tuple | None = None
    vector: np.ndarray | None = None  # set on a cache hit


@dataclass
class Plan:
    """A request checked and looked up, not yet tokenised: what is left to do and what admission reserves for it."""

    prepared: list[Prepared]
    texts: list[str] | None  # the inputs still to embed (cache misses): texts, or token-id lists
    ids: list[list[int]] | None
    todo: list[int] = field(default_factory=list)  # their indices in `prepared`
    prefix: str = ""
    mode: str = "error"
    estimate: int = 0


@dataclass
class EmbeddingResult:
    vectors: list[np.ndarray]
    prompt_tokens: int


class EmbeddingService:
    def __init__(self, encoder, batcher: Batcher, settings: Settings, metrics: Metrics, cache: EmbeddingCache):
        self.encoder, self.batcher, self.settings, self.metrics, self.cache = encoder, batcher, settings, metrics, cache
        self.info = encoder.info
        self.reserved_tokens = 0  # admission estimates of requests still being tokenised

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

    def check_count(self, n: int) -> None:
        if n > self.settings.max_inputs_per_request:
            raise APIError(
                400,
                f"Too many inputs: {n}, the maximum is {self.settings.max_inputs_per_request}",
                param="input",
                code="too_many_inputs",
            )

    def cap_texts(self, texts: Sequence[str], mode: str) -> list[str]:
        """Empty, NUL and lone-surrogate texts are refused; then the character caps, before any tokenising: each
        text against max_input_tokens x max_chars_per_token (refused under 'error', cut under 'truncate'), and the
        request's total against max_tokens_per_request x max_chars_per_token."""
        per_token = self.settings.max_chars_per_token
        out = []
        for i, text in enumerate(texts):
            try:
                inputs.check_text(text)
                out.append(inputs.cap_text(text, mode, self.info.max_input_tokens, per_token))
            except inputs.Rejected as exc:
                raise rejected(exc, i, LONG_HINT if exc.code == "context_length_exceeded" else "") from None
        total, cap = sum(map(len, out)), self.settings.max_tokens_per_request * per_token
        if total > cap:
            raise APIError(
                400,
                f"The request has {total} characters of text, over the per-request maximum of {cap} "
                f"({self.settings.max_tokens_per_request} tokens x {per_token} characters a token)",
                param="input",
                code="max_tokens_per_request",
            )
        return out

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

    def fit(self, ids: list[int], index: int, mode: str, from_text: bool) -> list[list[int]]:
        """Apply the long-input rule (model/inputs.py)."""
        try:
            return inputs.fit(self.encoder, ids, mode, from_text)
        except inputs.Rejected as exc:
            raise rejected(exc, index, LONG_HINT) from None

    def _over_budget(self, total: int, exact: bool, seen: int, n: int) -> APIError:
        most = self.settings.max_tokens_per_request
        counted = f"{total} tokens" if exact else f"over {most} tokens ({total} in the first {seen} of {n} inputs)"
        return APIError(
            400,
            f"The request has {counted}, over the per-request maximum of {most}",
            param="input",
            code="max_tokens_per_request",
        )

    # ---- tokenising, bounded ----------------------------------------------------------------------------------
    def _tokenize_and_fit(
        self, texts: Sequence[str], prefix: str, mode: str | None, where: Sequence[int]
    ) -> list[list[list[int]]]:
        """Each text's windows (its whole ids when `mode` is None). Tokenises lazily (model/tokenizer.py: a bounded
        slice of text per call) and stops at the first text over the model's limit under 'error', or once the total
        passes max_tokens_per_request."""
        budget, total, out = self.settings.max_tokens_per_request, 0, []
        for k, ids in enumerate(self.encoder.iter_tokenize(texts, prefix, stop_after=budget)):
            windows = [ids] if mode is None else self.fit(ids, where[k], mode, from_text=True)
            total += sum(map(len, windows))
            if total > budget:  # a text past the budget on its own was cut short: its count is a lower bound
                exact = k + 1 == len(texts) and len(ids) <= budget
                raise self._over_budget(total, exact, k + 1, len(texts))
            out.append(windows)
        return out

    async def tokenize(
        self, texts: Sequence[str], prefix: str, mode: str | None = None, where: Sequence[int] = ()
    ) -> list[list[list[int]]]:
        """Token ids of texts that passed `cap_texts`, under the long-input rule `mode`: each text's windows, one
        unless chunked (`where` numbers the texts in errors). Under the per-request token cap; off the event loop
        unless the texts are short."""
        if self.encoder.tokenizer is None:
            raise APIError(400, "This model has no tokenizer: send token ids", param="input", code="invalid_input")
        where = where or range(len(texts))
        if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:  # microseconds of work: a thread hop would cost more
            return self._tokenize_and_fit(texts, prefix, mode, where)
        return await asyncio.to_thread(self._tokenize_and_fit, texts, prefix, mode, where)

    async def token_ids(self, texts: Sequence[str], input_type: str | None) -> list[list[int]]:
        """/tokenize: every token of each text (prefix and special tokens included, none cut), under the caps that
        embedding in 'chunk' mode has."""
        self.check_count(len(texts))
        texts = self.cap_texts(texts, "chunk")
        _, prefix = self.prefix_for(input_type)
        return [windows[0] for windows in await self.tokenize(texts, prefix)]

    # ---- admission --------------------------------------------------------------------------------------------
    def admit(self, tokens: int) -> Admission:
        """Hold a guess at a request's tokens against the queue until its items are queued: 429 at once when the
        queue, with every request still being parsed or tokenised, has no room for it. Routes call it with the body's
        size (`tokens_in_body`) before they read the body; `embed` narrows it to the request's own estimate."""
        tokens = max(1, min(tokens, self.most_admitted))
        self._check_room(tokens)
        return Admission(self, tokens)

    @property
    def most_admitted(self) -> int:
        """The largest guess admission holds: a guess alone never refuses a request an empty queue could take."""
        return min(self.settings.max_tokens_per_request, self.settings.max_queue_tokens)

    def _check_room(self, tokens: int) -> None:
        try:
            self.batcher.check_room(self.reserved_tokens + tokens)
        except Overloaded as exc:
            raise self._overloaded(exc) from None

    def _overloaded(self, exc: Overloaded) -> APIError:
        self.metrics.rejected.labels("overloaded").inc()
        return APIError(
            429,
            "The server is overloaded; retry after the Retry-After seconds",
            code="overloaded",
            headers={"Retry-After": str(max(1, round(exc.retry_after)))},
        )

    # ---- the work ---------------------------------------------------------------------------------------------
    def plan(self, req: EmbeddingRequest) -> Plan:
        """Everything that needs no tokenising: shapes, counts, caps, cache look-ups and the admission estimate."""
        texts, id_lists = self.split_input(req.input)
        self.check_count(len(texts if texts is not None else id_lists or []))
        self.check_dimensions(req.dimensions)
        mode = req.long_input or self.settings.long_input
        limit, most = self.info.max_input_tokens, self.settings.max_tokens_per_request
        plan = Plan([], None, None, mode=mode)
        if texts is not None:
            texts = self.cap_texts(texts, mode)
            task, plan.prefix = self.prefix_for(req.input_type)
            keys: list = [(self.info.name, task, t, req.dimensions, mode) for t in texts]
        else:
            assert id_lists is not None
            counted = sum(min(len(x), limit) if mode == "truncate" else len(x) for x in id_lists)
            if counted > most:  # exact, and before the per-id checks
                raise self._over_budget(counted, True, len(id_lists), len(id_lists))
            for i, ids in enumerate(id_lists):
                try:
                    inputs.check_ids(ids, self.info.vocab_size)
                except inputs.Rejected as exc:
                    raise rejected(exc, i) from None
            if self.cache.enabled:  # tuples copy the ids: only when they are used
                keys = [(self.info.name, "", tuple(x), req.dimensions, mode) for x in id_lists]
            else:
                keys = []
        n = len(texts if texts is not None else id_lists or [])
        plan.prepared = [Prepared([], 0, keys[i] if keys else None) for i in range(n)]
        if self.cache.enabled:
            for p in plan.prepared:
                hit = self.cache.get(p.cache_key)
                if hit is not None:
                    p.vector, p.tokens = hit
            hits = sum(p.vector is not None for p in plan.prepared)
            self.metrics.cache_hits.inc(hits)
            self.metrics.cache_misses.inc(n - hits)
        plan.todo = [i for i, p in enumerate(plan.prepared) if p.vector is None]
        if texts is not None:
            plan.texts = [texts[i] for i in plan.todo]
            guess = sum(len(t) for t in plan.texts) // ADMISSION_CHARS_PER_TOKEN + 2 * len(plan.texts)
        else:
            assert id_lists is not None
            plan.ids = [id_lists[i] for i in plan.todo]
            guess = sum(min(len(x), limit) if mode == "truncate" else len(x) for x in plan.ids)
        plan.estimate = min(guess, most)
        return plan

    async def windows(self, plan: Plan) -> None:
        """Tokenise (or cut) the plan's inputs into their windows, filling `prepared`."""
        if plan.texts is not None:
            fitted = await self.tokenize(plan.texts, plan.prefix, plan.mode, plan.todo) if plan.texts else []
        else:
            fitted = [self.fit(ids, i, plan.mode, from_text=False) for i, ids in zip(plan.todo, plan.ids or [])]
        for i, windows in zip(plan.todo, fitted):
            plan.prepared[i].windows = windows
            plan.prepared[i].tokens = sum(map(len, windows))

    async def embed(self, req: EmbeddingRequest, admission: Admission | None = None) -> EmbeddingResult:
        """The embeddings of a request, in input order. `admission`: what the route reserved before parsing."""
        plan = self.plan(req)
        prepared = plan.prepared
        todo = [prepared[i] for i in plan.todo]
        if todo:
            with admission or self.admit(plan.estimate) as held:
                held.resize(plan.estimate)
                await self.windows(plan)
                items = [w for p in todo for w in p.windows]
                priority = {"interactive": 0, "bulk": 1}.get(req.priority or "")
                if priority is None:
                    small = len(items) <= INTERACTIVE_MAX_INPUTS and sum(map(len, items)) <= INTERACTIVE_MAX_TOKENS
                    priority = 0 if small else 1
                deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
                held.release()  # the items are queued (and counted there) in the same step as this
                pooled = await self.submit(items, priority, deadline)
            means, at = [], 0
            for p in todo:
                means.append(inputs.mean_of_windows(pooled[at : at + len(p.windows)], [len(w) for w in p.windows]))
                at += len(p.windows)
            vectors = self.encoder.finish(np.stack(means), req.dimensions)  # one call for the request, not per input
            for p, vector in zip(todo, vectors):
                p.vector = vector
                if self.cache.enabled:
                    self.cache.put(p.cache_key, vector, p.tokens)
            if self.cache.enabled:
                self.metrics.cache_bytes.set(self.cache.bytes)
        tokens = sum(p.tokens for p in prepared)
        self.metrics.tokens.inc(tokens)
        self.metrics.embeddings.inc(len(prepared))
        return EmbeddingResult([p.vector for p in prepared if p.vector is not None], tokens)

    async def submit(self, items: Sequence[Sequence[int]], priority: int, deadline: float) -> list[np.ndarray]:
        try:
            return await self.batcher.submit(items, priority=priority, deadline=deadline)
        except Overloaded as exc:
            raise self._overloaded(exc) from None
        except Draining:
            self.metrics.rejected.labels("draining").inc()
            raise APIError(503, "The server is shutting down", code="draining", headers={"Retry-After": "1"}) from None
        except DeadlineExceeded:
            self.metrics.rejected.labels("timeout").inc()
            raise APIError(
                503,
                f"The request waited over {self.settings.request_timeout_s:g} s in the queue and was dropped",
                code="queue_timeout",
                headers={"Retry-After": "1"},
            ) from None
        except WorkerDied:
            raise APIError(503, "The encoder worker is not running", code="worker_died") from None


class Admission:
    """Tokens a request holds against the queue while it is parsed and tokenised (`EmbeddingService.admit`)."""

    def __init__(self, service: EmbeddingService, tokens: int):
        self.service, self.tokens = service, tokens
        service.reserved_tokens += tokens

    def resize(self, tokens: int) -> None:
        """Hold `tokens` instead (a better estimate); 429 if the queue has no room for the increase."""
        tokens = max(0, min(tokens, self.service.most_admitted))
        if tokens > self.tokens:
            self.service._check_room(tokens - self.tokens)
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


def rejected(exc: inputs.Rejected, index: int | None = None, hint: str = "") -> APIError:
    """An input rule's refusal as a 400 naming the input."""
    message = exc.reason if index is None else f"Input {index} {exc.reason}"
    return APIError(400, f"{message}. {hint}" if hint else message, param=exc.param, code=exc.code)


def encode_vectors(vectors: list[np.ndarray], encoding_format: str) -> list:
    if encoding_format == "base64":  # little-endian float32, what the openai SDK decodes
        return [base64.b64encode(v.astype("<f4", copy=False).tobytes()).decode("ascii") for v in vectors]
    return list(vectors)  # float32 arrays; orjson writes them directly (OPT_SERIALIZE_NUMPY)
