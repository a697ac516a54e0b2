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
    # Calibrations and the index go to temporary folders so tests never overwrite the user's; converted
    # models stay in the user's cache (linked), so the GGUF is converted once per machine.
    user_models = load_settings().resolved_cache_dir() / "models"
    user_models.mkdir(parents=True, exist_ok=True)
    cache = tmp_path_factory.mktemp("cache")
    (cache / "models").symlink_to(user_models, target_is_directory=True)
    return load_settings(index_dir=tmp_path_factory.mktemp("index"), cache_dir=cache)


@pytest.fixture(scope="session")
def registry(settings: Settings) -> ModelRegistry:
    return ModelRegistry(settings)


@pytest.fixture(scope="session")
def engine(settings: Settings, registry: ModelRegistry) -> ContextEngine:
    return ContextEngine(settings, registry)
