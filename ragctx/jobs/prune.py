"""`ragctx prune`: score every passage of a corpus for query-agnostic quality and keep the best.

Phases:
1. read the corpus once to count passages and collect malformed rows (`strict` stops at the first);
2. read it again in shards of `shard_size` passages; score each shard not yet checkpointed (locally or
   on Ray) and write its checkpoint (write-then-rename);
3. over all checkpoints: find near-duplicates, select globally (quantile or threshold), and write
   corpus.jsonl, report.json, report.md, histogram.png, optionally a FAISS index of the kept passages,
   and run.json (timings; the only output that differs between runs).
A killed job rerun with `resume` redoes only the shards without a checkpoint and then phase 3, so it
writes the same bytes as an uninterrupted run. A resume with another `keep` or `min_quality` re-selects
from the stored scores without scoring again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ragctx.io import atomic_write
from ragctx.jobs.corpus import CorpusReader, MalformedRow, corpus_files
from ragctx.jobs.dedup import BANDS, ROWS, Duplicate, find_duplicates
from ragctx.jobs.quality import ANSWERS, PROMPT_HEAD, PROMPT_TAIL, QualityWeights
from ragctx.jobs.report import PruneReport
from ragctx.jobs.scoring import ScoringSpec, ShardScorer, set_torch_threads
from ragctx.jobs.select import PassageScore, Selection, select
from ragctx.jobs.shards import ScoredPassage, ShardStore
from ragctx.models import ModelRegistry
from ragctx.settings import Settings
from ragctx.types import Passage

log = logging.getLogger(__name__)

Engine = Literal["local", "ray"]


@dataclass(frozen=True)
class PruneConfig:
    inputs: list[str]
    out: Path
    keep: float | None = 0.75
    min_quality: float | None = None
    shard_size: int = 1000
    resume: bool = False
    overwrite: bool = False
    strict: bool = False
    engine: Engine = "local"
    ray_address: str | None = None
    workers: int = 1  # Ray actors; each runs `threads` torch threads
    threads: int | None = None  # None: every core for the local engine, one per actor on Ray
    batch_size: int = 16
    max_passage_tokens: int = 256
    min_words: int = 12
    weights: QualityWeights = field(default_factory=QualityWeights)
    dedup: bool = True
    dedup_threshold: float = 0.8
    build_index: bool = False
    warm_cache: bool = False  # CompLLM concept embeddings of the kept passages into the shared (Redis) cache
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.keep is None) == (self.min_quality is None):
            raise ValueError("give exactly one of --keep and --min-quality")
        if self.keep is not None and not 0.0 < self.keep <= 1.0:
            raise ValueError(f"--keep must be in (0, 1] (got {self.keep})")
        if self.shard_size < 1 or self.workers < 1:
            raise ValueError("--shard-size and --workers must be at least 1")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise ValueError(f"--dedup-threshold must be in (0, 1] (got {self.dedup_threshold})")

    def torch_threads(self) -> int:
        if self.threads is not None:
            return self.threads
        return 1 if self.engine == "ray" else max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class PruneResult:
    out: Path
    passages: int
    kept: int
    near_duplicates: int
    malformed: list[MalformedRow]
    threshold: float | None
    shards: int
    shards_resumed: int
    passages_scored: int
    scoring_seconds: float

    @property
    def passages_per_second(self) -> float | None:
        return self.passages_scored / self.scoring_seconds if self.scoring_seconds > 0 else None


def run_prune(config: PruneConfig, settings: Settings, registry: ModelRegistry | None = None) -> PruneResult:
    """Run (or resume) a pruning job.

    Raises FileNotFoundError (no inputs), DocumentFormatError (strict), ValueError (no passages),
    CheckpointError (resume mismatch) and RayUnavailable.
    """
    registry = registry or ModelRegistry(settings)
    files = corpus_files(config.inputs)
    reader = CorpusReader(files, settings.chunk_words, config.strict)
    total = _count(reader, config.progress)
    malformed = list(reader.malformed)
    if total == 0:
        raise ValueError(f"no passages to prune in {', '.join(config.inputs)} ({len(malformed)} malformed rows)")
    spec = ScoringSpec(
        scorer_model=settings.scorer_model,
        threads=config.torch_threads(),
        batch_size=config.batch_size,
        max_passage_tokens=config.max_passage_tokens,
        min_words=config.min_words,
        weights=config.weights,
    )
    store = ShardStore(config.out)
    store.start(_fingerprint(files, settings, config, spec), config.resume, config.overwrite)
    n_shards = math.ceil(total / config.shard_size)
    resumed = [k for k in range(n_shards) if store.path(k).is_file()]
    done_passages = sum(min(config.shard_size, total - k * config.shard_size) for k in resumed)

    started = time.perf_counter()
    with _bar(config.progress, total, done_passages, "scoring") as bar:

        def on_shard_done(shard: int, rows: list[ScoredPassage]) -> None:
            store.write(shard, rows)
            if bar is not None:
                bar.update(len(rows))

        pending = _pending_shards(reader, config.shard_size, store)
        if config.engine == "ray":
            from ragctx.jobs.ray_engine import score_on_ray

            score_on_ray(
                pending,
                spec,
                str(settings.resolved_cache_dir()),
                settings.device,
                config.workers,
                config.ray_address,
                on_shard_done,
            )
        else:
            _score_locally(pending, spec, registry, on_shard_done)
    scoring_seconds = time.perf_counter() - started

    selection, near_duplicates = _select_and_write(config, settings, registry, store, files, n_shards, malformed, spec)
    summary = PruneResult(
        out=config.out,
        passages=total,
        kept=selection.kept_count,
        near_duplicates=near_duplicates,
        malformed=malformed,
        threshold=selection.threshold,
        shards=n_shards,
        shards_resumed=len(resumed),
        passages_scored=total - done_passages,
        scoring_seconds=scoring_seconds,
    )
    _write_run_record(config, summary, spec)
    return summary


def _count(reader: CorpusReader, progress: bool) -> int:
    total = 0
    with _bar(progress, None, 0, "reading") as bar:
        for _ in reader.passages():
            total += 1
            if bar is not None:
                bar.update(1)
    return total


def _pending_shards(reader: CorpusReader, shard_size: int, store: ShardStore) -> Iterator[tuple[int, list[Passage]]]:
    shard, batch = 0, []
    for passage in reader.passages():
        batch.append(passage)
        if len(batch) == shard_size:
            if not store.is_done(shard, batch):
                yield shard, batch
            shard, batch = shard + 1, []
    if batch and not store.is_done(shard, batch):
        yield shard, batch


def _score_locally(
    shards: Iterable[tuple[int, list[Passage]]],
    spec: ScoringSpec,
    registry: ModelRegistry,
    on_shard_done: Callable[[int, list[ScoredPassage]], None],
) -> None:
    scorer: ShardScorer | None = None  # the LM loads only if some shard is left to score
    previous = set_torch_threads(spec.threads)
    try:
        for shard, passages in shards:
            if scorer is None:
                scorer = ShardScorer(registry.scorer(), spec)
            on_shard_done(shard, scorer.score(passages))
    finally:
        set_torch_threads(previous)


def _select_and_write(
    config: PruneConfig,
    settings: Settings,
    registry: ModelRegistry,
    store: ShardStore,
    files: list[Path],
    n_shards: int,
    malformed: list[MalformedRow],
    spec: ScoringSpec,
) -> tuple[Selection, int]:
    """Select over all checkpoints and write the outputs; returns the selection and the near-duplicate count."""
    scores: list[PassageScore] = []
    keys: list[list[int]] = []
    for row in store.read_all(n_shards):
        scores.append(PassageScore(id=row.passage.id, lm=row.lm, quality=row.quality, signals=row.signals))
        keys.append(row.band_keys)

    def texts_of(indices: Iterable[int]) -> dict[int, str]:
        wanted = set(indices)
        return {i: row.passage.text for i, row in enumerate(store.read_all(n_shards)) if i in wanted}

    duplicates: list[Duplicate] = []
    if config.dedup:
        duplicates = find_duplicates(keys, [s.quality for s in scores], texts_of, config.dedup_threshold)
    selection = select(scores, duplicates, keep=config.keep, min_quality=config.min_quality)
    report = PruneReport(
        inputs=[str(f) for f in files],
        rule={"keep": config.keep} if config.keep is not None else {"min_quality": float(config.min_quality or 0)},
        scoring={
            **spec.fingerprint(),
            "prompt": f"{PROMPT_HEAD} {{passage}}{PROMPT_TAIL}",
            "answers": list(ANSWERS),
        },
        dedup={
            "enabled": config.dedup,
            "threshold": config.dedup_threshold,
            "method": f"Jaccard of word 3-shingles; candidates by MinHash LSH ({BANDS} bands x {ROWS} rows)",
        },
        scores=scores,
        selection=selection,
        duplicates=len(duplicates),
        malformed=malformed,
    )
    examples = set(report.example_indices())
    kept_passages: list[Passage] = []
    with atomic_write(config.out / "corpus.jsonl") as fh:
        for i, row in enumerate(store.read_all(n_shards)):
            if i in examples:
                report.example_texts[i] = row.passage.text
            if selection.kept[i]:
                fh.write(json.dumps(_output_row(row), ensure_ascii=False) + "\n")
                if config.build_index or config.warm_cache:
                    kept_passages.append(row.passage)
    report.write(config.out)
    if config.build_index:
        _build_index(config.out / "index", kept_passages, settings, registry)
    if config.warm_cache:
        _warm_segment_cache(kept_passages, settings, registry, config.progress)
    return selection, len(duplicates)


def _output_row(row: ScoredPassage) -> dict[str, Any]:
    """A kept passage as a corpus row that ragctx reads back: id, title, text, its metadata, its quality."""
    p = row.passage
    return {"id": p.id, "title": p.title, "text": p.text, **p.metadata, "quality": row.quality}


def _build_index(directory: Path, passages: list[Passage], settings: Settings, registry: ModelRegistry) -> None:
    from ragctx.indexes.faiss_index import FaissIndex

    if not passages:
        log.warning("no passage kept; no index built")
        return
    FaissIndex.build(
        directory,
        passages,
        registry.embedder(),
        embedder_name=settings.embedder,
        index_type=settings.index_type,
        ivf_nlist=settings.ivf_nlist,
        hnsw_m=settings.hnsw_m,
        progress=True,
    )


def _warm_segment_cache(passages: list[Passage], settings: Settings, registry: ModelRegistry, progress: bool) -> None:
    """Compress the kept passages with CompLLM into the shared segment cache, so the service never
    encodes them at question time."""
    from tqdm import tqdm

    from ragctx.compllm.compressor import cut
    from ragctx.engine import ContextEngine

    reader = ContextEngine(settings, registry).compressed_reader
    size = reader.comp.config.segment_tokens
    segments = [s for tokens in reader.passage_tokens(passages) for s in cut(tokens, size)]
    for at in tqdm(range(0, len(segments), 256), desc="warm cache", unit="batch", disable=not progress):
        reader.concepts(segments[at : at + 256])


def _fingerprint(files: list[Path], settings: Settings, config: PruneConfig, spec: ScoringSpec) -> dict[str, Any]:
    inputs = []
    for f in files:
        stat = f.stat()
        inputs.append({"path": str(f.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return {
        "inputs": inputs,
        "chunk_words": settings.chunk_words,
        "shard_size": config.shard_size,
        "scoring": spec.fingerprint(),
    }


def _write_run_record(config: PruneConfig, result: PruneResult, spec: ScoringSpec) -> None:
    record = {
        "engine": config.engine,
        "ray_address": config.ray_address,
        "workers": config.workers if config.engine == "ray" else 1,
        "threads_per_worker": spec.threads,
        "shards": result.shards,
        "shards_resumed": result.shards_resumed,
        "passages_scored": result.passages_scored,
        "scoring_seconds": round(result.scoring_seconds, 3),
        "passages_per_second": round(result.passages_per_second, 3) if result.passages_per_second else None,
    }
    with atomic_write(config.out / "run.json") as fh:
        fh.write(json.dumps(record, indent=2) + "\n")


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _bar(enabled: bool, total: int | None, initial: int, label: str) -> Any:
    """A tqdm bar counting passages (rate and, with a total, ETA), or a context giving None."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=label, unit="passage", dynamic_ncols=True, mininterval=1.0)
