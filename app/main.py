"""The app factory: `create_app(settings, encoder=None)`. The lifespan loads (or takes) the encoder in the
background, warms it and starts the batcher; /ready turns 200 only then. Shutdown drains."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import errors
from app.middleware import RequestMiddleware
from app.routes import embeddings, health, models, tokenize
from app.runtime import Runtime
from app.settings import Settings

log = logging.getLogger("app")


def create_app(settings: Settings, encoder=None, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    runtime = Runtime(settings, encoder, on_fatal)

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

    app = FastAPI(
        title="nomic-embed-server",
        version="0.1.0",
        summary="OpenAI-compatible embeddings for NomicBert and the BERT family",
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would build its Location from the client's Host header
    )
    app.state.runtime = runtime
    errors.install(app)
    for router in (embeddings.router, models.router, tokenize.router, health.router):
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
