"""Low-rank adapters attached to a frozen model by forward hooks, only while (and where) they are needed.

`y = W x` becomes `y = W x + (alpha / r) * B(A(x))` on the target linear layers for the duration of
a `with adapter.attached(model):` block. Outside it the base model is untouched, so the same loaded
model keeps serving EHPC (whose evaluator heads belong to the base model), CompLLM and, adapted, the
distracting-effect scorer and the reader.

`ReaderAdapter` is a LoRA saved as a folder (`adapter.json` + `adapter.safetensors`, fp16) with the
model it was trained for; loading it onto another model is refused, naming both.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ragctx.forward_hooks import post_hooks

if TYPE_CHECKING:
    from ragctx.models import LanguageModel


def target_linears(model: nn.Module, targets: Sequence[str]) -> dict[str, nn.Linear]:
    """Linear layers of `model` whose attribute name is one of `targets` (e.g. q_proj, v_proj)."""
    found = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    }
    if not found:
        raise ValueError(f"no linear layers named {list(targets)} in {type(model).__name__}")
    return found


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """The model's own weights get no gradients within the block (an adapter trains beside them), and
    their `requires_grad` flags come back after it: PyTorch's bf16 CPU linear layers run about 1.5x
    slower on weights that do not require grad, even under inference mode (measured with torch 2.13)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class LoRAAdapter(nn.Module):
    def __init__(self, linears: dict[str, nn.Linear], rank: int, alpha: float) -> None:
        super().__init__()
        self.rank = rank
        self.scale = alpha / rank
        self.names = sorted(linears)
        self.down = nn.ParameterList()
        self.up = nn.ParameterList()
        for name in self.names:
            lin = linears[name]
            a = torch.empty(rank, lin.in_features)
            nn.init.kaiming_uniform_(a, a=5**0.5)
            self.down.append(nn.Parameter(a))
            # B = 0: the adapted model starts exactly as the base model.
            self.up.append(nn.Parameter(torch.zeros(lin.out_features, rank)))

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        """Adapted forwards for this context only: another thread using the same model meanwhile (the
        scorer, the plain reader) runs the base model (forward_hooks)."""
        modules = dict(model.named_modules())
        with post_hooks({modules[name]: self._hook(i) for i, name in enumerate(self.names)}):
            yield

    def _hook(self, i: int) -> Any:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            a = self.down[i].to(x.dtype)
            b = self.up[i].to(x.dtype)
            return output + (x @ a.T @ b.T) * self.scale

        return hook


def cosine_lr(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up to `lr`, then cosine decay to 0 at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What an adapter must match: the architecture's shape and a checksum of the input embeddings
    (compared with a tolerance, so the same weights in fp32 on a CPU and bf16 on a GPU agree)."""
    cfg: Any = getattr(model, "config", None)
    emb: Any = model.get_input_embeddings()  # type: ignore[operator]
    weight = emb.weight.detach()
    return {
        "model_type": str(getattr(cfg, "model_type", type(model).__name__)),
        "hidden_size": int(weight.shape[1]),
        "vocab_size": int(weight.shape[0]),
        "layers": int(getattr(cfg, "num_hidden_layers", 0)),
        "embedding_checksum": float(weight[:256].float().abs().mean()),
    }


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    shape = ("model_type", "hidden_size", "vocab_size", "layers")
    if any(a.get(k) != b.get(k) for k in shape):
        return False
    x, y = float(a["embedding_checksum"]), float(b["embedding_checksum"])
    return abs(x - y) <= 1e-2 * max(abs(x), abs(y), 1e-12)


class AdapterError(RuntimeError):
    """A missing, corrupt or mismatched adapter; the message names the file."""


ADAPTER_FORMAT = 1


@dataclass
class AdapterInfo:
    model: str  # the name the base model was loaded by, for messages
    fingerprint: dict[str, Any]
    rank: int
    alpha: float
    targets: list[str]
    prompt: str  # the prompt format it was trained on
    format: int = ADAPTER_FORMAT
    training: dict[str, Any] = field(default_factory=dict)
    probe_layers: list[int] = field(default_factory=list)  # depths of the abstention probes trained with it
    de_layer: int | None = None  # the probe the DE scorer reads (chosen on the training fold); None = logits


class AbstainProbes(nn.Module):
    """Linear probes, one per depth, for P(abstain) read from the residual stream entering a decoder
    layer at the answer position: the distracting-effect scorer's early exit (a forward that stops at
    layer 12 of 30 costs 40 % of a full one). Trained with the LoRA, on its abstention targets."""

    def __init__(self, layers: Sequence[int], hidden: int) -> None:
        super().__init__()
        self.layers = sorted(set(layers))
        self.weight = nn.ParameterDict({str(k): nn.Parameter(torch.zeros(hidden)) for k in self.layers})
        self.bias = nn.ParameterDict({str(k): nn.Parameter(torch.zeros(())) for k in self.layers})

    def logit(self, layer: int, states: torch.Tensor) -> torch.Tensor:
        """Abstention log-odds (B,) from states (B, hidden); RMS-normalised first, as the next layer
        would, so the weights need not follow the residual stream's growing scale."""
        x = states.float()
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        w = self.weight[str(layer)]
        return x @ w.to(x.device) + self.bias[str(layer)].to(x.device)


