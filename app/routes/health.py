"""Liveness (/health), readiness (/ready) and Prometheus (/metrics). Always open, even with an API key set."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.runtime import Runtime, get_runtime

router = APIRouter(tags=["Server"])


@router.get("/health")
async def health(rt: Runtime = Depends(get_runtime)) -> JSONResponse:
    """200 while the process and its encoder worker are alive (also while the model loads)."""
    if rt.alive:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "dead", "reason": rt.fatal or "encoder worker thread died"}, status_code=503)


@router.get("/ready")
async def ready(rt: Runtime = Depends(get_runtime)) -> JSONResponse:
    """200 only once the model is warm and while not draining: what a load balancer routes on."""
    if rt.ready and not rt.draining and rt.alive:
        return JSONResponse({"status": "ready"})
    status = "draining" if rt.draining else ("dead" if not rt.alive else "loading")
    return JSONResponse({"status": status}, status_code=503, headers={"Retry-After": "1"})


metrics_router = APIRouter(tags=["Server"])


@metrics_router.get("/metrics")
async def metrics(rt: Runtime = Depends(get_runtime)) -> Response:
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)
