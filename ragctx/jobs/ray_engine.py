"""The Ray engine: the same shard scoring on a Ray Data actor pool, here (`ray.init()`) or on a cluster.

Pipeline per window of shards: `from_items` (one row per shard, its passages as JSON, read by our own
corpus reader on the driver so malformed rows are reported exactly as in the local engine) ->
`map_batches` over an actor pool whose actors each load the scorer LM once and score one whole shard per
call (so batches, and hence floats, are those of the local engine) -> the driver writes each scored shard
as a checkpoint as it arrives. Checkpoints are written by the driver, not by the workers, so a cluster
needs no shared file system and a killed job resumes the same way as a local one.

Workers import ragctx: on a cluster it must be installed on every node (same version).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from itertools import islice
from typing import Any

from ragctx.jobs.quality import QualityWeights
from ragctx.jobs.scoring import ScoringSpec, ShardScorer, set_torch_threads
from ragctx.jobs.shards import ScoredPassage
from ragctx.types import Passage

# Shards handed to Ray per dataset run: bounds what the driver holds in memory; each run starts the actor
# pool (and loads the LM) again, so a window should hold far more work than a model load.
SHARDS_PER_WINDOW = 32


class RayUnavailable(RuntimeError):
    pass


def _passage_json(p: Passage) -> dict[str, Any]:
    return {"id": p.id, "title": p.title, "text": p.text, "metadata": p.metadata}


class ShardScorerActor:
    """A Ray Data actor: loads the scorer LM once, then scores one shard per batch row."""

    def __init__(self, spec: dict[str, Any], cache_dir: str, device: str) -> None:
        from pathlib import Path

        from ragctx.models import load_lm

        self.spec = ScoringSpec(**{**spec, "weights": QualityWeights(**spec["weights"])})
        set_torch_threads(self.spec.threads)
        self.scorer = ShardScorer(load_lm(self.spec.scorer_model, Path(cache_dir), device), self.spec)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        shards, scored = [], []
        for shard, passages_json in zip(batch["shard"], batch["passages"], strict=True):
            passages = [Passage(**row) for row in json.loads(passages_json)]
            rows = self.scorer.score(passages)
            shards.append(int(shard))
            scored.append(json.dumps([r.to_json() for r in rows], ensure_ascii=False))
        return {"shard": shards, "scored": scored}


def score_on_ray(
    shards: Iterable[tuple[int, list[Passage]]],
    spec: ScoringSpec,
    cache_dir: str,
    device: str,
    workers: int,
    address: str | None,
    on_shard_done: Callable[[int, list[ScoredPassage]], None],
) -> None:
    """Score `shards` on Ray; `on_shard_done` is called on the driver for each, in completion order."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayUnavailable("Ray is not installed; install the extra: pip install 'ragctx[ray]'") from None
    started_here = not ray.is_initialized()  # a caller's own Ray session is used as it is and left running
    if started_here and address:
        ray.init(address=address, log_to_driver=False)
    elif started_here:
        ray.init(num_cpus=workers * spec.threads, include_dashboard=False, log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the job's own bar counts passages across windows
        spec_json = {**asdict(spec), "weights": spec.weights.as_dict()}
        for window in _windows(shards, SHARDS_PER_WINDOW):
            items = [{"shard": k, "passages": json.dumps([_passage_json(p) for p in ps])} for k, ps in window]
            dataset = ray.data.from_items(items).map_batches(
                ShardScorerActor,
                fn_constructor_kwargs={"spec": spec_json, "cache_dir": cache_dir, "device": device},
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=min(workers, len(items))),
                num_cpus=spec.threads,
                batch_format="numpy",
            )
            for row in dataset.iter_rows():
                rows = [ScoredPassage.from_json(r) for r in json.loads(row["scored"])]
                on_shard_done(int(row["shard"]), rows)
    finally:
        if started_here:
            ray.shutdown()


def _windows(shards: Iterable[tuple[int, list[Passage]]], size: int) -> Iterator[list[tuple[int, list[Passage]]]]:
    iterator = iter(shards)
    while window := list(islice(iterator, size)):
        yield window