@dataclass
class ReaderAdapter:
    """A LoRA for one base model, with what it was trained for."""

    lora: LoRAAdapter
    info: AdapterInfo
    digest: str = "trained-in-process"  # of the weights file it was loaded from: keys calibrations of it
    probes: AbstainProbes | None = None
    _merged: dict[int, LanguageModel] = field(default_factory=dict, repr=False, compare=False)
    _merge_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def merged(self, lm: LanguageModel) -> LanguageModel:
        """`lm` with this LoRA folded into a copy of its weights (W + scale * B A, in the model's dtype): an
        adapted forward then costs a plain forward (no hooks), and `lm` stays the base model for its other
        users. Made once per model and kept (a second copy of the weights: 270 MB for SmolLM2-135M in
        bf16); a snapshot, so train first, then merge."""
        with self._merge_lock:
            if id(lm.model) not in self._merged:
                self._merged[id(lm.model)] = self._merge(lm)
            return self._merged[id(lm.model)]

    def _merge(self, lm: LanguageModel) -> LanguageModel:
        model: Any = copy.deepcopy(lm.model)
        linears = target_linears(model, self.info.targets)
        with torch.no_grad():
            for i, name in enumerate(self.lora.names):
                weight = linears[name].weight
                delta = (self.lora.up[i].float() @ self.lora.down[i].float()) * self.lora.scale
                weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
        model.eval()  # its weights keep requires_grad (see `frozen`); callers run it under inference mode
        return dataclasses.replace(lm, name=f"{lm.name}+reader-adapter:{self.digest}", model=model)

    @classmethod
    def create(
        cls,
        lm: LanguageModel,
        rank: int,
        alpha: float,
        targets: Sequence[str],
        prompt: str,
        probe_layers: Sequence[int] = (),
    ) -> ReaderAdapter:
        lora = LoRAAdapter(target_linears(lm.model, targets), rank, alpha).to(lm.device)
        info = AdapterInfo(lm.name, model_fingerprint(lm.model), rank, alpha, list(targets), prompt)
        probes = None
        if probe_layers:
            layers = int(getattr(lm.model.config, "num_hidden_layers", 0))
            bad = [k for k in probe_layers if not 0 < k < layers]
            if bad:
                raise ValueError(f"probe layers {bad} are outside 1..{layers - 1} for {lm.name!r}")
            probes = AbstainProbes(probe_layers, int(lm.model.config.hidden_size)).to(lm.device)
            info.probe_layers = probes.layers
        return cls(lora, info, probes=probes)

    def state(self) -> dict[str, torch.Tensor]:
        """What adapter.safetensors holds: the LoRA in fp16, the probes (a few KB) in fp32."""
        out = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in self.lora.state_dict().items()}
        if self.probes is not None:
            out |= {f"probe.{k}": v.detach().to("cpu", torch.float32) for k, v in self.probes.state_dict().items()}
        return out

    def attached(self, lm: LanguageModel) -> contextlib.AbstractContextManager[None]:
        return self.lora.attached(lm.model)

    def save(self, folder: Path) -> None:
        """adapter.json + adapter.safetensors (fp16), written to a temporary folder and swapped in."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            save_file(self.state(), str(tmp / "adapter.safetensors"))
            (tmp / "adapter.json").write_text(json.dumps(asdict(self.info), indent=1))
            for extra in folder.glob("*") if folder.is_dir() else []:
                if not (tmp / extra.name).exists() and extra.is_file():
                    shutil.copy2(extra, tmp / extra.name)  # keep the card and plots beside the weights
            os.chmod(tmp, 0o755)  # mkdtemp's 0700 would follow the folder into a package
            for f in tmp.iterdir():
                os.chmod(f, 0o644)
            old = folder.with_name(folder.name + ".old")
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, folder: Path, lm: LanguageModel) -> ReaderAdapter:
        """The adapter in `folder` for `lm`; AdapterError naming the file if it is missing, unreadable or
        trained for another model."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder).expanduser()
        meta, weights = folder / "adapter.json", folder / "adapter.safetensors"
        for path in (meta, weights):
            if not path.is_file():
                raise AdapterError(f"reader adapter file {path} does not exist")
        try:
            raw = json.loads(meta.read_text())
            info = AdapterInfo(**raw)
        except (ValueError, TypeError) as exc:
            raise AdapterError(f"reader adapter file {meta} is not a valid adapter description: {exc}") from exc
        if info.format != ADAPTER_FORMAT:
            raise AdapterError(f"reader adapter {meta} has format {info.format}; this ragctx reads {ADAPTER_FORMAT}")
        if not same_model(info.fingerprint, model_fingerprint(lm.model)):
            raise AdapterError(
                f"reader adapter {folder} was trained for {info.model!r}, not for {lm.name!r}: train one for this "
                "model with `ragctx train reader`, or set RAGCTX_READER_ADAPTER=none"
            )
        lora = LoRAAdapter(target_linears(lm.model, info.targets), info.rank, info.alpha)
        probes = AbstainProbes(info.probe_layers, int(lm.model.config.hidden_size)) if info.probe_layers else None
        try:
            state = load_file(str(weights))
            lora.load_state_dict({k: v.float() for k, v in state.items() if not k.startswith("probe.")})
            if probes is not None:
                probes.load_state_dict({k[6:]: v.float() for k, v in state.items() if k.startswith("probe.")})
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise AdapterError(f"reader adapter file {weights} is corrupt or does not fit the model: {exc}") from exc
        if info.de_layer is not None and info.de_layer not in info.probe_layers:
            raise AdapterError(f"reader adapter {meta} reads DE at layer {info.de_layer}, which has no probe")
        for module in (lora, probes):
            if module is not None:
                module.to(lm.device).eval()
                for p in module.parameters():
                    p.requires_grad_(False)
        return cls(lora, info, hashlib.sha256(weights.read_bytes()).hexdigest()[:16], probes)
