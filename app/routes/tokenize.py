"""POST /tokenize: token ids, tokens and counts under the same prefix rules as /v1/embeddings, to budget requests."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Depends, Request, Response

from app.routes.common import check_model, json_body, parse_body, require_api_key, require_ready
from app.runtime import Runtime
from app.schemas import TokenizeRequest, TokenizeResponse

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    openapi_extra=json_body(TokenizeRequest),
)
async def tokenize(request: Request, rt: Runtime = Depends(require_ready)) -> Response:
    req = await parse_body(request, TokenizeRequest)
    check_model(rt, req.model)
    texts = [req.input] if isinstance(req.input, str) else req.input
    ids = await rt.service.token_ids(texts, req.input_type)
    limit = rt.encoder.info.max_input_tokens

    def rows() -> list[dict]:
        tokens = rt.encoder.tokenizer.tokens
        return [
            {"index": i, "input_ids": x, "tokens": tokens(x), "count": len(x), "over_limit": len(x) > limit}
            for i, x in enumerate(ids)
        ]

    total = sum(map(len, ids))
    # a token string per id is a Python loop: past a few thousand tokens it runs in a thread, where the event loop
    # still gets the GIL every switch interval
    data = rows() if total <= 4096 else await asyncio.to_thread(rows)
    body = {
        "object": "list",
        "model": rt.model_name,
        "max_input_tokens": limit,
        "data": data,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }
    return Response(orjson.dumps(body), media_type="application/json")
