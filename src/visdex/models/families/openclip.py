"""OpenCLIP (``pip install 'visdex[openclip]'``): LAION, DataComp, DFN, MetaCLIP and MobileCLIP weights.

Names: ``open_clip:ARCH/PRETRAINED`` (``open_clip:ViT-B-32/laion2b_s34b_b79k``, the tags of
``open_clip.list_pretrained()``), ``open_clip:hf-hub:<repo>``, ``open_clip:local-dir:<folder>``, or a
folder holding ``open_clip_config.json``. Vectors are ``encode_image`` / ``encode_text`` with the
model's own tokenizer; preprocessing is the model's ``preprocess_cfg`` (what
``create_model_and_transforms`` builds its transform from), run by visdex's numpy
:class:`~visdex.models.base.Preprocess` with torchvision's centre-crop rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import MissingDependency, ModelLoadError, UnknownModel
from ..base import Embedder, Fingerprint, Preprocess, l2_normalize
from .base import Family, FamilyProfile, ModelRef, torch_batches

_CONFIG = "open_clip_config.json"
_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_SCHEMES = ("hf-hub:", "local-dir:")


def require_open_clip():
    try:
        import open_clip
    except ImportError as exc:
        raise MissingDependency("open-clip-torch", extra="openclip", purpose="open_clip: models") from exc
    return open_clip


def split_source(source: str) -> tuple[str, str | None]:
    """``"ViT-B-32/laion2b_s34b_b79k"`` -> ``("ViT-B-32", "laion2b_s34b_b79k")``; a scheme name passes whole.

    >>> split_source("hf-hub:apple/MobileCLIP2-S0-OpenCLIP")
    ('hf-hub:apple/MobileCLIP2-S0-OpenCLIP', None)
    """
    if source.startswith(_SCHEMES):
        return source, None
    arch, _, tag = source.partition("/")
    return arch, (tag or None)


def preprocess_from_cfg(cfg: dict) -> Preprocess:
    """visdex's :class:`Preprocess` for an OpenCLIP ``preprocess_cfg`` (size, mean, std, interpolation, resize_mode).

    >>> preprocess_from_cfg({"size": 224, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic",
    ...                      "resize_mode": "shortest"}).crop
    'round'
    """
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ModelLoadError(f"OpenCLIP input size {tuple(size)} is not square; visdex needs a square input")
        size = size[0]
    mode = cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise ModelLoadError(f"OpenCLIP resize_mode {mode!r} is not supported (shortest and squash are)")
    interp = cfg.get("interpolation", "bicubic")
    if interp not in ("bicubic", "bilinear"):
        raise ModelLoadError(f"OpenCLIP interpolation {interp!r} is not supported (bicubic and bilinear are)")
    return Preprocess(size=int(size), resize_to=int(size), mode=mode, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      resample=interp, crop="round")  # fmt: skip


class OpenClipEmbedder(Embedder):
    """An OpenCLIP model: ``encode_image`` / ``encode_text``, its own tokenizer, its own preprocessing config.

    ``OpenClipEmbedder(model, tokenizer, name=..., source=..., revision=...)`` wraps a model already made by
    ``open_clip.create_model`` (tests use random weights this way); :func:`load` makes one from a name.
    """

    family = "open_clip"

    def __init__(self, model, tokenizer, *, name: str, source: str, revision: str, device: str = "cpu",
                 batch_size: int | None = None):  # fmt: skip
        import torch

        self.name, self.source, self.revision, self.device = name, source, revision, device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.batch_size = batch_size or (64 if device.startswith("cuda") else 16)
        self.model = model.eval().to(device=device, dtype=self.dtype)
        self.tokenizer = tokenizer
        self.preprocess = preprocess_from_cfg(dict(model.visual.preprocess_cfg))
        self.modalities = frozenset({"image", "text"} if tokenizer is not None else {"image"})
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.preprocess.size, self.preprocess.size, device=device, dtype=self.dtype)
            self.dim = int(self.model.encode_image(probe).shape[-1])
        self.context_length = int(getattr(tokenizer, "context_length", 0) or getattr(model, "context_length", 77))

    def _image_batch(self, x):
        return self.model.encode_image(x)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return l2_normalize(torch_batches(self, pixels, self._image_batch))

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        outs = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                # the model's own tokenizer: truncates at the context length, end-of-text token kept last
                tokens = self.tokenizer(texts[start : start + self.batch_size]).to(self.device)
                outs.append(self.model.encode_text(tokens).float().cpu().numpy())
        return np.concatenate(outs)

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(name=self.name, source=self.source, revision=self.revision, dim=self.dim,
                           preprocessing=json.loads(json.dumps(self.preprocess.to_dict())),
                           modalities=tuple(m for m in ("text", "image") if m in self.modalities))  # fmt: skip


def _model_name(ref: ModelRef) -> str:
    return f"local-dir:{ref.source}" if ref.local else ref.source


def revision(model_name: str) -> str:
    """The weights version, without importing torch: a named release is its tag (OpenCLIP's tags name fixed
    files); a hub repo the snapshot it was downloaded at; a local folder the sha256 of its weights."""
    from ..hf import cached_hash_files

    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:") :])
        files = [folder / f for f in _WEIGHTS if (folder / f).is_file()]
        return cached_hash_files(files) if files else "unknown"
    if model_name.startswith("hf-hub:"):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_name[len("hf-hub:") :], _CONFIG)
        return Path(cached).parent.name if isinstance(cached, str) else "unknown"
    arch, tag = split_source(model_name)
    return f"{arch}/{tag}"


class OpenClipFamily(Family):
    name = "open_clip"
    catalog_families = ("open_clip",)
    prefixes = ("open_clip:",)
    order = 10  # an OpenCLIP hub folder may hold a config.json too: claim it before transformers does
    profile = FamilyProfile(
        good_for="text and image search with open weights: LAION, DataComp, DFN, MetaCLIP; MobileCLIP for fast CPU",
        contrastive_loss="InfoNCE (CLIP's symmetric cross-entropy over in-batch negatives; larger batches help)",
    )

    def claims_dir(self, path: Path) -> bool:
        return (path / _CONFIG).is_file()

    def load(self, ref: ModelRef, device: str, batch_size: int | None) -> Embedder:
        open_clip = require_open_clip()
        model_name = _model_name(ref)
        arch, tag = split_source(model_name)
        if not model_name.startswith(_SCHEMES):
            if arch not in open_clip.list_models():
                raise UnknownModel(ref.name, [f"open_clip:{a}/<pretrained>" for a in open_clip.list_models()])
            if tag is None:  # random weights would make meaningless vectors
                tags = open_clip.list_pretrained_tags_by_model(arch)
                raise UnknownModel(ref.name, [f"open_clip:{arch}/{t}" for t in tags])
        try:
            from ..hf import quiet_transformers

            with quiet_transformers():
                model = open_clip.create_model(arch, pretrained=tag, device=device, require_pretrained=True)
                tokenizer = open_clip.get_tokenizer(arch)
        except (UnknownModel, MissingDependency):
            raise
        except Exception as exc:  # hub, network, missing or broken files, an unknown tag: one typed error
            from ..hf import short_reason

            raise ModelLoadError(f"could not load OpenCLIP model {ref.name!r}: {short_reason(exc)}") from exc
        return OpenClipEmbedder(model, tokenizer, name=ref.name, source=model_name, revision=revision(model_name),
                                device=device, batch_size=batch_size)  # fmt: skip

    def identity(self, ref: ModelRef) -> dict:
        model_name = _model_name(ref)
        return {"source": model_name, "revision": revision(model_name), "family": self.name}

    def image_forward(self, emb):
        return emb._image_batch, l2_normalize

    def onnx_towers(self, emb, pixels) -> dict:
        # The image tower only: OpenCLIP's tokenizers are not HF tokenizers the torch-free query path can load,
        # so an onnx: OpenCLIP index embeds images (text queries need the torch model).
        import torch

        class ImageTower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = emb.model

            def forward(self, pixels):
                return self.model.encode_image(pixels)

        return {"image": (ImageTower(), (pixels,), ["pixels"], "transformer")}

    def naive_forward(self, ref: ModelRef):
        open_clip = require_open_clip()
        arch, tag = split_source(_model_name(ref))
        model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=tag)
        model.eval()

        def forward(images):
            import torch

            return model.encode_image(torch.stack([transform(im) for im in images]))

        return forward, int(model.encode_image(transform(_blank()).unsqueeze(0)).shape[-1])


def _blank():
    from PIL import Image

    return Image.new("RGB", (64, 64))


FAMILY = OpenClipFamily()
