"""`ragctx`: build an index, query it, compress batches, run the bench. Every command uses ContextEngine."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ragctx.config import DEFAULT_METHOD, DEFAULT_RATE, ConfigError, Settings, load_settings, settings_markdown
from ragctx.jobs.cli import prune_command
from ragctx.pipeline.registry import SOFT_METHODS, STAGE_HELP, all_methods, soft_method_error, text_method
from ragctx.pipeline.state import Budget
from ragctx.types import CompressedContext

app = typer.Typer(
    help="ragctx: the context layer between a retriever and an LLM. Retrieve, score, reorder and compress "
    "passages, with every kept span traceable to its source.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
index_app = typer.Typer(help="Build and extend the FAISS index.", no_args_is_help=True)
app.add_typer(index_app, name="index")
train_app = typer.Typer(help="Train the small models ragctx methods can use.", no_args_is_help=True)
app.add_typer(train_app, name="train")
calibrate_app = typer.Typer(help="Measure per-model profiles once; stages reuse them.", no_args_is_help=True)
app.add_typer(calibrate_app, name="calibrate")

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML configuration file (or RAGCTX_CONFIG).")]
IndexDirOpt = Annotated[Path | None, typer.Option("--index-dir", help="Index directory (RAGCTX_INDEX_DIR).")]
BudgetOpt = Annotated[int | None, typer.Option("--budget", "--target-tokens", help="Token budget of the context.")]
RateOpt = Annotated[
    float | None,
    typer.Option(
        "--rate",
        help=f"Keep this fraction of the tokens, in (0, 1]. With neither --budget nor --rate: {DEFAULT_RATE} "
        "(RAGCTX_DEFAULT_RATE), the smallest dev-bench rate within one point of the whole context's recall.",
    ),
]
MethodOpt = Annotated[
    str | None,
    typer.Option(
        "--method",
        "-m",
        help=f"Compression method, or a chain a+b: {', '.join(all_methods())}. Default: {DEFAULT_METHOD} "
        "(the dev bench's best).",
    ),
]


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_or_exit(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        fail(str(exc), 2)
        raise  # unreachable


def budget_or_exit(settings: Settings, budget: int | None, rate: float | None) -> Budget:
    """The budget asked for on the command line, else the settings' (or their default rate); a bad value
    exits with code 2 before anything is loaded, read or written."""
    try:
        if budget is not None or rate is not None:
            return Budget(tokens=budget, rate=rate)
        if settings.budget_tokens is None and settings.rate is None:
            return Budget(rate=settings.default_rate)
        return Budget(tokens=settings.budget_tokens, rate=settings.rate)
    except ValueError as exc:
        fail(str(exc), 2)
        raise


def check_method_or_exit(method: str | None) -> None:
    """An unknown method exits with code 2, naming the known ones, before any work."""
    from ragctx.pipeline.registry import with_method

    if method is None or method in SOFT_METHODS:
        return
    try:
        with_method([], method)
    except ValueError as exc:
        fail(str(exc), 2)


def shared_data_or_exit(data: Path | None, needs: str) -> Path:
    """The shared data folder (`--data`, else ../shared/data found from here), which must hold `needs`."""
    from ragctx.bench.data import find_nq20

    nq = find_nq20()
    root = data or (nq.parent.parent if nq else None)
    if root is None or not (root / needs).is_dir():
        fail("training data not found; pass --data PATH/TO/shared/data")
    assert root is not None  # fail() exits
    return root


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@index_app.command("build")
def index_build(
    paths: Annotated[list[str], typer.Argument(help="JSONL, text or Markdown files, folders or globs.")],
    config: ConfigOpt = None,
    index_dir: IndexDirOpt = None,
    index_type: Annotated[str | None, typer.Option("--type", help="flat, hnsw or ivf.")] = None,
) -> None:
    """Build a new index from documents (replaces the old one only once the new one is complete)."""
    from ragctx.indexes.faiss_index import FaissIndex
    from ragctx.indexes.loaders import DocumentFormatError, expand_inputs, read_documents
    from ragctx.models import ModelRegistry

    s = settings_or_exit(config, index_dir=index_dir, index_type=index_type)
    try:
        files = expand_inputs(paths)
        # Read first: the progress bar then knows the total (percentage, ETA), and a bad line fails fast.
        passages = list(read_documents(files, s.chunk_words))
        embedder = ModelRegistry(s).embedder()
        started = time.perf_counter()
        index = FaissIndex.build(
            s.resolved_index_dir(),
            passages,
            embedder,
            embedder_name=s.embedder,
            index_type=s.index_type,
            ivf_nlist=s.ivf_nlist,
            hnsw_m=s.hnsw_m,
            progress=True,
        )
    except (DocumentFormatError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
        return
    secs = time.perf_counter() - started
    console.print(
        f"indexed {len(index)} passages from {len(files)} file(s) into {s.resolved_index_dir()} "
        f"in {secs:.1f} s ({len(index) / max(secs, 1e-9):.0f} passages/s)"
    )


@index_app.command("add")
def index_add(
    paths: Annotated[list[str], typer.Argument(help="JSONL, text or Markdown files, folders or globs.")],
    config: ConfigOpt = None,
    index_dir: IndexDirOpt = None,
) -> None:
    """Add documents to an existing index; ids already present are skipped."""
    from ragctx.engine import ContextEngine
    from ragctx.indexes.loaders import DocumentFormatError, expand_inputs, read_documents

    s = settings_or_exit(config, index_dir=index_dir)
    try:
        index = ContextEngine(s).open_index()
        result = index.add(read_documents(expand_inputs(paths), s.chunk_words), progress=True)
    except (DocumentFormatError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
        return
    console.print(f"added {result.added} passages; skipped {len(result.skipped_duplicates)} duplicate id(s)")


def print_context(ctx: CompressedContext) -> None:
    console.rule("[bold]context")
    console.print(ctx.text, highlight=False, markup=False)
    table = Table(title="kept spans per passage", show_lines=False)
    for col in ("#", "passage", "title", "score", "spans [start, end)", "kept chars"):
        table.add_column(col)
    for i, p in enumerate(ctx.passages, 1):
        spans = ", ".join(f"[{s.start}, {s.end})" for s in p.spans) or "dropped"
        kept = sum(s.end - s.start for s in p.spans)
        score = f"{p.passage.score:.3f}" if p.passage.score is not None else "-"
        table.add_row(str(i), p.passage.id, p.passage.title[:40], score, spans, f"{kept}/{len(p.passage.text)}")
    console.print(table)
    stages = Table(title=f"stages (tokens counted with {ctx.tokenizer})")
    for col in ("stage", "tokens in", "tokens out", "ms"):
        stages.add_column(col)
    for st in ctx.stats:
        stages.add_row(st.name, str(st.tokens_in), str(st.tokens_out), f"{st.ms:.1f}")
    console.print(stages)


@app.command()
def query(
    question: Annotated[str, typer.Argument(help="The question.")],
    budget: BudgetOpt = None,
    rate: RateOpt = None,
    method: MethodOpt = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", help="Passages to retrieve.")] = None,
    stages: Annotated[str | None, typer.Option("--stages", help="Comma-separated stage list.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the CompressedContext as JSON.")] = False,
    answer: Annotated[
        bool, typer.Option("--answer", help="Also answer with the local reader (needed for --method compllm).")
    ] = False,
    config: ConfigOpt = None,
    index_dir: IndexDirOpt = None,
) -> None:
    """Retrieve passages for a question and print the budgeted context with its provenance."""
    from ragctx.engine import ContextEngine

    stage_list = [x.strip() for x in stages.split(",") if x.strip()] if stages else None
    s = settings_or_exit(config, index_dir=index_dir, top_k=top_k, stages=stage_list)
    b = budget_or_exit(s, budget, rate)
    # Bad arguments fail (exit 2) before anything is loaded or read, index included.
    check_method_or_exit(method)
    if method in SOFT_METHODS and not answer:
        fail(soft_method_error(method), 2)
    engine = ContextEngine(s)
    if engine.retriever is None:
        where = s.resolved_index_dir()
        fail(f"no index at {where}; build one with `ragctx index build PATH` or run `ragctx demo`")
    try:
        ctx = engine.run(question, method=text_method(method), budget=b)
        reply = engine.answer_locally(question, ctx, method) if answer else None
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc), 2)
        return
    if as_json:
        out = ctx.to_dict() | ({"answer": reply.text} if reply else {})
        sys.stdout.write(json.dumps(out, ensure_ascii=False, indent=2) + "\n")
        return
    print_context(ctx)
    if reply is not None:
        console.print(f"[bold]answer[/] ({reply.prompt_tokens} prompt positions): {reply.text}", highlight=False)


@app.command()
def compress(
    input: Annotated[Path, typer.Option("--input", "-i", help="JSONL: {question, passages:[{id,title,text}]}.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL of CompressedContext, one per line.")],
    method: MethodOpt = None,
    budget: BudgetOpt = None,
    rate: RateOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Compress caller-given passages in batch (no retrieval); models load once. Without --method, the
    default chain (the dev bench's best); without --budget or --rate, the default rate (`ragctx config`)."""
    from tqdm import tqdm

    from ragctx.batch import InputError, read_requests
    from ragctx.engine import ContextEngine
    from ragctx.io import atomic_write

    s = settings_or_exit(config)
    b = budget_or_exit(s, budget, rate)
    check_method_or_exit(method)
    if not input.is_file():
        fail(f"input file {input} does not exist")
    try:
        requests = list(read_requests(input))  # validate everything before any work or output
    except (InputError, UnicodeDecodeError) as exc:
        fail(str(exc))
        return
    engine = ContextEngine(s)
    check_method_or_exit(method)
    tokens_in = tokens_out = 0
    try:
        with atomic_write(output) as fh:
            for req in tqdm(requests, desc="compress", unit="q", disable=len(requests) < 2):
                ctx = engine.run(req.question, req.passages, method, b)
                tokens_in += ctx.tokens_in
                tokens_out += ctx.tokens_out
                fh.write(json.dumps(ctx.to_dict(), ensure_ascii=False) + "\n")
    except (ValueError, FileNotFoundError) as exc:  # the output was never renamed into place
        fail(str(exc), 2)
        return
    ratio = tokens_out / tokens_in if tokens_in else 1.0
    err.print(f"wrote {len(requests)} contexts to {output}: {tokens_in} -> {tokens_out} tokens ({ratio:.2f})")


