"""Request and response models: the OpenAI embeddings API plus our extensions. They are the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

TokenIds = Annotated[list[StrictInt], Field(min_length=1)]
Texts = Annotated[list[StrictStr], Field(min_length=1)]
EmbeddingInput = StrictStr | Texts | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]


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
