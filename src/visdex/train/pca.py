"""``visdex finetune pca``: fewer dimensions without labels.

A memory budget can call for fewer dimensions than a model makes (``visdex recommend`` says so: e.g.
DINOv2-small's 384 reduced to 128). With labels, ``visdex finetune labelled --dim 128`` learns the
projection; without them this fits a PCA on the user's own images: the mean and the top ``dim``
principal directions of a sample of their vectors. It is saved as a head directory (format 2: a
projection with a bias), which ``visdex index --model OUT`` loads like any model:

    vector = normalise(W @ normalise(base_vector) - W @ mean)

Text vectors of a text-and-image model go through the same projection, so text search keeps working.
The report says what the reduction costs: the share of variance kept and, on held-out images, how many
of each image's 10 nearest neighbours at full dimension are still found at the reduced one.

>>> r = fit_pca("dinov2-small", "~/Pictures", "runs/dino-128", dim=128)     # doctest: +SKIP
>>> r.variance_kept, r.neighbour_recall_at_10                               # doctest: +SKIP
(0.83, 0.91)
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..models.base import l2_normalize
from .common import TrainProgress, TrainSetupError, write_head_dir

HELDOUT = 0.1  # of the sample: the queries of the neighbour check, never fitted on
HELDOUT_MIN = 50


@dataclass
class PcaResult:
    """What a PCA fit produced and what the reduction costs, measured on held-out images."""

    model: str
    model_dir: str
    in_dim: int
    dim: int
    fitted_on: int
    heldout: int
    variance_kept: float
    neighbour_recall_at_10: float
    failed: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _sample_paths(data: Path, sample: int, seed: int) -> list[str]:
    from ..files import scan

    paths = sorted(f.path for f in scan([data]))
    if len(paths) > sample:
        pick = np.random.default_rng(seed).choice(len(paths), sample, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    return paths


def _index_vectors(index_dir: Path, emb, sample: int, seed: int) -> np.ndarray:
    """A sample of an existing index's vectors, which must come from ``emb`` (no re-embedding needed)."""
    from ..api import open_index
    from ..errors import ModelMismatch

    with open_index(index_dir, create=False) as ix:
        fp = ix.fingerprint
        if fp is None or not fp.compatible(emb.fingerprint()):
            raise ModelMismatch(f"the index {index_dir} holds vectors of {fp.short() if fp else 'no model'}, not of "
                                f"{emb.fingerprint().short()}; fit on a folder of images instead")  # fmt: skip
        ids = ix.store.ids()
        if len(ids) > sample:
            ids = np.sort(np.random.default_rng(seed).choice(ids, sample, replace=False))
        return np.asarray(ix.store.get(ids), np.float32)


def neighbour_recall(full: np.ndarray, reduced: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Mean share of each query's ``k`` nearest rows at full dimension also among its ``k`` nearest reduced.

    >>> x = l2_normalize(np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32))
    >>> neighbour_recall(x, x, np.arange(20))
    1.0
    """
    k = min(k, len(full) - 1)
    if k <= 0:
        return float("nan")

    def top(v: np.ndarray) -> np.ndarray:
        sims = v[queries] @ v.T
        sims[np.arange(len(queries)), queries] = -np.inf  # an image is not its own neighbour
        return np.argpartition(-sims, k - 1, axis=1)[:, :k]

    a, b = top(full), top(reduced)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def fit_pca(
    model: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dim: int = 128,
    sample: int = 20_000,
    seed: int = 0,
    device: str | None = None,
    progress: TrainProgress | None = None,
) -> PcaResult:
    """Fit a ``dim``-d PCA of ``model``'s vectors on a folder of images (or an index built with ``model``)
    and save it in ``out`` as a model directory. :class:`TrainSetupError` for impossible settings."""
    import torch

    from ..evaluate import embed_image_files
    from ..models import load_embedder
    from ..models.head import PROJ_BIAS_KEY, PROJ_KEY
    from .metric import loadable_name

    t0 = time.perf_counter()
    progress = progress or TrainProgress()
    data, out = Path(data).expanduser(), Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise TrainSetupError(f"{{field}} {out} exists and is not empty; give a new or empty directory", field="out")
    if not data.exists():
        raise TrainSetupError(f"no such folder or index: {data}")
    emb = load_embedder(model, device=device or "auto")
    if dim < 1 or dim >= emb.dim:
        raise TrainSetupError(f"{{field}} must be between 1 and {emb.dim - 1} for {model} ({emb.dim}-d vectors)",
                              field="dim")  # fmt: skip
    failed = 0
    if (data / "index.db").is_file():
        vectors = _index_vectors(data, emb, sample, seed)
    else:
        paths = _sample_paths(data, sample, seed)
        progress.phase("embedding a sample", len(paths))
        res = embed_image_files(emb, paths, progress=progress)
        vectors, failed = res.vectors, len(res.failures)
    n = len(vectors)
    if n < 2 * dim or n < 100:
        raise TrainSetupError(f"{n} vectors are too few to fit {dim} directions: need at least {max(2 * dim, 100)} "
                              "images")  # fmt: skip
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    held = order[: max(HELDOUT_MIN, int(HELDOUT * n))]
    fit = np.sort(order[len(held) :])
    x = vectors[fit].astype(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    w = vt[:dim].astype(np.float32)
    variance = s**2
    kept = float(variance[:dim].sum() / variance.sum())
    bias = (-(w @ mean)).astype(np.float32)
    reduced = l2_normalize(vectors @ w.T + bias)
    recall = neighbour_recall(vectors, reduced, np.sort(held))
    tensors = {PROJ_KEY: torch.from_numpy(w).contiguous(), PROJ_BIAS_KEY: torch.from_numpy(bias).contiguous()}
    write_head_dir(out, tensors, {
        "base": loadable_name(model), "base_revision": emb.fingerprint().revision,
        "in_dim": int(emb.dim), "dim": dim, "backbone_tensors": 0, "text": emb.supports_text,
        "training": {"kind": "pca", "fitted_on": len(fit), "seed": seed, "source": str(data),
                     "variance_kept": round(kept, 4), "neighbour_recall_at_10": round(recall, 4)},
    })  # fmt: skip
    return PcaResult(model, str(out), int(emb.dim), dim, len(fit), len(held), round(kept, 4), round(recall, 4),
                     failed, round(time.perf_counter() - t0, 1))  # fmt: skip
