"""Cohere's `POST /v2/embed` (what `cohere.ClientV2.embed` calls, and vLLM serves) over the same embedding service as
/v1/embeddings: `texts`, `input_type` mapped to the model's prompts, `embedding_types` (float, int8, uint8, binary,
ubinary, base64: app/quantize.py), `truncate` NONE/START/END, `output_dimension`. Errors in Cohere's shape."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from app.errors import APIError
from app.routes.common import json_body, parse_body, pick_model, require_api_key, require_ready, unless_disconnected
from app.routes.rerank import answer
from app.runtime import Runtime
from app.schemas import EmbeddingRequest
from app.schemas_cohere import EmbedRequest, EmbedResponse
from app.schemas_cohere import ErrorResponse as CohereError

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["Cohere"])
# Cohere's input types -> prompt names a model may use for them, best first
PROMPT_NAMES = {
    "search_query": ("search_query", "query"),
    "search_document": ("search_document", "document", "passage"),
    "classification": ("classification",),
    "clustering": ("clustering",),
}
TRUNCATE = {"NONE": ("error", "right"), "START": ("truncate", "left"), "END": ("truncate", "right")}


def prompt_for(prompts: dict[str, str], input_type: str | None) -> str | None:
    if input_type is None or not prompts:  # a model without prompts embeds the text as is
        return None
    name = next((n for n in PROMPT_NAMES[input_type] if n in prompts), None)
    if name is None:
        raise APIError(400, f"input_type {input_type} has no prompt in this model (it has: {', '.join(prompts)})",
                       param="input_type", code="invalid_input_type")
    return name


@router.post(
    "/v2/embed",
    response_model=EmbedResponse,
    responses={s: {"model": CohereError} for s in (400, 401, 404, 413, 429, 503)},
    openapi_extra=json_body(EmbedRequest),
)
async def embed(request: Request, rt: Runtime = Depends(require_ready)) -> Response:
    """Cohere's embed: the texts' embeddings in every asked-for type."""
    body = await parse_body(request, EmbedRequest)
    served = pick_model(rt, request, body.model)
    if not body.texts:
        raise APIError(400, "texts must hold at least one text", param="texts", code="empty_input")
    mode, direction = TRUNCATE[body.truncate]
    served.service.token_limit(body.max_tokens, "max_tokens")  # named as the client sent it, before it is mapped
    req = EmbeddingRequest.model_validate({
        "input": body.texts, "model": body.model, "input_type": prompt_for(served.encoder.info.prompts,
                                                                            body.input_type),
        "dimensions": body.output_dimension, "long_input": mode, "truncation_direction": direction,
        "normalize": body.normalize, "truncate_prompt_tokens": body.max_tokens,
        "priority": None if body.priority is None else ("interactive" if body.priority == 0 else "bulk"),
    })
    result = await unless_disconnected(request, served.service.embed(req))
    if result is None:
        return Response(status_code=499)
    request.scope["state"]["tokens"], request.scope["state"]["inputs"] = result.prompt_tokens, len(result.vectors)
    embeddings = {kind: await served.service.typed(result.vectors, kind, req) for kind in dict.fromkeys(
        body.embedding_types)}
    return answer({
        "id": request.scope["state"]["request_id"],
        "embeddings": embeddings,
        "texts": body.texts,
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": result.prompt_tokens}},
        "response_type": "embeddings_by_type",
    })

