"""Configuration: environment, TOML file, defaults; invalid values fail naming the key."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ragctx.cli import app
from ragctx.config import ConfigError
from ragctx.engine import ContextEngine
from ragctx.settings import Settings, load_settings, settings_markdown


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
        inner = getattr(field.annotation, "model_fields", None)
        if inner is None:
            assert f"`RAGCTX_{name.upper()}`" in table
            continue
        for key, f in inner.items():  # a method's section: one row per key
            assert f.description, f"{name}.{key}"
            assert f"`[{name}] {key}`" in table and f"`RAGCTX_{name.upper()}__{key.upper()}`" in table


def test_a_method_reads_its_own_section_from_the_environment_the_toml_file_or_python(tmp_path, monkeypatch):
    cfg = tmp_path / "ragctx.toml"
    cfg.write_text('[ehpc]\npool = 3\ngranularity = "word"\n\n[label]\ndistractor_policy = "drop"\n')
    monkeypatch.setenv("RAGCTX_EHPC__POOL", "7")
    s = load_settings(cfg)
    assert (s.ehpc.pool, s.ehpc.granularity, s.label.distractor_policy) == (7, "word", "drop")
    # A dict in Python overrides key by key: the rest of the section still comes from env and file.
    s = load_settings(cfg, ehpc={"chunk_tokens": 512})
    assert (s.ehpc.pool, s.ehpc.granularity, s.ehpc.chunk_tokens) == (7, "word", 512)
    assert s.embed_passages.floor == 0.18 and s.exit.model is None  # untouched sections keep their defaults


def test_a_bad_or_unknown_section_key_names_it_where_it_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGCTX_EHPC__POOL", "0")
    with pytest.raises(ConfigError, match=r"ehpc\.pool \(RAGCTX_EHPC__POOL\)"):
        load_settings()
    monkeypatch.delenv("RAGCTX_EHPC__POOL")
    cfg = tmp_path / "typo.toml"
    cfg.write_text("[ehpc]\npoll = 3\n")
    with pytest.raises(ConfigError, match=r"ehpc\.poll .*`\[ehpc\] poll` in .*typo\.toml"):
        load_settings(cfg)


def test_a_setting_that_moved_into_a_section_says_where_it_went(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"`ehpc_pool` is now `ehpc.pool` \(RAGCTX_EHPC__POOL"):
        load_settings(ehpc_pool=3)
    monkeypatch.setenv("RAGCTX_RELEVANCE_FLOOR", "0.3")  # silently ignored otherwise: not a field any more
    with pytest.raises(ConfigError, match="embed_passages.floor"):
        load_settings()
    monkeypatch.delenv("RAGCTX_RELEVANCE_FLOOR")
    cfg = tmp_path / "old.toml"
    cfg.write_text("distractor_policy = 'drop'\n")
    with pytest.raises(ConfigError, match=r"label\.distractor_policy.*\[label\] distractor_policy"):
        load_settings(cfg)


def test_the_generated_docs_are_current():
    """README's stage table and docs/configuration.md's key table are generated from the declarations."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "docs/generate.py", "--check"], cwd=root, capture_output=True, text=True)
    assert run.returncode == 0, f"{run.stdout}{run.stderr}: run `python docs/generate.py`"
    assert settings_markdown() in (root / "docs" / "configuration.md").read_text()
