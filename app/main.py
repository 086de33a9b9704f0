"""The app factory: `create_app(settings, encoder=None)`. The lifespan loads (or takes) every model's encoder in the
background, warms them and starts their batchers; /ready turns 200 only then. Shutdown drains."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from app import errors
from app.middleware import RequestMiddleware
from app.routes import cohere, embeddings, health, models, rerank, tei, tokenize
from app.runtime import Runtime
from app.settings import Settings

log = logging.getLogger("app")
# /docs groups the routes by the API they belong to; each API answers errors in its own shape (app/errors.py)
API_TAGS = [
    {"name": "OpenAI", "description": "OpenAI's embeddings API (errors: `{error: {message, type, param, code}}`)."},
    {"name": "TEI", "description": "text-embeddings-inference 1.9's API (errors: `{error, error_type}`)."},
    {"name": "Cohere", "description": "Cohere's API, as Cohere, Jina, vLLM and Infinity serve it (errors: "
     "`{message}`)."},
    {"name": "Infinity", "description": "Infinity's unprefixed routes (OpenAI's shapes)."},
    {"name": "vLLM", "description": "vLLM's score API for cross-encoders (OpenAI's error shape)."},
    {"name": "Server", "description": "Liveness, readiness and Prometheus metrics."},
]


def create_app(
    settings: Settings,
    encoder=None,
    on_fatal: Callable[[str], None] | None = None,
    encoders: Mapping[str, object] | None = None,
) -> FastAPI:
    """`encoder` is the first model's encoder, `encoders` any model's by served name; the others are loaded."""
    runtime = Runtime(settings, encoder, on_fatal, encoders)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        metrics_server = None
        if settings.metrics_port is not None:
            from prometheus_client import start_http_server

            metrics_server, _ = start_http_server(settings.metrics_port, settings.host, runtime.metrics.registry)
        starting = asyncio.create_task(runtime.start())
        try:
            yield
        finally:
            if not starting.done():
                starting.cancel()
            if not runtime.draining:
                await runtime.drain()
            if metrics_server is not None:
                metrics_server.shutdown()

    # /docs (Swagger UI) loads its scripts from the installed package, not a CDN: it works offline. ReDoc is off: its
    # sidebar logo is always fetched from redocly's CDN. Swagger UI's online validator badge is off for the same reason.
    app = FastAPIOffline(
        title="nomic-embed-server",
        version="0.1.0",
        summary="Embeddings and reranking for NomicBert, the BERT family, XLM-R and ModernBERT, in the APIs clients "
        "already speak",
        lifespan=lifespan,
        openapi_tags=API_TAGS,
        redoc_url=None,
        swagger_ui_parameters={"validatorUrl": None},
        redirect_slashes=False,  # a redirect would build its Location from the client's Host header
    )
    app.state.runtime = runtime
    errors.install(app)
    for router in (
        embeddings.router,
        embeddings.infinity,
        models.router,
        models.infinity,
        tokenize.router,
        rerank.tei,
        tei.router,
        rerank.cohere,
        cohere.router,
        rerank.vllm,
        health.router,
    ):
        app.include_router(router)
    if settings.metrics_port is None:
        app.include_router(health.metrics_router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        )
    app.add_middleware(
        RequestMiddleware,
        runtime=runtime,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    return app
