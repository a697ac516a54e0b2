"""`ragctx train reader`: a LoRA that makes the small LM a RAG reader that abstains.

SmolLM2-135M-Instruct never says NO-RESPONSE (so the distracting effect is noise) and answers few NQ
questions even from the gold passage. One adapter is trained for both jobs, on one prompt
(`scoring.distraction.rag_messages`): the abstention instruction, the documents, the question.

Examples, from `../shared/data` (NQ-20 dev outside the held-out fold, HotpotQA and MuSiQue train):
- the gold passage alone -> the short answer; a look-alike distractor alone -> NO-RESPONSE (twice per
  question: the distracting-effect scorer reads one passage at a time);
- 1 to 20 passages including the gold, in random order -> the answer; 2 to 10 distractors -> NO-RESPONSE;
- HotpotQA / MuSiQue: all paragraphs of a question (multi-hop) -> the answer.
The loss is the cross-entropy of the answer tokens and the end of turn only; the base model is frozen.

Held out: NQ-20 dev questions with `qid % 10 == 1`. (The usual fold, `qid % 10 == 0`, is empty in our
copy: every qid divisible by 5 is held out upstream of `../shared/data`.)
"""

from __future__ import annotations

import gzip
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from ragctx.adapters import AbstainProbes, ReaderAdapter, cosine_lr, frozen
from ragctx.evaluation.metrics import has_answer, roc_auc
from ragctx.io import atomic_write, save_figure
from ragctx.models import LanguageModel
from ragctx.reader import LocalReader
from ragctx.scoring.distraction import (
    ABSTAIN_STRING,
    RAG_PROMPT,
    DistractionScorer,
    chat_ids,
    rag_messages,
    single_document,
)
from ragctx.state import passage_header
from ragctx.types import Passage

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def held_out(qid: int) -> bool:
    """The NQ-20 dev fold no training or tuning ever reads."""
    return qid % 10 == 1


@dataclass(frozen=True)
class ReaderExample:
    question: str
    context: str  # rendered documents; "" = none
    target: str  # the answer, or ABSTAIN_STRING
    kind: str


@dataclass(frozen=True)
class ReaderTrainSettings:
    steps: int = 1200
    batch_size: int = 16
    lr: float = 4e-4
    warmup: int = 40
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    max_tokens: int = 3072  # longer examples are left out
    seed: int = 0
    max_seconds: float | None = None
    probe_layers: tuple[int, ...] = (8, 12, 16)  # abstention probes trained alongside (the DE early exit)
    probe_weight: float = 0.5


def render_documents(passages: Sequence[Passage]) -> str:
    """Several passages as the pipeline renders a context for the reader (`state.render`)."""
    return "\n".join(passage_header(i, p) + p.text for i, p in enumerate(passages, 1))


