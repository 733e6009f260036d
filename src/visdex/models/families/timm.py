"""timm image models: ``timm:NAME`` (``timm:resnet50.a1_in1k``, ``timm:efficientnet_b4``,
``timm:vit_small_patch14_dinov2``), ``timm:hf-hub:<repo>``, ``timm:local-dir:<folder>``, or a folder written
by ``timm.models.save_for_hf``. Image only.

The vector is the pooled pre-logits feature, ``forward_head(forward_features(x), pre_logits=True)``;
preprocessing is the model's own ``resolve_data_config`` (input size, crop_pct, interpolation,
mean/std), run by visdex's numpy :class:`~visdex.models.base.Preprocess` as ``create_transform``'s
eval transform does it (shortest side to ``floor(size / crop_pct)``, torchvision's centre crop).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ...errors import ModelLoadError, UnknownModel
from ..base import Embedder, Fingerprint, Preprocess, l2_normalize
from .base import Family, FamilyProfile, ModelRef, Stage, Stages, torch_batches

_SCHEMES = ("hf-hub:", "local-dir:")


def preprocess_from_data_config(cfg: dict) -> Preprocess:
    """visdex's :class:`Preprocess` for timm's ``resolve_data_config`` output (its eval transform).

    >>> preprocess_from_data_config({"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic",
    ...                              "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_mode": "center"}).resize_to
    256
    """
    _, h, w = cfg["input_size"]
    if h != w:
        raise ModelLoadError(f"timm input size {h}x{w} is not square; visdex needs a square input")
    mode = cfg.get("crop_mode", "center") or "center"
    if mode != "center":
        raise ModelLoadError(f"timm crop_mode {mode!r} is not supported (center is)")
    interp = cfg.get("interpolation", "bicubic")
    if interp not in ("bicubic", "bilinear"):
        raise ModelLoadError(f"timm interpolation {interp!r} is not supported (bicubic and bilinear are)")
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    return Preprocess(size=int(h), resize_to=math.floor(h / crop_pct), mode="shortest", mean=tuple(cfg["mean"]),
                      std=tuple(cfg["std"]), resample=interp, crop="round")  # fmt: skip


class TimmEmbedder(Embedder):
    """A timm network's pooled pre-logits features. ``TimmEmbedder(net, name=..., ...)`` wraps a model already
    made by ``timm.create_model`` (tests use random weights this way)."""

    family = "timm"

    def __init__(self, net, *, name: str, source: str, revision: str, device: str = "cpu",
                 batch_size: int | None = None):  # fmt: skip
        import torch
        from timm.data import resolve_data_config

        self.name, self.source, self.revision, self.device = name, source, revision, device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.batch_size = batch_size or (128 if device.startswith("cuda") else 32)
        self.model = net.eval().to(device=device, dtype=self.dtype)
        self.preprocess = preprocess_from_data_config(resolve_data_config({}, model=net))
        self.dim = int(net.num_features if not hasattr(net, "head_hidden_size") else net.head_hidden_size)
        self.modalities = frozenset({"image"})
        # bf16 on an AMX CPU by default for ViTs only: CNNs' bf16 vectors drift more (see models/offline.py)
        self.cpu_bf16_auto = hasattr(net, "blocks") and hasattr(net, "patch_embed")

    def image_tower(self, x):
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return l2_normalize(torch_batches(self, pixels, self.image_tower))

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(
            name=self.name,
            source=self.source,
            revision=self.revision,
            dim=self.dim,
            preprocessing=json.loads(json.dumps(self.preprocess.to_dict())),
            modalities=("image",),
        )


def _model_name(ref: ModelRef) -> str:
    return f"local-dir:{ref.source}" if ref.local else ref.source


def revision(model_name: str) -> str:
    """The weights version, without importing torch: a hub snapshot (``timm/<name>`` for a tagged name), the
    sha256 of a local folder's weights, else the name itself (timm's pretrained tags name fixed files)."""
    from ..hf import cached_hash_files

    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:") :])
        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        return cached_hash_files(files) if files else "unknown"
    repo = model_name[len("hf-hub:") :] if model_name.startswith("hf-hub:") else f"timm/{model_name}"
    if "/" in repo and ("." in repo.split("/")[-1] or model_name.startswith("hf-hub:")):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo, "config.json")
        if isinstance(cached, str) and Path(cached).parent.parent.name == "snapshots":
            return Path(cached).parent.name
    return model_name


class TimmFamily(Family):
    name = "timm"
    catalog_families = ("timm",)
    prefixes = ("timm:",)
    order = 20
    profile = FamilyProfile(good_for="image only: visual similarity and near-duplicates from any timm backbone",
                            cnn=False)  # fmt: skip

    def claims_dir(self, path: Path) -> bool:
        try:
            return "architecture" in json.loads((path / "config.json").read_text())
        except (OSError, ValueError, TypeError):
            return False

    def load(self, ref: ModelRef, device: str, batch_size: int | None) -> Embedder:
        import timm

        model_name = _model_name(ref)
        if not model_name.startswith(_SCHEMES) and not timm.is_model(model_name.split(".")[0]):
            raise UnknownModel(ref.name, [f"timm:{n}" for n in timm.list_models()[:50]] + ["..."])
        try:
            net = timm.create_model(model_name, pretrained=True)
        except Exception as exc:  # hub, network, missing or broken files: one typed error with the reason
            from ..hf import short_reason

            raise ModelLoadError(f"could not load timm model {ref.name!r}: {short_reason(exc)}") from exc
        return TimmEmbedder(net, name=ref.name, source=model_name, revision=revision(model_name), device=device,
                            batch_size=batch_size)  # fmt: skip

    def identity(self, ref: ModelRef) -> dict:
        model_name = _model_name(ref)
        return {"source": model_name, "revision": revision(model_name), "family": self.name}

    def image_forward(self, emb):
        return emb.image_tower, l2_normalize

    def onnx_towers(self, emb, pixels) -> dict:
        import torch

        class ImageTower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = emb.model

            def forward(self, pixels):
                return self.net.forward_head(self.net.forward_features(pixels), pre_logits=True)

        # A CNN (conv stem) gets the static int8 recipe; a ViT the dynamic MatMul one.
        kind = "transformer" if hasattr(emb.model, "blocks") and hasattr(emb.model, "patch_embed") else "cnn"
        return {"image": (ImageTower(), (pixels,), ["pixels"], kind)}

    def trainable_stages(self, emb) -> Stages | None:
        """A ViT: ``blocks.0`` .. ``N-1`` then ``norm`` (+ ``fc_norm``); a CNN with ``stages`` or ``layer1..4``:
        those, then the pooled head. Other layouts: head only."""
        m = emb.model.float()
        if hasattr(m, "blocks") and hasattr(m, "patch_embed") and hasattr(m, "norm"):

            def stem(x):
                return m.norm_pre(m._pos_embed(m.patch_embed(x)))

            stages = [Stage((f"blocks.{i}.",), block) for i, block in enumerate(m.blocks)]
            stages.append(Stage(("norm.",), m.norm))
            return Stages(module=m, stem=stem, stages=stages,
                          pool=lambda h: m.forward_head(h, pre_logits=True))  # fmt: skip
        if hasattr(m, "stages") and hasattr(m, "stem"):
            stages = [Stage((f"stages.{i}.",), s) for i, s in enumerate(m.stages)]
            return Stages(module=m, stem=m.stem, stages=stages, pool=lambda h: m.forward_head(h, pre_logits=True))
        if all(hasattr(m, f"layer{i}") for i in range(1, 5)):  # ResNet
            stages = [Stage((f"layer{i}.",), getattr(m, f"layer{i}")) for i in range(1, 5)]
            return Stages(module=m, stem=lambda x: m.maxpool(m.act1(m.bn1(m.conv1(x)))), stages=stages,
                          pool=lambda h: m.forward_head(h, pre_logits=True))  # fmt: skip
        return None

    def naive_forward(self, ref: ModelRef):
        import timm
        import torch

        net = timm.create_model(_model_name(ref), pretrained=True).eval()
        transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=net))

        def forward(images):
            x = torch.stack([transform(im.convert("RGB")) for im in images])
            return net.forward_head(net.forward_features(x), pre_logits=True)

        # torch types every Module attribute as Tensor | Module; timm's num_features is an int
        return forward, int(net.num_features)  # type: ignore[arg-type]


FAMILY = TimmFamily()
