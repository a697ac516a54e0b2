"""Fuzz the OpenAPI schema with schemathesis against the real service on loopback, with every check
schemathesis has (`--checks all`: no 5xx, statuses, content types, headers and bodies as documented,
schema-valid requests accepted, schema-invalid ones refused, ...), on data that fits the schema and data
that breaks it; and every error is the service's JSON error body with a message.

Bounded: a few examples per operation, and the service's size limits made small (5 passages, 20 kB bodies)
so generated inputs stay cheap for the models (more or longer ones must get a 422, which is checked like any
other error). `/v1/chat/completions` is fuzzed on its own against a service whose upstream is a STUB of the
external LLM (tests/test_api.py's StubUpstream, on loopback): generating with the local reader per example
would be too slow, and the upstream is not ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from test_api import StubUpstream, running

from ragctx.api import create_app
from ragctx.indexes.faiss_index import FaissIndex
from ragctx.indexes.loaders import read_documents
from ragctx.models import ModelRegistry
from ragctx.sample import sample_corpus_path
from ragctx.settings import Settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import CHECKS, load_all_checks  # noqa: E402

load_all_checks()
ALL_CHECKS = CHECKS.get_all()
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
# The repo's schemathesis.toml, which `schemathesis run` reads too: 413 counts as a refusal.
CONFIG = schemathesis.config.SchemathesisConfig.from_path(Path(__file__).parents[1] / "schemathesis.toml")

EXAMPLES_PER_OPERATION = 6


def small_settings(settings: Settings, index_dir: Any, **extra: Any) -> Settings:
    return settings.model_copy(
        update={
            "index_dir": index_dir,
            "max_passages": 5,
            "max_passage_chars": 2_000,  # below the body limit, so too long a passage meets its own 422
            "max_request_chars": 20_000,
            "request_timeout_s": 60.0,
            **extra,
        }
    )


@pytest.fixture(scope="module")
def api_schema(settings: Settings, registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    small = small_settings(settings, tmp_path_factory.mktemp("fuzz-index"))
    with running(create_app(small, registry)) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json", config=CONFIG).exclude(path="/v1/chat/completions")


@pytest.fixture(scope="module")
def chat_schema(settings: Settings, registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # A throwaway index of 30 sample passages, so chat without passages retrieves and reaches its 200.
    index_dir = tmp_path_factory.mktemp("fuzz-chat") / "index"
    passages = islice(read_documents([sample_corpus_path()], chunk_words=120), 30)
    FaissIndex.build(index_dir, passages, registry.embedder(), embedder_name="default").close()
    upstream = StubUpstream()
    small = small_settings(settings, index_dir, upstream_base_url=upstream.base_url)
    try:
        with running(create_app(small, registry)) as url:
            yield schemathesis.openapi.from_url(f"{url}/openapi.json", config=CONFIG).include(
                path="/v1/chat/completions"
            )
    finally:
        upstream.close()


def check_response(case: Any, checks: list[Any]) -> int:
    response = case.call(timeout=120)
    where = f"{case.method} {case.formatted_path}"
    case.validate_response(response, checks=checks)  # raises with every failed check, named
    if response.status_code >= 400:
        body = response.json()
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        assert isinstance(message, str) and message, f"{where}: error without a message: {body}"
    return int(response.status_code)


def fuzz_operations(schema: Any, checks: list[Any] = ALL_CHECKS) -> list[int]:
    # Hypothesis driven by hand: schemathesis' pytest plugin does not run under this pytest (9.x).
    statuses: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in MODES:

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                derandomize=True,  # the same examples every run: a failure here is reproducible
                database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            def fuzz(case: Any) -> None:
                statuses.append(check_response(case, checks))

            try:
                fuzz()
            except hypothesis.errors.Unsatisfiable:
                # A route with no parameters and no body (GET /healthz) has no invalid request to make.
                assert mode is schemathesis.GenerationMode.NEGATIVE, f"{operation.label}: no valid request made"
    return statuses


def test_every_schemathesis_check_passes_and_every_error_has_a_json_message(api_schema: Any) -> None:
    paths = {result.ok().path for result in api_schema.get_all_operations()}
    assert paths >= {"/v1/compress", "/v1/context", "/v1/rerank", "/v1/documents"}
    statuses = fuzz_operations(api_schema)
    assert len(statuses) >= 2 * len(paths)  # every operation was called, with valid and invalid data
    assert any(s < 400 for s in statuses) and any(s >= 400 for s in statuses)


def test_chat_completions_fuzzed_in_front_of_a_stub_upstream(chat_schema: Any) -> None:
    assert {result.ok().path for result in chat_schema.get_all_operations()} == {"/v1/chat/completions"}
    # All checks but positive_data_acceptance: in front of an upstream, chat refuses a soft method
    # (compllm) with 400, and which methods a request may name depends on the service's upstream, which
    # no static schema can say.
    checks = [c for c in ALL_CHECKS if c.__name__ != "positive_data_acceptance"]
    statuses = fuzz_operations(chat_schema, checks)
    assert 200 in statuses and any(s >= 400 for s in statuses)  # the success path too, not only refusals
