"""`ragctx train exit`: fine-tune a small cross-encoder as EXIT's sentence classifier.

Labels follow EXIT's sampling (algorithms.md §5.3): every supporting sentence is a positive; hard
negatives are other sentences of supporting passages, random negatives sentences of other passages, a
quarter of the positives each (so two thirds of the set are positives), seeded. Sources: HotpotQA
(`supporting_facts` per sentence), MuSiQue (supporting paragraphs; their sentences that contain an
answer alias are positives) and NQ-20 dev rows from 1000 on (weak labels: gold-passage sentences that
contain an answer; 100 HotpotQA and 100 MuSiQue questions alone are too few to learn from). The base
is all-MiniLM-L6-v2 (the embedded embedder) with a fresh one-logit head; the result is a
sentence-transformers CrossEncoder folder, loadable by path.
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
from ragctx.compressors.selection import Unit, UnitScorer
from ragctx.evaluation.data import load_nq20
from ragctx.evaluation.metrics import has_answer, roc_auc
from ragctx.segmentation import sentence_offsets
from ragctx.state import PipelineState
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


def hotpotqa_rows(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text(encoding="utf-8")))


@dataclass
class LabelledPassage:
    """A HotpotQA paragraph as one passage: its non-empty sentences' offsets and supporting-fact flags."""

    passage: Passage
    sentences: list[tuple[int, int]]
    supporting: list[bool]


def hotpotqa_passages(row: dict[str, Any]) -> list[LabelledPassage]:
    support = {(t, int(i)) for t, i in row["supporting_facts"]}
    out = []
    for title, sentences in row["context"]:
        text, spans, flags, pos = "", [], [], 0
        for i, sent in enumerate(sentences):
            start, end = pos + len(sent) - len(sent.lstrip()), pos + len(sent.rstrip())
            if end > start:
                spans.append((start, end))
                flags.append((title, i) in support)
            text += sent
            pos += len(sent)
        out.append(LabelledPassage(Passage(title, text, title), spans, flags))
    return out


def hotpotqa_examples(rows: list[dict[str, Any]], rng: random.Random) -> list[SentenceExample]:
    pos: Pool = []
    hard: Pool = []
    easy: Pool = []
    for row in rows:
        q = row["question"]
        labelled = hotpotqa_passages(row)
        titles = {lp.passage.id for lp in labelled if any(lp.supporting)}
        for lp in labelled:
            for (a, b), gold in zip(lp.sentences, lp.supporting, strict=True):
                item = (q, lp.passage.text[a:b], lp.passage)
                (pos if gold else hard if lp.passage.id in titles else easy).append(item)
    return _sample(pos, hard, easy, rng)


@dataclass
class SentenceEval:
    questions: int
    sentences: int
    precision: float
    recall: float
    kept_fraction: float
    auc: float  # ranking quality whatever tau: P(a supporting sentence scores above another)


def evaluate_supporting_facts(scorer: UnitScorer, rows: list[dict[str, Any]], tau: float) -> SentenceEval:
    """Sentence precision and recall of `score >= tau` against HotpotQA's supporting facts; each sentence
    is scored with its own paragraph as the passage (EXIT's setting)."""
    tp = fp = fn = n = 0
    gold_scores: list[float] = []
    other_scores: list[float] = []
    for row in rows:
        for lp in hotpotqa_passages(row):
            state = PipelineState(question=row["question"])
            state.set_passages([lp.passage])
            scores = scorer.score(state, [Unit(0, a, b) for a, b in lp.sentences])
            for score, gold in zip(scores, lp.supporting, strict=True):
                n += 1
                (gold_scores if gold else other_scores).append(score)
                tp += score >= tau and gold
                fp += score >= tau and not gold
                fn += score < tau and gold
    return SentenceEval(
        questions=len(rows),
        sentences=n,
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=tp / (tp + fn) if tp + fn else 0.0,
        kept_fraction=(tp + fp) / n if n else 0.0,
        auc=roc_auc(gold_scores, other_scores),
    )


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


NQ_FIRST_ROW = 1000  # NQ-20 dev rows before this one are the benchmarks' questions: never trained on


def nq_examples(path: Path, rng: random.Random, questions: int, first_row: int = NQ_FIRST_ROW) -> list[SentenceExample]:
    """Weak labels from NQ-20: a sentence of the gold passage that contains a gold answer is a positive,
    the gold passage's other sentences hard negatives, sentences of the other passages without an answer
    random negatives (a distractor sentence that happens to contain the answer is left out)."""
    pos: Pool = []
    hard: Pool = []
    easy: Pool = []
    for q in load_nq20(path, questions, skip=first_row):
        for i, passage in enumerate(q.passages):
            for a, b in sentence_offsets(passage.text):
                sentence = passage.text[a:b]
                answer = has_answer(sentence, q.answers)
                if i == q.gold_index:
                    (pos if answer else hard).append((q.question, sentence, passage))
                elif not answer:
                    easy.append((q.question, sentence, passage))
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
