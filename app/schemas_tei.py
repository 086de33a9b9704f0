"""Request and response models of text-embeddings-inference's (TEI 1.9) API, as its OpenAPI document gives them. Like
TEI, unknown fields are ignored; `model` is our extension (TEI serves one model: without it, the first model of the
route's kind answers)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from app.schemas import INPUT_FORMS, TEXT_FORMS, TokenIds, input_validator

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
        "Right", description="The side a pair over the limit loses tokens from, longest text first: Right cuts the "
        "texts' ends (as sentence-transformers), Left their starts."
    )


class Rank(BaseModel):
    index: int
    score: float
    text: str | None = None


class ErrorResponse(BaseModel):
    error: str
    error_type: Literal["unhealthy", "backend", "overloaded", "validation", "tokenizer", "empty"]


InputType = StrictStr | TokenIds
Input = InputType | list[InputType]  # an empty list is TEI's 400 `empty`, not a schema error
ID_FORMS = "a list of token ids or a list of token-id lists"


class EmbedRequest(TEIRequest):
    inputs: Input
    normalize: StrictBool = True
    truncate: StrictBool | None = Field(None, description="Cut inputs over the limit; default: --auto-truncate.")
    truncation_direction: TruncationDirection = Field("Right", description="Left keeps the end of the text.")
    prompt_name: StrictStr | None = Field(None, description="A prompt of the model (its input_type names).")
    dimensions: StrictInt | None = Field(None, ge=1, description="Matryoshka width: 1 to the model's hidden size.")

    _inputs_shape = input_validator(INPUT_FORMS, "inputs")


class EmbedAllRequest(TEIRequest):
    inputs: Input
    truncate: StrictBool | None = None
    truncation_direction: TruncationDirection = "Right"
    prompt_name: StrictStr | None = None

    _inputs_shape = input_validator(INPUT_FORMS, "inputs")


class SimilarityInput(BaseModel):
    source_sentence: StrictStr
    sentences: list[StrictStr]


class SimilarityParameters(BaseModel):
    prompt_name: StrictStr | None = None
    truncate: StrictBool | None = None
    truncation_direction: TruncationDirection = "Right"


class SimilarityRequest(TEIRequest):
    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


class TokenizeRequest(TEIRequest):
    inputs: StrictStr | list[StrictStr]
    add_special_tokens: StrictBool = True
    prompt_name: StrictStr | None = None

    _inputs_shape = input_validator(TEXT_FORMS, "inputs")


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class DecodeRequest(TEIRequest):
    ids: list[StrictInt] | list[list[StrictInt]]
    skip_special_tokens: StrictBool = True

    _ids_shape = input_validator(ID_FORMS, "ids")


class Info(BaseModel):
    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_type: dict
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None = None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None
    served_model_name: str
