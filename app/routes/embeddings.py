"""POST /v1/embeddings, as OpenAI defines it (plus input_type, long_input, priority)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from app.routes.common import (
    check_model,
    dumps_list,
    json_body,
    parse_body,
    require_api_key,
    require_ready,
    unless_disconnected,
)
from app.runtime import Runtime
from app.schemas import EmbeddingRequest, EmbeddingResponse, ErrorResponse
from app.service import encode_vectors, tokens_in_body

router = APIRouter(dependencies=[Depends(require_api_key)])
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (400, 401, 404, 413, 415, 429, 503)}


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=ERRORS,
    openapi_extra=json_body(EmbeddingRequest),
)
async def create_embeddings(request: Request, rt: Runtime = Depends(require_ready)) -> Response:
    # admission before the body is read: a queue with no room for a body this size answers 429 at once
    with rt.service.admit(tokens_in_body(request.headers.get("content-length"))) as admission:
        req = await parse_body(request, EmbeddingRequest)
        check_model(rt, req.model)
        state = request.scope["state"]
        if rt.settings.log_inputs:
            state["input_text"] = req.input
        result = await unless_disconnected(request, rt.service.embed(req, admission))
    if result is None:  # client gone: nobody to answer (nginx's 499)
        return Response(status_code=499)
    state["tokens"], state["inputs"] = result.prompt_tokens, len(result.vectors)
    data = [
        {"object": "embedding", "index": i, "embedding": e}
        for i, e in enumerate(encode_vectors(result.vectors, req.encoding_format))
    ]
    body = {
        "object": "list",
        "data": await dumps_list(data),
        "model": rt.model_name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
