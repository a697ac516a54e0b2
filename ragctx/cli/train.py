"""`ragctx train ...`: the small models ragctx methods can use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ragctx.cli.common import ConfigOpt, base_lm, console, fail, settings_or_exit, shared_data_or_exit, train_app


@train_app.command("exit")
def train_exit_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for the trained classifier.")] = Path("exit-classifier"),
    data: Annotated[
        Path | None, typer.Option("--data", help="The shared data folder (default ../shared/data).")
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs")] = 1,
    max_examples: Annotated[int | None, typer.Option("--max-examples", help="Cap (a tiny CPU run: 64).")] = None,
    base: Annotated[str, typer.Option("--base", help="Base encoder (default: the embedded MiniLM).")] = "default",
    holdout: Annotated[
        int,
        typer.Option(
            "--holdout",
            min=0,
            help="Last N HotpotQA questions kept out of training; sentence precision and recall at tau = 0.5 on "
            "them are printed and saved with the classifier (0 = train on all, no evaluation).",
        ),
    ] = 20,
    nq_questions: Annotated[
        int,
        typer.Option(
            "--nq-questions",
            min=0,
            help="NQ-20 dev questions (rows 1000 on, never the benchmarks' rows) added as weakly labelled "
            "examples: gold-passage sentences that contain an answer are positives.",
        ),
    ] = 600,
    config: ConfigOpt = None,
) -> None:
    """Fine-tune EXIT's sentence classifier (a MiniLM cross-encoder) on HotpotQA, MuSiQue and NQ labels."""
    import dataclasses
    import random

    from ragctx.compressors.exit import DEFAULT_TAU, ExitCrossEncoderScorer
    from ragctx.compressors.exit_training import (
        evaluate_supporting_facts,
        hotpotqa_examples,
        hotpotqa_rows,
        musique_examples,
        nq_examples,
        train_exit_classifier,
    )
    from ragctx.models import default_embedder_path, pick_device

    s = settings_or_exit(config)
    root = shared_data_or_exit(data, "hotpotqa_train100")
    rows = hotpotqa_rows(root / "hotpotqa_train100" / "hotpotqa_train_100.json")
    if holdout >= len(rows):
        fail(f"--holdout {holdout} leaves no HotpotQA question to train on (there are {len(rows)})", 2)
        return
    train_rows, held_out = rows[: len(rows) - holdout], rows[len(rows) - holdout :]
    rng = random.Random(s.seed)
    examples = hotpotqa_examples(train_rows, rng)
    examples += musique_examples(root / "musique_train100" / "musique_ans_train_100.json", rng)
    if nq_questions:
        examples += nq_examples(root / "nq20" / "nq20_dev.jsonl.gz", rng, nq_questions)
    rng.shuffle(examples)
    if max_examples is not None:
        examples = examples[:max_examples]
    base_path = str(default_embedder_path()) if base == "default" else base
    device = pick_device(s.device)
    summary = train_exit_classifier(base_path, examples, out, epochs=epochs, device=device)
    console.print(
        f"trained on {summary['examples']} sentences, loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}; "
        f"use it with RAGCTX_EXIT__MODEL={out.resolve()}"
    )
    if held_out:
        from sentence_transformers import CrossEncoder

        scorer = ExitCrossEncoderScorer(CrossEncoder(str(out), device=device))
        ev = evaluate_supporting_facts(scorer, held_out, DEFAULT_TAU)
        summary["held_out_hotpotqa"] = dataclasses.asdict(ev)
        (out / "ragctx_training.json").write_text(json.dumps(summary, indent=1))
        console.print(
            f"held-out HotpotQA ({ev.questions} questions, {ev.sentences} sentences) at tau {DEFAULT_TAU}: "
            f"precision {ev.precision:.3f}, recall {ev.recall:.3f}, kept {ev.kept_fraction:.1%}; "
            f"ranking AUC {ev.auc:.3f}"
        )


