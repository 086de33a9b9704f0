"""What a rerank request goes through, for a cross-encoder: validate -> tokenise the (query, document) pairs (the
model's pair template; longest-first truncation when asked, else a 400 naming the document) -> the model's batcher
(pairs are batched like any input) -> raw logits, or the model's activation. HTTP-free: the TEI, Cohere/Jina and vLLM
routes only translate (app/routes/rerank.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.errors import APIError
from app.service import ModelService
from model.errors import InputError

TRUNCATE_HINT = "Shorten it, or set truncate to true."


@dataclass
class RerankResult:
    scores: np.ndarray  # (N,) float32, in the documents' order: activated, or raw logits when asked
    tokens: int  # tokens of every pair scored (query, document and the template's special tokens)


class RerankService(ModelService):
    def truncate_default(self, truncate: bool | None, max_tokens: int | None = None) -> bool:
        """A request's `truncate`, else the server's (--auto-truncate, or --long-input truncate or chunk: pairs are
        cut, never chunked); vLLM's truncate_prompt_tokens (`max_tokens`) always cuts."""
        if max_tokens is not None:
            return True
        return truncate if truncate is not None else self.settings.long_input_default != "error"

    def check_query(self, query: str, param: str = "query", mode: str = "chunk", left: bool = False) -> str:
        return self.check_texts([query], param=param, noun="Query", mode=mode, left=left, hint=TRUNCATE_HINT)[0]

    async def pairs(
        self,
        query: str,
        documents: Sequence[str],
        truncate: bool,
        param: str,
        first: int = 0,
        left: bool = False,
        max_tokens: int | None = None,
        doc_tokens: int | None = None,
    ) -> list:
        """The (query, document) pairs, tokenised; `first` is the first document's index in the request. Each text
        is held to the character cap of a text that must fit the model's limit (cut there when truncating, from the
        side that truncation drops: a cut that keeps more than the limit's tokens leaves longest-first truncation
        unchanged). `max_tokens` cuts each pair to that many tokens (vLLM's truncate_prompt_tokens), `doc_tokens`
        each document to that many of its own (Cohere's max_tokens_per_doc), before the pair's own truncation."""
        mode = "truncate" if truncate else "error"
        query = self.check_query(query, mode=mode, left=left)
        if not documents:
            raise APIError(400, f"'{param}' must hold at least one document", param=param, code="empty_input")
        self.check_count(len(documents), param)
        doc_mode = "truncate" if doc_tokens is not None else mode  # a document cut to its tokens is cut anyway
        documents = self.check_texts(documents, param=param, noun="Document", mode=doc_mode, left=left,
                                     hint=TRUNCATE_HINT)
        chars = len(query) * len(documents) + sum(map(len, documents))
        direction = "left" if left else "right"
        try:
            return await self.off_loop_if_long(
                chars, self.encoder.tokenize_pairs, query, documents, truncate, direction, max_tokens, doc_tokens
            )
        except InputError as exc:  # a pair over the limit, not truncated (model.errors.PairTooLong)
            over = vars(exc)
            if "index" not in over:
                if max_tokens is not None:  # too few tokens for the pair template
                    raise APIError(400, f"'truncate_prompt_tokens' is {max_tokens}: {exc}",
                                   param="truncate_prompt_tokens", code="invalid_value") from None
                raise APIError(400, str(exc), param=param, code="invalid_input") from None
            raise APIError(
                400,
                f"Document {over['index'] + first} with the query is {over['tokens']} tokens, over this model's "
                f"maximum of {over['limit']}. Shorten it, or set truncate to true.",
                param=param,
                code="context_length_exceeded",
            ) from None

    async def score(self, pairs: list, raw: bool, priority: str | None = None) -> RerankResult:
        """Tokenised pairs -> their scores, in order."""
        tokens = sum(map(len, pairs))
        self.check_total(tokens)
        logits = np.asarray(await self.submit(pairs, self.priority(pairs, priority)), dtype=np.float32)
        self.metrics.tokens.labels(self.name).inc(tokens)
        self.metrics.rerank_pairs.labels(self.name).inc(len(pairs))
        scores = logits if raw else np.asarray(self.encoder.activate(logits), dtype=np.float32)
        return RerankResult(scores, tokens)

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        truncate: bool | None = None,
        left: bool = False,
        doc_tokens: int | None = None,
        max_tokens: int | None = None,
        raw: bool = False,
        priority: str | None = None,
        param: str = "documents",
    ) -> RerankResult:
        """Every document scored against the query. `doc_tokens` (Cohere's max_tokens_per_doc) and `max_tokens`
        (vLLM's truncate_prompt_tokens, which implies truncation; -1 is the model's limit) are checked against the
        model's limit first."""
        doc_tokens = self.token_limit(doc_tokens, "max_tokens_per_doc")
        max_tokens = self.token_limit(max_tokens, "truncate_prompt_tokens")
        cut = self.truncate_default(truncate, max_tokens)
        pairs = await self.pairs(query, documents, cut, param, left=left, max_tokens=max_tokens, doc_tokens=doc_tokens)
        return await self.score(pairs, raw, priority)

    async def score_pairs(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        truncate: bool | None = None,
        max_tokens: int | None = None,
    ) -> RerankResult:
        """vLLM's /v1/score: one query against many documents, or queries and documents zipped (same length);
        `max_tokens` is its truncate_prompt_tokens (-1: the model's limit)."""
        if len(queries) not in (1, len(documents)):
            raise APIError(
                400,
                f"text_1 has {len(queries)} texts and text_2 {len(documents)}: give one text_1, or as many as text_2",
                param="text_1",
                code="invalid_value",
            )
        max_tokens = self.token_limit(max_tokens, "truncate_prompt_tokens")
        cut = self.truncate_default(truncate, max_tokens)
        if len(queries) == 1:
            pairs = await self.pairs(queries[0], documents, cut, "text_2", max_tokens=max_tokens)
        else:
            self.check_count(len(documents), "text_2")
            pairs = []
            for i, (query, document) in enumerate(zip(queries, documents)):
                pairs += await self.pairs(query, [document], cut, "text_2", first=i, max_tokens=max_tokens)
        return await self.score(pairs, raw=False)


def ranked(scores: np.ndarray, top_n: int | None = None) -> list[int]:
    """Document indices by score, best first; ties keep the documents' order (as sentence-transformers' rank)."""
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    return order if top_n is None else order[:top_n]
