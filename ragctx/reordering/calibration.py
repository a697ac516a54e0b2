"""Calibrations of the attention orders, stored as JSON in the cache directory and reused.

AttnRank positional profile (Yi et al. 2025, algorithms.md §4.2): the attention the last prompt position pays
to each of K slots, per layer, averaged over calibration prompts; the layer used is the shallowest whose
profile is basin-shaped (edges / middle >= 1.3), else the one with the highest ratio. Attention bias: the
attention a content-free passage receives at each slot (for attention sorting's bias correction).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ragctx.io import MissingCalibration, atomic_write, calibration_path, model_slug, read_calibration
from ragctx.models import LanguageModel
from ragctx.reordering.prompt import slotted_prompt, template_id
from ragctx.sample import load_sample
from ragctx.scoring.lm_attention import HeadSelection, question_attention
from ragctx.types import Passage, PassageResult, Span

BASIN_MIN_EDGE_RATIO = 1.3


@dataclass
class AttnRankProfile:
    model: str
    template: str
    k: int
    prompts: int
    layer: int
    edge_ratio: float
    profile: list[float]  # attention per slot at `layer`, slots 0..k-1
    position_order: list[int]  # slots from most to least attended
    profiles_per_layer: dict[str, list[float]]


def attnrank_path(cache_dir: Path, lm: LanguageModel, k: int) -> Path:
    return calibration_path(cache_dir, "attnrank", f"{model_slug(lm.name)}-{template_id(lm)}-k{k}")


def edge_ratio(profile: list[float]) -> float:
    if len(profile) < 3:
        return 1.0
    middle = sum(profile[1:-1]) / (len(profile) - 2)
    return ((profile[0] + profile[-1]) / 2) / middle if middle > 0 else float("inf")


def calibrate_attnrank(
    lm: LanguageModel,
    cache_dir: Path,
    k: int,
    prompts: list[tuple[str, list[Passage]]],
    normalize_by_length: bool = True,
) -> AttnRankProfile:
    if k < 2:
        raise ValueError("AttnRank needs k >= 2 passages")
    layers = HeadSelection.all_layers(lm)
    sums: dict[int, torch.Tensor] = {}
    for question, passages in tqdm(prompts, desc=f"attnrank k={k}", unit="prompt"):
        if len(passages) != k:
            raise ValueError(f"every calibration prompt needs exactly {k} passages")
        results = [PassageResult(p, [Span(p.id, 0, len(p.text))]) for p in passages]
        sp = slotted_prompt(lm, question, results)
        att = question_attention(lm, sp.input_ids, layers, window=1, segment_ids=sp.slot_ids, num_segments=k)
        lengths = torch.tensor([max(n, 1) for n in sp.slot_lengths], dtype=torch.float32)
        for layer, seg in att.segments_per_layer.items():
            value = seg / lengths if normalize_by_length else seg
            sums[layer] = sums.get(layer, torch.zeros(k)) + value
    per_layer = {layer: (v / len(prompts)).tolist() for layer, v in sorted(sums.items())}
    ratios = {layer: edge_ratio(p) for layer, p in per_layer.items()}
    basin = [layer for layer in per_layer if ratios[layer] >= BASIN_MIN_EDGE_RATIO]
    layer = min(basin) if basin else max(ratios, key=lambda x: ratios[x])
    chosen = per_layer[layer]
    order = sorted(range(k), key=lambda s: -chosen[s])
    profile = AttnRankProfile(
        model=lm.name,
        template=template_id(lm),
        k=k,
        prompts=len(prompts),
        layer=layer,
        edge_ratio=ratios[layer],
        profile=chosen,
        position_order=order,
        profiles_per_layer={str(x): p for x, p in per_layer.items()},
    )
    with atomic_write(attnrank_path(cache_dir, lm, k)) as fh:
        json.dump(asdict(profile), fh, indent=1)
    return profile


def load_attnrank(cache_dir: Path, lm: LanguageModel, k: int) -> AttnRankProfile:
    path = attnrank_path(cache_dir, lm, k)
    if not path.is_file():
        raise MissingCalibration(
            f"no AttnRank profile for model {lm.name!r} and k={k}; run `ragctx calibrate attnrank --k {k}`"
        )
    return AttnRankProfile(**read_calibration(path))


DUMMY_PASSAGE = Passage(
    "dummy",
    "This passage is a placeholder. It contains no information about any person, place, event or thing, "
    "and it does not answer any question. It only takes up space in the list of documents.",
    "Placeholder",
)


@dataclass
class AttentionBias:
    model: str
    template: str
    k: int
    prompts: int
    layers: list[int] | None
    aggregate: str
    bias: list[float]  # attention a content-free passage receives at each slot


def attention_bias_path(
    cache_dir: Path, lm: LanguageModel, k: int, layers: tuple[int, ...] | None, aggregate: str
) -> Path:
    tag = "all" if not layers else "-".join(map(str, layers))
    return calibration_path(
        cache_dir, "attention-bias", f"{model_slug(lm.name)}-{template_id(lm)}-k{k}-L{tag}-{aggregate}"
    )


def calibrate_attention_bias(
    lm: LanguageModel,
    cache_dir: Path,
    k: int,
    prompts: list[tuple[str, list[Passage]]],
    layers: tuple[int, ...] | None = None,
    aggregate: str = "sum",
) -> AttentionBias:
    """For every slot, the mean attention the dummy passage gets there among real passages (k x prompts
    prefills)."""
    from ragctx.reordering.prompt import slot_attention

    totals = [0.0] * k
    for question, passages in tqdm(prompts, desc=f"attention bias k={k}", unit="prompt"):
        for slot in range(k):
            placed = list(passages[:k])
            placed[slot] = DUMMY_PASSAGE
            results = [PassageResult(p, [Span(p.id, 0, len(p.text))]) for p in placed]
            totals[slot] += slot_attention(lm, question, results, layers, aggregate)[slot]
    bias = AttentionBias(
        lm.name, template_id(lm), k, len(prompts), list(layers) if layers else None, aggregate,
        [t / len(prompts) for t in totals],
    )  # fmt: skip
    with atomic_write(attention_bias_path(cache_dir, lm, k, layers, aggregate)) as fh:
        json.dump(asdict(bias), fh, indent=1)
    return bias


def load_attention_bias(
    cache_dir: Path, lm: LanguageModel, k: int, layers: tuple[int, ...] | None, aggregate: str
) -> AttentionBias:
    path = attention_bias_path(cache_dir, lm, k, layers, aggregate)
    if not path.is_file():
        raise MissingCalibration(
            f"no positional attention bias for model {lm.name!r}, k={k}, aggregate={aggregate}; "
            f"run `ragctx calibrate attention-bias --k {k}`"
        )
    return AttentionBias(**read_calibration(path))


def sample_prompts(k: int, count: int, seed: int = 0) -> list[tuple[str, list[Passage]]]:
    """Calibration prompts from the bundled sample: a question, its gold passage and k-1 others."""
    questions, passages = load_sample()
    rng = random.Random(seed)
    ids = sorted(passages)
    out = []
    for q in questions[:count]:
        others = rng.sample([i for i in ids if i != q["gold_id"]], k - 1)
        chosen = [str(q["gold_id"]), *others]
        rng.shuffle(chosen)
        out.append((str(q["question"]), [Passage(i, passages[i]["text"], passages[i]["title"]) for i in chosen]))
    return out
