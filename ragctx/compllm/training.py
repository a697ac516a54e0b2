"""Self-distillation of CompLLM (algorithms.md §6.2): the frozen model reading concept embeddings should
behave as it does reading the tokens.

Teacher: the base model on [prompt before | context tokens | prompt after + answer]. Student: the same
model on [prompt before | concept embeddings of the context | prompt after + answer]. The loss compares
their hidden states at every layer over the tokens after the context (the question, the chat markup
and the answer): Smooth-L1 (beta 1) divided by the teacher's standard deviation at that layer, averaged
over layers (the paper sums; the mean only rescales the learning rate). Only the LoRA adapter and the
linear layer learn.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ragctx.adapters import cosine_lr, frozen
from ragctx.compllm.compressor import CompLLM, CompLLMConfig, cut
from ragctx.compllm.data import DistillExample
from ragctx.compllm.prompt import embed, prompt_parts
from ragctx.models import LanguageModel

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 300
    batch_size: int = 8
    lr: float = 3e-4
    warmup: int = 20
    max_context_tokens: int = 320
    max_answer_tokens: int = 24
    checkpoint_every: int = 100
    seed: int = 0
    max_seconds: float | None = None  # stop early (and save) once training has run this long


@dataclass
class Encoded:
    before: list[int]
    context: list[int]
    after: list[int]  # the prompt after the context, then the answer and end of turn


def encode_example(lm: LanguageModel, ex: DistillExample, s: TrainSettings) -> Encoded:
    tok: Any = lm.tokenizer
    before, after = prompt_parts(lm, ex.question)
    context = tok.encode(ex.context, add_special_tokens=False)[: s.max_context_tokens]
    answer = tok.encode(ex.answer, add_special_tokens=False)[: s.max_answer_tokens]
    return Encoded(before, list(context), after + list(answer) + [int(tok.eos_token_id)])


def _padded(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T, d) and its attention mask."""
    width = max(r.shape[0] for r in rows)
    out = rows[0].new_zeros((len(rows), width, rows[0].shape[1]))
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    return out, mask


def distill_loss(lm: LanguageModel, comp: CompLLM, batch: Sequence[Encoded]) -> torch.Tensor:
    seg = comp.config.segment_tokens
    segments = [cut(e.context, seg) for e in batch]
    flat = [s for segs in segments for s in segs]
    ces = comp(lm, flat)
    per_example: list[torch.Tensor] = []
    at = 0
    for segs in segments:
        per_example.append(torch.cat(ces[at : at + len(segs)]))
        at += len(segs)
    base: Any = lm.model.model
    dtype = next(lm.model.parameters()).dtype
    teacher_rows = [embed(lm, e.before + e.context + e.after) for e in batch]
    student_rows = [
        torch.cat([embed(lm, e.before), c.to(dtype), embed(lm, e.after)])
        for e, c in zip(batch, per_example, strict=True)
    ]
    t_in, t_mask = _padded(teacher_rows)
    s_in, s_mask = _padded(student_rows)
    with torch.no_grad():
        teacher = base(inputs_embeds=t_in, attention_mask=t_mask, output_hidden_states=True).hidden_states
    student = base(inputs_embeds=s_in, attention_mask=s_mask, output_hidden_states=True).hidden_states
    t_spans = [(len(e.before) + len(e.context), len(e.after)) for e in batch]
    s_spans = [(len(e.before) + c.shape[0], len(e.after)) for e, c in zip(batch, per_example, strict=True)]
    losses = []
    for layer in range(1, len(teacher)):
        t = torch.cat([teacher[layer][i, a : a + n] for i, (a, n) in enumerate(t_spans)]).float()
        s = torch.cat([student[layer][i, a : a + n] for i, (a, n) in enumerate(s_spans)]).float()
        sigma = t.std().clamp_min(1e-6)
        losses.append(torch.nn.functional.smooth_l1_loss(s, t, beta=1.0) / sigma)
    return torch.stack(losses).mean()


@dataclass
class TrainReport:
    steps: int
    seconds: float
    first_loss: float
    last_loss: float
    heldout_before: float
    heldout_after: float
    losses: list[float]


@torch.no_grad()
def heldout_loss(lm: LanguageModel, comp: CompLLM, batch: Sequence[Encoded]) -> float:
    return float(distill_loss(lm, comp, batch))


def train_compllm(
    lm: LanguageModel,
    examples: Sequence[DistillExample],
    out_dir: Path,
    settings: TrainSettings | None = None,
    config: CompLLMConfig | None = None,
    heldout: int = 16,
    resume: bool = True,
    progress: bool = True,
) -> TrainReport:
    """Train, checkpointing every `checkpoint_every` steps into `out_dir` (resumable), and save the
    adapter there (compllm.json + adapter.safetensors) at the end."""
    with frozen(lm.model):
        return _train_compllm(
            lm, examples, Path(out_dir), settings or TrainSettings(), config, heldout, resume, progress
        )


def _train_compllm(
    lm: LanguageModel,
    examples: Sequence[DistillExample],
    out_dir: Path,
    s: TrainSettings,
    config: CompLLMConfig | None,
    heldout: int,
    resume: bool,
    progress: bool,
) -> TrainReport:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(s.seed)
    encoded = [encode_example(lm, ex, s) for ex in examples]
    held, train = encoded[:heldout], encoded[heldout:] or encoded[:heldout]
    comp = CompLLM(lm, config)
    comp.calibrate_scale(lm, train[0].context)
    opt = torch.optim.AdamW([p for p in comp.parameters() if p.requires_grad], lr=s.lr, weight_decay=0.0)
    start, losses = 0, []
    ckpt = out_dir / CHECKPOINT
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=lm.device)
        comp.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, losses = state["step"], state["losses"]
    comp.train()
    before = heldout_loss(lm, comp, held) if held else float("nan")
    order = list(range(len(train)))
    random.Random(s.seed).shuffle(order)
    started = time.perf_counter()
    bar = tqdm(range(start, s.steps), desc="compllm", unit="step", disable=not progress, initial=start, total=s.steps)
    for step in bar:
        ids = [order[(step * s.batch_size + j) % len(order)] for j in range(s.batch_size)]
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, s.steps, s.lr, s.warmup)
        loss = distill_loss(lm, comp, [train[i] for i in ids])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(comp.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if (step + 1) % s.checkpoint_every == 0 and step + 1 < s.steps:
            tmp = ckpt.with_suffix(".tmp")
            state = {"model": comp.state_dict(), "optimizer": opt.state_dict(), "step": step + 1, "losses": losses}
            torch.save(state, tmp)
            os.replace(tmp, ckpt)
        if s.max_seconds is not None and time.perf_counter() - started > s.max_seconds:
            break
    comp.eval()
    after = heldout_loss(lm, comp, held) if held else float("nan")
    report = TrainReport(
        steps=len(losses),
        seconds=round(time.perf_counter() - started, 1),
        first_loss=losses[0] if losses else float("nan"),
        last_loss=sum(losses[-10:]) / max(1, len(losses[-10:])),
        heldout_before=before,
        heldout_after=after,
        losses=losses,
    )
    info = {"settings": asdict(s), "examples": len(train), **{k: v for k, v in asdict(report).items() if k != "losses"}}
    comp.save(out_dir, training=info)
    (out_dir / "losses.json").write_text(json.dumps(losses))
    ckpt.unlink(missing_ok=True)
    return report
