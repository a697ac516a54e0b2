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


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (on this machine)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Temporary files of `path` left by writers that were killed (kill -9 runs no cleanup): their names
    carry the writer's pid, and a file whose writer is gone is removed."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO[str]]:
    """Write `path` through a temporary sibling renamed into place: a failed, interrupted (SIGINT/SIGTERM
    in the CLI) or killed writer never leaves a half-written `path`; a kill -9 leaves the temporary file,
    which the next write of `path` removes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
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


class MissingCalibration(FileNotFoundError):
    """A method needs a per-model calibration that is not there; the message names the command that makes it
    (the service answers 503, the CLI exits 2)."""


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
