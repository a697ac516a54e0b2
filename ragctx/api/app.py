"""The FastAPI application: `create_app(settings)`; `ragctx serve` runs it with uvicorn."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from ragctx.api import chat, rerank, routes, ui
from ragctx.api.errors import install_error_handlers
from ragctx.api.middleware import GuardMiddleware, RequestContextMiddleware
from ragctx.api.openapi import install_openapi
from ragctx.api.service import Service
from ragctx.engine import ContextEngine
from ragctx.models import ModelRegistry
from ragctx.settings import Settings, load_settings
from ragctx.version import __version__

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, registry: ModelRegistry | None = None) -> FastAPI:
    """The service for `settings`; `registry` shares already-loaded models (tests, embedding in an app)."""
    settings = settings or load_settings()
    service = Service(settings, ContextEngine(settings, registry))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Models load once, before the first request, off the event loop.
        await anyio.to_thread.run_sync(service.load_models)
        await service.start()
        log.info(
            "ragctx service ready",
            extra={"index_dir": str(settings.resolved_index_dir()), "upstream": settings.upstream_base_url},
        )
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="ragctx",
        version=__version__,
        summary="The context layer for RAG: retrieve, score, reorder and compress passages, with provenance.",
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(rerank.router)
    app.include_router(chat.router)
    app.include_router(ui.router)
    install_openapi(app, settings)
    # Added innermost first: the request context wraps everything, so refusals get ids and logs too.
    app.add_middleware(
        GuardMiddleware,
        api_keys=[k.get_secret_value() for k in settings.api_keys],
        max_body_bytes=settings.max_request_chars,
        metrics=service.metrics,
    )
    app.add_middleware(RequestContextMiddleware, metrics=service.metrics)
    return app
