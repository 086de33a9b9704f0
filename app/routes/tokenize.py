"""POST /tokenize: token ids, tokens and counts under the same prefix rules as /v1/embeddings, to budget requests."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.errors import APIError
from app.routes.common import json_body, parse_body, pick_model, require_api_key, require_ready
from app.runtime import Runtime
from app.schemas import TokenizedInput, TokenizeRequest, TokenizeResponse, Usage

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI"])


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    openapi_extra=json_body(TokenizeRequest),
)
async def tokenize(request: Request, rt: Runtime = Depends(require_ready)) -> TokenizeResponse:
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
