"""POST /tokenize: token ids, tokens and counts under the same prefix rules as /v1/embeddings, to budget requests.
A body with `inputs` (TEI's field; ours is `input`) is TEI's form: `[[{id, text, special, start, stop}]]` per input,
with TEI's error shape."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from fastapi import APIRouter, Depends, Request, Response

from app.errors import APIError
from app.routes.common import parse_json, pick_model, require_api_key, require_ready, validate
from app.runtime import Runtime
from app.schemas import TokenizeRequest, TokenizeResponse
from app.schemas_tei import SimpleToken
from app.schemas_tei import TokenizeRequest as TEITokenizeRequest

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI"])


@router.post(
    "/tokenize",
    response_model=TokenizeResponse | list[list[SimpleToken]],
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
        TokenizeRequest.model_json_schema(), TEITokenizeRequest.model_json_schema()]}}}}},
)
async def tokenize(request: Request, rt: Runtime = Depends(require_ready)) -> Response:
    data = await parse_json(request)
    if "inputs" in data:  # TEI's field name: TEI's form and error shape
        request.scope["state"]["api"] = "tei"
        return await tei_tokenize(request, rt, validate(TEITokenizeRequest, data))
    req = validate(TokenizeRequest, data)
    served = pick_model(rt, request, req.model)
    texts = [req.input] if isinstance(req.input, str) else req.input
    ids = await served.service.token_ids(texts, req.input_type)
    limit = served.encoder.info.max_input_tokens
    tokens = served.encoder.tokenizer.tokens

    def rows() -> list[dict]:
        return [
            {"index": i, "input_ids": x, "tokens": tokens(x), "count": len(x), "over_limit": len(x) > limit}
            for i, x in enumerate(ids)
        ]

    total = sum(map(len, ids))
    body = {
        "object": "list",
        "model": served.name,
        "max_input_tokens": limit,
        "data": await off_loop_past(total, rows),
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }
    return Response(orjson.dumps(body), media_type="application/json")


async def off_loop_past(tokens: int, rows: Callable[[], list]) -> list:
    """A token string (and TEI's offsets) per id is a Python loop: past a few thousand tokens it runs in a thread,
    where the event loop still gets the GIL every switch interval."""
    return rows() if tokens <= 4096 else await asyncio.to_thread(rows)


async def tei_tokenize(request: Request, rt: Runtime, body: TEITokenizeRequest) -> Response:
    served = pick_model(rt, request, body.model)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    if not texts:
        raise APIError(400, "`inputs` cannot be empty", param="inputs", code="empty_input")
    served.service.check_count(len(texts), "inputs")
    served.service.check_texts(texts, param="inputs")
    tokenizer = served.encoder.tokenizer
    if tokenizer is None:
        raise APIError(400, "This model has no tokenizer", param="inputs", code="invalid_input")
    _, prefix = served.service.prefix_for(body.prompt_name)
    counted = await served.service.token_ids(texts, body.prompt_name)  # the caps, bounded, before any offsets

    def rows() -> list:
        fields = ("id", "text", "special", "start", "stop")
        return [[dict(zip(fields, t)) for t in tokenizer.detailed(prefix + text, body.add_special_tokens)]
                for text in texts]

    return Response(orjson.dumps(await off_loop_past(sum(map(len, counted)), rows)), media_type="application/json")
