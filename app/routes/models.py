"""GET /v1/models: the served model, in OpenAI's list shape, with what a client needs to budget and choose."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Depends

from app.errors import APIError
from app.routes.common import require_api_key, require_ready
from app.runtime import Runtime
from app.schemas import Experts, ModelCard, ModelList

router = APIRouter(dependencies=[Depends(require_api_key)])


def card(rt: Runtime) -> ModelCard:
    info = rt.encoder.info
    return ModelCard(
        id=rt.model_name,
        created=rt.created,
        max_input_tokens=info.max_input_tokens,
        max_input_tokens_source=info.limit_source,
        dimensions=info.hidden_size,
        model_type=info.model_type,
        device=info.device,
        dtype=info.dtype,
        pooling=info.pooling,
        task_types=info.prompts,
        experts=None if info.moe is None else Experts(**dataclasses.asdict(info.moe)),
    )


@router.get("/v1/models", response_model=ModelList)
async def list_models(rt: Runtime = Depends(require_ready)) -> ModelList:
    return ModelList(data=[card(rt)])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, rt: Runtime = Depends(require_ready)) -> ModelCard:
    if model_id != rt.model_name:
        raise APIError(404, f"The model `{model_id}` does not exist", param="model", code="model_not_found")
    return card(rt)
