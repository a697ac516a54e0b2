"""Where an integration's request runs: in this process (a `ContextEngine`) or on a ragctx server.

Both modes answer with the JSON shape of `CompressedContext.to_dict()` (what `/v1/compress` and `/v1/context`
return), and `read_kept_passages` is the one reader of it, so the two modes cannot drift apart.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from ragctx.engine import ContextEngine
from ragctx.state import Budget
from ragctx.types import Passage

COMPRESS_PATH = "/v1/compress"
CONTEXT_PATH = "/v1/context"


class ServerError(RuntimeError):
    """The ragctx server failed, refused the request, or answered something that is not a context."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class RequestOptions:
    """What one request asks for; None means the engine's (or the server's) configured default."""

    method: str | None = None
    budget_tokens: int | None = None
    rate: float | None = None
    threshold: float | None = None  # keep only units scoring at least this
    top_k: int | None = None  # keep at most this many units (sentences, ...), as the API's `top_k`
    stages: tuple[str, ...] | None = None

    def budget(self, default: Budget) -> Budget:
        """The budget asked for; without tokens or a rate, the default's (as the server does)."""
        if self.budget_tokens is None and self.rate is None:
            return Budget(tokens=default.tokens, rate=default.rate, threshold=self.threshold, top_k=self.top_k)
        return Budget(tokens=self.budget_tokens, rate=self.rate, threshold=self.threshold, top_k=self.top_k)

    def as_json(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "method": self.method,
            "budget": self.budget_tokens,
            "rate": self.rate,
            "threshold": self.threshold,
            "top_k": self.top_k,
            "stages": list(self.stages) if self.stages is not None else None,
        }
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class KeptSpan:
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class KeptPassage:
    """One passage of an answer that kept at least one span, with the scores that decided."""

    id: str
    title: str
    spans: list[KeptSpan]
    scores: dict[str, float]
    label: str | None
    retrieval_score: float | None
    metadata: dict[str, Any]

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.spans)


def read_kept_passages(answer: Mapping[str, Any]) -> list[KeptPassage]:
    """The passages of a context answer that keep something, in context order (dropped ones are left out)."""
    try:
        kept = []
        for p in answer["passages"]:
            spans = [KeptSpan(int(s["start"]), int(s["end"]), str(s["text"])) for s in p["spans"]]
            if not spans:
                continue
            score = p.get("retrieval_score")
            kept.append(
                KeptPassage(
                    id=str(p["id"]),
                    title=str(p.get("title") or ""),
                    spans=spans,
                    scores={str(k): float(v) for k, v in (p.get("scores") or {}).items()},
                    label=p.get("label"),
                    retrieval_score=float(score) if score is not None else None,
                    metadata=dict(p.get("metadata") or {}),
                )
            )
        return kept
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ServerError(f"the answer is not a ragctx context ({type(exc).__name__}: {exc})") from exc


class Backend(Protocol):
    """Runs compression of given passages, or retrieval + compression, and answers with context JSON."""

    def compress(self, question: str, passages: Sequence[Passage], options: RequestOptions) -> dict[str, Any]: ...

    async def acompress(
        self, question: str, passages: Sequence[Passage], options: RequestOptions
    ) -> dict[str, Any]: ...

    def context(self, question: str, options: RequestOptions) -> dict[str, Any]: ...

    async def acontext(self, question: str, options: RequestOptions) -> dict[str, Any]: ...


@dataclass
class InProcessBackend:
    """Runs the pipeline here; the async methods run it in a worker thread so the event loop stays free."""

    engine: ContextEngine

    def compress(self, question: str, passages: Sequence[Passage], options: RequestOptions) -> dict[str, Any]:
        budget = options.budget(self.engine.default_budget())
        stages = list(options.stages) if options.stages is not None else None
        return self.engine.run(question, list(passages), options.method, budget, stages).to_dict()

    async def acompress(self, question: str, passages: Sequence[Passage], options: RequestOptions) -> dict[str, Any]:
        return await asyncio.to_thread(self.compress, question, passages, options)

    def context(self, question: str, options: RequestOptions) -> dict[str, Any]:
        budget = options.budget(self.engine.default_budget())
        stages = list(options.stages) if options.stages is not None else None
        return self.engine.run(question, None, options.method, budget, stages).to_dict()

    async def acontext(self, question: str, options: RequestOptions) -> dict[str, Any]:
        return await asyncio.to_thread(self.context, question, options)


