"""Model loading: embedded defaults, conversion once, clear errors for missing models."""

from __future__ import annotations

import pytest

from ragctx.models import ModelNotFoundError, default_embedder_path, default_lm_gguf, resolve_lm


def test_default_models_ship_inside_pypi_packages():
    assert (default_embedder_path() / "model.safetensors").is_file()
    assert default_lm_gguf().suffix == ".gguf" and default_lm_gguf().is_file()


def test_the_gguf_is_converted_once_and_reused(registry, settings):
    registry.scorer()  # converts on first use on this machine
    folder = resolve_lm("default", settings.resolved_cache_dir())
    config = __import__("pathlib").Path(folder) / "config.json"
    mtime = config.stat().st_mtime_ns
    assert resolve_lm("default", settings.resolved_cache_dir()) == folder
    assert config.stat().st_mtime_ns == mtime
    assert (config.parent / "model.safetensors").is_file()


def test_scorer_is_a_causal_lm_with_left_padding(registry):
    lm = registry.scorer()
    assert lm.tokenizer.padding_side == "left"
    assert lm.tokenizer.pad_token is not None
    assert lm.model.config.num_hidden_layers == 30  # SmolLM2-135M


def test_missing_local_models_fail_clearly(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_lm(str(tmp_path / "nope"), tmp_path)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_lm(str(tmp_path / "nope.gguf"), tmp_path)


def test_a_local_folder_replaces_the_default(registry, settings, tmp_path):
    folder = resolve_lm("default", settings.resolved_cache_dir())
    assert resolve_lm(folder, tmp_path) == folder
