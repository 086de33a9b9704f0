"""Rerank routes for cross-encoders, thin translations over one service (app/rerank.py):

- TEI's `POST /rerank` (`query`, `texts`, ...) -> `[{index, score, text?}]`, best first; TEI's error shape.
- Infinity's `POST /rerank`, the same path (`query`, `documents`, ...) -> `{object, results: [{relevance_score, index,
  document?}], model, usage, id, created}`, best first, `top_n` of them; OpenAI's error shape, as Infinity answers.
- The Cohere/Jina shape that Cohere, vLLM and Infinity serve, `POST /v1/rerank` and `POST /v2/rerank` -> `{id,
  results: [{index, relevance_score, document?}], meta, usage}`, best first, `top_n` of them; Cohere's error shape.
- vLLM's `POST /v1/score` (`text_1`, `text_2`) -> `{data: [{index, score}]}` in input order; OpenAI's error shape.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from app.errors import OPENAI, APIError
from app.rerank import RerankResult, ranked
from app.routes.common import (
    json_body,
    parse_body,
    parse_json,
    pick_model,
    require_api_key,
    require_ready,
    unless_disconnected,
    validate,
)
from app.runtime import RERANKER, Runtime
from app.schemas import ErrorResponse as OpenAIError
from app.schemas_cohere import ErrorResponse as CohereError
from app.schemas_cohere import RerankRequest as CohereRerankRequest
from app.schemas_cohere import RerankResponse as CohereRerankResponse
from app.schemas_infinity import UNNAMED
from app.schemas_infinity import RerankRequest as InfinityRerankRequest
from app.schemas_infinity import RerankResponse as InfinityRerankResponse
from app.schemas_tei import ErrorResponse as TEIError
from app.schemas_tei import Rank
from app.schemas_tei import RerankRequest as TEIRerankRequest
from app.schemas_vllm import ScoreRequest, ScoreResponse

tei = APIRouter(dependencies=[Depends(require_api_key)], tags=["TEI"])
cohere = APIRouter(dependencies=[Depends(require_api_key)], tags=["Cohere"])
vllm = APIRouter(dependencies=[Depends(require_api_key)], tags=["vLLM"])


def errors(model: type, *statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": model} for s in statuses}


def answer(body: Any) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def no_cut(truncate: bool | None, truncate_prompt_tokens: int | None) -> None:
    """vLLM's truncate_prompt_tokens truncates: with our `truncate: false` it asks for two opposite things."""
    if truncate is False and truncate_prompt_tokens is not None:
        raise APIError(
            400, "truncate_prompt_tokens truncates the pairs: it cannot be given with truncate false",
            param="truncate_prompt_tokens", code="invalid_value",
        )


def record(request: Request, result: RerankResult) -> None:
    state = request.scope["state"]
    state["tokens"], state["inputs"] = result.tokens, len(result.scores)


@tei.post(
    "/rerank",
    response_model=list[Rank] | InfinityRerankResponse,
    responses=errors(TEIError, 400, 401, 413, 422, 424, 429, 503),
    openapi_extra=json_body(TEIRerankRequest, InfinityRerankRequest),
)
async def tei_rerank(request: Request, rt: Runtime = Depends(require_ready)) -> Response:
    """TEI's rerank: every text scored against the query, best first. A body with `documents` (and no `texts`) is
    Infinity's rerank at the same path, answered as Infinity answers it."""
    data = await parse_json(request)
    if "documents" in data and "texts" not in data:
        return await infinity_rerank(request, rt, data)
    req = validate(TEIRerankRequest, data)
    served = pick_model(rt, request, req.model, RERANKER)
    left = req.truncation_direction.lower() == "left"
    result = await unless_disconnected(
        request,
        served.service.rerank(
            req.query, req.texts, truncate=req.truncate, left=left, raw=req.raw_scores, param="texts"
        ),
    )
    if result is None:
        return Response(status_code=499)
    record(request, result)
    return answer(
        [
            {"index": i, "score": float(result.scores[i])} | ({"text": req.texts[i]} if req.return_text else {})
            for i in ranked(result.scores)
        ]
    )