@dataclass
class ServerBackend:
    """Sends the request to a ragctx server (`ragctx serve`); `api_key` goes as a Bearer token."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0

    def compress(self, question: str, passages: Sequence[Passage], options: RequestOptions) -> dict[str, Any]:
        return self._post(COMPRESS_PATH, compress_request(question, passages, options))

    async def acompress(self, question: str, passages: Sequence[Passage], options: RequestOptions) -> dict[str, Any]:
        return await self._apost(COMPRESS_PATH, compress_request(question, passages, options))

    def context(self, question: str, options: RequestOptions) -> dict[str, Any]:
        return self._post(CONTEXT_PATH, {"question": question, **options.as_json()})

    async def acontext(self, question: str, options: RequestOptions) -> dict[str, Any]:
        return await self._apost(CONTEXT_PATH, {"question": question, **options.as_json()})

    def _url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        url = self._url(path)
        try:
            with httpx.Client(timeout=self.timeout_s) as client:
                response = client.post(url, json=payload, headers=self._headers())
        except httpx.HTTPError as exc:
            raise ServerError(f"POST {url} failed: {exc}") from exc
        return _answer_of(url, response.status_code, response.text)

    async def _apost(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        url = self._url(path)
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                response = await client.post(url, json=payload, headers=self._headers())
        except httpx.HTTPError as exc:
            raise ServerError(f"POST {url} failed: {exc}") from exc
        return _answer_of(url, response.status_code, response.text)


def compress_request(question: str, passages: Sequence[Passage], options: RequestOptions) -> dict[str, Any]:
    """The JSON body of `/v1/compress`."""
    return {
        "question": question,
        "passages": [
            {"id": p.id, "title": p.title, "text": p.text, "metadata": json_safe(p.metadata)} for p in passages
        ],
        **options.as_json(),
    }


def json_safe(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata as JSON can carry it: values JSON lacks (dates, paths, ...) become their str()."""
    safe: dict[str, Any] = json.loads(json.dumps(dict(metadata), default=str))
    return safe


def _answer_of(url: str, status: int, body: str) -> dict[str, Any]:
    if status >= 400:
        raise ServerError(f"POST {url} answered {status}: {_error_message(body)[:500]}", status)
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise ServerError(f"POST {url} answered {status} with a body that is not JSON: {body[:200]!r}") from exc
    if not isinstance(answer, dict):
        raise ServerError(f"POST {url} answered {status} with JSON that is not an object")
    return answer


def _error_message(body: str) -> str:
    """The message of the server's error body `{"error": {"message": ...}}`, else the body itself."""
    try:
        error = json.loads(body)["error"]
        return str(error["message"])
    except (ValueError, KeyError, TypeError):
        return body


# ---- the fields an integration's component declares (pydantic: the component is a boundary) ------------


class RagctxConnection(BaseModel):
    """Where ragctx runs: in this process (`engine`) or on a server (`base_url`). The fields every
    integration (LangChain, LlamaIndex) shares, so their settings read the same."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: ContextEngine | None = Field(
        default=None,
        description="In-process mode: the engine to run. Left out (and no base_url): a ContextEngine built "
        "from the environment's settings on first use.",
    )
    base_url: str | None = Field(default=None, description="Server mode: the ragctx server, e.g. http://host:8000")
    api_key: SecretStr | None = Field(default=None, description="Server mode: sent as `Authorization: Bearer`.")
    timeout_s: float = Field(default=60.0, gt=0, description="Server mode: seconds to wait for an answer.")

    _backend: Backend | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_mode(self) -> RagctxConnection:
        if self.engine is not None and self.base_url is not None:
            raise ValueError("give an engine (in process) or a base_url (server), not both")
        return self

    def backend(self) -> Backend:
        if self._backend is None:
            if self.base_url is not None:
                key = self.api_key.get_secret_value() if self.api_key is not None else None
                self._backend = ServerBackend(self.base_url, key, self.timeout_s)
            else:
                self._backend = InProcessBackend(self.engine or ContextEngine())
        return self._backend


class RagctxCompression(RagctxConnection):
    """What to keep; None means the engine's (or server's) configured default."""

    method: str | None = Field(default=None, description="Compression method (`ragctx stages`), `none` = off.")
    budget_tokens: int | None = Field(default=None, ge=1, description="Token budget of the whole context.")
    rate: float | None = Field(default=None, gt=0, le=1, description="Or: fraction of the tokens to keep.")
    threshold: float | None = Field(default=None, description="Keep only units scoring at least this.")
    top_k: int | None = Field(default=None, ge=1, description="Keep at most this many units (sentences, ...).")
    stages: list[str] | None = Field(default=None, description="Pipeline stages, in order.")

    @model_validator(mode="after")
    def _budget_or_rate(self) -> RagctxCompression:
        if self.budget_tokens is not None and self.rate is not None:
            raise ValueError("give budget_tokens or rate, not both")
        return self

    def request_options(self) -> RequestOptions:
        return RequestOptions(
            method=self.method,
            budget_tokens=self.budget_tokens,
            rate=self.rate,
            threshold=self.threshold,
            top_k=self.top_k,
            stages=tuple(self.stages) if self.stages is not None else None,
        )
