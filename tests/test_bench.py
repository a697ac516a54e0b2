"""The bench harness writes JSON, Markdown and a plot with every baseline row."""

from __future__ import annotations

import json

from ragctx.bench.harness import BenchConfig, run_bench
from tests.conftest import need_data


def test_bench_reports_every_method_with_recall_accuracy_and_stage_times(settings, tmp_path):
    data = need_data("nq20/nq20_dev.jsonl.gz")
    cfg = BenchConfig(data=data, n=4, reader_limit=1, rates=[0.25], methods=["truncate"], out=tmp_path)
    report = run_bench(settings, cfg)
    rows = {(r.method, r.target_rate): r for r in report.rows}
    assert set(rows) == {
        ("none", None),
        ("reorder-lim-langchain", None),
        ("truncate", 0.25),
        ("closed-book", None),
        ("gold-only", None),
    }
    assert rows[("none", None)].kept_ratio == 1.0
    assert rows[("none", None)].answer_recall == 1.0  # exactly one passage holds an answer
    assert rows[("gold-only", None)].answer_recall == 1.0
    assert rows[("truncate", 0.25)].kept_ratio <= 0.25
    assert rows[("truncate", 0.25)].stage_ms["truncate"][0] > 0
    assert all(r.reader_n == 1 and r.reader_accuracy is not None for r in report.rows)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert len(saved["rows"]) == 5
    assert "| truncate | 0.25 |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
