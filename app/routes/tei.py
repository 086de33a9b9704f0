"""text-embeddings-inference (TEI 1.9)'s embedding routes, as its OpenAPI document gives them, over the same embedding
service as /v1/embeddings: `POST /embed`, `POST /` (embed, or rerank when the default model is a reranker),
`POST /embed_all`, `POST /similarity`, `POST /decode`, `GET /info`; TEI's form of `POST /tokenize` is in
routes/tokenize.py. Errors in TEI's shape (app/errors.py). TEI's `/rerank` is in routes/rerank.py."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError

from app.errors import APIError
from app.routes import rerank
from app.routes.common import json_body, parse_body, pick_model, require_api_key, require_ready, unless_disconnected
from app.runtime import EMBEDDING, RERANKER, Runtime
from app.schemas import INPUT_FORMS, EmbeddingRequest, input_problem
from app.schemas_tei import (
    DecodeRequest,
    EmbedAllRequest,
    EmbedRequest,
    ErrorResponse,
    Info,
    SimilarityRequest,
)

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["TEI"])
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (400, 401, 413, 422, 424, 429, 503)}
VERSION = "0.1.0"


def answer(body: Any) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def as_request(model: str | None, inputs: Any, truncate: bool | None, direction: str, prompt_name: str | None,
               dimensions: int | None = None, normalize: bool = True) -> EmbeddingRequest:
    """A TEI request's fields as the embedding service's request (TEI `truncate` null: the server's default)."""
    if inputs == []:
        raise APIError(400, "`inputs` cannot be empty", param="inputs", code="empty_input")
    try:
        return EmbeddingRequest.model_validate({
            "input": inputs, "model": model, "input_type": prompt_name, "dimensions": dimensions,
            "normalize": normalize, "truncation_direction": direction.lower(),
            "long_input": None if truncate is None else ("truncate" if truncate else "error"),
        })
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "input_shape":  # a list mixing texts and token ids, which TEI's schema lets through
            message = f"{input_problem(inputs, INPUT_FORMS, 'inputs')} (not mixed)"
        else:
            message = f"Invalid value for 'inputs': {first['msg']}"
        raise APIError(400, message, param="inputs", code="invalid_value") from None


async def embed_vectors(request: Request, rt: Runtime, req: EmbeddingRequest) -> list | None:
    served = pick_model(rt, request, req.model)
    result = await unless_disconnected(request, served.service.embed(req))
    if result is None:
        return None
    request.scope["state"]["tokens"], request.scope["state"]["inputs"] = result.prompt_tokens, len(result.vectors)
    return result.vectors


@router.post("/embed", response_model=list[list[float]], responses=ERRORS, openapi_extra=json_body(EmbedRequest))
async def embed(request: Request, rt: Runtime = Depends(require_ready)) -> Response:
    """TEI's embed: one vector per input (normalised unless `normalize: false`)."""
    body = await parse_body(request, EmbedRequest)
    req = as_request(body.model, body.inputs, body.truncate, body.truncation_direction, body.prompt_name,
                     body.dimensions, body.normalize)
    vectors = await embed_vectors(request, rt, req)
    return Response(status_code=499) if vectors is None else answer(vectors)


@router.post("/", responses=ERRORS, openapi_extra=json_body(EmbedRequest),
             summary="TEI's default route: /embed, or /rerank when the default model is a reranker")
async def default_route(request: Request, rt: Runtime = Depends(require_ready)) -> Response:
    if rt.default.kind == RERANKER:
        return await rerank.tei_rerank(request, rt)
    return await embed(request, rt)


@router.post("/embed_all", response_model=list[list[list[float]]], responses=ERRORS,
             openapi_extra=json_body(EmbedAllRequest))
async def embed_all(request: Request, rt: Runtime = Depends(require_ready)) -> Response:
    """TEI's embed_all: each input's per-token vectors (the last hidden states), unpooled, unnormalised."""
    body = await parse_body(request, EmbedAllRequest)
    req = as_request(body.model, body.inputs, body.truncate, body.truncation_direction, body.prompt_name)
    served = pick_model(rt, request, req.model)
    result = await unless_disconnected(request, served.service.token_vectors(req))
    if result is None:
        return Response(status_code=499)
    request.scope["state"]["tokens"] = result.prompt_tokens
    return answer(result.vectors)


@router.post("/similarity", response_model=list[float], responses=ERRORS, openapi_extra=json_body(SimilarityRequest))
async def similarity(request: Request, rt: Runtime = Depends(require_ready)) -> Response:
    """TEI's sentence similarity: the cosine of the source sentence with each sentence."""
    body = await parse_body(request, SimilarityRequest)
    if not body.inputs.sentences:
        raise APIError(400, "`sentences` cannot be empty", param="inputs", code="empty_input")
    p = body.parameters
    texts = [body.inputs.source_sentence, *body.inputs.sentences]
    req = as_request(body.model, texts, p.truncate if p else None, p.truncation_direction if p else "right",
                     p.prompt_name if p else None)
    vectors = await embed_vectors(request, rt, req)
    if vectors is None:
        return Response(status_code=499)
    source, others = vectors[0], np.stack(vectors[1:])
    return answer((others @ source).astype(np.float32))


@router.post("/decode", response_model=list[str], responses=ERRORS, openapi_extra=json_body(DecodeRequest))
async def decode(request: Request, rt: Runtime = Depends(require_ready)) -> Response:
    """TEI's decode: token ids back to text."""
    body = await parse_body(request, DecodeRequest)
    served = pick_model(rt, request, body.model, EMBEDDING)
    batches = [body.ids] if not body.ids or isinstance(body.ids[0], int) else body.ids
    if not batches or not all(batches):
        raise APIError(400, "`ids` cannot be empty", param="ids", code="empty_input")
    served.service.check_count(len(batches), "ids")
    tokenizer, vocab = served.encoder.tokenizer, served.encoder.info.vocab_size
    if tokenizer is None:
        raise APIError(400, "This model has no tokenizer", param="ids", code="invalid_input")
    for i, ids in enumerate(batches):
        bad = next((t for t in ids if not 0 <= t < vocab), None)  # type: ignore[operator]
        if bad is not None:
            raise APIError(400, f"ids {i} has token id {bad}, outside the vocabulary [0, {vocab})", param="ids",
                           code="invalid_token_id")
    return answer([tokenizer.decode(ids, body.skip_special_tokens) for ids in batches])


@router.get("/info", response_model=Info, responses=ERRORS)
async def info(model: str | None = None, rt: Runtime = Depends(require_ready)) -> Info:
    """TEI's info on the default model (or `?model=NAME`)."""
    served = rt.model(model)
    i, s = served.encoder.info, rt.settings
    model_type: dict = (
        {"embedding": {"pooling": i.pooling}}
        if served.kind == EMBEDDING
        else {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    )
    return Info(
        model_id=served.source,
        model_dtype=i.dtype,
        model_type=model_type,
        # no cap on concurrent requests here: the queue bound admits this many inputs of the longest length
        max_concurrent_requests=max(1, s.max_queue_tokens // i.max_input_tokens),
        max_input_length=i.max_input_tokens,
        max_batch_tokens=rt.max_batch_tokens,
        max_batch_requests=s.max_batch_size,
        max_client_batch_size=s.max_inputs_per_request,
        auto_truncate=s.long_input_default != "error",
        tokenization_workers=len(os.sched_getaffinity(0)),
        version=VERSION,
        served_model_name=served.name,
    )
