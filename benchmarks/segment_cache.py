"""Segment KV cache: speed (cold vs warm, in process vs Redis), quality cost, Redis footprint.

1. Scoring 20 NQ passages for a new question through the evaluator heads: a full prefill (no cache),
   the cached path with a cold cache (every passage encoded and written), and with a warm cache (the
   passages were seen with another question). Medians over `--questions`.
2. Quality: answer recall of EHPC at rate 0.25 with cached segments vs one full prefill per request.
3. Redis: bytes per 1k tokens of context, round trip of a 20-passage read (MGET + decode).

Run: `.venv/bin/python benchmarks/segment_cache.py` (starts a redis-server on a free loopback port
unless `--redis-url` is given; needs calibrated evaluator heads: `ragctx calibrate heads`).
On a bare GPU machine (torch + transformers only): `--speed-only --backends memory --heads-file H.json
--model M --nq PATH --device cuda`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ragctx.cache import MemoryStore, RedisStore, SegmentCache
from ragctx.evaluation.data import find_nq20, load_nq20
from ragctx.models import LanguageModel, load_lm
from ragctx.scoring.lm_attention import HeadSelection, question_attention
from ragctx.scoring.segment_kv import SegmentKVCache

QUESTION_PREFIX = "\nQuestion: "  # as EHPC lays out its prompt (ragctx.compressors.evaluator_heads)


@contextmanager
def redis_on_loopback(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found: install it or pass --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait()


def timed(fn: Callable[[], Any], lm: LanguageModel | None = None) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    if lm is not None and lm.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, out


def quality(models: Any, questions: list[Any], n: int, rate: float) -> dict[str, Any]:
    """Answer recall of EHPC at `rate` with cached segments and with one full prefill per request."""
    from ragctx.engine import ContextEngine
    from ragctx.evaluation.metrics import has_answer
    from ragctx.settings import load_settings
    from ragctx.state import Budget

    out: dict[str, Any] = {"rate": rate, "questions": n}
    for segment_kv in (True, False):
        engine = ContextEngine(load_settings(segment_kv=segment_kv), models)
        found, kept, secs = 0, [], []
        budget = Budget(rate=rate)
        for q in questions[:n]:
            t, ctx = timed(lambda q=q, engine=engine, b=budget: engine.run(q.question, q.passages, "ehpc", b))
            found += has_answer(ctx.text, q.answers)
            kept.append(ctx.tokens_out / max(ctx.tokens_in, 1))
            secs.append(t)
        name = "cached segments" if segment_kv else "full prefill"
        out[name] = {"answer_recall": found / n, "kept": statistics.mean(kept), "median_s": statistics.median(secs)}
        print(name, out[name], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=10, help="questions for the speed runs")
    ap.add_argument("--quality-questions", type=int, default=30, help="questions for answer recall")
    ap.add_argument("--rate", type=float, default=0.25)
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--out", type=Path, default=Path("bench-out/segment_cache.json"))
    ap.add_argument("--backends", nargs="+", default=["memory", "redis"], choices=["memory", "redis"])
    ap.add_argument("--speed-only", action="store_true", help="skip the quality run (needs all of ragctx)")
    ap.add_argument("--heads-file", type=Path, default=None, help="evaluator heads JSON (default: calibrated)")
    ap.add_argument("--model", default=None, help="scorer LM for --speed-only (default: the configured one)")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--nq", type=Path, default=None)
    args = ap.parse_args()
    nq = args.nq or find_nq20()
    if nq is None:
        raise SystemExit("../shared/data/nq20 not found")
    models: Any = None
    if args.model is not None:
        lm = load_lm(args.model, args.cache_dir or Path.home() / ".cache" / "ragctx", args.device)
    else:
        from ragctx.models import ModelRegistry
        from ragctx.settings import load_settings

        models = ModelRegistry(load_settings())
        lm = models.scorer()
    if args.heads_file is not None:
        heads = json.loads(args.heads_file.read_text())
    else:
        from ragctx.compressors.evaluator_heads import heads_path

        heads = json.loads(heads_path(models.settings.resolved_cache_dir(), lm).read_text())
    selection = HeadSelection.of_heads([tuple(h) for h in heads["heads"]], heads["scores"])
    depth = max(selection.layers)
    questions = load_nq20(nq, max(args.questions, args.quality_questions) + 1)
    tok = lm.tokenizer

    def segment_ids(q: Any) -> list[list[int]]:
        blocks = [f"Document (Title: {p.title}) {p.text}\n" for p in q.passages]
        return [tok.encode(b, add_special_tokens=False) for b in blocks]

    def question_ids(text: str) -> list[int]:
        return tok.encode(QUESTION_PREFIX + text, add_special_tokens=False)

    report: dict[str, Any] = {"device": str(lm.device), "heads": heads["heads"], "depth": depth}
    with redis_on_loopback(args.redis_url if "redis" in args.backends else "unused") as url:
        # ---- 1. speed -------------------------------------------------------------------------------
        speed: dict[str, dict[str, list[float]]] = {}
        footprint: list[float] = []
        rtt: list[float] = []
        for backend in args.backends:
            times: dict[str, list[float]] = {"full_prefill": [], "cold": [], "warm": []}
            for i, q in enumerate(questions[: args.questions]):
                store = MemoryStore(2**31) if backend == "memory" else RedisStore(url, 600, 2.0)
                if isinstance(store, RedisStore):
                    store._client.flushdb()
                kv = SegmentKVCache(lm, SegmentCache(store))
                segs = segment_ids(q)
                other = questions[i + 1].question  # a new question over the same passages
                whole = kv.prefix + [t for s in segs for t in s]
                qi = question_ids(q.question)
                t_full, _ = timed(
                    lambda whole=whole, qi=qi: question_attention(lm, torch.tensor([whole + qi]), selection, len(qi)),
                    lm,
                )
                t_cold, _ = timed(lambda kv=kv, segs=segs, qi=qi: kv.question_attention(segs, qi, selection), lm)
                qo = question_ids(other)
                t_warm, (_, hits) = timed(
                    lambda kv=kv, segs=segs, qo=qo: kv.question_attention(segs, qo, selection), lm
                )
                assert hits == len(segs)
                times["full_prefill"].append(t_full)
                times["cold"].append(t_cold)
                times["warm"].append(t_warm)
                if backend == "redis":
                    tokens = sum(len(s) for s in segs)
                    footprint.append(kv.cache.stats.bytes_written / tokens * 1000)
                    keys = [kv.key(s, depth) for s in segs]
                    rtt.append(timed(lambda kv=kv, keys=keys: kv.cache.get_many(keys, "kv", kv.owner))[0])
                print(backend, i, f"full {t_full:.2f}s cold {t_cold:.2f}s warm {t_warm:.3f}s", flush=True)
            speed[backend] = times
        report["speed_median_s"] = {b: {k: statistics.median(v) for k, v in t.items()} for b, t in speed.items()}
        for t in report["speed_median_s"].values():
            t["cold_over_warm"] = t["cold"] / t["warm"]
            t["full_over_warm"] = t["full_prefill"] / t["warm"]
        if footprint:
            report["redis_bytes_per_1k_tokens"] = statistics.median(footprint)
            report["redis_read_20_passages_s"] = statistics.median(rtt)

    # ---- 2. quality ---------------------------------------------------------------------------------
    if not args.speed_only:
        report["quality_ehpc"] = quality(models, questions, args.quality_questions, args.rate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
