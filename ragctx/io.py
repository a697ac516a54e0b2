"""Write-then-rename output, so a failed or killed job never leaves a half-written file."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO[str]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """A matplotlib figure written to a temporary file and renamed into place (no half-written PNG)."""
    path = Path(path)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp" + path.suffix)
    fig.savefig(tmp, dpi=dpi)
    tmp.replace(path)


# Calibration files: per-model JSON in the cache directory, written once and read by the method that owns the
# format (abstention: scoring.abstention; AttnRank and attention bias: reordering.calibration; evaluator heads:
# compressors.evaluator_heads).


def model_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[-80:] or "model"


@functools.lru_cache(maxsize=64)
def _read_cached(path: str, mtime_ns: int) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))


def read_calibration(path: Path) -> dict[str, Any]:
    """A stored calibration, parsed once per file version (stages are built per request)."""
    return dict(_read_cached(str(path), path.stat().st_mtime_ns))


def calibration_path(cache_dir: Path, kind: str, name: str) -> Path:
    return cache_dir.expanduser() / "calibration" / kind / f"{name}.json"
