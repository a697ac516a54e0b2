"""Behaviour kept across refactors: `ragctx compress` on 20 NQ-20 dev questions with every compression
method gives exactly the outputs stored in `tests/golden/compress.json.gz` (timing fields aside).

The file was written before the package was re-layered (issue 19) and is compared, not rewritten, by the
test. For an intended change of behaviour, rewrite it on purpose and say so in the commit:
`UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py` (not a RAGCTX_ variable: the tests
clear those).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ragctx.cli import app

GOLDEN = Path(__file__).parent / "golden" / "compress.json.gz"
METHODS = ["budget", "truncate", "random-drop", "embed-passages", "ehpc", "exit", "embed-passages+ehpc"]
QUESTIONS = 20
PASSAGES = 6  # the gold passage and the first five others: every method, 20 questions, in about a minute


def _inputs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows[:QUESTIONS]:
        gold = row["gold_index"]
        keep = sorted({gold, *[i for i in range(len(row["passages"])) if i != gold][: PASSAGES - 1]})
        passages = [{k: row["passages"][i][k] for k in ("id", "title", "text")} for i in keep]
        out.append({"question": row["question"], "passages": passages})
    return out


def _comparable(value: Any) -> Any:
    """Timing fields out; floats to 6 significant digits (the same machine gives the same bits, but a JSON
    round trip of a float need not print the same digits everywhere)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k != "ms" and not k.endswith("_ms")}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


@pytest.mark.slow
def test_compress_outputs_equal_the_stored_golden_outputs_for_every_method(nq20_rows, tmp_path, monkeypatch):
    # float32 models: golden outputs must not depend on whether this CPU has bf16 instructions (`auto`).
    monkeypatch.setenv("RAGCTX_LM_DTYPE", "float32")
    monkeypatch.setenv("RAGCTX_EMBEDDER_BACKEND", "torch")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _inputs(nq20_rows)))
    runner = CliRunner()
    got: dict[str, list[Any]] = {}
    for method in METHODS:
        out = tmp_path / f"{method}.jsonl"
        result = runner.invoke(app, ["compress", "-i", str(src), "-o", str(out), "-m", method, "--rate", "0.25"])
        assert result.exit_code == 0, result.output
        got[method] = [_comparable(json.loads(line)) for line in out.read_text().splitlines()]
        assert len(got[method]) == QUESTIONS
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_bytes(gzip.compress(json.dumps(got, indent=0, sort_keys=True).encode(), mtime=0))
    want = json.loads(gzip.decompress(GOLDEN.read_bytes()))
    assert sorted(want) == sorted(got)
    for method in METHODS:
        for i, (a, b) in enumerate(zip(want[method], got[method], strict=True)):
            assert a == b, f"{method}: question {i} ({a['question']!r}) differs from the golden output"