async def infinity_rerank(request: Request, rt: Runtime, data: dict[str, Any]) -> Response:
    """Infinity's rerank: the best `top_n` documents for the query, with their text when asked."""
    request.scope["state"]["api"] = OPENAI  # its errors, from here on, in Infinity's (OpenAI's) shape
    req = validate(InfinityRerankRequest, data)
    served = pick_model(rt, request, None if req.model == UNNAMED else req.model, RERANKER)
    # Infinity cuts a pair over the model's limit (its tokenizer truncates), whatever the server's default
    work = served.service.rerank(req.query, req.documents, truncate=True, raw=req.raw_scores)
    result = await unless_disconnected(request, work)
    if result is None:
        return Response(status_code=499)
    record(request, result)
    results = [
        {"relevance_score": float(result.scores[i]), "index": i}
        | ({"document": req.documents[i]} if req.return_documents else {})
        for i in ranked(result.scores, req.top_n)
    ]
    return answer({
        "object": "rerank", "results": results, "model": served.name,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        "id": f"infinity-{uuid.uuid4()}", "created": int(time.time()),
    })


async def cohere_rerank(request: Request, rt: Runtime, version: str) -> Response:
    req = await parse_body(request, CohereRerankRequest)
    served = pick_model(rt, request, req.model, RERANKER)
    texts = [d if isinstance(d, str) else d.text for d in req.documents]
    priority = None if req.priority is None else ("interactive" if req.priority == 0 else "bulk")
    no_cut(req.truncate, req.truncate_prompt_tokens)
    result = await unless_disconnected(
        request,
        served.service.rerank(
            req.query,
            texts,
            truncate=req.truncate,
            doc_tokens=req.max_tokens_per_doc,
            max_tokens=req.truncate_prompt_tokens,
            priority=priority,
        ),
    )
    if result is None:
        return Response(status_code=499)
    record(request, result)
    results = [
        {"index": i, "relevance_score": float(result.scores[i])}
        | ({"document": {"text": texts[i]}} if req.return_documents else {})
        for i in ranked(result.scores, req.top_n or None)  # vLLM's top_n 0: all of them
    ]
    return answer(
        {
            "id": request.scope["state"]["request_id"],
            "model": served.name,
            "results": results,
            "meta": {
                "api_version": {"version": version},
                "billed_units": {"search_units": 1},
                "tokens": {"input_tokens": result.tokens},
            },
            "usage": {"total_tokens": result.tokens},
        }
    )


def cohere_route(version: str):
    async def handler(request: Request, rt: Runtime = Depends(require_ready)) -> Response:
        return await cohere_rerank(request, rt, version)

    handler.__doc__ = (
        "Cohere/Jina rerank (as vLLM and Infinity serve it): the best `top_n` documents for the query."
        if version == "1"
        else "Cohere's v2 rerank (what `cohere.ClientV2.rerank` calls): the same as /v1/rerank."
    )
    cohere.add_api_route(
        f"/v{version}/rerank",
        handler,
        methods=["POST"],
        name=f"rerank_v{version}",
        response_model=CohereRerankResponse,
        responses=errors(CohereError, 400, 401, 404, 413, 429, 503),
        openapi_extra=json_body(CohereRerankRequest),
    )


for _version in ("1", "2"):
    cohere_route(_version)


@vllm.post(
    "/v1/score",
    response_model=ScoreResponse,
    responses=errors(OpenAIError, 400, 401, 404, 413, 429, 503),
    openapi_extra=json_body(ScoreRequest),
)
async def score(request: Request, rt: Runtime = Depends(require_ready)) -> Response:
    """vLLM's score: text_1 against each text_2 (or pairs zipped), scores in input order."""
    req = await parse_body(request, ScoreRequest)
    served = pick_model(rt, request, req.model, RERANKER)
    queries = [req.text_1] if isinstance(req.text_1, str) else req.text_1
    documents = [req.text_2] if isinstance(req.text_2, str) else req.text_2
    no_cut(req.truncate, req.truncate_prompt_tokens)
    result = await unless_disconnected(
        request,
        served.service.score_pairs(queries, documents, truncate=req.truncate, max_tokens=req.truncate_prompt_tokens),
    )
    if result is None:
        return Response(status_code=499)
    record(request, result)
    return answer(
        {
            "id": f"score-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": served.name,
            "data": [{"index": i, "object": "score", "score": float(s)} for i, s in enumerate(result.scores)],
            "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens, "completion_tokens": 0},
        }
    )
