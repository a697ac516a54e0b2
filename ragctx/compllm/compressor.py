"""CompLLM (Berton et al.; algorithms.md §6): segment-wise soft compression into concept embeddings.

The compressor is the target LLM itself, with a LoRA adapter attached, plus one linear layer. A
context is cut into segments of S tokens; a segment of n tokens followed by ceil(n / C) end-of-sequence
embeddings goes through the adapted model on its own, and the last hidden states at the appended
positions, through the linear layer, are the segment's concept embeddings (CEs) in the model's
input-embedding space. Segments never see each other, so they batch, and a segment's CEs depend only on
its own tokens: they can be cached and reused wherever the segment appears.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ragctx.adapters import LoRAAdapter, target_linears
from ragctx.models import LanguageModel

CONFIG_FILE = "compllm.json"
WEIGHTS_FILE = "adapter.safetensors"


@dataclass(frozen=True)
class CompLLMConfig:
    segment_tokens: int = 20  # S
    rate: int = 2  # C: a segment of S tokens becomes S / C concept embeddings
    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class AdapterInfo:
    """What a saved adapter says about itself (compllm.json)."""

    config: CompLLMConfig
    base_model: str
    hidden_size: int
    training: dict[str, Any] = field(default_factory=dict)


def cut(token_ids: Sequence[int], segment_tokens: int) -> list[list[int]]:
    """Consecutive segments of at most `segment_tokens` tokens."""
    return [list(token_ids[i : i + segment_tokens]) for i in range(0, len(token_ids), segment_tokens)]


class CompLLM(nn.Module):
    def __init__(self, lm: LanguageModel, config: CompLLMConfig | None = None) -> None:
        super().__init__()
        self.config = config or CompLLMConfig()
        self.base_model = lm.name
        base: Any = lm.model
        self.hidden_size = int(base.config.hidden_size)
        self.lora = LoRAAdapter(target_linears(base.model, self.config.targets), self.config.rank, self.config.alpha)
        self.proj = nn.Linear(self.hidden_size, self.hidden_size)
        with torch.no_grad():
            # Start as the identity scaled from final-hidden-state size to input-embedding size (set by
            # `calibrate_scale` on real text before training).
            self.proj.weight.copy_(torch.eye(self.hidden_size))
            self.proj.bias.zero_()
        eos = lm.tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"{lm.name}: CompLLM appends end-of-sequence embeddings; the tokenizer has no EOS")
        self.eos_id = int(eos)
        self.to(lm.device)

    def concepts_for(self, n_tokens: int) -> int:
        return math.ceil(n_tokens / self.config.rate)

    def forward(self, lm: LanguageModel, segments: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Concept embeddings (ceil(n/C), d) of each segment, in one batched forward."""
        if not segments:
            return []
        lengths = [len(s) for s in segments]
        if min(lengths) == 0 or max(lengths) > self.config.segment_tokens:
            raise ValueError(f"segments must hold 1..{self.config.segment_tokens} tokens")
        counts = [self.concepts_for(n) for n in lengths]
        width = max(n + m for n, m in zip(lengths, counts, strict=True))
        ids = torch.full((len(segments), width), self.eos_id, dtype=torch.long)
        mask = torch.zeros((len(segments), width), dtype=torch.long)
        for row, (seg, m) in enumerate(zip(segments, counts, strict=True)):
            ids[row, : len(seg)] = torch.tensor(list(seg))
            mask[row, : len(seg) + m] = 1
        base: Any = lm.model
        embeds = base.get_input_embeddings()(ids.to(lm.device))
        with self.lora.attached(base.model):
            hidden = base.model(inputs_embeds=embeds, attention_mask=mask.to(lm.device)).last_hidden_state
        out = self.proj(hidden.to(self.proj.weight.dtype))
        return [out[row, n : n + m] for row, (n, m) in enumerate(zip(lengths, counts, strict=True))]

    @torch.no_grad()
    def calibrate_scale(self, lm: LanguageModel, token_ids: Sequence[int]) -> None:
        """Scale the initial projection so concept embeddings start at the size of token embeddings."""
        segments = cut(token_ids, self.config.segment_tokens)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(self.hidden_size, device=self.proj.weight.device))
            ces = torch.cat(self(lm, segments))
            emb: Any = lm.model.get_input_embeddings()
            tokens = emb(torch.tensor(list(token_ids), device=lm.device))
            scale = tokens.norm(dim=-1).mean() / ces.norm(dim=-1).mean()
            self.proj.weight.mul_(scale)

    def fingerprint(self) -> str:
        """Hash of the config and weights: cached concept embeddings are keyed by it."""
        h = hashlib.sha256(json.dumps(asdict(self.config), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:32]

    # ---- files ------------------------------------------------------------------------------------

    def save(self, folder: Path, training: dict[str, Any] | None = None) -> None:
        """Write compllm.json + adapter.safetensors (fp16) into a temporary folder, then swap it in."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            state = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
            info = {
                "config": asdict(self.config),
                "base_model": self.base_model,
                "hidden_size": self.hidden_size,
                "training": training or {},
            }
            (tmp / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
            old = folder.with_name(folder.name + ".old")
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def read_info(folder: Path) -> AdapterInfo:
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a CompLLM adapter (no {CONFIG_FILE}); see `ragctx train compllm`")
        raw = json.loads(path.read_text())
        cfg = raw["config"]
        cfg["targets"] = tuple(cfg["targets"])
        return AdapterInfo(CompLLMConfig(**cfg), raw["base_model"], raw["hidden_size"], raw.get("training", {}))

    @classmethod
    def load(cls, folder: Path, lm: LanguageModel) -> CompLLM:
        from safetensors.torch import load_file

        info = cls.read_info(folder)
        if info.hidden_size != lm.model.config.hidden_size:
            raise ValueError(
                f"adapter {folder} was trained for a model of hidden size {info.hidden_size} "
                f"({info.base_model}), not {lm.name} ({lm.model.config.hidden_size})"
            )
        model = cls(lm, info.config)
        state = load_file(str(Path(folder) / WEIGHTS_FILE))
        model.load_state_dict({k: v.float() for k, v in state.items()})
        model.to(lm.device)
        model.eval()
        return model