@app.command()
def bench(
    n: Annotated[int, typer.Option("--n", help="Dev questions to evaluate.")] = 100,
    reader_limit: Annotated[
        int, typer.Option("--reader-limit", help="Questions (of the n) the reader answers; 0 = none.")
    ] = 20,
    rates: Annotated[str, typer.Option("--rates", help="Comma-separated target rates.")] = "0.5,0.25",
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated methods (see `ragctx stages`).")
    ] = "truncate,random-drop",
    data: Annotated[Path | None, typer.Option("--data", help="nq20_dev.jsonl.gz (default: ../shared/data).")] = None,
    passages: Annotated[
        int | None, typer.Option("--passages", help="Passages per question (gold kept); default all 20.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for bench.json, bench.md, bench.png.")] = Path("bench-out"),
    config: ConfigOpt = None,
) -> None:
    """Measure methods on NQ-20: tokens, kept ratio, answer recall, reader accuracy, ms per stage."""
    from ragctx.bench.data import find_nq20
    from ragctx.bench.harness import BenchConfig, run_bench

    s = settings_or_exit(config)
    path = data or find_nq20()
    if path is None or not path.is_file():
        fail("NQ-20 dev data not found; pass --data PATH/nq20_dev.jsonl.gz")
        return
    try:
        cfg = BenchConfig(
            data=path,
            n=n,
            reader_limit=reader_limit,
            rates=[float(x) for x in rates.split(",") if x.strip()],
            methods=[x.strip() for x in methods.split(",") if x.strip()],
            out=out,
            passages=passages,
        )
    except ValueError as exc:
        fail(str(exc), 2)
        return
    report = run_bench(s, cfg)
    sys.stdout.write(report.markdown + "\n")
    console.print(f"wrote {out}/bench.json, bench.md, bench.png")


