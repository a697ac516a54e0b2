"""One rule, one engine: the CLI, the Python front door, REST and LangChain (in process and against the
service) give the same context for the same caller-given passages: the same passages, in the same order,
with the same kept spans, and the same text where the interface returns one."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import ragctx
from ragctx.api import create_app
from ragctx.cli import app
from tests.conftest import passages_of
from tests.test_api import running

pytest.importorskip("langchain_core")
from langchain_core.documents import Document  # noqa: E402

from ragctx.integrations.langchain import RagctxCompressor  # noqa: E402

# The default chain (no method named) and a baseline that keeps the caller's order, at one rate.
CASES = [(None, 0.25), ("budget", 0.1)]


def _spans(passages: list[dict[str, Any]]) -> list[tuple[str, list[tuple[int, int]]]]:
    """(passage id, kept [start, end) spans) of the passages that keep something, in context order."""
    return [(p["id"], [(s["start"], s["end"]) for s in p["spans"]]) for p in passages if p["spans"]]


@pytest.fixture(scope="module")
def inputs(nq20_rows) -> list[dict[str, Any]]:
    rng = random.Random(7)
    out = []
    for row in nq20_rows[:3]:
        passages = passages_of(row)
        rng.shuffle(passages)  # as an unsorted retriever would hand them over
        given = [{"id": p.id, "title": p.title, "text": p.text} for p in passages]
        out.append({"question": row["question"], "passages": given})
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("method", "rate"), CASES)
def test_every_interface_gives_the_same_context_for_the_same_input(
    method, rate, inputs, engine, registry, settings, tmp_path
):
    # CLI: `ragctx compress` on a JSONL file (same cache folder, so the same converted model).
    config = tmp_path / "ragctx.toml"
    config.write_text(f'cache_dir = "{settings.cache_dir}"\nindex_dir = "{settings.index_dir}"\n')
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in inputs))
    args = ["compress", "-i", str(src), "-o", str(dst), "--rate", str(rate), "-c", str(config)]
    result = CliRunner().invoke(app, args + (["-m", method] if method else []))
    assert result.exit_code == 0, result.output
    cli = [json.loads(line) for line in dst.read_text().splitlines()]

    python = [
        ragctx.compress(r["question"], r["passages"], rate=rate, method=method, engine=engine).to_dict() for r in inputs
    ]

    with running(create_app(settings, registry)) as url, httpx.Client(base_url=url, timeout=120) as http:
        rest = []
        for r in inputs:
            response = http.post("/v1/compress", json={**r, "rate": rate} | ({"method": method} if method else {}))
            assert response.status_code == 200, response.text
            rest.append(response.json())
        served = RagctxCompressor(base_url=url, method=method, rate=rate)
        over_http = [served.compress_documents(_documents(r), r["question"]) for r in inputs]
    in_process = RagctxCompressor(engine=engine, method=method, rate=rate)
    langchain = [in_process.compress_documents(_documents(r), r["question"]) for r in inputs]

    for i, r in enumerate(inputs):
        want = _spans(python[i]["passages"])
        assert want, "the case keeps nothing: it would not tell the interfaces apart"
        assert _spans(cli[i]["passages"]) == want, f"CLI differs on question {i}"
        assert _spans(rest[i]["passages"]) == want, f"REST differs on question {i}"
        assert cli[i]["context"] == rest[i]["context"] == python[i]["context"]
        texts = {p["id"]: p["text"] for p in r["passages"]}
        for name, docs in (("LangChain", langchain[i]), ("LangChain over REST", over_http[i])):
            got = [(d.metadata["id"], d.page_content) for d in docs]
            assert got == [(pid, " ".join(texts[pid][a:b] for a, b in spans)) for pid, spans in want], name


def _documents(request: dict[str, Any]) -> list[Document]:
    return [
        Document(page_content=p["text"], metadata={"id": p["id"], "title": p.get("title", "")})
        for p in request["passages"]
    ]
