"""OpenAI-compatible chat completions with the context built by ragctx.

The last user message is the question. Its context (retrieved, or from the passages in the extra body field
`ragctx`) is added to the system message, and the request goes to the upstream API, or, with none
configured, the embedded local reader answers. What was kept is in the header X-Ragctx-Kept and, when not
streaming, in the extra top-level field `ragctx` of the response.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from ragctx.api.errors import ApiError, errors
from ragctx.api.limits import Slot, run_in_thread
from ragctx.api.routes import check_passages, service_of
from ragctx.api.schemas import ChatRequest, ModelCard, ModelList
from ragctx.api.service import Service
from ragctx.reader import LocalAnswer
from ragctx.registry import SOFT_METHODS, text_method
from ragctx.types import CompressedContext

router = APIRouter()

KEPT_HEADER = "X-Ragctx-Kept"
MAX_KEPT_HEADER_CHARS = 4000  # well under the 8 KiB that common proxies allow for all headers together
LOCAL_NEW_TOKENS = 32  # the reader answers with a short phrase (and stops at the first line break)
MAX_LOCAL_NEW_TOKENS = 512
CONTEXT_INSTRUCTION = "Answer using the documents below where they help; some of them may be irrelevant.\n\n"


def kept_header(ctx: CompressedContext) -> str:
    """`id:start-end` for every kept span, comma-separated (ids percent-encoded); `+N` = N more not listed."""
    entries = [f"{quote(s.passage_id, safe='')}:{s.start}-{s.end}" for s in ctx.spans]
    out: list[str] = []
    size = 0
    for i, entry in enumerate(entries):
        if size + len(entry) + 8 > MAX_KEPT_HEADER_CHARS:
            out.append(f"+{len(entries) - i}")
            break
        out.append(entry)
        size += len(entry) + 1
    return ",".join(out)


def with_context(messages: list[dict[str, Any]], context: str) -> list[dict[str, Any]]:
    """The messages with the context appended to the leading system message (or in a new one)."""
    block = CONTEXT_INSTRUCTION + context
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{block}"}
        return [first, *messages[1:]]
    # One system message, first: some chat templates reject any other placement.
    return [{"role": "system", "content": block}, *messages]


@router.post(
    "/v1/chat/completions",
    tags=["chat"],
    responses={
        200: {
            "description": "OpenAI's chat completion, or its event stream with `stream: true`.",
            "content": {"application/json": {}, "text/event-stream": {}},
        },
        # The upstream's own 4xx pass through with their status.
        **errors(403, 404, 409, 502),
    },
)
async def chat_completions(body: ChatRequest, request: Request) -> Response:
    service = service_of(request)
    options = body.ragctx
    passages = [p.to_passage() for p in options.passages] if options.passages else None
    if passages:
        check_passages(service, [p.text for p in passages])
    budget = options.to_budget(service.engine.default_budget())
    question = body.question()
    soft = options.method in SOFT_METHODS
    if soft and service.upstream is not None:
        raise ApiError(
            400,
            f"method {options.method!r} makes a soft prompt (embeddings) that cannot be sent to the text-only "
            "upstream API; use a text method, or run the service without an upstream so the local reader answers",
        )
    slot = await service.admit()
    handed_to_stream = False
    try:
        with service.deadline():
            ctx = await run_in_thread(
                slot,
                lambda: service.build_context(question, passages, budget, text_method(options.method), options.stages),
            )
            service.metrics.observe_context(ctx, "/v1/chat/completions")
            headers = {KEPT_HEADER: kept_header(ctx)}
            if service.upstream is None:
                answer = await run_in_thread(
                    slot, lambda: _local_answer(service, question, ctx, options.method, body.max_tokens)
                )
                model = body.model or f"ragctx-local/{service.settings.reader_model}"
                if body.stream:
                    return StreamingResponse(
                        _local_chunks(answer.text, model), media_type="text/event-stream", headers=headers
                    )
                return JSONResponse(_local_completion(answer, model, ctx), headers=headers)
            payload = _upstream_payload(body, ctx.text)
            auth = _passed_on_authorization(service, request)
            if not body.stream:
                return await _forward(service.upstream, payload, auth, headers, ctx)
            response = await _open_stream(service.upstream, payload, auth)
            handed_to_stream = True
            return StreamingResponse(
                _relay(response, slot),
                status_code=response.status_code,
                media_type=response.headers.get("content-type", "text/event-stream"),
                headers=headers,
                # Also after a client that left before the first byte: the relay never ran then.
                background=BackgroundTask(_end_relay, response, slot),
            )
    finally:
        if not handed_to_stream:
            slot.release()


# ---- local reader ---------------------------------------------------------------------------------------


def _local_answer(
    service: Service, question: str, ctx: CompressedContext, method: str | None, max_tokens: int | None
) -> LocalAnswer:
    new_tokens = LOCAL_NEW_TOKENS if max_tokens is None else min(max_tokens, MAX_LOCAL_NEW_TOKENS)
    try:
        return service.engine.answer_locally(question, ctx, method, new_tokens)
    except (ValueError, FileNotFoundError) as exc:  # e.g. no CompLLM adapter for this reader
        raise ApiError(400, str(exc)) from None


def _local_completion(answer: LocalAnswer, model: str, ctx: CompressedContext) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        },
        "ragctx": ctx.to_dict(),
    }


async def _local_chunks(text: str, model: str) -> AsyncIterator[bytes]:
    """The whole answer as OpenAI's chunk stream: a role chunk, word chunks, a stop chunk, [DONE]."""
    chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        obj = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""})
    for piece in re.findall(r"\S+\s*", text):
        yield chunk({"content": piece})
    yield chunk({}, "stop")
    yield b"data: [DONE]\n\n"


