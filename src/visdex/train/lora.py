"""A small LoRA (Hu et al. 2021) for ``nn.Linear`` layers: ``y = W x + (alpha / r) * B A x``.

``W`` stays frozen; ``A`` (r x in) starts random and ``B`` (out x r) at zero, so a freshly wrapped
model computes exactly what it did before. :func:`merge_lora` folds ``B A`` back into ``W`` and puts
plain ``nn.Linear`` layers back, so the saved model is an ordinary one with the original names.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
>>> add_lora(net, rank=2)
['0']
>>> merged = merge_lora(net); type(merged[0]).__name__
'Linear'
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError("LoRA rank must be >= 1")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # what nn.Linear does for its own weight

    @property
    def weight(self) -> torch.Tensor:
        """The merged weight: code that reads ``layer.weight`` directly still sees the adapted layer."""
        return self.base.weight + self.scale * (self.lora_b @ self.lora_a).to(self.base.weight.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (x.to(self.lora_a.dtype) @ self.lora_a.T) @ self.lora_b.T
        return self.base(x) + self.scale * update.to(x.dtype)

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def add_lora(
    module: nn.Module, rank: int, alpha: float | None = None, where: Callable[[str, nn.Linear], bool] | None = None
) -> list[str]:
    """Wrap every ``nn.Linear`` under ``module`` that ``where(name, layer)`` accepts (all by default) in a
    :class:`LoRALinear`; returns the wrapped names. Linear layers inside ``nn.MultiheadAttention`` are
    skipped: it reads their weights directly and would bypass the adapter."""
    alpha = float(rank if alpha is None else alpha)
    skip = {f"{n}.{c}" if n else c for n, m in module.named_modules() if isinstance(m, nn.MultiheadAttention)
            for c, _ in m.named_children()}  # fmt: skip
    targets = [(n, m) for n, m in module.named_modules()
               if type(m) is nn.Linear and n not in skip and (where is None or where(n, m))]  # fmt: skip
    for name, layer in targets:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, LoRALinear(layer, rank, alpha))
    return [n for n, _ in targets]


def merge_lora(module: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` under ``module`` by its merged ``nn.Linear``, in place; returns ``module``."""
    wrapped = [(n, m) for n, m in module.named_modules() if isinstance(m, LoRALinear)]
    if isinstance(module, LoRALinear):
        return module.merged()
    for name, layer in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.merged())
    return module
