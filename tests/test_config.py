"""Configuration: environment, TOML file, defaults; invalid values fail naming the key."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ragctx.cli import app
from ragctx.config import ConfigError, Settings, load_settings, settings_markdown
from ragctx.engine import ContextEngine


def test_defaults_are_the_embedded_models_and_the_default_chain(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("RAGCTX_"):
            monkeypatch.delenv(key)
    s = load_settings()
    assert s.embedder == "default" and s.scorer_model == "default"
    assert s.stages == ["retrieve", "dedup", "embed-passages", "ehpc"]  # the dev bench's best chain
    assert s.redis_url is None


def test_environment_overrides_toml_which_overrides_defaults(tmp_path, monkeypatch):
    cfg = tmp_path / "ragctx.toml"
    cfg.write_text('top_k = 7\nindex_type = "hnsw"\nstages = ["retrieve", "truncate"]\n')
    monkeypatch.setenv("RAGCTX_TOP_K", "9")
    s = load_settings(cfg)
    assert s.top_k == 9
    assert s.index_type == "hnsw"
    assert s.stages == ["retrieve", "truncate"]


def test_invalid_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("RAGCTX_TOP_K", "0")
    with pytest.raises(ConfigError, match="RAGCTX_TOP_K"):
        load_settings()


def test_invalid_toml_value_names_the_key_and_file(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("rate = 1.5\n")
    with pytest.raises(ConfigError, match=r"`rate` in .*bad\.toml"):
        load_settings(cfg)


def test_unknown_toml_key_and_unknown_stage_are_rejected(tmp_path):
    cfg = tmp_path / "typo.toml"
    cfg.write_text("topk = 3\n")
    with pytest.raises(ConfigError, match="topk"):
        load_settings(cfg)
    # Settings sit below the registry, so stage names are checked where a pipeline is made: the engine
    # (every interface uses one) and the CLI, which exits 2 naming the stage.
    cfg.write_text('stages = ["retrieve", "compress-all"]\n')
    with pytest.raises(ValueError, match="compress-all"):
        ContextEngine(load_settings(cfg))
    result = CliRunner().invoke(app, ["config", "-c", str(cfg)])
    assert result.exit_code == 2 and "compress-all" in result.output


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("top_k = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)


def test_every_key_is_documented():
    table = settings_markdown()
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert f"`RAGCTX_{name.upper()}`" in table


def test_the_configuration_doc_is_the_generated_table():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert settings_markdown() in doc, "docs/configuration.md is stale; paste `ragctx config --markdown`"