# ---- upstream ------------------------------------------------------------------------------------------


def _upstream_payload(body: ChatRequest, context: str) -> dict[str, Any]:
    # Only what the caller sent goes upstream (no defaults of ours), less our own extra field.
    payload = body.model_dump(exclude_unset=True, exclude={"ragctx"})
    messages = [m.model_dump(exclude_unset=True) for m in body.messages]
    payload["messages"] = with_context(messages, context) if context else messages
    return payload


def _passed_on_authorization(service: Service, request: Request) -> dict[str, str]:
    """With no upstream key configured and no keys of its own, the service passes the caller's key on."""
    s = service.settings
    given = request.headers.get("authorization")
    if s.upstream_api_key is None and not s.api_keys and given:
        return {"Authorization": given}
    return {}


async def _forward(
    client: httpx.AsyncClient,
    payload: dict[str, Any],
    auth: dict[str, str],
    headers: dict[str, str],
    ctx: CompressedContext,
) -> JSONResponse:
    data = await _upstream_json(client.post("chat/completions", json=payload, headers=auth))
    if isinstance(data, dict):
        data["ragctx"] = ctx.to_dict()
    return JSONResponse(data, headers=headers)


async def _open_stream(client: httpx.AsyncClient, payload: dict[str, Any], auth: dict[str, str]) -> httpx.Response:
    request = client.build_request("POST", "chat/completions", json=payload, headers=auth)
    try:
        response = await client.send(request, stream=True)
    except httpx.TimeoutException:
        raise ApiError(504, "the upstream API did not answer in time") from None
    except httpx.HTTPError as exc:
        raise ApiError(502, f"the upstream API is unreachable: {exc}") from None
    if response.status_code >= 400:
        content = await response.aread()
        await response.aclose()
        raise _upstream_failed(response.status_code, content)
    return response


async def _relay(response: httpx.Response, slot: Slot) -> AsyncIterator[bytes]:
    """The upstream's event stream, byte for byte; the request's slot is held until it ends."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        await _end_relay(response, slot)


async def _end_relay(response: httpx.Response, slot: Slot) -> None:
    await response.aclose()  # both are idempotent
    slot.release()


def _upstream_failed(status: int, content: bytes) -> ApiError:
    """The upstream's error in our shape: 4xx keep their status (the request was bad), 5xx become 502."""
    return ApiError(status if status < 500 else 502, _message_of(content, status), "upstream_error")


def _message_of(content: bytes, status: int) -> str:
    try:
        data = json.loads(content)
        if isinstance(data, dict) and isinstance(data.get("error"), dict) and "message" in data["error"]:
            return f"upstream API: {data['error']['message']}"
    except ValueError:
        pass
    return f"the upstream API answered {status}: {content[:300].decode('utf-8', 'replace')}"


# ---- models (OpenAI's shape): what clients and UIs list on start-up -----------------------------------


def _local_model(service: Service) -> dict[str, Any]:
    return {
        "id": f"ragctx-local/{service.settings.reader_model}",
        "object": "model",
        "created": service.started_at,
        "owned_by": "ragctx",
    }


async def _upstream_get(service: Service, request: Request, path: str) -> Any:
    assert service.upstream is not None
    return await _upstream_json(service.upstream.get(path, headers=_passed_on_authorization(service, request)))


async def _upstream_json(call: Awaitable[httpx.Response]) -> Any:
    """The upstream's JSON answer; its failures in our error shape (504 timeout, 502 unreachable or not
    JSON, its own 4xx kept)."""
    try:
        response = await call
    except httpx.TimeoutException:
        raise ApiError(504, "the upstream API did not answer in time") from None
    except httpx.HTTPError as exc:
        raise ApiError(502, f"the upstream API is unreachable: {exc}") from None
    if response.status_code >= 400:
        raise _upstream_failed(response.status_code, response.content)
    try:
        return response.json()
    except ValueError:
        raise ApiError(502, "the upstream API answered with something that is not JSON") from None


@router.get("/v1/models", response_model=ModelList, tags=["chat"], responses=errors(401, 404, 502, 504, body=False))
async def list_models(request: Request) -> dict[str, Any]:
    """The upstream's models when one is configured (passed through), else the local reader."""
    service = service_of(request)
    if service.upstream is None:
        return {"object": "list", "data": [_local_model(service)]}
    data = await _upstream_get(service, request, "models")
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ApiError(502, "the upstream API's model list is not OpenAI's shape")
    return data


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelCard,
    tags=["chat"],
    responses=errors(401, 404, 502, 504, body=False),
)
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    service = service_of(request)
    if service.upstream is None:
        local = _local_model(service)
        if model_id != local["id"]:
            raise ApiError(404, f"model {model_id!r} not found; this service serves {local['id']!r}")
        return local
    data = await _upstream_get(service, request, f"models/{quote(model_id, safe='/')}")
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise ApiError(502, "the upstream API's model is not OpenAI's shape")
    return data
