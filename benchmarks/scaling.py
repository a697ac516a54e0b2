"""Compression time and memory against context length (issue 4): EHPC and EXIT at 1k, 4k and 16k tokens.

The context is the first NQ-20 dev question's 20 passages, continued with the passages of the following
questions until the length is reached (cut at a passage boundary); the budget is rate 0.1. Each method
runs through the pipeline's own CompressStage (shared selection). Memory: on CUDA the peak allocated
during the call above what was allocated before it; on CPU the peak resident set size growth during the
call, sampled every 5 ms. `ehpc-one-chunk` is EHPC with chunking off (the whole context in one prefill):
the memory EHPC's chunking saves.

On a bare GPU machine: `--model M.gguf --heads-file heads.json --nq PATH --device cuda`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ragctx.compressors.ehpc import EHPCScorer  # noqa: E402
from ragctx.compressors.evaluator_heads import EvaluatorHeads, heads_path  # noqa: E402
from ragctx.compressors.exit import ExitLMScorer  # noqa: E402
from ragctx.compressors.selection import CompressStage, UnitScorer  # noqa: E402
from ragctx.evaluation.data import find_nq20, load_nq20  # noqa: E402
from ragctx.models import LanguageModel, load_lm  # noqa: E402
from ragctx.segmentation import TokenCounter  # noqa: E402
from ragctx.state import Budget, PipelineState, render  # noqa: E402
from ragctx.types import Passage  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakRSS:
    """Peak resident set size growth while the block runs (a sampling thread)."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.base


def context_of(nq: Path, counter: TokenCounter, tokens: int) -> tuple[str, list[Passage], list[str]]:
    questions = load_nq20(nq, 60)
    first = questions[0]
    pool = [p for q in questions for p in q.passages]
    passages: list[Passage] = []
    used = 0
    for p in pool:
        size = counter.count(p.titled_text) + 8  # the rendered header
        if passages and used + size > tokens:
            break
        passages.append(p)
        used += size
    if first.passages[first.gold_index] not in passages:  # short contexts: keep the answer in
        passages[-1] = first.passages[first.gold_index]
    return first.question, passages, first.answers


def measure(lm: LanguageModel, stage: CompressStage, question: str, passages: list[Passage]) -> dict[str, float]:
    state = PipelineState(question, budget=Budget(rate=0.1))
    state.set_passages(passages)
    cuda = lm.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        stage.run(state)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "kept_tokens": stage.counter.count(render(state.passages))}
    out["peak_mib"] = ((torch.cuda.max_memory_allocated() - before) if cuda else rss.growth) / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1024,4096,16384")
    ap.add_argument("--methods", default="ehpc,ehpc-one-chunk,exit")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per cell (after one warm-up)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--heads-file", type=Path, default=None, help="evaluator heads JSON (default: calibrated)")
    ap.add_argument("--chunk-tokens", type=int, default=4096, help="EHPC chunk size (the setting's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ragctx")
    ap.add_argument("--nq", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench-out/scaling"))
    args = ap.parse_args()
    nq = args.nq or find_nq20()
    if nq is None:
        sys.exit("NQ-20 not found: pass --nq PATH")
    lm = load_lm(args.model, args.cache_dir, args.device)
    heads_file = args.heads_file or heads_path(args.cache_dir, lm)
    data = json.loads(heads_file.read_text())
    data["heads"] = [tuple(h) for h in data["heads"]]
    heads = EvaluatorHeads(**data)
    counter = TokenCounter(lm.tokenizer)
    scorers: dict[str, UnitScorer] = {
        "ehpc": EHPCScorer(lm, heads, chunk_tokens=args.chunk_tokens),
        "ehpc-one-chunk": EHPCScorer(lm, heads, chunk_tokens=10**9),
        "exit": ExitLMScorer(lm),
    }
    result: dict[str, Any] = {"model": lm.name, "device": str(lm.device), "rate": 0.1, "cells": []}
    result["hardware"] = (
        torch.cuda.get_device_name() if lm.device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    )
    for length in [int(x) for x in args.lengths.split(",")]:
        question, passages, answers = context_of(nq, counter, length)
        tokens = counter.count(render(_state(question, passages).passages))
        for method in args.methods.split(","):
            stage = CompressStage(scorers[method], counter)
            runs = [measure(lm, stage, question, passages) for _ in range(args.repeats + 1)][1:]
            cell = {
                "method": method,
                "target_tokens": length,
                "tokens": tokens,
                "passages": len(passages),
                "median_s": statistics.median(r["seconds"] for r in runs),
                "peak_mib": max(r["peak_mib"] for r in runs),
                "kept_tokens": runs[-1]["kept_tokens"],
            }
            result["cells"].append(cell)
            print(json.dumps(cell), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"{result['hardware']}, rate 0.1",
        "",
        "| method | tokens | passages | median s | peak MiB |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['method']} | {c['tokens']} | {c['passages']} | {c['median_s']:.3f} | {c['peak_mib']:.0f} |"
        for c in result["cells"]
    ]
    (args.out / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _state(question: str, passages: list[Passage]) -> PipelineState:
    state = PipelineState(question)
    state.set_passages(passages)
    return state


if __name__ == "__main__":
    main()
