"""Abstention check (distracting effect): the scorer must actually abstain on unrelated passages, or DE is
noise. Measured on unrelated (question, passage) pairs of the bundled sample, stored once per model."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ragctx.io import atomic_write, calibration_path, model_slug, read_calibration
from ragctx.models import LanguageModel
from ragctx.sample import load_sample
from ragctx.scoring.distraction import DistractionScorer
from ragctx.types import Passage

if TYPE_CHECKING:
    from ragctx.adapters import ReaderAdapter

ABSTAIN_MAX_MEAN_DE = 0.5  # mean DE on unrelated passages above this: the model ignores the instruction


@dataclass
class AbstentionCheck:
    model: str
    pairs: int
    mean_de_unrelated: float
    follows_abstention: bool


def check_abstention(
    lm: LanguageModel, cache_dir: Path, pairs: int = 16, seed: int = 0, adapter: ReaderAdapter | None = None
) -> AbstentionCheck:
    """DE of each sample question against another question's gold passage (unrelated by construction);
    kept per model and adapter."""
    name = lm.name if adapter is None else f"{lm.name}+adapter-{adapter.digest}"
    path = calibration_path(cache_dir, "abstention", model_slug(name))
    if path.is_file():
        return AbstentionCheck(**read_calibration(path))
    questions, passages = load_sample()
    rng = random.Random(seed)
    scorer = DistractionScorer(lm, adapter=adapter)
    values: list[float] = []
    for q in questions[:pairs]:
        other = rng.choice([x for x in questions if x["gold_id"] != q["gold_id"]])
        row = passages[str(other["gold_id"])]
        values += scorer.score(str(q["question"]), [Passage(row["id"], row["text"], row["title"])])
    mean = sum(values) / len(values)
    check = AbstentionCheck(name, len(values), mean, mean <= ABSTAIN_MAX_MEAN_DE)
    with atomic_write(path) as fh:
        json.dump(asdict(check), fh, indent=1)
    return check
