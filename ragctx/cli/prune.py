"""`ragctx prune`: prune a corpus by query-agnostic passage quality (checkpointed, resumable, Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ragctx.cli.common import ConfigOpt, app, console, err, fail, settings_or_exit


@app.command("prune", help="Prune a corpus by query-agnostic passage quality (checkpointed, resumable, Ray).")
def prune_command(
    inputs: Annotated[list[str], typer.Argument(help="JSONL, text or Markdown files, folders or globs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (pruned corpus, report, checkpoints).")],
    keep: Annotated[
        float | None, typer.Option("--keep", help="Keep this fraction of the corpus, best first (default 0.75).")
    ] = None,
    min_quality: Annotated[
        float | None, typer.Option("--min-quality", help="Instead of --keep: keep passages with quality >= this.")
    ] = None,
    shard_size: Annotated[int, typer.Option("--shard-size", help="Passages per shard (one checkpoint each).")] = 1000,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a killed job; finished shards are skipped.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard checkpoints of an earlier run.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first malformed row.")] = False,
    engine: Annotated[str, typer.Option("--engine", help="local, or ray (pip install 'ragctx\\[ray]').")] = "local",
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (default: start Ray on this machine).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Ray actors, each holding the scorer LM.")] = 2,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="Torch threads per scoring worker (default: all cores locally, 1 on Ray)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Passages per LM forward pass.")] = 16,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Passage tokens the LM reads.")] = 256,
    dedup: Annotated[bool, typer.Option("--dedup/--no-dedup", help="Drop near-duplicate passages.")] = True,
    dedup_threshold: Annotated[
        float | None, typer.Option("--dedup-threshold", help="Jaccard of word 3-shingles (default: dedup_threshold).")
    ] = None,
    index: Annotated[bool, typer.Option("--index", help="Also build a FAISS index of the kept passages.")] = False,
    warm_cache: Annotated[
        bool,
        typer.Option("--warm-cache", help="Also compress the kept passages with CompLLM into the Redis segment cache."),
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")] = True,
    config: ConfigOpt = None,
) -> None:
    """Prune a corpus to its best passages by query-agnostic quality; long jobs checkpoint and resume."""
    from rich.markup import escape

    from ragctx.indexes.loaders import DocumentFormatError
    from ragctx.jobs.prune import PruneConfig, run_prune
    from ragctx.jobs.ray_engine import RayUnavailable
    from ragctx.jobs.shards import CheckpointError

    s = settings_or_exit(config)
    if engine not in ("local", "ray"):
        fail(f"--engine must be local or ray (got {engine!r})", 2)
    if address and engine != "ray":
        fail("--address needs --engine ray", 2)
    if warm_cache and not s.redis_url:
        fail("--warm-cache fills the shared segment cache: set RAGCTX_REDIS_URL", 2)
    try:
        cfg = PruneConfig(
            inputs=inputs,
            out=out,
            keep=keep if keep is not None or min_quality is not None else 0.75,
            min_quality=min_quality,
            shard_size=shard_size,
            resume=resume,
            overwrite=overwrite,
            strict=strict,
            engine="ray" if engine == "ray" else "local",
            ray_address=address,
            workers=workers,
            threads=threads,
            batch_size=batch_size,
            max_passage_tokens=max_tokens,
            dedup=dedup,
            dedup_threshold=dedup_threshold if dedup_threshold is not None else s.dedup_threshold,
            build_index=index,
            warm_cache=warm_cache,
            progress=progress,
        )
    except ValueError as exc:
        fail(str(exc), 2)
        return
    try:
        result = run_prune(cfg, s)
    except (DocumentFormatError, FileNotFoundError, ValueError, CheckpointError, RayUnavailable) as exc:
        fail(escape(str(exc)))  # paths and the install hint may hold [brackets]
        return
    for row in result.malformed[:10]:
        err.print(f"[yellow]malformed:[/] {escape(row.where)}: {escape(row.message)}", highlight=False)
    if len(result.malformed) > 10:
        err.print(f"[yellow]malformed:[/] … {len(result.malformed) - 10} more in {out / 'report.json'}")
    rate = f", {result.passages_per_second:.1f} passages/s" if result.passages_per_second else ""
    console.print(
        f"kept {result.kept} of {result.passages} passages ({result.near_duplicates} near-duplicates dropped, "
        f"{len(result.malformed)} malformed rows skipped); scored {result.passages_scored} "
        f"(resumed {result.shards_resumed}/{result.shards} shards{rate}); wrote {out}/corpus.jsonl and report.md",
        highlight=False,
    )
