"""Shared fixtures: real models (loaded once per session) and real data from ../shared/data."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Tests never see the real home, cache or index: before ragctx is imported, HOME and the XDG folders point
# at an empty temporary folder and no RAGCTX_* setting leaks in from the shell. Subprocesses inherit this.
# (Idempotent: test modules also import this file as `tests.conftest`, a second module object.)
if "PYTEST_RAGCTX_HOME" not in os.environ:
    os.environ["PYTEST_RAGCTX_HOME"] = tempfile.mkdtemp(prefix="ragctx-test-home-")
TEST_HOME = Path(os.environ["PYTEST_RAGCTX_HOME"])
for _var in [v for v in os.environ if v.startswith("RAGCTX_")]:
    del os.environ[_var]
os.environ["HOME"] = str(TEST_HOME)
for _var, _sub in [("XDG_CACHE_HOME", ".cache"), ("XDG_DATA_HOME", ".local/share"), ("XDG_CONFIG_HOME", ".config")]:
    os.environ[_var] = str(TEST_HOME / _sub)
os.environ["HF_HOME"] = str(TEST_HOME / ".cache" / "huggingface")
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from ragctx.engine import ContextEngine  # noqa: E402
from ragctx.models import ModelRegistry  # noqa: E402
from ragctx.settings import Settings, load_settings  # noqa: E402
from ragctx.types import Passage  # noqa: E402

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
    # Calibrations, converted models and the index go to temporary folders (the GGUF is converted once
    # per test session); the home folder of the session is empty too, so nothing of the user's is read.
    return load_settings(index_dir=tmp_path_factory.mktemp("index"), cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def registry(settings: Settings) -> ModelRegistry:
    return ModelRegistry(settings)


@pytest.fixture(scope="session")
def exact_settings(settings: Settings) -> Settings:
    """float32 models, for the tests that compare two computations of the same numbers (batched and alone,
    cached and fresh, early exit and full forward) to float32 rounding, and for golden outputs that must not
    depend on the machine. The default (`auto`) is bf16 on a CPU with bf16 instructions, whose own rounding
    differs between batch layouts by ~1e-2."""
    return load_settings(
        index_dir=settings.index_dir, cache_dir=settings.cache_dir, lm_dtype="float32", embedder_backend="torch"
    )


@pytest.fixture(scope="session")
def exact_registry(exact_settings: Settings) -> ModelRegistry:
    return ModelRegistry(exact_settings)


@pytest.fixture(scope="session")
def exact_engine(exact_settings: Settings, exact_registry: ModelRegistry) -> ContextEngine:
    return ContextEngine(exact_settings, exact_registry)


@pytest.fixture(scope="session")
def engine(settings: Settings, registry: ModelRegistry) -> ContextEngine:
    return ContextEngine(settings, registry)


class RedisServer:
    """A real `redis-server` on a free loopback port, in a temporary folder; can be killed and restarted."""

    def __init__(self, workdir: Path) -> None:
        import socket

        self.workdir = workdir
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--maxmemory",
                "256mb",
                "--maxmemory-policy",
                "allkeys-lru",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt install redis-server; .ci/run installs it)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()
