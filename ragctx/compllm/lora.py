"""Low-rank adapters attached to a frozen model by forward hooks, only while (and where) they are needed.

`y = W x` becomes `y = W x + (alpha / r) * B(A(x))` on the target linear layers for the duration of
a `with adapter.attached(model):` block. Outside it the base model is untouched, so the same loaded
model keeps serving as the scorer and the reader (CompLLM's base LLM is frozen and shared).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ragctx.forward_hooks import post_hooks


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
