"""Request and response models of the Cohere API shape (rerank v1/v2 as Cohere, Jina, vLLM and Infinity serve it).
Responses carry both Cohere's `meta` and vLLM/Jina's `usage`, so every client finds what it reads."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from app.schemas import kind_of


class TextDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: StrictStr


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(None, description="The served reranker (GET /v1/models); default the first.")
    query: StrictStr
    documents: list[StrictStr | TextDocument] = Field(description="Strings, or objects with `text`.")
    top_n: StrictInt | None = Field(
        None, ge=0, description="Return only the best `top_n` results; 0 (vLLM's default) returns them all."
    )
    return_documents: StrictBool = Field(True, description="Include each document's text in its result.")
    max_tokens_per_doc: StrictInt | None = Field(
        None, ge=1, description="Cut each document to this many of its tokens before pairing it with the query (1 to "
        "the model's input limit; the pair is then cut longest-first at the limit, unless truncate is false).",
    )
    truncate_prompt_tokens: StrictInt | None = Field(
        None, ge=-1, description="vLLM's: cut each pair longest-first to this many tokens (1 to the model's input "
        "limit, or -1 for that limit).",
    )
    truncate: StrictBool = Field(
        True, description="Extension: false turns truncation off, so pairs over the limit are a 400 naming the "
        "document (Cohere truncates long documents)."
    )
    priority: StrictInt | None = Field(
        None, ge=0, description="Cohere's priority: 0 is interactive, higher is bulk; default by request size."
    )

    @field_validator("documents", mode="wrap")
    @classmethod
    def _documents_shape(cls, value: Any, handler: Any) -> Any:
        """The document at fault, not pydantic's first union branch (`documents.0.str`)."""
        try:
            return handler(value)
        except ValidationError:
            if not isinstance(value, list):
                got = f"got {kind_of(value)}"
            else:
                j = next((j for j, d in enumerate(value) if not is_document(d)), 0)
                bad = value[j]
                what = "an object of other keys or types" if isinstance(bad, dict) else kind_of(bad)
                got = f"documents[{j}] is {what}"
            raise PydanticCustomError(
                "input_shape", f"'documents' must be a list of strings or of {{\"text\": string}} objects; {got}"
            ) from None


def is_document(value: Any) -> bool:
    if isinstance(value, dict):
        return set(value) == {"text"} and isinstance(value["text"], str)
    return isinstance(value, str)


class Document(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: Document | None = None


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int


class Tokens(BaseModel):
    input_tokens: int


class Meta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: Tokens


class Usage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    meta: Meta
    usage: Usage


class ErrorResponse(BaseModel):
    message: str




CohereInputType = Literal["search_document", "search_query", "classification", "clustering"]
EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(None, description="The served embedding model (GET /v1/models); default the first.")
    texts: list[StrictStr] = Field(description="The texts to embed.")
    input_type: CohereInputType | None = Field(
        None, description="Mapped to the model's prompt of that name (or search_query -> query, search_document -> "
        "document/passage); models without prompts take the text as is."
    )
    embedding_types: list[EmbeddingType] = Field(["float"], min_length=1, description="One or more of Cohere's types.")
    truncate: Literal["NONE", "START", "END"] = Field(
        "END", description="Over the limit: NONE refuses (400), START drops the start, END the end."
    )
    output_dimension: StrictInt | None = Field(None, ge=1, description="Matryoshka width.")
    max_tokens: StrictInt | None = Field(
        None, ge=1, description="The most tokens of each text embedded (1 to the model's limit); a longer text is "
        "cut or refused as `truncate` says."
    )
    priority: StrictInt | None = Field(None, ge=0, description="0 is interactive, higher is bulk.")
    normalize: StrictBool = Field(True, description="Extension: false returns raw pooled vectors.")


class EmbedMeta(BaseModel):
    api_version: ApiVersion
    billed_units: dict[str, int]


class EmbedResponse(BaseModel):
    id: str
    embeddings: dict[str, list]
    texts: list[str]
    meta: EmbedMeta
    response_type: Literal["embeddings_by_type"] = "embeddings_by_type"