@app.command()
def demo(
    question: Annotated[
        str, typer.Argument(help="Question to ask the sample corpus.")
    ] = "how many episodes are there in dragon ball z",
    budget: BudgetOpt = 300,
    config: ConfigOpt = None,
    index_dir: IndexDirOpt = None,
) -> None:
    """Index the bundled sample corpus (Wikipedia, CC BY-SA) once and answer one question from it."""
    from ragctx.engine import ContextEngine
    from ragctx.indexes.faiss_index import FaissIndex
    from ragctx.indexes.loaders import read_documents
    from ragctx.sample import sample_corpus_path

    s = settings_or_exit(config, index_dir=index_dir)
    directory = s.resolved_index_dir()
    engine = ContextEngine(s)
    if not (directory / "manifest.json").exists():
        started = time.perf_counter()
        idx = FaissIndex.build(
            directory,
            read_documents([sample_corpus_path()], s.chunk_words),
            engine.models.embedder(),
            embedder_name=s.embedder,
            index_type=s.index_type,
            progress=True,
        )
        err.print(f"indexed the sample corpus: {len(idx)} passages in {time.perf_counter() - started:.1f} s")
    console.print(f"[bold]question:[/] {question}", highlight=False)
    ctx = engine.run(question, budget=budget_or_exit(s, budget, None))
    print_context(ctx)


