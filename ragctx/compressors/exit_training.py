"""`ragctx train exit`: fine-tune a small cross-encoder as EXIT's sentence classifier.

Labels follow EXIT's sampling (algorithms.md §5.3): every supporting sentence is a positive; hard
negatives are other sentences of supporting passages, random negatives sentences of other passages, a
quarter of the positives each (so two thirds of the set are positives), seeded. Sources: HotpotQA
(`supporting_facts` per sentence) and MuSiQue (supporting paragraphs; their sentences that contain an
answer alias are positives). The base is all-MiniLM-L6-v2 (the embedded embedder) with a fresh
one-logit head; the result is a sentence-transformers CrossEncoder folder, loadable by path.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ragctx.compressors.exit import exit_pair_text
from ragctx.segmentation import sentence_offsets
from ragctx.types import Passage


@dataclass
class SentenceExample:
    question: str
    sentence: str
    passage: Passage
    label: float


Pool = list[tuple[str, str, Passage]]  # (question, sentence, passage)


def _sample(positives: Pool, hard: Pool, easy: Pool, rng: random.Random) -> list[SentenceExample]:
    """All positives; a quarter as many hard and as many random negatives, over the whole dataset."""
    n = max(1, len(positives) // 4)
    out = [SentenceExample(q, s, p, 1.0) for q, s, p in positives]
    out += [SentenceExample(q, s, p, 0.0) for q, s, p in rng.sample(hard, min(n, len(hard)))]
    out += [SentenceExample(q, s, p, 0.0) for q, s, p in rng.sample(easy, min(n, len(easy)))]
    return out


def hotpotqa_examples(path: Path, rng: random.Random) -> list[SentenceExample]:
    pos: Pool = []
    hard: Pool = []
    easy: Pool = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        q = row["question"]
        support = {(t, int(i)) for t, i in row["supporting_facts"]}
        titles = {t for t, _ in support}
        for title, sentences in row["context"]:
            passage = Passage(title, "".join(sentences), title)
            for i, s in enumerate(sentences):
                if not s.strip():
                    continue
                item = (q, s.strip(), passage)
                (pos if (title, i) in support else hard if title in titles else easy).append(item)
    return _sample(pos, hard, easy, rng)


def musique_examples(path: Path, rng: random.Random) -> list[SentenceExample]:
    pos: Pool = []
    hard: Pool = []
    easy: Pool = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        q = row["question"]
        answers = [a.lower() for a in [row["answer"], *row.get("answer_aliases", [])] if a]
        for para in row["paragraphs"]:
            text = para["paragraph_text"]
            passage = Passage(str(para["idx"]), text, para["title"])
            for a, b in sentence_offsets(text):
                s = text[a:b]
                if para["is_supporting"]:
                    (pos if any(x in s.lower() for x in answers) else hard).append((q, s, passage))
                else:
                    easy.append((q, s, passage))
    return _sample(pos, hard, easy, rng)


def train_exit_classifier(
    base: str,
    examples: list[SentenceExample],
    out_dir: Path,
    epochs: int = 1,
    batch_size: int = 16,
    lr: float = 3e-5,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Fine-tune `base` (a BERT-style folder) with a one-logit head on the pairs; save a CrossEncoder."""
    from sentence_transformers import CrossEncoder

    if not examples:
        raise ValueError("no training examples")
    torch.manual_seed(seed)
    model = CrossEncoder(base, num_labels=1, device=device, max_length=256)
    net, tok = model.model, model.tokenizer
    net.train()
    optim = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = random.Random(seed)
    losses = []
    for _ in range(epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc="train exit", unit="batch"):
            exs = [examples[i] for i in batch]
            enc = tok(
                [e.question for e in exs],
                [exit_pair_text(e.sentence, e.passage) for e in exs],
                truncation="only_second",
                max_length=256,
                padding=True,
                return_tensors="pt",
            ).to(device)
            logits = net(**enc).logits.squeeze(-1)
            loss = loss_fn(logits, torch.tensor([e.label for e in exs], device=device))
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optim.step()
            losses.append(loss.item())
    net.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(out_dir))
    summary = {"examples": len(examples), "epochs": epochs, "first_loss": losses[0], "last_loss": losses[-1]}
    (out_dir / "ragctx_training.json").write_text(json.dumps(summary, indent=1))
    return summary
