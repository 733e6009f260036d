"""An embedder's image network cut in two for metric learning: a frozen prefix, run once per image
and cached, and the last ``train_blocks`` stages, trained on the cached activations.

With ``train_blocks=0`` the cut is after the whole network: the cache holds the model's own
L2-normalised vectors and only the projection head trains (any embedder works). With more, the
embedder's family adapter cuts the network (``Family.trainable_stages``; the names are those of the
network's ``state_dict``): e.g. EfficientNet-Lite0's 7 block stages then ``conv_head`` + ``bn2``
(``train_blocks=1`` trains the head convolution), DINOv2's encoder layers then ``layernorm``, a timm
ViT's blocks then ``norm``, a timm CNN's stages.

BatchNorm statistics stay frozen (the network stays in eval mode): small P x K batches would
estimate them badly, and the base model's statistics are what the cached prefix produced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..models.families import Stage
from .common import TrainSetupError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Backbone", "Stage"]


class Backbone:
    """The cut network. ``prefix`` (no grad) gives what is cached; ``pooled`` runs the trained suffix on it."""

    def __init__(self, emb, train_blocks: int):
        self.emb = emb
        self.train_blocks = int(train_blocks)
        self.module: nn.Module | None = None  # the network, when some of it trains
        self.stages: list[Stage] = []
        if self.train_blocks > 0:
            module = self._build()
            if self.train_blocks > len(self.stages):
                raise TrainSetupError(f"{{field}} {self.train_blocks}: {emb.name} has {len(self.stages)} "
                                      "trainable blocks", field="train_blocks")  # fmt: skip
            for p in module.parameters():
                p.requires_grad_(False)
            for p in self.trainable_parameters():
                p.requires_grad_(True)

    # -- what the families look like -----------------------------------------------------------
    def _build(self) -> nn.Module:
        from ..models.families import adapter_for

        adapter = adapter_for(self.emb)
        cut = adapter.trainable_stages(self.emb) if adapter is not None else None
        if cut is None:
            raise TrainSetupError(
                f"{{field}} needs a network visdex knows how to cut ({', '.join(trainable_families())} "
                f"families); {self.emb.name!r} is not one: train only the projection head ({{field}} 0)",
                field="train_blocks",
            )
        self.module, self.stages, self._stem, self._pool = cut.module, cut.stages, cut.stem, cut.pool
        cut.module.eval()
        return cut.module

    @property
    def cut(self) -> int:
        """Index of the first trained stage."""
        return len(self.stages) - self.train_blocks

    @property
    def device(self) -> str:
        return str(getattr(self.emb, "device", "cpu"))

    # -- running ---------------------------------------------------------------------------------
    def prefix(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) model-ready pixels -> cached activations (n, ...) float32 (the base's vectors for 0 blocks)."""
        if self.train_blocks == 0:
            return self.emb.embed_pixels(pixels)
        import torch

        with torch.inference_mode():
            h = self._stem(torch.from_numpy(np.ascontiguousarray(pixels, np.float32)).to(self.device))
            for stage in self.stages[: self.cut]:
                h = stage.run(h)
        return h.float().cpu().numpy()

    def pooled(self, h):
        """Cached activations (a torch tensor) -> L2-normalised pooled vectors, with gradients to the trained stages."""
        import torch.nn.functional as F

        if self.train_blocks == 0:
            return h.float()
        for stage in self.stages[self.cut :]:
            h = stage.run(h)
        return F.normalize(self._pool(h).float(), dim=1)

    # -- what trains ------------------------------------------------------------------------------
    def _owned(self, name: str) -> bool:
        return any(name.startswith(p) for s in self.stages[self.cut :] for p in s.names)

    def trainable_parameters(self) -> list:
        if self.module is None:  # head only (train_blocks 0)
            return []
        return [p for n, p in self.module.named_parameters() if self._owned(n)]

    def trained_tensors(self) -> dict:
        """The trained stages' parameters by state-dict name (what a head file stores as ``backbone.<name>``)."""
        if self.module is None:  # head only (train_blocks 0)
            return {}
        return {n: p.detach().cpu().clone().contiguous() for n, p in self.module.named_parameters() if self._owned(n)}

    def load_trained(self, tensors: dict) -> None:
        from ..models.head import apply_backbone_tensors

        if self.module is None:  # head only: nothing of the network was trained
            return
        apply_backbone_tensors(self.module, tensors, "the checkpoint")


def trainable_families() -> list[str]:
    """Names of the families whose adapters can cut their image network into stages."""
    from ..models.families import Family, families

    return [f.name for f in families() if type(f).trainable_stages is not Family.trainable_stages]
