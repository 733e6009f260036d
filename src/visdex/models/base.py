"""The embedder contract.

An embedder turns images and texts into float32, L2-normalised vectors of one shape
``(n, dim)``. Image preprocessing is split out as a small picklable :class:`Preprocess`
so decode workers can produce model-ready pixel arrays without loading the model; the
same object is used at index time and at query time, which is what makes the two
identical.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from ..errors import UnsupportedModality

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation to float32; zero rows stay zero. The one place vectors are normalised."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass(frozen=True)
class Preprocess:
    """Image -> float32 CHW array, the way a model family expects it.

    ``mode="shortest"``: resize the shorter side to ``resize_to`` then centre-crop ``size``
    (CLIP, DINOv2, CNNs). ``mode="squash"``: resize straight to ``size`` x ``size`` (SigLIP).
    ``crop="round"``: the crop offset rounded as torchvision's ``CenterCrop`` does (OpenCLIP, timm);
    the default floors it, as transformers' image processors do. ``draft_scale``: indexing may decode
    JPEGs smaller (draft mode, box reduction) down to ``draft_side = resize_to * draft_scale``; a family
    whose vectors move too much at 1 decodes larger. It changes how files are decoded, not the model's
    preprocessing, so it is not part of :meth:`to_dict` (nor of the index fingerprint).

    >>> Preprocess(size=224, resize_to=224, mode="shortest", mean=HALF, std=HALF)(Image.new("RGB", (640, 480))).shape
    (3, 224, 224)
    """

    size: int
    resize_to: int
    mode: str = "shortest"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: str = "bicubic"
    rescale: float = 1 / 255
    crop: str = "floor"
    draft_scale: float = 1.0

    @property
    def draft_side(self) -> int:
        """The short side JPEG draft decoding and box reduction keep at least (see ``decode_image``)."""
        return int(round(self.resize_to * self.draft_scale))

    def resize(self, img: Image.Image) -> Image.Image:
        img = img.convert("RGB") if img.mode != "RGB" else img
        resample = _RESAMPLE[self.resample]
        if self.mode == "squash":
            return img.resize((self.size, self.size), resample)
        w, h = img.size
        # Short side exactly resize_to, long side truncated: what transformers and torchvision do.
        if w <= h:
            nw, nh = self.resize_to, int(self.resize_to * h / w)
        else:
            nw, nh = int(self.resize_to * w / h), self.resize_to
        nw, nh = max(self.size, nw), max(self.size, nh)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), resample)
        if self.crop == "round":
            left, top = int(round((nw - self.size) / 2.0)), int(round((nh - self.size) / 2.0))
        else:
            left, top = (nw - self.size) // 2, (nh - self.size) // 2
        return img.crop((left, top, left + self.size, top + self.size))

    def to_uint8(self, img: Image.Image) -> np.ndarray:
        """The resized, cropped image as (H, W, 3) uint8: what decode workers send back (4x smaller than float)."""
        return np.asarray(self.resize(img), dtype=np.uint8)

    def normalize(self, batch_uint8: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 -> (n, 3, H, W) float32, mean/std normalised."""
        arr: np.ndarray = batch_uint8.astype(np.float32) * self.rescale
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.normalize(self.to_uint8(img)[None])[0]

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, 3, self.size, self.size), np.float32)
        return self.normalize(np.stack([self.to_uint8(im) for im in images]))

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["draft_scale"]
        if out["crop"] == "floor":  # the default is left out, so fingerprints made before the field still match
            del out["crop"]
        return out


@dataclass(frozen=True)
class Fingerprint:
    """What made the vectors in an index. Two fingerprints are compatible when every field matches."""

    name: str
    source: str
    revision: str
    dim: int
    preprocessing: dict = field(default_factory=dict)
    modalities: tuple[str, ...] = ("image",)

    def __post_init__(self) -> None:
        # JSON-normalise (tuples -> lists) so a fingerprint survives a round trip through the index unchanged.
        object.__setattr__(self, "preprocessing", json.loads(json.dumps(self.preprocessing, sort_keys=True)))
        object.__setattr__(self, "modalities", tuple(self.modalities))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        return cls(**json.loads(text))

    def short(self) -> str:
        return f"{self.name} ({self.dim}-d, weights {self.revision[:12]})"

    def compatible(self, other: Fingerprint) -> bool:
        return (self.source, self.revision, self.dim, json.dumps(self.preprocessing, sort_keys=True)) == (
            other.source,
            other.revision,
            other.dim,
            json.dumps(other.preprocessing, sort_keys=True),
        )


def hash_files(paths: Sequence, chunk: int = 1 << 20) -> str:
    """sha256 over the bytes of the given files, in order: the weights hash of a local model."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


class Embedder(ABC):
    """One batch method per side; everything else derives from them.

    Subclasses set ``name``, ``dim``, ``modalities`` and ``preprocess`` and implement
    :meth:`embed_pixels` (and :meth:`_embed_texts` when text is supported).
    """

    name: str
    dim: int
    modalities: frozenset[str] = frozenset({"image"})
    preprocess: Preprocess
    device: str = "cpu"
    #: The family adapter that made it (:mod:`visdex.models.families`), by its name; "" for none.
    family: str = ""
    #: Image forward passes on a CPU in bfloat16 (torch autocast, fp32 accumulation): None follows the
    #: ``cpu_backend`` setting and the CPU (see :func:`visdex.models.families.base.uses_cpu_bf16`).
    cpu_bf16: bool | None = None
    #: Whether ``cpu_backend=auto`` may choose bf16 for this embedder on an AMX CPU.
    cpu_bf16_auto: bool = True

    @abstractmethod
    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) float32 from :attr:`preprocess` -> (n, dim) float32, L2-normalised."""

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    @abstractmethod
    def fingerprint(self) -> Fingerprint: ...

    @property
    def supports_text(self) -> bool:
        return "text" in self.modalities

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Decoded PIL images -> (n, dim) vectors."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_pixels(self.preprocess.batch(images))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Query texts -> (n, dim) vectors; an image-only model raises :class:`UnsupportedModality`."""
        if not self.supports_text:
            raise UnsupportedModality(
                f"model {self.name!r} embeds images only, so it cannot search by text; "
                "search by an example image, or index with a text-and-image model such as clip-vit-b-32 "
                "or lite0-minilm"
            )
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize(self._embed_texts(list(texts)))
