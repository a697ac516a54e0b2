"""The context endpoints (/v1/context, /v1/compress, /v1/documents) and the operational ones."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ragctx.api.errors import ApiError, error_body, errors
from ragctx.api.limits import run_in_thread
from ragctx.api.schemas import (
    CompressRequest,
    ContextRequest,
    ContextResponse,
    DocumentsRequest,
    DocumentsResponse,
    HealthResponse,
)
from ragctx.api.service import Service
from ragctx.state import Budget
from ragctx.types import Passage

router = APIRouter()


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def check_passages(service: Service, texts: list[str], what: str = "passages") -> None:
    """422 (type `request_too_large`) for more passages than `max_passages`, or one longer than
    `max_passage_chars`: work per request stays bounded, so one request cannot hold a worker for minutes.
    422, not 413, because the schema states both limits (maxItems, maxLength) and a value the schema
    refuses is a validation error; 413 stays for a body over the byte limit, which no schema can state."""
    limit = service.settings.max_passages
    if len(texts) > limit:
        service.metrics.rejections.labels("too_large").inc()
        raise ApiError(
            422, f"{len(texts)} {what} in one request; the limit is {limit} (max_passages)", type="request_too_large"
        )
    longest = service.settings.max_passage_chars
    for i, text in enumerate(texts):
        if len(text) > longest:
            service.metrics.rejections.labels("too_large").inc()
            raise ApiError(
                422,
                f"{what} {i} has {len(text)} characters; the limit is {longest} per passage (max_passage_chars): "
                "split it into passages",
                type="request_too_large",
            )


async def run_pipeline(
    service: Service,
    route: str,
    question: str,
    passages: list[Passage] | None,
    budget: Budget,
    method: str | None,
    stages: list[str] | None,
    include_text: bool = False,
) -> dict[str, Any]:
    """Admit the request, run the pipeline in a worker thread under the deadline, record metrics."""
    slot = await service.admit()
    try:
        with service.deadline():
            ctx = await run_in_thread(slot, lambda: service.build_context(question, passages, budget, method, stages))
    finally:
        slot.release()
    service.metrics.observe_context(ctx, route)
    return ctx.to_dict(include_text=include_text)


# exclude_unset: `passages[].text` appears only when asked for (include_text), not as null.
@router.post(
    "/v1/context",
    response_model=ContextResponse,
    response_model_exclude_unset=True,
    tags=["context"],
    responses=errors(409),
)
async def context(body: ContextRequest, request: Request) -> dict[str, Any]:
    """Retrieve passages for the question from the index and run the pipeline over them."""
    service = service_of(request)
    budget = body.to_budget(service.engine.default_budget())
    return await run_pipeline(
        service, "/v1/context", body.question, None, budget, body.method, body.stages, body.include_text
    )


@router.post(
    "/v1/compress",
    response_model=ContextResponse,
    response_model_exclude_unset=True,
    tags=["context"],
    responses=errors(),
)
async def compress(body: CompressRequest, request: Request) -> dict[str, Any]:
    """Run the pipeline (without retrieval) over the caller's passages."""
    service = service_of(request)
    check_passages(service, [p.text for p in body.passages])
    budget = body.to_budget(service.engine.default_budget())
    passages = [p.to_passage() for p in body.passages]
    return await run_pipeline(
        service, "/v1/compress", body.question, passages, budget, body.method, body.stages, body.include_text
    )


@router.post("/v1/documents", response_model=DocumentsResponse, tags=["index"], responses=errors(409))
async def documents(body: DocumentsRequest, request: Request) -> DocumentsResponse:
    """Add passages to the index (creating it if there is none); ids already present are skipped."""
    service = service_of(request)
    check_passages(service, [p.text for p in body.passages])
    passages = [p.to_passage() for p in body.passages]
    slot = await service.admit()
    try:
        # No time limit: an index write abandoned half-way would still finish, so a 504 would mislead.
        result = await run_in_thread(slot, lambda: service.ingest(passages))
    finally:
        slot.release()
    return DocumentsResponse(
        added=result.added,
        skipped_duplicates=result.skipped_duplicates,
        count=result.count,
        created=result.created,
    )


@router.get("/healthz", response_model=HealthResponse, tags=["operations"])
async def healthz() -> HealthResponse:
    """The process answers (no dependency is checked: that is /readyz)."""
    return HealthResponse()


@router.get(
    "/readyz",
    tags=["operations"],
    responses={200: {"description": "Ready, with the checks."}, **errors(401, 503, body=False)},
)
async def readyz(request: Request) -> JSONResponse:
    """Models loaded, index open (or absent), Redis reachable (or not configured): 200, else 503."""
    checks, failing = await anyio.to_thread.run_sync(service_of(request).readiness)
    if not failing:
        return JSONResponse({"status": "ready", "checks": checks})
    reasons = "; ".join(f"{name}: {checks[name]}" for name in failing)
    body = {
        "status": "not ready",
        "checks": checks,
        **error_body(f"not ready ({reasons})", "unavailable_error"),
    }
    return JSONResponse(body, status_code=503)


@router.get(
    "/metrics",
    tags=["operations"],
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
        **errors(401, body=False),
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics, in its text exposition format."""
    return Response(service_of(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
