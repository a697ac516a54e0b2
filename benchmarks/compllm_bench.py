"""CompLLM: reader accuracy with and without compression, time to first token, KV-cache size.

- Accuracy: SmolLM2-135M-Instruct answers NQ dev questions (the first `--questions`, which training
  leaves out) from the gold passage and `--passages`-1 others, read as tokens or as concept embeddings.
- TTFT at context lengths `--lengths` (tokens of NQ passages): uncompressed prefill vs CompLLM with a
  cold segment cache (compress + prefill) and a warm one (prefill of cached concept embeddings only);
  medians of `--repeats`. KV-cache size of the generation from the prompt length.
- Optionally trains first (`--train-examples FILE.jsonl --steps N`), e.g. on a GPU.

Needs only torch, transformers, tqdm and numpy besides ragctx itself, so it runs on a bare GPU machine:
`python benchmarks/compllm_bench.py --model DIR --adapter DIR --nq PATH --out DIR`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ragctx.cache import MemoryStore, SegmentCache
from ragctx.compllm.compressor import CompLLM
from ragctx.compllm.data import read_jsonl
from ragctx.compllm.reader import CompressedReader
from ragctx.compllm.training import TrainSettings, train_compllm
from ragctx.evaluation.data import find_nq20, load_nq20
from ragctx.evaluation.metrics import has_answer
from ragctx.models import LanguageModel, load_lm
from ragctx.types import Passage


def sync(lm: LanguageModel) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize()


def first_token_s(reader: CompressedReader, question: str, passages: list[Passage], compress: bool) -> float:
    """Prompt building (and compression, where not cached) + one prefill forward to the first token."""
    lm = reader.lm
    sync(lm)
    started = time.perf_counter()
    prompt = reader.soft_prompt(question, passages, compress)
    with torch.inference_mode():
        logits = lm.model(inputs_embeds=prompt.embeds, use_cache=True).logits[0, -1]
        int(logits.argmax())
    sync(lm)
    return time.perf_counter() - started


def kv_bytes(lm: LanguageModel, tokens: int) -> int:
    cfg: Any = lm.model.config
    head_dim = getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    elem = next(lm.model.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * tokens * elem


def context_of(lm: LanguageModel, pool: list[Passage], tokens: int) -> list[Passage]:
    out, used = [], 0
    for p in pool:
        n = len(lm.tokenizer.encode(f"Document (Title: {p.title}) {p.text}\n", add_special_tokens=False))
        if used + n > tokens:
            break
        out.append(p)
        used += n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="scorer/reader LM (folder, .gguf, hub id or default)")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ragctx")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--adapter", type=Path, default=None, help="trained adapter (skip training)")
    ap.add_argument("--train-examples", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--max-train-seconds", type=float, default=None)
    ap.add_argument("--nq", type=Path, default=None, help="nq20_dev.jsonl.gz (default ../shared/data)")
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--passages", type=int, default=5)
    ap.add_argument("--lengths", type=int, nargs="*", default=[1000, 4000, 8000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench-out/compllm"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lm = load_lm(args.model, args.cache_dir, args.device)
    report: dict[str, Any] = {
        "device": str(lm.device),
        "gpu": torch.cuda.get_device_name() if lm.device.type == "cuda" else None,
    }
    adapter = args.adapter
    if args.train_examples is not None:
        adapter = args.out / "adapter"
        settings = TrainSettings(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, max_seconds=args.max_train_seconds
        )
        train = train_compllm(lm, read_jsonl(args.train_examples), adapter, settings)
        report["training"] = {k: v for k, v in train.__dict__.items() if k != "losses"}
        print(json.dumps(report["training"]), flush=True)
    if adapter is None:
        raise SystemExit("give --adapter or --train-examples")
    comp = CompLLM.load(adapter, lm)
    nq = args.nq or find_nq20()
    if nq is None:
        raise SystemExit("NQ-20 not found: pass --nq")

    # ---- accuracy --------------------------------------------------------------------------------
    reader = CompressedReader(lm, comp, SegmentCache(MemoryStore(2**32)))
    questions = load_nq20(nq, args.questions, passages_per_question=args.passages)
    acc: dict[str, Any] = {}
    for compress in (False, True) if questions else ():
        right, ctx_tokens = 0, []
        for q in questions:
            answer, prompt = reader.answer(q.question, q.passages, compress)
            right += has_answer(answer, q.answers)
            ctx_tokens.append(prompt.context_embeddings)
        name = f"compllm C={comp.config.rate}" if compress else "uncompressed"
        acc[name] = {"accuracy": right / len(questions), "context_positions": statistics.mean(ctx_tokens)}
        print(name, acc[name], flush=True)
    report["accuracy"] = {"questions": len(questions), "passages": args.passages, **acc}

    # ---- TTFT and KV size ------------------------------------------------------------------------
    pool = [p for q in load_nq20(nq, 400, skip=args.questions) for p in q.passages]
    ttft: dict[str, Any] = {}
    question = load_nq20(nq, 1)[0].question
    for length in args.lengths:
        passages = context_of(lm, pool, length)
        row: dict[str, list[float]] = {"uncompressed": [], "cold": [], "warm": []}
        for _ in range(args.repeats + 1):  # the first round warms up kernels and is dropped
            row["uncompressed"].append(first_token_s(reader, question, passages, compress=False))
            reader.cache = SegmentCache(MemoryStore(2**32))
            row["cold"].append(first_token_s(reader, question, passages, compress=True))
            row["warm"].append(first_token_s(reader, question, passages, compress=True))
        prompt_plain = reader.soft_prompt(question, passages, compress=False)
        prompt_soft = reader.soft_prompt(question, passages, compress=True)
        med = {k: statistics.median(v[1:]) for k, v in row.items()}
        ttft[str(length)] = {
            "context_tokens": prompt_plain.context_tokens,
            "ttft_s": med,
            "speedup_cold": med["uncompressed"] / med["cold"],
            "speedup_warm": med["uncompressed"] / med["warm"],
            "kv_mib_uncompressed": kv_bytes(lm, prompt_plain.embeds.shape[1]) / 2**20,
            "kv_mib_compllm": kv_bytes(lm, prompt_soft.embeds.shape[1]) / 2**20,
        }
        print(length, ttft[str(length)], flush=True)
    report["ttft"] = ttft
    (args.out / "compllm.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
