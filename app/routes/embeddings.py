"""POST /v1/embeddings, as OpenAI defines it (plus input_type, long_input, priority, normalize, embedding_type,
truncation_direction), and the same at Infinity's POST /embeddings."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from app.routes.common import json_body, parse_body, pick_model, require_api_key, require_ready, unless_disconnected
from app.runtime import Runtime
from app.schemas import EmbeddingRequest, EmbeddingResponse, ErrorResponse
from app.service import encode_vectors

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI"])
infinity = APIRouter(dependencies=[Depends(require_api_key)], tags=["Infinity"])
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (400, 401, 404, 413, 415, 429, 503)}


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=ERRORS,
    openapi_extra=json_body(EmbeddingRequest),
)
async def create_embeddings(request: Request, rt: Runtime = Depends(require_ready)) -> Response:
    req = await parse_body(request, EmbeddingRequest)
    served = pick_model(rt, request, req.model)
    state = request.scope["state"]
    if rt.settings.log_inputs:
        state["input_text"] = req.input
    result = await unless_disconnected(request, served.service.embed(req))
    if result is None:  # client gone: nobody to answer (nginx's 499)
        return Response(status_code=499)
    state["tokens"], state["inputs"] = result.prompt_tokens, len(result.vectors)
    values = await served.service.typed(result.vectors, req.embedding_type, req)
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": e}
            for i, e in enumerate(encode_vectors(values, req.encoding_format, req.embedding_type))
        ],
        "model": served.name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


infinity.add_api_route(
    "/embeddings",
    create_embeddings,
    methods=["POST"],
    name="infinity_embeddings",
    summary="Infinity's /embeddings: the OpenAI body and answer, without /v1",
    response_model=EmbeddingResponse,
    responses=ERRORS,
    openapi_extra=json_body(EmbeddingRequest),
)
