"""Every error the service returns has one JSON shape: `{"error": {"message": ..., "type": ...}}`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragctx.deadline import DeadlineExceeded
from ragctx.io import MissingCalibration

log = logging.getLogger(__name__)

# Error types by status, named as OpenAI's API names them where it has a name for them.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "unavailable_error",
    504: "timeout_error",
}


class ApiError(StarletteHTTPException):
    """An error with a message for the caller. A Starlette HTTPException so that FastAPI passes it through
    unchanged even when raised while the request body is being read."""

    def __init__(
        self, status_code: int, message: str, type: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code, message, headers)
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(status_code, "api_error")


def error_body(message: str, type: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, **extra}}


def error_response(
    status_code: int, message: str, type: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = error_body(message, type or _TYPE_BY_STATUS.get(status_code, "api_error"))
    return JSONResponse(body, status_code=status_code, headers=headers)


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.message, exc.type, exc.headers)
    return error_response(exc.status_code, str(exc.detail), None, exc.headers)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [{"loc": _where(tuple(e.get("loc", ()))), "msg": str(e.get("msg", ""))} for e in exc.errors()]
    message = "; ".join(f"{p['loc']}: {p['msg']}" for p in problems) or "invalid request"
    body = error_body(message, "invalid_request_error", details=problems)
    return JSONResponse(body, status_code=422)


def timeout_message(seconds: float) -> str:
    return f"the request took longer than the service's limit of {seconds:g} s"


async def _on_deadline(request: Request, exc: Exception) -> JSONResponse:
    # The work itself noticed it was past the request's time limit (before the route's timer fired).
    service = getattr(request.app.state, "service", None)
    seconds = service.settings.request_timeout_s if service is not None else float("nan")
    if service is not None:
        service.metrics.rejections.labels("timeout").inc()
    return error_response(504, timeout_message(seconds))


async def _on_missing_calibration(request: Request, exc: Exception) -> JSONResponse:
    # The method works once the model is calibrated: the message names the command.
    return error_response(503, f"this method is not ready for the configured model: {exc}", "not_ready_error")


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(500, "internal error; the request id in X-Request-Id finds it in the log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(DeadlineExceeded, _on_deadline)
    app.add_exception_handler(MissingCalibration, _on_missing_calibration)
    app.add_exception_handler(Exception, _on_unexpected)


# ---- what the schema says each route can answer ---------------------------------------------------------

_DESCRIPTIONS = {
    400: "The body is not JSON, or the request cannot be served as asked.",
    401: "Missing or invalid API key (only when the service has keys).",
    403: "The upstream API refused the request.",
    404: "Not found.",
    409: "Conflicts with the service's state (e.g. no index yet).",
    413: "The body is over the service's byte limit (or, on TEI's route, a text over the embedder's token limit).",
    422: "A value is invalid; the message names it and what is allowed. More passages or longer passages than "
    "the service's limits (this schema's maxItems / maxLength) are refused here too, with type request_too_large.",
    429: "Too many requests in flight; retry later.",
    502: "The upstream API failed or answered something unusable.",
    503: "Not ready: models loading, or the method needs a calibration the message names.",
    504: "The request took longer than the service's time limit.",
}
# Every POST route reads a body (400/413/422) and runs work under the concurrency and time limits.
BODY_ROUTE_ERRORS = (400, 401, 413, 422, 429, 503, 504)


def errors(*statuses: int, body: bool = True) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: its error statuses, each with the one error body."""
    from ragctx.api.schemas import ErrorResponse

    codes = sorted({*(BODY_ROUTE_ERRORS if body else ()), *statuses})
    return {code: {"model": ErrorResponse, "description": _DESCRIPTIONS[code]} for code in codes}
