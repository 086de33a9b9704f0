"""Request and response models: the OpenAI embeddings API plus our extensions. They are the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError

TokenIds = Annotated[list[StrictInt], Field(min_length=1)]
Texts = Annotated[list[StrictStr], Field(min_length=1)]
EmbeddingInput = StrictStr | Texts | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]

INPUT_FORMS = "a non-empty string, a list of strings, a list of token ids or a list of token-id lists"
TEXT_FORMS = "a non-empty string or a list of strings"


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def input_problem(value: Any, forms: str = INPUT_FORMS, field: str = "input") -> str:
    """Why `value` is not an accepted `field` (`input`, or another API's name for it), naming the field, the accepted
    forms and the first element at fault (pydantic's own message for a union names only its first branch, e.g.
    `input.str`)."""
    got = f"got {kind_of(value)}"
    texts_only = forms == TEXT_FORMS
    if isinstance(value, list) and not value:
        got = "got an empty list"
    elif isinstance(value, list):
        first = value[0]
        if isinstance(first, str):
            j = next((j for j, x in enumerate(value) if not isinstance(x, str)), 0)
            got = f"got a list of strings with {kind_of(value[j])} at {field}[{j}]"
        elif texts_only:
            got = f"got a list of {kind_of(first).split(' ', 1)[-1]}s (this route takes text)"
        elif _is_id(first):
            j = next((j for j, x in enumerate(value) if not _is_id(x)), 0)
            got = f"got a list of token ids with {kind_of(value[j])} at {field}[{j}]"
        elif isinstance(first, list):
            for j, ids in enumerate(value):
                if not isinstance(ids, list):
                    got = f"got a list of token-id lists with {kind_of(ids)} at {field}[{j}]"
                    break
                if not ids:
                    got = f"got an empty token-id list at {field}[{j}]"
                    break
                k = next((k for k, x in enumerate(ids) if not _is_id(x)), None)
                if k is not None:
                    got = f"got a list of token-id lists with {kind_of(ids[k])} at {field}[{j}][{k}]"
                    break
        else:
            got = f"got a list starting with {kind_of(first)}"
    return f"'{field}' must be {forms}; {got}"


def input_validator(forms: str, *fields: str):
    """A wrap validator for union-typed text fields: a refused value's error says what the field takes."""

    def check(cls, value: Any, handler: Any, info: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:  # only a refused input pays for the description
            raise PydanticCustomError("input_shape", input_problem(value, forms, info.field_name)) from None

    return field_validator(*(fields or ("input",)), mode="wrap")(classmethod(check))


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: EmbeddingInput = Field(
        description="A string, a list of strings, a list of token ids, or a list of token-id lists."
    )
    model: StrictStr | None = Field(None, description="The served model name (GET /v1/models).")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: little-endian float32 bytes, what the openai SDK asks for by default."
    )
    dimensions: StrictInt | None = Field(None, description="Matryoshka width: 1 to the model's hidden size.")
    user: StrictStr | None = Field(None, description="Accepted and ignored (OpenAI compatibility).")
    input_type: StrictStr | None = Field(
        None,
        description="Task prefix for text inputs: search_query, search_document, classification, clustering "
        "(aliases query, document); default from the server setting.",
    )
    long_input: Literal["error", "truncate", "chunk"] | None = Field(
        None, description="Inputs over the model's limit: 400 error, truncate, or chunk and average (server default)."
    )
    priority: Literal["interactive", "bulk"] | None = Field(
        None, description="Scheduling class; by default requests of a few short inputs are interactive."
    )
    normalize: StrictBool = Field(
        True, description="Extension: false returns the raw pooled vector (Matryoshka's recipe still applies)."
    )
    embedding_type: Literal["float", "int8", "uint8", "binary", "ubinary"] = Field(
        "float", description="Extension: Cohere's compressed types (README: compressed embeddings); with "
        "encoding_format base64, the bytes of the int8/uint8/packed-bit vector."
    )
    truncation_direction: Literal["left", "right"] = Field(
        "right", description="Extension: when truncating, left drops the start of the text and keeps its end."
    )
    truncate_prompt_tokens: StrictInt | None = Field(
        None, ge=-1, description="vLLM's: each input's own limit, 1 to the model's (-1: the model's), applied under "
        "long_input, which defaults to truncate when this is given."
    )

    _input_shape = input_validator(INPUT_FORMS)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[int] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Experts(BaseModel):
    num_experts: int = Field(description="Experts in each mixture-of-experts layer")
    top_k: int = Field(description="Experts each token is routed to")
    layers: list[int] = Field(description="The layers whose feed-forward block is a mixture of experts")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    kind: str = Field(description="`embedding` (an embedding model) or `reranker` (a cross-encoder)")
    capabilities: list[str] = Field(description="Infinity's name for the kind: `embed` or `rerank`")
    created: int
    owned_by: str = "nomic-embed-server"
    max_input_tokens: int
    max_input_tokens_source: str = Field(description="Which rule set max_input_tokens (README: the input limit)")
    dimensions: int
    model_type: str
    architecture: str = Field(description="The architecture, as transformers names it (e.g. `ModernBertModel`)")
    experts: Experts | None = Field(description="Mixture-of-experts layout; null for a dense model")
    device: str
    dtype: str
    pooling: str = Field(description="sentence-transformers pooling modes joined by `+` (a reranker: its head's)")
    matryoshka: bool = Field(description="Trained for truncated `dimensions` (Matryoshka)")
    matryoshka_dimensions: list[int] | None = Field(description="The widths it was trained at, when the model says")
    score_activation: str | None = Field(description="A reranker's score function (`raw_scores` skips it)")
    task_types: dict[str, str] = Field(description="input_type -> the prefix it prepends")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: StrictStr | Texts
    model: StrictStr | None = None
    input_type: StrictStr | None = None

    _input_shape = input_validator(TEXT_FORMS)


class TokenizedInput(BaseModel):
    index: int
    input_ids: list[int]
    tokens: list[str]
    count: int
    over_limit: bool


class TokenizeResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    max_input_tokens: int
    data: list[TokenizedInput]
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail
