"""Request and response models of text-embeddings-inference's (TEI 1.9) API, as its OpenAPI document gives them. Like
TEI, unknown fields are ignored; `model` is our extension (TEI serves one model: without it, the first model of the
route's kind answers)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

TruncationDirection = Literal["Left", "Right", "left", "right"]


class TEIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description="Extension: the served model (GET /v1/models).")


class RerankRequest(TEIRequest):
    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = Field(False, description="Return the raw logits instead of the model's activation.")
    return_text: StrictBool = False
    truncate: StrictBool | None = Field(None, description="Cut pairs over the limit; default: --auto-truncate.")
    truncation_direction: TruncationDirection = Field(
        "Right", description="Only Right for pairs (longest first, as sentence-transformers)."
    )


class Rank(BaseModel):
    index: int
    score: float
    text: str | None = None


class ErrorResponse(BaseModel):
    error: str
    error_type: Literal["unhealthy", "backend", "overloaded", "validation", "tokenizer", "empty"]
