"""A method from another package plugs in through the `ragctx.methods` entry points: it is listed, takes
its own settings section and runs through the CLI like a built-in one; a clashing name is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = """
from dataclasses import dataclass

from pydantic import Field

from ragctx.method import Method, MethodSettings


class LeadSettings(MethodSettings):
    sentences: int = Field(default=1, ge=1, description="Sentences kept from the top of each passage.")


@dataclass
class LeadScorer:
    keep: int
    name: str = "lead"
    granularity: str = "sentence"
    floor: float = 0.5  # units scoring 0 are never kept

    def score(self, state, units):
        seen: dict[int, int] = {}
        out = []
        for u in units:
            seen[u.passage_index] = seen.get(u.passage_index, 0) + 1
            out.append(1.0 if seen[u.passage_index] <= self.keep else 0.0)
        return out


METHOD = Method("lead", "keeps the first sentences of each passage", "compressor",
                lambda ctx, cfg: LeadScorer(cfg.sentences), LeadSettings)
CLASH = Method("budget", "a second budget", "compressor", lambda ctx, cfg: LeadScorer(1))
"""


def _install(root: Path, entry: str) -> None:
    """A real installed distribution as importlib.metadata finds it: a dist-info folder on sys.path."""
    (root / "ragctx_lead.py").write_text(PLUGIN)
    info = root / "ragctx_lead-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ragctx-lead\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ragctx.methods]\n{entry}\n")


def _ragctx(root: Path, settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAGCTX_")}
    environ |= {"PYTHONPATH": str(root), "RAGCTX_CACHE_DIR": str(settings.cache_dir), **env}
    return subprocess.run(
        [sys.executable, "-m", "ragctx.cli", *args], env=environ, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_an_installed_method_is_listed_configured_and_run_by_the_cli(tmp_path, settings, nq20_rows):
    _install(tmp_path, "lead = ragctx_lead:METHOD")
    listed = _ragctx(tmp_path, settings, "stages", "--markdown")
    assert listed.returncode == 0, listed.stderr
    assert "| `lead` | compressor | keeps the first sentences of each passage | `[lead]` `sentences` |" in listed.stdout
    documented = _ragctx(tmp_path, settings, "config", "--markdown")
    assert "`RAGCTX_LEAD__SENTENCES`" in documented.stdout

    row = nq20_rows[0]
    src = tmp_path / "in.jsonl"
    passages = [{k: p[k] for k in ("id", "title", "text")} for p in row["passages"][:3]]
    src.write_text(json.dumps({"question": row["question"], "passages": passages}) + "\n")
    kept = {}
    for n in ("1", "2"):
        out = tmp_path / f"out{n}.jsonl"
        run = _ragctx(
            tmp_path,
            settings,
            "compress",
            "-i",
            str(src),
            "-o",
            str(out),
            "-m",
            "lead",
            "--rate",
            "1",
            RAGCTX_LEAD__SENTENCES=n,
        )
        assert run.returncode == 0, run.stderr
        ctx = json.loads(out.read_text())
        kept[n] = {p["id"]: sum(len(s["text"]) for s in p["spans"]) for p in ctx["passages"] if p["spans"]}
        assert all(p["spans"][0]["start"] == 0 for p in ctx["passages"] if p["spans"])
    assert set(kept["1"]) == {p["id"] for p in passages}
    # The section's setting reached the method: a second sentence wherever a passage has one.
    assert all(kept["2"][i] >= kept["1"][i] for i in kept["1"]) and sum(kept["2"].values()) > sum(kept["1"].values())

    bad = _ragctx(tmp_path, settings, "config", RAGCTX_LEAD__SENTENCES="0")
    assert bad.returncode == 2 and "RAGCTX_LEAD__SENTENCES" in bad.stderr + bad.stdout


def test_a_method_whose_name_is_taken_is_refused(tmp_path, settings):
    _install(tmp_path, "budget2 = ragctx_lead:CLASH")
    run = _ragctx(tmp_path, settings, "stages")
    assert run.returncode != 0 and "clashes" in run.stderr
