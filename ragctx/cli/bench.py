"""`ragctx bench` and `ragctx demo`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ragctx.cli.common import (
    BudgetOpt,
    ConfigOpt,
    IndexDirOpt,
    app,
    budget_or_exit,
    console,
    err,
    fail,
    print_context,
    settings_or_exit,
)


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
    from ragctx.bench.harness import BenchConfig, run_bench
    from ragctx.evaluation.data import find_nq20

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
