"""`ragctx index build|add`: the FAISS index."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ragctx.cli.common import ConfigOpt, IndexDirOpt, console, fail, index_app, settings_or_exit


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
