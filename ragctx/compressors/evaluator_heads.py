"""Evaluator heads (EHPC, Fei et al. 2025): the heads whose attention from the question lands on the
tokens that answer it.

`ragctx calibrate heads` builds a synthetic retrieval task from real text: needle sentences placed at
seeded depths in Paul Graham essays, and NQ-20 passages whose answer span is known. Every (layer, head)
is scored by the share of attention that the question window (its last W tokens) puts on the answer
tokens, averaged over examples. Only the first `max_layer` layers are searched: the point is to stop the
forward pass early.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ragctx.io import MissingCalibration, atomic_write, model_slug, read_calibration
from ragctx.kernels import attention_mass
from ragctx.models import LanguageModel
from ragctx.scoring.lm_attention import capture_qk

QUESTION_PREFIX = "\n\nQuestion: "


@dataclass
class RetrievalExample:
    context: str
    answer_start: int  # character range of the answer inside `context`
    answer_end: int
    question: str


@dataclass
class EvaluatorHeads:
    model: str
    max_layer: int
    examples: int
    heads: list[tuple[int, int]]  # (layer, head), best first
    scores: list[float]
    all_scores: list[list[float]]  # [layer][head], layers 0..max_layer

    @property
    def deepest_layer(self) -> int:
        return max(layer for layer, _ in self.heads)


def heads_path(cache_dir: Path, lm: LanguageModel) -> Path:
    return cache_dir.expanduser() / "calibration" / "heads" / f"{model_slug(lm.name)}.json"


# The default scorer's heads ship in the package (`ragctx calibrate heads` with the defaults made them), so
# `ehpc` and the default chain work on a fresh install; a calibration in the cache takes precedence.
BUNDLED_HEADS = {"default": Path(__file__).resolve().parents[1] / "data" / "evaluator-heads-smollm2.json"}


def load_heads(cache_dir: Path, lm: LanguageModel) -> EvaluatorHeads:
    path = heads_path(cache_dir, lm)
    if not path.is_file() and lm.name in BUNDLED_HEADS:
        path = BUNDLED_HEADS[lm.name]
    if not path.is_file():
        raise MissingCalibration(f"no evaluator heads for model {lm.name!r}; run `ragctx calibrate heads`")
    data = read_calibration(path)
    data["heads"] = [tuple(h) for h in data["heads"]]
    return EvaluatorHeads(**data)


def prompt_with_answer_mask(lm: LanguageModel, ex: RetrievalExample) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids of context + question, the mask of answer tokens, and the question window size."""
    text = ex.context + QUESTION_PREFIX + ex.question
    enc = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    mask = torch.tensor([min(b, ex.answer_end) - max(a, ex.answer_start) > 0 for a, b in offsets])
    q_start = len(ex.context)
    window = sum(1 for a, _ in offsets if a >= q_start)
    return torch.tensor([enc["input_ids"]]), mask, max(window, 1)


def score_heads(lm: LanguageModel, examples: list[RetrievalExample], max_layer: int) -> torch.Tensor:
    """(max_layer + 1, Hq): mean share of the question window's attention on the answer tokens."""
    hq = lm.model.config.num_attention_heads
    total = torch.zeros(max_layer + 1, hq)
    for ex in tqdm(examples, desc="evaluator heads", unit="example"):
        ids, answer, window = prompt_with_answer_mask(lm, ex)

        def on_layer(
            layer: int, q: torch.Tensor, k: torch.Tensor, scale: float | None, answer=answer, window=window
        ) -> None:
            for h in range(q.shape[0]):
                onehot = torch.zeros(q.shape[0])
                onehot[h] = 1.0
                mass, _ = attention_mass(q, k, head_weights=onehot, scale=scale)
                total[layer, h] += float(mass[answer].sum()) / window

        capture_qk(lm, ids, list(range(max_layer + 1)), window, on_layer)
    return total / max(len(examples), 1)


def select_heads(scores: torch.Tensor, top: int) -> tuple[list[tuple[int, int]], list[float]]:
    flat = scores.flatten()
    best = torch.argsort(flat, descending=True)[:top]
    hq = scores.shape[1]
    return [(int(i) // hq, int(i) % hq) for i in best], [float(flat[i]) for i in best]


def calibrate_heads(
    lm: LanguageModel, cache_dir: Path, examples: list[RetrievalExample], max_layer: int, top: int = 8
) -> EvaluatorHeads:
    layers = lm.model.config.num_hidden_layers
    if not 0 <= max_layer < layers:
        raise ValueError(f"--max-layer must be in [0, {layers - 1}]")
    if not examples:
        raise ValueError("no calibration examples")
    scores = score_heads(lm, examples, max_layer)
    heads, values = select_heads(scores, top)
    result = EvaluatorHeads(lm.name, max_layer, len(examples), heads, values, scores.tolist())
    with atomic_write(heads_path(cache_dir, lm)) as fh:
        json.dump(asdict(result), fh, indent=1)
    return result


NEEDLE_CITIES = [
    "Lisbon",
    "Nairobi",
    "Osaka",
    "Quito",
    "Tromsø",
    "Adelaide",
    "Tbilisi",
    "Halifax",
    "Porto",
    "Cusco",
]


def needle_examples(essay_dir: Path, count: int, context_chars: int = 3000, seed: int = 0) -> list[RetrievalExample]:
    """Needles ("The special magic number of <city> is <n>.") at seeded depths in essay excerpts."""
    essays = sorted(essay_dir.glob("*.txt"))
    if not essays:
        raise FileNotFoundError(f"no essays (*.txt) in {essay_dir}")
    rng = random.Random(seed)
    out = []
    for i in range(count):
        text = " ".join(essays[i % len(essays)].read_text(encoding="utf-8").split())
        start = rng.randrange(0, max(1, len(text) - context_chars))
        excerpt = text[start : start + context_chars]
        city, number = rng.choice(NEEDLE_CITIES), rng.randrange(1000, 9999)
        needle = f" The special magic number of {city} is {number}. "
        cut = excerpt.find(". ", int(len(excerpt) * rng.random())) + 1 or len(excerpt)
        context = excerpt[:cut] + needle + excerpt[cut:]
        a = cut + needle.index(str(number))
        out.append(RetrievalExample(context, a, a + len(str(number)), f"What is the special magic number of {city}?"))
    return out


def nq_examples(rows: list[dict[str, Any]], passages_per_example: int = 5) -> list[RetrievalExample]:
    """NQ-20 rows: the gold passage among the first few, with the answer's character span."""
    out = []
    for row in rows:
        passages = row["passages"]
        gold = int(row["gold_index"])
        others = [j for j in range(len(passages)) if j != gold][: passages_per_example - 1]
        chosen = sorted({gold, *others})
        parts, span = [], None
        cursor = 0
        for j in chosen:
            block = f"Document (Title: {passages[j]['title']}) {passages[j]['text']}\n"
            if j == gold:
                low = block.lower()
                for ans in row["answers"]:
                    pos = low.find(str(ans).lower())
                    if pos >= 0:
                        span = (cursor + pos, cursor + pos + len(str(ans)))
                        break
            parts.append(block)
            cursor += len(block)
        if span is not None:
            out.append(RetrievalExample("".join(parts), span[0], span[1], str(row["question"])))
    return out
