"""POST /tokenize: token ids, tokens and counts under the same prefix rules as /v1/embeddings, to budget requests.
A body with `inputs` (TEI's field; ours is `input`) is TEI's form: `[[{id, text, special, start, stop}]]` per input,
with TEI's error shape."""

from __future__ import annotations

import json
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from app.errors import APIError
from app.routes.common import parse_body, pick_model, require_api_key, require_ready
from app.runtime import Runtime
from app.schemas import TokenizedInput, TokenizeRequest, TokenizeResponse, Usage
from app.schemas_tei import SimpleToken
from app.schemas_tei import TokenizeRequest as TEITokenizeRequest

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI"])


def speaks_tei(raw: bytes) -> bool:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return False  # parse_body words the error
    return isinstance(body, dict) and "inputs" in body


@router.post(
    "/tokenize",
    response_model=TokenizeResponse | list[list[SimpleToken]],
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
        TokenizeRequest.model_json_schema(), TEITokenizeRequest.model_json_schema()]}}}}},
)
async def tokenize(request: Request, rt: Runtime = Depends(require_ready)) -> Any:
    if speaks_tei(await request.body()):
        request.scope["state"]["api"] = "tei"
        return await tei_tokenize(request, rt)
    req = await parse_body(request, TokenizeRequest)
    served = pick_model(rt, request, req.model)
    service, encoder = served.service, served.encoder
    texts = [req.input] if isinstance(req.input, str) else req.input
    service.check_texts(texts)
    if len(texts) > rt.settings.max_inputs_per_request:
        raise APIError(400, f"Too many inputs: {len(texts)}", param="input", code="too_many_inputs")
    _, prefix = service.prefix_for(req.input_type)
    ids = await service.tokenize(texts, prefix)
    limit = encoder.info.max_input_tokens
    data = [
        TokenizedInput(
            index=i, input_ids=x, tokens=encoder.tokenizer.tokens(x), count=len(x), over_limit=len(x) > limit
        )
        for i, x in enumerate(ids)
    ]
    total = sum(d.count for d in data)
    return TokenizeResponse(
        model=served.name, max_input_tokens=limit, data=data, usage=Usage(prompt_tokens=total, total_tokens=total)
    )


async def tei_tokenize(request: Request, rt: Runtime) -> Response:
    body = await parse_body(request, TEITokenizeRequest)
    served = pick_model(rt, request, body.model)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    if not texts:
        raise APIError(400, "`inputs` cannot be empty", param="inputs", code="empty_input")
    served.service.check_count(len(texts), "inputs")
    served.service.check_texts(texts, param="inputs")
    _, prefix = served.service.prefix_for(body.prompt_name)
    tokenizer = served.encoder.tokenizer
    if tokenizer is None:
        raise APIError(400, "This model has no tokenizer", param="inputs", code="invalid_input")
    tokens = [
        [dict(zip(("id", "text", "special", "start", "stop"), t)) for t in tokenizer.detailed(prefix + text,
                                                                                          body.add_special_tokens)]
        for text in texts
    ]
    return Response(orjson.dumps(tokens), media_type="application/json")
