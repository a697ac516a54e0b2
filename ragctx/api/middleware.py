"""ASGI middleware: request ids, access logs and latency; authentication and the body-size limit.

Plain ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragctx.api.errors import ApiError, error_response
from ragctx.api.logs import request_id_var
from ragctx.api.metrics import ServiceMetrics

log = logging.getLogger("ragctx.api.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# /ui is a static page with no data in it; the requests it makes carry the key the user types.
PUBLIC_PATHS = frozenset({"/healthz", "/ui"})


class RequestContextMiddleware:
    """Gives every request an id (the caller's X-Request-Id if sane), logs it, times it per route."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request failed")
            if not response_started:
                response = error_response(500, f"internal error; request id {request_id}", "internal_error")
                await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _route_of(scope)
            self.metrics.request_seconds.labels(route, scope["method"], str(status)).observe(seconds)
            log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round(seconds * 1000, 1),
                },
            )
            request_id_var.reset(token)


class GuardMiddleware:
    """Refuses, before any body is parsed: bad or missing API keys (401), bodies over the size limit (413)."""

    def __init__(self, app: ASGIApp, api_keys: Sequence[str], max_body_bytes: int, metrics: ServiceMetrics) -> None:
        self.app = app
        self.api_keys = [k.encode() for k in api_keys]
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_keys and scope["path"] not in PUBLIC_PATHS and not self._authorized(scope):
            response = error_response(
                401,
                "missing or invalid API key (send `Authorization: Bearer <key>`)",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            self.metrics.rejections.labels("too_large").inc()
            await self._too_large()(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _authorized(self, scope: Scope) -> bool:
        value = _header(scope, b"authorization") or ""
        scheme, _, key = value.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        given = key.strip().encode()
        # Compare against every key, without stopping early, in constant time per key.
        matches = [hmac.compare_digest(given, k) for k in self.api_keys]
        return any(matches)

    def _too_large(self) -> Any:
        return error_response(413, f"the request body is larger than the limit of {self.max_body_bytes} bytes")

    def _counting(self, receive: Receive) -> Receive:
        """`receive` that fails once more bytes arrive than allowed (bodies without a Content-Length)."""
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    self.metrics.rejections.labels("too_large").inc()
                    raise ApiError(413, f"the request body is larger than the limit of {self.max_body_bytes} bytes")
            return message

        return wrapped


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _route_of(scope: Scope) -> str:
    # The route template (`/v1/context`), never the raw path: unknown paths must not explode label counts.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
