"""POST /v1/embeddings, as OpenAI defines it (plus input_type, long_input, priority, normalize, embedding_type,
truncation_direction), and the same at Infinity's POST /embeddings."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from app.errors import APIError
from app.routes.common import (
    dumps_list,
    json_body,
    parse_body,
    pick_model,
    require_api_key,
    require_ready,
    unless_disconnected,
)
from app.runtime import EMBEDDING, Runtime
from app.schemas import EmbeddingRequest, EmbeddingResponse, ErrorResponse
from app.service import Admission, encode_vectors, tokens_in_body

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
    early = await admit_unread(rt, request)
    with early or contextlib.nullcontext():
        req = await parse_body(request, EmbeddingRequest)
        served = pick_model(rt, request, req.model)
        state = request.scope["state"]
        if rt.settings.log_inputs:
            state["input_text"] = req.input
        admission = early if early is not None and early.service is served.service else None
        if early is not None and admission is None:
            early.release()  # it named another model, which admits it itself
        result = await unless_disconnected(request, served.service.embed(req, admission))
    if result is None:  # client gone: nobody to answer (nginx's 499)
        return Response(status_code=499)
    state["tokens"], state["inputs"] = result.prompt_tokens, len(result.vectors)
    values = await served.service.typed(result.vectors, req.embedding_type, req)
    rows = [
        {"object": "embedding", "index": i, "embedding": e}
        for i, e in enumerate(encode_vectors(values, req.encoding_format, req.embedding_type))
    ]
    body = {
        "object": "list",
        "data": await dumps_list(rows),
        "model": served.name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


async def admit_unread(rt: Runtime, request: Request) -> Admission | None:
    """With one embedding model, its queue is known before the body is read: a queue with no room for a body this
    size answers 429 before the body is parsed (read and dropped a chunk at a time, so the client gets its answer
    rather than a reset, under the middleware's body deadline and upload budget). With several models, `embed`
    admits once the body names its model, still before any tokenising."""
    embedders = [m for m in rt.models.values() if m.kind == EMBEDDING]
    if len(embedders) != 1:
        return None
    try:
        return embedders[0].service.admit(tokens_in_body(request.headers.get("content-length")))
    except APIError:
        async for _ in request.stream():
            pass
        raise


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
