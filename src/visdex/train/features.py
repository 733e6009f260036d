"""Decode, augment and run the frozen prefix once per image (and per augmented view), cached on disk.

Head training then reads activations from memory: seconds per epoch, not minutes. The cache key
covers the base weights, the cut, the preprocessing, the augmentation and every file's
(path, size, mtime), so a changed file or model is never served stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from .. import config
from ..decode import decode_image
from ..errors import VisdexError
from .common import TrainProgress, file_signature, write_text_atomic

AUGMENT_VERSION = "crop0.5-flip-jitter0.25-v1"  # bump when augment() changes: it is part of the cache key


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random view: a crop of 50-100% of the area (aspect 3:4 to 4:3), a flip half the time,
    brightness / contrast / saturation within +-25%."""
    w, h = img.size
    area = w * h * rng.uniform(0.5, 1.0)
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw, ch = min(w, round((area * aspect) ** 0.5)), min(h, round((area / aspect) ** 0.5))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(float(rng.uniform(0.75, 1.25)))
    return img


@dataclass
class CachedFeatures:
    """``features[v * n + i]`` is view ``v`` of image ``kept[i]`` (view 0 is the image itself)."""

    features: np.ndarray
    kept: list[int]
    views: int
    failures: list[tuple[str, str]]

    @property
    def n(self) -> int:
        return len(self.kept)

    def view(self, v: int) -> np.ndarray:
        return self.features[v * self.n : (v + 1) * self.n]


def decode_for_training(path: str, draft: int) -> Image.Image | str:
    """A training image decoded at least ``draft`` px on its short side, or the reason it could not be."""
    try:
        return decode_image(path, max_pixels=config.get("max_pixels"), draft_size=draft).image
    except VisdexError as exc:
        return str(exc)
    except Exception as exc:  # a decoder bug must not stop training; the file is reported and skipped
        return f"{type(exc).__name__}: {exc}"


def cache_key(backbone, paths: Sequence[str], views: int, seed: int) -> str:
    emb = backbone.emb
    what = {
        "revision": emb.fingerprint().revision,
        "cut": backbone.train_blocks,
        "preprocess": emb.preprocess.to_dict(),
        "views": views,
        "augment": AUGMENT_VERSION if views > 1 else None,
        "seed": seed if views > 1 else None,
        "files": file_signature(paths),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def cached_features(
    backbone,
    paths: Sequence[str],
    *,
    views: int = 1,
    seed: int = 0,
    cache_dir: Path | None = None,
    batch_size: int = 32,
    progress: TrainProgress | None = None,
    label: str = "caching features",
) -> CachedFeatures:
    """Prefix activations of every readable image, ``views`` times (view 0 plain, the others augmented),
    stored as float16 in ``cache_dir`` and read back from there on the next call with the same inputs."""
    progress = progress or TrainProgress()
    key = cache_key(backbone, paths, views, seed)
    if cache_dir is not None:
        hit = _read(cache_dir, key)
        if hit is not None:
            return hit
    pre = backbone.emb.preprocess
    draft = pre.draft_side
    n = len(paths)
    chunks: list[list[np.ndarray]] = [[] for _ in range(views)]
    kept: list[int] = []
    failures: list[tuple[str, str]] = []
    progress.phase(label, n * views)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            images = []
            for i, img in zip(idx, pool.map(lambda i: decode_for_training(paths[i], draft), idx), strict=True):
                if isinstance(img, str):
                    failures.append((paths[i], img))
                    progress.failed(paths[i], img)
                else:
                    images.append((i, img))
            kept += [i for i, _ in images]
            for v in range(views):
                if images:
                    batch = [im if v == 0 else augment(im, np.random.default_rng([seed, v, i])) for i, im in images]
                    chunks[v].append(backbone.prefix(pre.batch(batch)).astype(np.float16))
                progress.advance(len(idx))
    shape = chunks[0][0].shape[1:] if chunks[0] else (0,)
    feats = np.concatenate([c for v in chunks for c in v]) if kept else np.zeros((0, *shape), np.float16)
    result = CachedFeatures(feats, kept, views, failures)
    if cache_dir is not None:
        _write(cache_dir, key, result)
    return result


def _read(cache_dir: Path, key: str) -> CachedFeatures | None:
    try:
        meta = json.loads((cache_dir / f"{key}.json").read_text())
        feats = np.load(cache_dir / f"{key}.npy")
    except (OSError, ValueError):
        return None  # missing or damaged: derived data, computed again
    if len(feats) != meta["views"] * len(meta["kept"]):
        return None
    return CachedFeatures(feats, meta["kept"], meta["views"], [tuple(f) for f in meta["failures"]])


def _write(cache_dir: Path, key: str, feats: CachedFeatures) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f"{key}.tmp.npy"
    np.save(tmp, feats.features)
    os.replace(tmp, cache_dir / f"{key}.npy")
    meta = {"kept": feats.kept, "views": feats.views, "failures": feats.failures}
    write_text_atomic(cache_dir / f"{key}.json", json.dumps(meta))
