"""What every `ragctx` command shares: the Typer apps, the consoles, the common options and the checks that
exit with code 2 before anything is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ragctx.config import DEFAULT_METHOD, DEFAULT_RATE, ConfigError
from ragctx.registry import (
    SOFT_METHODS,
    all_methods,
    check_stage_names,
)
from ragctx.settings import Settings, load_settings
from ragctx.state import Budget
from ragctx.types import CompressedContext

if TYPE_CHECKING:
    from ragctx.models import LanguageModel

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
        settings = load_settings(config, **overrides)
        check_stage_names(settings.stages)
        return settings
    except (ConfigError, ValueError) as exc:
        fail(str(exc), 2)
        raise  # unreachable


def budget_or_exit(settings: Settings, budget: int | None, rate: float | None) -> Budget:
    """The budget asked for on the command line, else the settings' (or their default rate); a bad value
    exits with code 2 before anything is loaded, read or written."""
    try:
        if budget is not None or rate is not None:
            return Budget(tokens=budget, rate=rate)
        return settings.default_budget()
    except ValueError as exc:
        fail(str(exc), 2)
        raise


def check_method_or_exit(method: str | None) -> None:
    """An unknown method exits with code 2, naming the known ones, before any work."""
    from ragctx.registry import with_method

    if method is None or method in SOFT_METHODS:
        return
    try:
        with_method([], method)
    except ValueError as exc:
        fail(str(exc), 2)


def shared_data_or_exit(data: Path | None, needs: str) -> Path:
    """The shared data folder (`--data`, else ../shared/data found from here), which must hold `needs`."""
    from ragctx.evaluation.data import find_nq20

    nq = find_nq20()
    root = data or (nq.parent.parent if nq else None)
    if root is None or not (root / needs).is_dir():
        fail("training data not found; pass --data PATH/TO/shared/data")
    assert root is not None  # fail() exits
    return root


def base_lm(settings: Settings, model: str) -> LanguageModel:
    """The model a `ragctx train` command adapts: the reader model for `default`, else `model` (an id or path)."""
    from ragctx.models import ModelRegistry, load_lm

    if model == "default":
        return ModelRegistry(settings).reader()
    return load_lm(model, settings.resolved_cache_dir(), settings.device, settings.lm_dtype)


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
