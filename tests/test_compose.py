"""docker-compose.yml and Dockerfile: Docker cannot run here, so their content is checked as data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragctx.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
_DEFAULTED = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+):?-(?P<default>.*)\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_the_api_and_redis_are_the_services(compose):
    assert set(compose["services"]) == {"ragctx", "redis"}
    api = compose["services"]["ragctx"]
    assert "8000:8000" in api["ports"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_is_a_bounded_lru_cache(compose):
    command = " ".join(compose["services"]["redis"]["command"])
    assert "--maxmemory 1gb" in command
    assert "--maxmemory-policy allkeys-lru" in command


def test_both_services_have_health_checks_and_the_api_checks_readiness(compose):
    for name, service in compose["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    api_check = " ".join(compose["services"]["ragctx"]["healthcheck"]["test"])
    assert "/readyz" in api_check  # models loaded and Redis reachable, not merely the process alive
    assert "redis-cli" in " ".join(compose["services"]["redis"]["healthcheck"]["test"])


def test_index_and_model_cache_live_on_a_named_volume(compose):
    api = compose["services"]["ragctx"]
    env = environment_of(api)
    mounts = {m.split(":")[1]: m.split(":")[0] for m in api["volumes"]}
    assert mounts.get("/data") in compose["volumes"]
    assert env["RAGCTX_INDEX_DIR"].startswith("/data/") and env["RAGCTX_CACHE_DIR"].startswith("/data/")


def test_every_ragctx_variable_is_a_setting_and_the_defaults_are_valid(compose, monkeypatch):
    env = environment_of(compose["services"]["ragctx"])
    names = {k for k in env if k.startswith("RAGCTX_")}
    assert names, "the API service sets no RAGCTX_* variable"
    unknown = sorted(n for n in names if n.removeprefix("RAGCTX_").lower() not in Settings.model_fields)
    assert not unknown, f"not Settings fields: {unknown}"
    for key in [k for k in __import__("os").environ if k.startswith("RAGCTX_")]:
        monkeypatch.delenv(key)
    for name, value in env.items():
        match = _DEFAULTED.match(value)
        monkeypatch.setenv(name, match.group("default") if match else value)  # as compose resolves it unset
    settings = load_settings()
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.upstream_base_url is None and settings.api_keys == []
    assert settings.allow_public_without_keys is False  # so the image refuses 0.0.0.0 without keys


def test_serving_on_a_public_interface_without_keys_is_refused_unless_allowed(monkeypatch):
    from typer.testing import CliRunner

    from ragctx.cli import app

    for key in [k for k in __import__("os").environ if k.startswith("RAGCTX_")]:
        monkeypatch.delenv(key)
    refused = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert refused.exit_code == 2 and "RAGCTX_API_KEYS" in refused.output


def test_the_image_serves_on_all_interfaces_with_a_health_check():
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r'^CMD \["ragctx", "serve", "--host", "0\.0\.0\.0"', dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile
    assert "EXPOSE 8000" in dockerfile
