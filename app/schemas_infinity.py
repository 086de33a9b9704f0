"""Infinity's rerank shape (`POST /rerank` as infinity_emb serves it): the Cohere protocol with its own fields. Its
body has `documents` where TEI's, at the same path, has `texts`; that is how the route tells them apart."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

UNNAMED = "default/not-specified"  # what Infinity's clients send without a model: the first reranker


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StrictStr
    documents: list[StrictStr]
    return_documents: StrictBool = Field(False, description="Include each document's text in its result.")
    raw_scores: StrictBool = Field(False, description="Return the raw logits instead of the model's activation.")
    model: StrictStr = Field(UNNAMED, description="The served reranker (GET /models); default the first.")
    top_n: StrictInt | None = Field(None, gt=0, description="Return only the best `top_n` results.")


class RerankResult(BaseModel):
    relevance_score: float
    index: int
    document: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    object: Literal["rerank"] = "rerank"
    results: list[RerankResult]
    model: str
    usage: Usage
    id: str
    created: int
