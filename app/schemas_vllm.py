"""vLLM's `POST /v1/score` for cross-encoders: `text_1` against `text_2` (one against many, or pairs zipped)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from app.schemas import TEXT_FORMS, input_validator

Texts = StrictStr | Annotated[list[StrictStr], Field(min_length=1)]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(None, description="The served reranker (GET /v1/models); default the first.")
    text_1: Texts = Field(description="The query, or one query per text_2.")
    text_2: Texts = Field(description="The documents.")
    truncate_prompt_tokens: StrictInt | None = Field(
        None, ge=-1, description="Cut each pair longest-first to this many tokens (1 to the model's input limit, or "
        "-1 for that limit)."
    )
    truncate: StrictBool | None = Field(None, description="Extension: cut pairs over the limit; default the server's.")

    _texts_shape = input_validator(TEXT_FORMS, "text_1", "text_2")


class Score(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[Score]
    usage: ScoreUsage
