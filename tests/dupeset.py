"""A near-duplicate test set from real photos: each source photo plus five edited copies (resized,
JPEG q=40, cropped 5% per side, EXIF-rotated, brighter and less saturated), and "burst" pairs:
two windows of one scene shifted by a third (similar shots, not duplicates)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data as sd
from PIL import Image, ImageEnhance

from imagefactory import real_photos, write_photo

EDITS = ("resized", "q40", "crop", "rot", "color")


def sources() -> dict[str, np.ndarray]:
    big = {
        "hubble": sd.hubble_deep_field(), "retina": sd.retina(), "astronaut": sd.astronaut(), "coffee": sd.coffee(),
        "rocket": sd.rocket(), "chelsea": sd.chelsea(), "ihc": sd.immunohistochemistry(),
    }  # fmt: skip
    out = {}
    for name, a in big.items():
        h, w = a.shape[:2]
        ww, wh = int(w * 0.6), int(h * 0.6)
        off = int(ww * 0.33)
        out[f"{name}_A"] = np.ascontiguousarray(a[:wh, :ww])
        out[f"{name}_B"] = np.ascontiguousarray(a[h - wh :, off : off + ww])
    photos = real_photos()
    for name in ("camera", "coins", "moon"):
        out[name] = photos[name]
    return out


def _edits(a: np.ndarray):
    img = Image.fromarray(a)
    w, h = img.size
    yield "resized", np.asarray(img.resize((w // 2, h // 2))), {}
    yield "q40", a, {"quality": 40}
    cx, cy = int(w * 0.05), int(h * 0.05)
    yield "crop", np.asarray(img.crop((cx, cy, w - cx, h - cy))), {}
    yield "rot", np.asarray(img.transpose(Image.Transpose.ROTATE_90)), {"exif_orientation": 6}
    yield "color", np.asarray(ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(1.15)).enhance(0.85)), {}


def build(d: Path, limit: int | None = None) -> dict[str, list[Path]]:
    """Write the set into ``d``; source name -> [original, *edited copies]."""
    d.mkdir(parents=True, exist_ok=True)
    groups = {}
    for name, a in list(sources().items())[:limit]:
        groups[name] = [write_photo(d, name, a)] + [write_photo(d, f"{name}__{t}", e, **kw) for t, e, kw in _edits(a)]
    return groups


def source_of(path: str) -> str:
    return Path(path).name.split(".")[0].split("__")[0]
