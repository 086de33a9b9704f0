"""Request and response models of the Cohere API shape (rerank v1/v2 as Cohere, Jina, vLLM and Infinity serve it).
Responses carry both Cohere's `meta` and vLLM/Jina's `usage`, so every client finds what it reads."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class TextDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: StrictStr


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(None, description="The served reranker (GET /v1/models); default the first.")
    query: StrictStr
    documents: list[StrictStr | TextDocument] = Field(description="Strings, or objects with `text`.")
    top_n: StrictInt | None = Field(None, ge=1, description="Return only the best `top_n` results.")
    return_documents: StrictBool = Field(True, description="Include each document's text in its result.")
    max_tokens_per_doc: StrictInt | None = Field(
        None, ge=1, description="Accepted; documents are truncated at the model's input limit (pairs, longest "
        "first), whatever the number.",
    )
    truncate: StrictBool = Field(
        True, description="Extension: false turns truncation off, so pairs over the limit are a 400 naming the "
        "document (Cohere truncates long documents)."
    )
    priority: StrictInt | None = Field(
        None, ge=0, description="Cohere's priority: 0 is interactive, higher is bulk; default by request size."
    )


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


