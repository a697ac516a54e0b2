"""Fuzz the OpenAPI schema with schemathesis against the real service on loopback: no 5xx, and every error
is the service's JSON error body with a message.

Bounded: a few examples per operation, and the service's size limits made small (5 passages, 20 kB bodies)
so generated inputs stay cheap for the models (larger ones must get a 413, which is checked like any other
error). `/v1/chat/completions` is fuzzed on its own against a service whose upstream is a STUB of the
external LLM (tests/test_api.py's StubUpstream, on loopback): generating with the local reader per example
would be too slow, and the upstream is not ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
from test_api import StubUpstream, running

from ragctx.api import create_app
from ragctx.models import ModelRegistry
from ragctx.settings import Settings

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES_PER_OPERATION = 6


def small_settings(settings: Settings, index_dir: Any, **extra: Any) -> Settings:
    return settings.model_copy(
        update={
            "index_dir": index_dir,
            "max_passages": 5,
            "max_request_chars": 20_000,
            "request_timeout_s": 60.0,
            **extra,
        }
    )


@pytest.fixture(scope="module")
def api_schema(settings: Settings, registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    small = small_settings(settings, tmp_path_factory.mktemp("fuzz-index"))
    with running(create_app(small, registry)) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json").exclude(path="/v1/chat/completions")


@pytest.fixture(scope="module")
def chat_schema(settings: Settings, registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    upstream = StubUpstream()
    small = small_settings(settings, tmp_path_factory.mktemp("fuzz-chat-index"), upstream_base_url=upstream.base_url)
    try:
        with running(create_app(small, registry)) as url:
            yield schemathesis.openapi.from_url(f"{url}/openapi.json").include(path="/v1/chat/completions")
    finally:
        upstream.close()


def check_response(case: Any) -> int:
    response = case.call(timeout=120)
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        body = response.json()
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        assert isinstance(message, str) and message, f"{where}: error without a message: {body}"
    return int(response.status_code)


def fuzz_operations(schema: Any) -> list[int]:
    # Hypothesis driven by hand: schemathesis' pytest plugin does not run under this pytest (9.x).
    statuses: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,  # the same examples every run: a failure here is reproducible
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def fuzz(case: Any) -> None:
            statuses.append(check_response(case))

        fuzz()
    return statuses


def test_no_server_errors_and_every_error_has_a_json_message(api_schema: Any) -> None:
    paths = {result.ok().path for result in api_schema.get_all_operations()}
    assert paths >= {"/v1/compress", "/v1/context", "/v1/rerank", "/v1/documents"}
    statuses = fuzz_operations(api_schema)
    assert len(statuses) >= len(paths)  # every operation was called
    assert any(s < 400 for s in statuses) and any(s >= 400 for s in statuses)


def test_chat_completions_fuzzed_in_front_of_a_stub_upstream(chat_schema: Any) -> None:
    assert {result.ok().path for result in chat_schema.get_all_operations()} == {"/v1/chat/completions"}
    statuses = fuzz_operations(chat_schema)
    assert statuses and any(s >= 400 for s in statuses)
