"""The pruning report: report.json (everything, dropped ids with scores and reasons), report.md (for
people: the summary, the score distribution, examples of dropped passages, malformed rows) and the
histogram PNG. Nothing in them depends on timing or on the engine, so a resumed run or a Ray run writes
the same bytes as an uninterrupted local one; timings go to run.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragctx.io import atomic_write
from ragctx.jobs.corpus import MalformedRow
from ragctx.jobs.select import PassageScore, Selection

QUANTILES = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)
EXAMPLES_PER_KIND = 5
MALFORMED_IN_MARKDOWN = 20
SNIPPET_CHARS = 240


@dataclass
class PruneReport:
    inputs: list[str]
    rule: dict[str, float]
    scoring: dict[str, Any]
    dedup: dict[str, Any]
    scores: Sequence[PassageScore]
    selection: Selection
    duplicates: int
    malformed: list[MalformedRow]
    example_texts: dict[int, str] = field(default_factory=dict)

    def example_indices(self) -> list[int]:
        """Dropped passages shown in report.md: the lowest quality, then near-duplicates."""
        dups = sorted(self.selection.duplicates)
        below = (i for i in self.selection.reasons if i not in self.selection.duplicates)
        lowest = sorted(below, key=lambda i: (self.scores[i].quality, i))
        return lowest[:EXAMPLES_PER_KIND] + dups[:EXAMPLES_PER_KIND]

    def to_json(self) -> dict[str, Any]:
        quality = np.array([s.quality for s in self.scores], dtype=np.float64)
        return {
            "inputs": self.inputs,
            "passages": len(self.scores),
            "kept": self.selection.kept_count,
            "dropped": len(self.scores) - self.selection.kept_count,
            "near_duplicates": self.duplicates,
            "rule": self.rule,
            "threshold": self.selection.threshold,
            "scoring": self.scoring,
            "dedup": self.dedup,
            "quality_quantiles": _quantiles(quality),
            "malformed": {"count": len(self.malformed), "rows": [m.to_json() for m in self.malformed]},
            "dropped_passages": [
                {
                    "id": self.scores[i].id,
                    "quality": self.scores[i].quality,
                    "lm": self.scores[i].lm,
                    "reasons": reasons,
                }
                for i, reasons in sorted(self.selection.reasons.items())
            ],
        }

    def markdown(self, histogram_name: str) -> str:
        n, kept = len(self.scores), self.selection.kept_count
        rule = ", ".join(f"{k} {v}" for k, v in self.rule.items())
        threshold = f"{self.selection.threshold:.4f}" if self.selection.threshold is not None else "-"
        lines = [
            "# Pruning report",
            "",
            "| passages | kept | dropped | near-duplicates | malformed rows | rule | quality threshold |",
            "|---|---|---|---|---|---|---|",
            f"| {n} | {kept} ({kept / max(n, 1):.1%}) | {n - kept} | {self.duplicates} | {len(self.malformed)} "
            f"| {rule} | {threshold} |",
            "",
            "Quality = the scorer LM's log P(true) after `Document: {passage} Relevant:` minus penalties for "
            "short text, boilerplate or navigation, and character noise (nats).",
            "",
            f"![quality distribution]({histogram_name})",
            "",
            "| quantile | " + " | ".join(f"{q:g}" for q in QUANTILES) + " |",
            "|---|" + "---|" * len(QUANTILES),
            "| quality | "
            + " | ".join(f"{v:.3f}" for v in _quantiles(np.array([s.quality for s in self.scores])).values())
            + " |",
            "",
            "## Examples of dropped passages",
            "",
        ]
        examples = self.example_indices()
        if not examples:
            lines.append("None dropped.")
        for i in examples:
            s = self.scores[i]
            text = " ".join(self.example_texts.get(i, "").split())
            snippet = text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else "")
            lines.append(f"- `{s.id}` quality {s.quality:.3f} (LM {s.lm:.3f}): {'; '.join(self.selection.reasons[i])}")
            lines.append(f"  > {snippet}")
        lines += ["", "## Malformed rows", ""]
        if not self.malformed:
            lines.append("None.")
        for m in self.malformed[:MALFORMED_IN_MARKDOWN]:
            lines.append(f"- `{m.where}`: {m.message}")
        if len(self.malformed) > MALFORMED_IN_MARKDOWN:
            lines.append(f"- … and {len(self.malformed) - MALFORMED_IN_MARKDOWN} more in report.json")
        return "\n".join(lines) + "\n"

    def write(self, out: Path, histogram_name: str = "histogram.png") -> None:
        write_histogram(self.scores, self.selection, out / histogram_name)
        with atomic_write(out / "report.md") as fh:
            fh.write(self.markdown(histogram_name))
        with atomic_write(out / "report.json") as fh:
            fh.write(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {f"{q:g}": round(float(np.quantile(values, q)), 6) for q in QUANTILES}


def write_histogram(scores: Sequence[PassageScore], selection: Selection, path: Path) -> None:
    """Quality histogram, kept / dropped / near-duplicate stacked, with the threshold as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = np.array([s.quality for s in scores], dtype=np.float64)
    dup = np.array([i in selection.duplicates for i in range(len(scores))], dtype=bool)
    kept = np.array(selection.kept, dtype=bool)
    groups = [quality[kept], quality[~kept & ~dup], quality[dup]]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    bins: list[float] | int = np.histogram_bin_edges(quality, bins=40).tolist() if quality.size else 10
    ax.hist(
        groups,
        bins=bins,
        stacked=True,
        label=["kept", "dropped (quality)", "dropped (near-duplicate)"],
        color=["#4c72b0", "#dd8452", "#937860"],
    )
    if selection.threshold is not None:
        ax.axvline(selection.threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.set(
        xlabel="quality (LM log P(true) minus penalties)",
        ylabel="passages",
        title=f"{len(scores)} passages, {int(kept.sum())} kept",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    # No date or software stamp in the PNG: a rerun must write the same bytes.
    fig.savefig(tmp, dpi=110, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)
