"""GET /v1/models (and Infinity's GET /models): every served model, in OpenAI's list shape, with its kind and what a
client needs to budget and choose."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.routes.common import require_api_key, require_ready
from app.runtime import EMBEDDING, RERANKER, Runtime, ServedModel
from app.schemas import Experts, ModelCard, ModelList

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI"])
infinity = APIRouter(dependencies=[Depends(require_api_key)], tags=["Infinity"])
CAPABILITIES = {EMBEDDING: ["embed"], RERANKER: ["rerank"]}  # Infinity's names


def card(rt: Runtime, served: ServedModel) -> ModelCard:
    info = served.encoder.info
    return ModelCard(
        id=served.name,
        kind=served.kind,
        capabilities=CAPABILITIES[served.kind],
        created=rt.created,
        max_input_tokens=info.max_input_tokens,
        max_input_tokens_source=info.limit_source,
        dimensions=info.hidden_size,
        model_type=info.model_type,
        architecture=info.architecture,
        experts=None if info.experts is None else Experts(**info.experts),
        device=info.device,
        dtype=info.dtype,
        pooling=info.pooling,
        matryoshka=info.matryoshka,
        matryoshka_dimensions=list(info.matryoshka_dimensions) if info.matryoshka_dimensions else None,
        score_activation=info.activation,
        task_types=info.prompts,
    )


@router.get("/v1/models", response_model=ModelList)
async def list_models(rt: Runtime = Depends(require_ready)) -> ModelList:
    return ModelList(data=[card(rt, served) for served in rt.models.values()])


@infinity.get("/models", response_model=ModelList, summary="Infinity's /models: the same list as /v1/models")
async def infinity_models(rt: Runtime = Depends(require_ready)) -> ModelList:
    return await list_models(rt)


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, rt: Runtime = Depends(require_ready)) -> ModelCard:
    return card(rt, rt.model(model_id))