@calibrate_app.command("attnrank")
def calibrate_attnrank_cmd(
    k: Annotated[int, typer.Option("--k", help="Passages per prompt (one profile per k).")] = 10,
    model: Annotated[str | None, typer.Option("--model", help="Reader LM (default: RAGCTX_READER_MODEL).")] = None,
    prompts: Annotated[int, typer.Option("--prompts", help="Calibration prompts.")] = 20,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="nq20_dev.jsonl.gz (default: ../shared/data, else the sample)."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Measure the model's positional attention profile over k slots and store it for `attnrank`."""
    from ragctx.bench.data import find_nq20, load_nq20
    from ragctx.calibration import attnrank_path, calibrate_attnrank, sample_prompts
    from ragctx.models import ModelRegistry

    s = settings_or_exit(config, reader_model=model)
    if k < 2 or prompts < 1:
        fail("--k must be at least 2 and --prompts at least 1", 2)
    path = data or find_nq20()
    if path is not None and path.is_file():
        rows = load_nq20(path, prompts)
        calib = [(q.question, q.passages[:k]) for q in rows if len(q.passages) >= k]
        if len(calib) < len(rows):
            fail(f"the dev questions have fewer than {k} passages", 2)
    else:
        calib = sample_prompts(k, prompts)
    lm = ModelRegistry(s).reader()
    profile = calibrate_attnrank(lm, s.resolved_cache_dir(), k, calib)
    console.print(
        f"layer {profile.layer} (edge ratio {profile.edge_ratio:.2f}); slots from most to least attended: "
        f"{[x + 1 for x in profile.position_order]}; saved to {attnrank_path(s.resolved_cache_dir(), lm, k)}"
    )


@calibrate_app.command("attention-bias")
def calibrate_attention_bias_cmd(
    k: Annotated[int, typer.Option("--k", help="Passages per prompt (one bias profile per k).")] = 10,
    prompts: Annotated[int, typer.Option("--prompts", help="Calibration prompts (k prefills each).")] = 5,
    config: ConfigOpt = None,
) -> None:
    """Measure the attention a content-free passage gets at each slot (for `attention_debias`)."""
    from ragctx.calibration import attention_bias_path, calibrate_attention_bias, sample_prompts
    from ragctx.models import ModelRegistry

    s = settings_or_exit(config)
    if k < 2 or prompts < 1:
        fail("--k must be at least 2 and --prompts at least 1", 2)
    lm = ModelRegistry(s).reader()
    layers = tuple(s.attention_layers) if s.attention_layers else None
    bias = calibrate_attention_bias(
        lm, s.resolved_cache_dir(), k, sample_prompts(k, prompts), layers, s.attention_aggregate
    )
    where = attention_bias_path(s.resolved_cache_dir(), lm, k, layers, s.attention_aggregate)
    console.print(f"bias per slot: {[round(x, 4) for x in bias.bias]}; saved to {where}")


@calibrate_app.command("heads")
def calibrate_heads_cmd(
    model: Annotated[str | None, typer.Option("--model", help="Scorer LM (default: RAGCTX_SCORER_MODEL).")] = None,
    needles: Annotated[int, typer.Option("--needles", help="Needle-in-essay examples.")] = 12,
    nq: Annotated[int, typer.Option("--nq", help="NQ-20 examples with a known answer span.")] = 24,
    max_layer: Annotated[
        int | None, typer.Option("--max-layer", help="Deepest layer searched (default: 4/5 of the layers).")
    ] = None,
    top: Annotated[int, typer.Option("--top", help="Heads kept.")] = 8,
    data: Annotated[
        Path | None, typer.Option("--data", help="The shared data folder (default ../shared/data).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Find the evaluator heads of a model (for `ehpc`) on needles in essays and NQ answer spans."""
    import gzip

    from ragctx.bench.data import find_nq20
    from ragctx.compressors.evaluator_heads import calibrate_heads, heads_path, needle_examples, nq_examples
    from ragctx.models import ModelRegistry

    s = settings_or_exit(config, scorer_model=model)
    nq_file = (data / "nq20" / "nq20_dev.jsonl.gz") if data else find_nq20()
    if nq_file is None or not nq_file.is_file():
        fail("shared data not found; pass --data PATH/TO/shared/data")
        return
    root = nq_file.parent.parent
    examples = needle_examples(root / "needle_haystack" / "PaulGrahamEssays", needles)
    with gzip.open(nq_file, "rt", encoding="utf-8") as fh:
        # Questions 1000+ of the dev file: far from the first hundred that the bench evaluates.
        rows = [json.loads(line) for i, line in enumerate(fh) if 1000 <= i < 1000 + nq]
    examples += nq_examples(rows)
    lm = ModelRegistry(s).scorer()
    # SmolLM2-135M's answer-finding heads sit at layers 21-23 of 30 (a third of the way down they put 4x less
    # attention on answers), so the default search stops at 4/5 of the depth: early exit still skips the rest.
    deepest = max_layer if max_layer is not None else lm.model.config.num_hidden_layers * 4 // 5
    try:
        heads = calibrate_heads(lm, s.resolved_cache_dir(), examples, deepest, top)
    except ValueError as exc:
        fail(str(exc), 2)
        return
    listed = ", ".join(f"L{layer}H{head} {v:.3f}" for (layer, head), v in zip(heads.heads, heads.scores, strict=True))
    console.print(f"evaluator heads of {lm.name} from {heads.examples} examples: {listed}")
    console.print(f"early exit after layer {heads.deepest_layer}; saved to {heads_path(s.resolved_cache_dir(), lm)}")


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
    import json
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
        f"use it with RAGCTX_EXIT_MODEL={out.resolve()}"
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
    from ragctx.models import ModelRegistry, load_lm

    s = settings_or_exit(config)
    root = shared_data_or_exit(data, "nq20")
    examples = training_examples(root, seed=s.seed)[:max_examples]
    lm = ModelRegistry(s).reader() if model == "default" else load_lm(model, s.resolved_cache_dir(), s.device)
    settings = TrainSettings(
        steps=steps, batch_size=batch_size, lr=lr, max_context_tokens=max_context_tokens, max_seconds=max_seconds
    )
    report = train_compllm(lm, examples, out, settings)
    console.print(
        f"{report.steps} steps in {report.seconds:.0f} s; held-out loss {report.heldout_before:.4f} -> "
        f"{report.heldout_after:.4f}; use it with RAGCTX_COMPLLM_ADAPTER={out.resolve()}"
    )


@calibrate_app.command("abstention")
def calibrate_abstention_cmd(
    model: Annotated[str | None, typer.Option("--model", help="Scorer LM (default: RAGCTX_SCORER_MODEL).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Check that the scorer abstains on unrelated passages (else distracting effect is not used)."""
    from ragctx.calibration import check_abstention
    from ragctx.models import ModelRegistry

    s = settings_or_exit(config, scorer_model=model)
    check = check_abstention(ModelRegistry(s).scorer(), s.resolved_cache_dir())
    verdict = "follows" if check.follows_abstention else "does NOT follow"
    console.print(
        f"{check.model} {verdict} the abstention instruction: mean DE {check.mean_de_unrelated:.2f} "
        f"on {check.pairs} unrelated passages"
    )


app.command("prune", help="Prune a corpus by query-agnostic passage quality (checkpointed, resumable, Ray).")(
    prune_command
)


@app.command("stages")
def list_stages() -> None:
    """List the pipeline stages and compression methods."""
    table = Table(title="stages")
    table.add_column("name")
    table.add_column("what it does")
    for name, text in STAGE_HELP.items():
        table.add_row(name, text)
    console.print(table)


@app.command("config")
def show_config(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the documented table of keys.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Print the effective configuration (or every key with its default)."""
    if markdown:
        sys.stdout.write(settings_markdown() + "\n")
        return
    s = settings_or_exit(config)
    console.print_json(s.model_dump_json())


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    config: ConfigOpt = None,
    index_dir: IndexDirOpt = None,
) -> None:
    """Run the REST service (context, compress, rerank, OpenAI-compatible chat); JSON logs on stderr."""
    import uvicorn

    from ragctx.api import create_app
    from ragctx.api.logs import configure_json_logging

    s = settings_or_exit(config, index_dir=index_dir)
    configure_json_logging()
    # Our middleware logs every request as JSON with its id, so uvicorn's access log would only repeat it.
    uvicorn.run(create_app(s), host=host, port=port, log_config=None, access_log=False)


if __name__ == "__main__":
    app()
