"""POST /tokenize: token ids, tokens and counts under the same prefix rules as /v1/embeddings, to budget requests."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.routes.common import check_model, json_body, parse_body, require_api_key, require_ready
from app.runtime import Runtime
from app.schemas import TokenizedInput, TokenizeRequest, TokenizeResponse, Usage

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    openapi_extra=json_body(TokenizeRequest),
)
async def tokenize(request: Request, rt: Runtime = Depends(require_ready)) -> TokenizeResponse:
    req = await parse_body(request, TokenizeRequest)
    check_model(rt, req.model)
    texts = [req.input] if isinstance(req.input, str) else req.input
    ids = await rt.service.token_ids(texts, req.input_type)
    limit = rt.encoder.info.max_input_tokens
    data = [
        TokenizedInput(
            index=i, input_ids=x, tokens=rt.encoder.tokenizer.tokens(x), count=len(x), over_limit=len(x) > limit
        )
        for i, x in enumerate(ids)
    ]
    total = sum(d.count for d in data)
    return TokenizeResponse(
        model=rt.model_name, max_input_tokens=limit, data=data, usage=Usage(prompt_tokens=total, total_tokens=total)
    )
