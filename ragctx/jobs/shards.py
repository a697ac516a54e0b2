"""Shard checkpoints of a pruning job: one JSONL file per scored shard, written then renamed.

`work/job.json` holds the job's fingerprint (inputs and everything that changes a score); a resume with a
different fingerprint is refused instead of mixing scores. Each shard file starts with a header naming
the shard and a digest of its passage ids, then one scored passage per line. A file is either complete
or absent (atomic rename), so "the file exists and its header matches the shard" is the whole test of a
finished shard; temporary files left by a killed job are removed when the next one starts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragctx.io import atomic_write
from ragctx.jobs.quality import TextSignals
from ragctx.types import Passage

WORK_DIR = "work"
JOB_FILE = "job.json"
SHARD_DIR = "shards"


class CheckpointError(RuntimeError):
    """Checkpoints that do not belong to this job (other inputs or settings), or that cannot be read."""


@dataclass(frozen=True)
class ScoredPassage:
    passage: Passage
    lm: float
    signals: TextSignals
    quality: float
    band_keys: list[int]

    def to_json(self) -> dict[str, Any]:
        p = self.passage
        return {
            "id": p.id,
            "title": p.title,
            "text": p.text,
            "metadata": p.metadata,
            "lm": self.lm,
            "words": self.signals.words,
            "short": self.signals.short,
            "boilerplate": self.signals.boilerplate,
            "noise": self.signals.noise,
            "quality": self.quality,
            "bands": self.band_keys,
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> ScoredPassage:
        signals = TextSignals(
            words=int(row["words"]), short=row["short"], boilerplate=row["boilerplate"], noise=row["noise"]
        )
        passage = Passage(id=row["id"], text=row["text"], title=row["title"], metadata=row["metadata"])
        return cls(passage, lm=row["lm"], signals=signals, quality=row["quality"], band_keys=list(row["bands"]))


def ids_digest(passages: Sequence[Passage]) -> str:
    h = hashlib.sha256()
    for p in passages:
        h.update(p.id.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class ShardStore:
    """The `work/` folder of one output directory."""

    def __init__(self, out: Path) -> None:
        self.work = out / WORK_DIR
        self.shard_dir = self.work / SHARD_DIR

    def has_checkpoints(self) -> bool:
        return (self.work / JOB_FILE).exists() or any(self.shard_dir.glob("shard-*.jsonl"))

    def start(self, fingerprint: dict[str, Any], resume: bool, overwrite: bool) -> int:
        """Prepare the folder for this job; returns how many finished shards a resume may reuse."""
        job_file = self.work / JOB_FILE
        if self.has_checkpoints() and not resume:
            if not overwrite:
                raise CheckpointError(
                    f"{self.work} holds checkpoints of an earlier run; pass --resume to continue it "
                    "or --overwrite to start over"
                )
            shutil.rmtree(self.work)
        if resume and job_file.is_file():
            try:
                earlier = json.loads(job_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{job_file}: unreadable ({exc})") from None
            if earlier != fingerprint:
                changed = sorted(k for k in set(earlier) | set(fingerprint) if earlier.get(k) != fingerprint.get(k))
                raise CheckpointError(
                    f"cannot resume: {', '.join(changed)} changed since the checkpoints in {self.work} were "
                    "written; rerun with --overwrite (or into another --out)"
                )
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.shard_dir.glob(".shard-*.tmp"):  # left by a killed job mid-write
            stale.unlink(missing_ok=True)
        with atomic_write(job_file) as fh:
            fh.write(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
        return sum(1 for _ in self.shard_dir.glob("shard-*.jsonl"))

    def path(self, shard: int) -> Path:
        return self.shard_dir / f"shard-{shard:05d}.jsonl"

    def is_done(self, shard: int, passages: Sequence[Passage]) -> bool:
        """True if this shard's checkpoint exists; CheckpointError if it holds other passages."""
        path = self.path(shard)
        if not path.is_file():
            return False
        with path.open(encoding="utf-8") as fh:
            header = json.loads(fh.readline())
        if header.get("ids") != ids_digest(passages) or header.get("count") != len(passages):
            raise CheckpointError(
                f"{path} holds other passages than shard {shard} of the inputs now; rerun with --overwrite"
            )
        return True

    def write(self, shard: int, rows: Sequence[ScoredPassage]) -> None:
        header = {"shard": shard, "count": len(rows), "ids": ids_digest([r.passage for r in rows])}
        with atomic_write(self.path(shard)) as fh:
            fh.write(json.dumps(header) + "\n")
            for row in rows:
                fh.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")

    def read(self, shard: int) -> Iterator[ScoredPassage]:
        path = self.path(shard)
        with path.open(encoding="utf-8") as fh:
            fh.readline()
            for line in fh:
                yield ScoredPassage.from_json(json.loads(line))

    def read_all(self, shards: int) -> Iterator[ScoredPassage]:
        for shard in range(shards):
            yield from self.read(shard)
