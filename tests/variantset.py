"""A labelled instance-retrieval set from real photos: every source photo is cut into a grid of
distinct regions, each region is one class, and each class gets generated "re-shot" variants
(random crop, rotation, flip, colour and white balance, blur, noise, rescale, JPEG).

Held-out data is built from *other* source photos than training data, so a model is measured on
scenes it never saw. Tiles of one photo share their semantics (all starfield, all retina), so the
task is fine-grained: telling regions apart under photometric and geometric changes.

>>> from variantset import build_split                        # doctest: +SKIP
>>> build_split(tmp_path, variants=8)                          # doctest: +SKIP
{'train': PosixPath('.../train'), 'val': ..., 'test': ...}
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

# source -> grid (rows, cols). Textures (brick, grass, gravel) are left out: their tiles are
# interchangeable, so they would be label noise, not a harder task.
GRIDS = {
    "retina": (4, 4), "hubble_deep_field": (3, 4), "rocket": (2, 3), "immunohistochemistry": (3, 3),
    "flower": (2, 3), "moon": (3, 3), "coins": (2, 3), "cell": (3, 3), "clock": (2, 2),
    "chelsea": (2, 3), "camera": (3, 3),
    "astronaut": (3, 3), "coffee": (2, 3), "china": (2, 3),
}  # fmt: skip
SPLITS = {
    "train": ("retina", "hubble_deep_field", "rocket", "immunohistochemistry", "flower", "moon", "coins", "cell",
              "clock"),
    "val": ("chelsea", "camera"),
    "test": ("astronaut", "coffee", "china"),
}  # fmt: skip


@functools.cache
def _source(name: str) -> np.ndarray:
    if name in ("flower", "china"):
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)


def regions(name: str) -> list[np.ndarray]:
    """The grid cells of one source photo, row by row."""
    arr = _source(name)
    rows, cols = GRIDS[name]
    h, w = arr.shape[0] // rows, arr.shape[1] // cols
    return [arr[r * h : (r + 1) * h, c * w : (c + 1) * w] for r in range(rows) for c in range(cols)]


def variant(region: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """One re-shot view of a region: geometry first (on a reflect-padded copy, so rotations have
    no black corners), then colour, blur, noise and size."""
    h, w = region.shape[:2]
    scale, aspect = rng.uniform(0.55, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, round(np.sqrt(scale * w * h * aspect))))
    ch = int(min(h, round(np.sqrt(scale * w * h / aspect))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    pad = max(h, w) // 2
    padded = Image.fromarray(np.pad(region, ((pad, pad), (pad, pad), (0, 0)), mode="reflect"))
    cx, cy = pad + x0 + cw / 2, pad + y0 + ch / 2
    img = padded.rotate(float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR, center=(cx, cy))
    img = img.crop((int(cx - cw / 2), int(cy - ch / 2), int(cx - cw / 2) + cw, int(cy - ch / 2) + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.5, 1.5))
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.85, 1.15, size=3)  # white balance
    if rng.random() < 0.3:
        arr += rng.normal(0, rng.uniform(2, 8), size=arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    side = int(rng.integers(160, 321))
    f = side / max(img.size)
    return img.resize((max(8, round(img.width * f)), max(8, round(img.height * f))), Image.Resampling.BICUBIC)


def build(root: str | Path, sources, variants: int = 8, seed: int = 0) -> Path:
    """Write ``root/<source>-r<i>/v<j>.jpg`` for every region of every source; returns root."""
    root = Path(root)
    for s_i, name in enumerate(sources):
        for r_i, region in enumerate(regions(name)):
            d = root / f"{name}-r{r_i:02d}"
            d.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, s_i, r_i])
            for v in range(variants):
                variant(region, rng).save(d / f"v{v:02d}.jpg", quality=int(rng.integers(50, 96)))
    return root


def build_split(root: str | Path, variants: int = 8, seed: int = 0, splits: dict | None = None) -> dict[str, Path]:
    """train / val / test folders from disjoint source photos (see :data:`SPLITS`)."""
    root = Path(root)
    return {split: build(root / split, names, variants, seed) for split, names in (splits or SPLITS).items()}