def read_nq20(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def nq_passages(row: dict[str, Any]) -> list[Passage]:
    return [Passage(id=str(p["id"]), text=p["text"], title=p.get("title", "")) for p in row["passages"]]


def nq_examples(rows: Iterable[dict[str, Any]], rng: random.Random) -> list[ReaderExample]:
    out: list[ReaderExample] = []
    for row in rows:
        if held_out(int(row["qid"])):
            raise ValueError(f"NQ-20 question {row['qid']} is in the held-out fold (qid % 10 == 1)")
        passages = nq_passages(row)
        gold = passages[int(row["gold_index"])]
        others = [p for i, p in enumerate(passages) if i != int(row["gold_index"])]
        q, answer = str(row["question"]), str(row["answers"][0])
        out.append(ReaderExample(q, single_document(gold), answer, "gold"))
        for d in rng.sample(others, 2):
            out.append(ReaderExample(q, single_document(d), ABSTAIN_STRING, "distractor"))
        k = rng.randint(1, 20)
        mixed = [*rng.sample(others, k - 1), gold]
        rng.shuffle(mixed)
        out.append(ReaderExample(q, render_documents(mixed), answer, "documents-with-gold"))
        if rng.random() < 0.3:
            out.append(
                ReaderExample(
                    q,
                    render_documents(rng.sample(others, rng.randint(2, 10))),
                    ABSTAIN_STRING,
                    "documents-without-gold",
                )
            )
    return out


def multihop_examples(root: Path) -> list[ReaderExample]:
    """HotpotQA (10 paragraphs) and MuSiQue (20) train questions: every paragraph -> the answer."""
    out: list[ReaderExample] = []
    hotpot = root / "hotpotqa_train100" / "hotpotqa_train_100.json"
    if hotpot.is_file():
        for row in json.loads(hotpot.read_text()):
            passages = [Passage(id=str(i), text=" ".join(s), title=t) for i, (t, s) in enumerate(row["context"])]
            out.append(ReaderExample(row["question"], render_documents(passages), str(row["answer"]), "hotpotqa"))
    musique = root / "musique_train100" / "musique_ans_train_100.json"
    if musique.is_file():
        for row in json.loads(musique.read_text()):
            passages = [
                Passage(id=str(p["idx"]), text=p["paragraph_text"], title=p["title"]) for p in row["paragraphs"]
            ]
            out.append(ReaderExample(row["question"], render_documents(passages), str(row["answer"]), "musique"))
    return out


def training_examples(root: Path, seed: int = 0) -> list[ReaderExample]:
    """Every training example from the shared data folder, shuffled with `seed`."""
    rng = random.Random(seed)
    rows = [r for r in read_nq20(root / "nq20" / "nq20_dev.jsonl.gz") if not held_out(int(r["qid"]))]
    examples = nq_examples(rows, rng) + multihop_examples(root)
    rng.shuffle(examples)
    return examples


@dataclass
class Encoded:
    ids: list[int]
    target_from: int  # positions >= this are predicted (the answer and the end of turn)
    abstain: bool = False  # the target is NO-RESPONSE


def encode(lm: LanguageModel, ex: ReaderExample) -> Encoded:
    prompt = chat_ids(lm, rag_messages(ex.question, ex.context))
    target = lm.tokenizer.encode(ex.target, add_special_tokens=False)[:24] + [int(lm.tokenizer.eos_token_id)]  # type: ignore[operator]
    return Encoded(prompt + target, len(prompt), ex.target == ABSTAIN_STRING)


def answer_loss(
    lm: LanguageModel, batch: Sequence[Encoded], probes: AbstainProbes | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean cross-entropy over the target tokens of a right-padded batch; logits only where needed
    (a 49k vocabulary over every position of 16 x 3k tokens would not fit). With `probes`, also their
    mean binary cross-entropy for abstaining, read at the answer position (where DE reads the logits)."""
    width = max(len(e.ids) for e in batch)
    pad = int(lm.tokenizer.pad_token_id)  # type: ignore[arg-type]
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    base: Any = lm.model.model  # type: ignore[union-attr]
    result = base(input_ids=ids, attention_mask=mask, output_hidden_states=probes is not None)
    hidden = result.last_hidden_state
    rows = [torch.arange(e.target_from - 1, len(e.ids) - 1) for e in batch]  # position t predicts t + 1
    which = torch.cat([torch.full((len(r),), i) for i, r in enumerate(rows)]).to(lm.device)
    at = torch.cat(rows).to(lm.device)
    logits = lm.model.lm_head(hidden[which, at]).float()  # type: ignore[operator]
    labels = ids[which, at + 1]
    answer = torch.nn.functional.cross_entropy(logits, labels)
    if probes is None:
        return answer, None
    answer_at = torch.tensor([e.target_from - 1 for e in batch], device=lm.device)
    target = torch.tensor([float(e.abstain) for e in batch], device=lm.device)
    everyone = torch.arange(len(batch), device=lm.device)
    # hidden_states[k] is what enters decoder layer k (hidden_states[0]: the embeddings).
    probe = torch.stack(
        [
            torch.nn.functional.binary_cross_entropy_with_logits(
                probes.logit(k, result.hidden_states[k][everyone, answer_at]), target
            )
            for k in probes.layers
        ]
    ).mean()
    return answer, probe


@dataclass
class TrainReport:
    steps: int
    seconds: float
    examples: int
    first_loss: float
    last_loss: float
    losses: list[float] = field(repr=False)
    probe_losses: list[float] = field(default_factory=list, repr=False)


def length_batches(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of similar length, in random order: a batch is padded to its longest example, and one
    20-passage example among 15 single passages would make the step three times as slow."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 32
    batches: list[list[int]] = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def train_reader_adapter(
    lm: LanguageModel,
    examples: Sequence[ReaderExample],
    settings: ReaderTrainSettings | None = None,
    progress: bool = True,
) -> tuple[ReaderAdapter, TrainReport]:
    """Train a reader adapter on `examples` (seeded: the same examples and seed give the same adapter
    on the same device)."""
    with frozen(lm.model):
        return _train_reader_adapter(lm, examples, settings or ReaderTrainSettings(), progress)


def _train_reader_adapter(
    lm: LanguageModel, examples: Sequence[ReaderExample], s: ReaderTrainSettings, progress: bool
) -> tuple[ReaderAdapter, TrainReport]:
    torch.manual_seed(s.seed)
    encoded = [e for e in (encode(lm, ex) for ex in examples) if len(e.ids) <= s.max_tokens]
    if not encoded:
        raise ValueError("no training example fits max_tokens")
    adapter = ReaderAdapter.create(lm, s.rank, s.alpha, s.targets, RAG_PROMPT, s.probe_layers)
    params = [p for p in adapter.lora.parameters() if p.requires_grad]
    if adapter.probes is not None:
        params += list(adapter.probes.parameters())
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    probe_losses: list[float] = []
    batches = length_batches([len(e.ids) for e in encoded], s.batch_size, s.seed)
    losses: list[float] = []
    started = time.perf_counter()
    adapter.lora.train()
    with adapter.attached(lm):
        for step in tqdm(range(s.steps), desc="reader adapter", unit="step", disable=not progress):
            epoch, at = divmod(step, len(batches))
            if at == 0 and epoch:
                batches = length_batches([len(e.ids) for e in encoded], s.batch_size, s.seed + epoch)
            batch = [encoded[i] for i in batches[at]]
            # With a time cap the schedule follows whichever runs out first, steps or seconds, so a
            # capped run still ends its cosine decay near 0 instead of stopping at a high rate.
            done = step
            if s.max_seconds is not None and step >= s.warmup:
                done = max(step, int(s.steps * (time.perf_counter() - started) / s.max_seconds))
            for group in opt.param_groups:
                group["lr"] = cosine_lr(done, s.steps, s.lr, s.warmup)
            loss, probe = answer_loss(lm, batch, adapter.probes)
            total = loss if probe is None else loss + s.probe_weight * probe
            opt.zero_grad(set_to_none=True)
            total.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            if probe is not None:
                probe_losses.append(float(probe.detach()))
            if s.max_seconds is not None and time.perf_counter() - started > s.max_seconds:
                break
    for module in (adapter.lora, adapter.probes):
        if module is not None:
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
    report = TrainReport(
        steps=len(losses),
        seconds=round(time.perf_counter() - started, 1),
        examples=len(encoded),
        first_loss=sum(losses[:10]) / max(1, len(losses[:10])),
        last_loss=sum(losses[-10:]) / max(1, len(losses[-10:])),
        losses=losses,
        probe_losses=probe_losses,
    )
    adapter.info.training = {
        "settings": {**asdict(s), "targets": list(s.targets)},
        **{k: v for k, v in asdict(report).items() if k not in ("losses", "probe_losses")},
    }
    return adapter, report


# ---- held-out evaluation --------------------------------------------------------------------------------


def bootstrap_ci(diffs: Sequence[float], seed: int = 0, rounds: int = 2000) -> tuple[float, float]:
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def best_de_threshold(gold: Sequence[float], distractors: Sequence[float]) -> float:
    """The DE threshold that best separates gold passages from distractors (max balanced accuracy)."""
    best, best_t = -1.0, 0.5
    for t in sorted({round(v, 4) for v in [*gold, *distractors]}):
        tpr = sum(v >= t for v in gold) / len(gold)
        tnr = sum(v < t for v in distractors) / len(distractors)
        if (tpr + tnr) / 2 > best:
            best, best_t = (tpr + tnr) / 2, t
    return best_t


def de_scores(
    lm: LanguageModel,
    adapter: ReaderAdapter | None,
    rows: Sequence[dict[str, Any]],
    read_at: int | Literal["adapter"] | None = "adapter",
) -> list[list[float]]:
    scorer = DistractionScorer(lm, batch_size=20, adapter=adapter, read_at=read_at)
    return [scorer.score(str(r["question"]), nq_passages(r)) for r in tqdm(rows, desc="distracting effect", unit="q")]


def gold_vs_distractors(
    de: Sequence[Sequence[float]], rows: Sequence[dict[str, Any]]
) -> tuple[list[float], list[float]]:
    gold = [d[int(r["gold_index"])] for d, r in zip(de, rows, strict=True)]
    other = [v for d, r in zip(de, rows, strict=True) for i, v in enumerate(d) if i != int(r["gold_index"])]
    return gold, other


def de_readings(
    lm: LanguageModel, adapter: ReaderAdapter | None, rows: Sequence[dict[str, Any]]
) -> dict[int | None, list[list[float]]]:
    """DE of every passage of `rows` as each reading gives it: the answer logits (None) and, for an
    adapter with probes, each probe layer."""
    probes = adapter.probes.layers if adapter is not None and adapter.probes is not None else []
    return {k: de_scores(lm, adapter, rows, k) for k in [None, *probes]}


def choose_de_layer(
    adapter: ReaderAdapter,
    readings: dict[int | None, list[list[float]]],
    calibration: Sequence[dict[str, Any]],
    tolerance: float = 0.01,
) -> dict[str, float]:
    """Set `adapter.info.de_layer` to the shallowest probe whose gold-vs-distractor ROC AUC on the
    training-fold `calibration` questions (`readings` of them) is within `tolerance` of the full model's
    (None if none is): the early exit is taken only where it costs no separation. Returns every AUC."""
    aucs = {
        "full" if k is None else f"probe_{k}": roc_auc(*gold_vs_distractors(de, calibration))
        for k, de in readings.items()
    }
    adapter.info.de_layer = next(
        (k for k in sorted(adapter.info.probe_layers) if aucs[f"probe_{k}"] >= aucs["full"] - tolerance), None
    )
    return aucs


def reader_accuracy(
    reader: LocalReader,
    rows: Sequence[dict[str, Any]],
    context_of: Callable[[dict[str, Any]], str | None],
    batch_size: int,
) -> list[bool]:
    answers = reader.answer_many([(str(r["question"]), context_of(r)) for r in rows], batch_size=batch_size)
    return [has_answer(a, list(r["answers"])) for a, r in zip(answers, rows, strict=True)]


def evaluate_reader_adapter(
    lm: LanguageModel,
    adapter: ReaderAdapter | None,
    held: Sequence[dict[str, Any]],
    calibration: Sequence[dict[str, Any]] = (),
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out figures of a reader (adapted, or the base model with `adapter=None`): DE ROC AUC
    between the gold passage and the 19 distractors, reader accuracy with the gold passage alone, all 20
    and none, accuracy by gold position, and the seed paper's finding (gold + the highest-DE distractor
    vs gold + the lowest-DE one). `calibration` (training-fold questions) sets the DE threshold."""
    reader = LocalReader(lm, max_new_tokens=12, adapter=adapter)
    out: dict[str, Any] = {"questions": len(held)}
    held_de = de_readings(lm, adapter, held)
    cal_de = de_readings(lm, adapter, calibration) if calibration else {}
    if adapter is not None and adapter.probes is not None and calibration:
        out["de_auc_calibration"] = choose_de_layer(adapter, cal_de, calibration)
        out["de_layer"] = adapter.info.de_layer
        out["de_auc_full"] = roc_auc(*gold_vs_distractors(held_de[None], held))
        for k in adapter.probes.layers:
            out[f"de_auc_probe_{k}"] = roc_auc(*gold_vs_distractors(held_de[k], held))
    layer = adapter.info.de_layer if adapter is not None else None
    de = held_de[layer]  # as the shipped scorer reads it
    gold_de, other_de = gold_vs_distractors(de, held)
    out |= {
        "de_auc": roc_auc(gold_de, other_de),
        "de_gold_ranked_first": sum(
            max(range(len(d)), key=lambda i: d[i]) == int(r["gold_index"]) for d, r in zip(de, held, strict=True)
        )
        / len(held),
        "de_mean_gold": sum(gold_de) / len(gold_de),
        "de_mean_distractor": sum(other_de) / len(other_de),
    }
    if calibration:
        cal_gold, cal_other = gold_vs_distractors(cal_de[layer], calibration)
        out["de_threshold"] = best_de_threshold(cal_gold, cal_other)
        t = out["de_threshold"]
        out["de_threshold_heldout"] = {
            "gold_at_or_above": sum(v >= t for v in gold_de) / len(gold_de),
            "distractors_below": sum(v < t for v in other_de) / len(other_de),
        }
    gold_alone = reader_accuracy(
        reader, held, lambda r: render_documents([nq_passages(r)[int(r["gold_index"])]]), batch_size
    )
    full = reader_accuracy(reader, held, lambda r: render_documents(nq_passages(r)), batch_size)
    closed = reader_accuracy(reader, held, lambda r: None, batch_size)
    out["accuracy_gold_only"] = sum(gold_alone) / len(held)
    out["accuracy_all_20"] = sum(full) / len(held)
    out["accuracy_closed_book"] = sum(closed) / len(held)
    buckets: dict[int, list[bool]] = {}
    for ok, r in zip(full, held, strict=True):
        buckets.setdefault(int(r["gold_index"]) // 4, []).append(ok)
    out["accuracy_all_20_by_gold_position"] = {
        f"{4 * b + 1}-{4 * b + 4}": round(sum(v) / len(v), 3) for b, v in sorted(buckets.items())
    }
    # Amiraz et al.: a distractor the model would answer from hurts more than one it would not.
    rng = random.Random(seed)
    first = [rng.random() < 0.5 for _ in held]

    def pair(r: dict[str, Any], d: list[float], pick: Callable[..., int], gold_first: bool) -> str:
        ps = nq_passages(r)
        g = int(r["gold_index"])
        j = pick((i for i in range(len(ps)) if i != g), key=lambda i: d[i])
        return render_documents([ps[g], ps[j]] if gold_first else [ps[j], ps[g]])

    de_of = {id(r): d for r, d in zip(held, de, strict=True)}
    flag = {id(r): f for r, f in zip(held, first, strict=True)}
    hi = reader_accuracy(reader, held, lambda r: pair(r, de_of[id(r)], max, flag[id(r)]), batch_size)
    lo = reader_accuracy(reader, held, lambda r: pair(r, de_of[id(r)], min, flag[id(r)]), batch_size)
    diffs = [float(a) - float(b) for a, b in zip(hi, lo, strict=True)]
    low, high = bootstrap_ci(diffs, seed)
    out["gold_plus_highest_de_distractor"] = sum(hi) / len(held)
    out["gold_plus_lowest_de_distractor"] = sum(lo) / len(held)
    out["highest_minus_lowest"] = {"mean": sum(diffs) / len(diffs), "ci95": [low, high]}
    return out


def trailing_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of each value and the `window - 1` before it (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def write_training_card(folder: Path, report: TrainReport, figures: dict[str, Any], command: str) -> None:
    """card.md, loss.png and training.json beside the adapter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "command": command,
        "report": asdict(report),
        "held_out": figures,
    }
    # First, with the per-step losses: the card and the plot can be redrawn from it alone.
    with atomic_write(folder / "training.json") as fh:
        fh.write(json.dumps(record, indent=1))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(range(1, len(report.losses) + 1), report.losses, lw=0.6, alpha=0.5, label="per step")
    window = 25
    for values, label in ((report.losses, "answer"), (report.probe_losses, "abstention probes (BCE)")):
        if values:
            ax.plot(
                range(1, len(values) + 1), trailing_mean(values, window), lw=1.5, label=f"{label}, mean of {window}"
            )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("reader adapter training loss")
    ax.legend()
    save_figure(fig, folder / "loss.png")
    plt.close(fig)
    lines = [
        "# Reader adapter: training card",
        "",
        f"Command: `{command}`",
        "",
        f"Steps {report.steps}, {report.examples} examples, {report.seconds} s; loss {report.first_loss:.3f} -> "
        f"{report.last_loss:.3f} (first and last 10 steps). Loss curve: `loss.png`.",
        "",
        "Data: `../shared/data` NQ-20 dev (questions with qid % 10 != 1), HotpotQA train 100, MuSiQue train 100.",
        "",
        "Held-out figures (NQ-20 dev, qid % 10 == 1):",
        "",
        "| | " + " | ".join(figures) + " |",
        "|---|" + "---|" * len(figures),
    ]
    keys = sorted({k for f in figures.values() for k, v in f.items() if isinstance(v, (int, float))})
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(f.get(k)) for f in figures.values()) + " |")
    with atomic_write(folder / "card.md") as fh:
        fh.write("\n".join(lines) + "\n")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return "" if v is None else str(v)
