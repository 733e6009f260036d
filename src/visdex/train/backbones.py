"""An embedder's image network cut in two for metric learning: a frozen prefix, run once per image
and cached, and the last ``train_blocks`` stages, trained on the cached activations.

With ``train_blocks=0`` the cut is after the whole network: the cache holds the model's own
L2-normalised vectors and only the projection head trains (any embedder works). With more, the
network family must be known here (the names are those of the network's ``state_dict``):

``effnet``  (effnet-lite0, timm EfficientNet-Lite0): stem, 7 block stages ``blocks.0`` .. ``blocks.6``,
            then ``conv_head`` + ``bn2``; ``train_blocks=1`` trains the head convolution, 3 trains
            ``blocks.5``, ``blocks.6`` and the head convolution.
``dinov2``  (transformers Dinov2Model): patch embeddings, ``encoder.layer.0`` .. ``N-1``, ``layernorm``;
            ``train_blocks=1`` trains the final layer norm, 2 the last layer and the norm.

BatchNorm statistics stay frozen (the network stays in eval mode): small P x K batches would
estimate them badly, and the base model's statistics are what the cached prefix produced.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .common import TrainSetupError

TRAINABLE_FAMILIES = ("effnet", "dinov2")


class Stage:
    """One cut point: state-dict name prefixes it owns and the function that runs it."""

    def __init__(self, names: tuple[str, ...], run: Callable):
        self.names, self.run = names, run


class Backbone:
    """The cut network. ``prefix`` (no grad) gives what is cached; ``pooled`` runs the trained suffix on it."""

    def __init__(self, emb, train_blocks: int):
        self.emb = emb
        self.train_blocks = int(train_blocks)
        self.module = None
        self.stages: list[Stage] = []
        if self.train_blocks > 0:
            self._build()
            if self.train_blocks > len(self.stages):
                raise TrainSetupError(f"--train-blocks {self.train_blocks}: {emb.name} has {len(self.stages)} "
                                      "trainable blocks")  # fmt: skip
            for p in self.module.parameters():
                p.requires_grad_(False)
            for p in self.trainable_parameters():
                p.requires_grad_(True)

    # -- what the families look like -----------------------------------------------------------
    def _build(self) -> None:
        family = getattr(self.emb, "family", None)
        if family == "effnet" and hasattr(self.emb, "classifier"):
            m = self.module = self.emb.classifier.float()
            self.stages = [Stage((f"blocks.{i}.",), m.blocks[i]) for i in range(len(m.blocks))]
            self.stages.append(Stage(("conv_head.", "bn2."), lambda h: m.bn2(m.conv_head(h))))
            self._stem = lambda x: m.bn1(m.conv_stem(x.contiguous(memory_format=_channels_last())))
            self._pool = m.global_pool
        elif family == "dinov2" and hasattr(self.emb, "model"):
            m = self.module = self.emb.model.float()
            self.stages = [Stage((f"encoder.layer.{i}.",), _unwrap(layer)) for i, layer in enumerate(m.encoder.layer)]
            self.stages.append(Stage(("layernorm.",), m.layernorm))
            self._stem = m.embeddings
            self._pool = lambda h: h[:, 0]  # the CLS token after the final norm: Dinov2Model's pooler_output
        else:
            raise TrainSetupError(
                f"--train-blocks needs a network visdex knows how to cut ({', '.join(TRAINABLE_FAMILIES)} families); "
                f"{self.emb.name!r} is not one: train only the projection head (--train-blocks 0)"
            )
        self.module.eval()

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
        if self.train_blocks == 0:
            return []
        return [p for n, p in self.module.named_parameters() if self._owned(n)]

    def trained_tensors(self) -> dict:
        """The trained stages' parameters by state-dict name (what a head file stores as ``backbone.<name>``)."""
        if self.train_blocks == 0:
            return {}
        return {n: p.detach().cpu().clone().contiguous() for n, p in self.module.named_parameters() if self._owned(n)}

    def load_trained(self, tensors: dict) -> None:
        from ..models.head import apply_backbone_tensors

        if self.module is None:  # head only: nothing of the network was trained
            return
        apply_backbone_tensors(self.module, tensors, "the checkpoint")


def _channels_last():
    import torch

    return torch.channels_last


def _unwrap(layer) -> Callable:
    """A transformers layer returns a tensor (v5) or a tuple whose first item is the hidden state (v4)."""

    def run(h):
        out = layer(h)
        return out[0] if isinstance(out, tuple) else out

    return run
