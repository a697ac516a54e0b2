"""Shared fixtures: real models (loaded once per session) and real data from ../shared/data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ragctx.config import Settings, load_settings
from ragctx.engine import ContextEngine
from ragctx.models import ModelRegistry
from ragctx.types import Passage

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def need_data(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (tests read ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def nq20_rows() -> list[dict]:
    path = need_data("nq20/nq20_dev.jsonl.gz")
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == 30:
                break
    return rows


def passages_of(row: dict) -> list[Passage]:
    return [Passage(id=p["id"], title=p["title"], text=p["text"]) for p in row["passages"]]


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # Models convert into the user's cache (shared with the demo, so the GGUF is converted once per
    # machine); the index goes to a temporary folder.
    index_dir = tmp_path_factory.mktemp("index")
    return load_settings(index_dir=index_dir)


@pytest.fixture(scope="session")
def registry(settings: Settings) -> ModelRegistry:
    return ModelRegistry(settings)


@pytest.fixture(scope="session")
def engine(settings: Settings, registry: ModelRegistry) -> ContextEngine:
    return ContextEngine(settings, registry)