@train_app.command("compllm")
def train_compllm_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for the adapter.")] = Path("compllm-adapter"),
    model: Annotated[str, typer.Option("--model", help="Target model (default: the reader model).")] = "default",
    data: Annotated[
        Path | None, typer.Option("--data", help="The shared data folder (default ../shared/data).")
    ] = None,
    steps: Annotated[int, typer.Option("--steps")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    lr: Annotated[float, typer.Option("--lr")] = 3e-4,
    max_examples: Annotated[int | None, typer.Option("--max-examples", help="Cap (a tiny CPU run: 16).")] = None,
    max_context_tokens: Annotated[int, typer.Option("--max-context-tokens")] = 320,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", help="Stop (and save) after this.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Distil a CompLLM adapter (LoRA + linear) so the model reads concept embeddings as it reads tokens.

    Resumes from the checkpoint in --out if there is one. A real run belongs on a GPU (RAGCTX_DEVICE=cuda).
    """
    from ragctx.compllm.data import training_examples
    from ragctx.compllm.training import TrainSettings, train_compllm

    s = settings_or_exit(config)
    root = shared_data_or_exit(data, "nq20")
    examples = training_examples(root, seed=s.seed)[:max_examples]
    lm = base_lm(s, model)
    settings = TrainSettings(
        steps=steps, batch_size=batch_size, lr=lr, max_context_tokens=max_context_tokens, max_seconds=max_seconds
    )
    report = train_compllm(lm, examples, out, settings)
    console.print(
        f"{report.steps} steps in {report.seconds:.0f} s; held-out loss {report.heldout_before:.4f} -> "
        f"{report.heldout_after:.4f}; use it with RAGCTX_COMPLLM_ADAPTER={out.resolve()}"
    )


@train_app.command("reader")
def train_reader_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for the adapter and its training card.")] = Path(
        "reader-adapter"
    ),
    model: Annotated[str, typer.Option("--model", help="Base model (default: the reader model).")] = "default",
    data: Annotated[
        Path | None, typer.Option("--data", help="The shared data folder (default ../shared/data).")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1)] = 1200,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    lr: Annotated[float, typer.Option("--lr")] = 4e-4,
    rank: Annotated[int, typer.Option("--rank", min=1, help="LoRA rank on every linear layer.")] = 8,
    max_examples: Annotated[int | None, typer.Option("--max-examples", help="Cap (a tiny CPU run: 32).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Longer examples are left out.")] = 3072,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", help="Stop (and save) after this.")] = None,
    eval_questions: Annotated[
        int,
        typer.Option(
            "--eval-questions",
            min=0,
            help="Held-out NQ-20 dev questions (qid % 10 == 1) to evaluate on after training; 0 = none.",
        ),
    ] = 266,
    calibration_questions: Annotated[
        int, typer.Option("--calibration-questions", min=0, help="Training-fold questions that set the DE threshold.")
    ] = 100,
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Evaluate the base model too, for the card.")
    ] = True,
    config: ConfigOpt = None,
) -> None:
    """Train the reader adapter (a LoRA) so the small LM answers from the documents or says NO-RESPONSE:
    the distracting-effect scorer and the local reader use it. Writes the adapter, card.md, loss.png and
    training.json into --out. A real run belongs on a GPU (RAGCTX_DEVICE=cuda); seeded by RAGCTX_SEED."""
    import shlex
    import sys

    from ragctx.reader_training import (
        ReaderTrainSettings,
        evaluate_reader_adapter,
        held_out,
        read_nq20,
        train_reader_adapter,
        training_examples,
        write_training_card,
    )

    s = settings_or_exit(config)
    root = shared_data_or_exit(data, "nq20")
    examples = training_examples(root, seed=s.seed)[:max_examples]
    lm = base_lm(s, model)
    settings = ReaderTrainSettings(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        rank=rank,
        alpha=2.0 * rank,
        max_tokens=max_tokens,
        seed=s.seed,
        max_seconds=max_seconds,
    )
    adapter, report = train_reader_adapter(lm, examples, settings)
    console.print(
        f"{report.steps} steps in {report.seconds:.0f} s; loss {report.first_loss:.3f} -> {report.last_loss:.3f}"
    )
    adapter.save(out)  # now, so a failed evaluation cannot lose the training
    figures: dict[str, dict[str, object]] = {}
    if eval_questions:
        rows = read_nq20(root / "nq20" / "nq20_dev.jsonl.gz")
        held = [r for r in rows if held_out(int(r["qid"]))][:eval_questions]
        calibration = [r for r in rows if not held_out(int(r["qid"]))][:calibration_questions]
        figures["adapted"] = evaluate_reader_adapter(lm, adapter, held, calibration)
        if "de_threshold" in figures["adapted"]:
            adapter.info.training["de_threshold"] = figures["adapted"]["de_threshold"]
        if baseline:
            figures["base"] = evaluate_reader_adapter(lm, None, held)
        for name, f in figures.items():
            console.print(f"{name}: " + json.dumps({k: v for k, v in f.items() if isinstance(v, (int, float))}))
    adapter.info.training["held_out"] = {
        k: {n: v for n, v in f.items() if isinstance(v, (int, float))} for k, f in figures.items()
    }
    adapter.save(out)
    write_training_card(
        out, report, figures, "ragctx train reader " + shlex.join(sys.argv[3:] if len(sys.argv) > 3 else [])
    )
    console.print(f"saved to {out}; use it with RAGCTX_READER_ADAPTER={out.resolve()}")
