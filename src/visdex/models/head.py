"""Fine-tuned image models: a base embedder, optionally with retrained last blocks, plus a projection head.

``visdex finetune labelled`` writes such a model as a directory that :func:`visdex.models.load_embedder`
(and so ``visdex index --model DIR``) loads like any other model:

``visdex_head.json``
    ``{"format": "visdex-head", "version": 1, "base": "effnet-lite0", "base_revision": "<sha256>",
    "in_dim": 1280, "dim": 128, "backbone_tensors": 12, "training": {...}}``. ``base`` is a catalog
    name, ``hf:<repo-id>`` or the absolute path of a local model directory; ``base_revision`` is the
    base's weights hash at training time, checked on load, so a changed base fails loudly.
``head.safetensors``
    ``proj.weight`` (``dim x in_dim``; absent when ``dim`` is 0: no projection), ``proj.bias``
    (``dim``; version 2, written by ``visdex finetune pca``: ``-W @ mean``) and
    ``backbone.<name>`` for every base tensor fine-tuning changed (``<name>`` as in the base
    network's ``state_dict``). Nothing else of the base is copied: the base loads as usual.

An image is embedded as ``normalise(W @ base_vector + b)``, with the base vector L2-normalised first.
A head whose config says ``"text": true`` (a PCA of a text-and-image model) projects text vectors the
same way; other heads are image only (metric learning trains on images alone).
The fingerprint's revision hashes the base revision, the head file and the head's shape, so an index
built with the base model refuses the fine-tuned one (and the other way round) with ``ModelMismatch``.

>>> emb = load_embedder("runs/pets")                     # doctest: +SKIP
>>> emb.dim, emb.fingerprint().source                     # doctest: +SKIP
(128, '/home/me/runs/pets')
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from .base import Embedder, Fingerprint, l2_normalize
from .hf import cached_hash_files, json_safe, short_reason

HEAD_FILE = "visdex_head.json"
WEIGHTS_FILE = "head.safetensors"
FORMAT = "visdex-head"
VERSION = 2  # 2: an optional projection bias and text vectors (``visdex finetune pca``)
PROJ_KEY = "proj.weight"
PROJ_BIAS_KEY = "proj.bias"
BACKBONE_PREFIX = "backbone."


def is_head_dir(path: str | Path) -> bool:
    """True for a directory written by ``visdex finetune labelled`` (it holds ``visdex_head.json``)."""
    return (Path(path).expanduser() / HEAD_FILE).is_file()


def read_head_config(path: str | Path) -> dict:
    """The parsed ``visdex_head.json`` of a head directory; :class:`ModelLoadError` when it is not one we can read."""
    file = Path(path).expanduser() / HEAD_FILE
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {file}: {short_reason(exc)}") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ModelLoadError(f"{file} is not a visdex head file (format {FORMAT!r} expected)")
    if int(cfg.get("version", 0)) > VERSION:
        raise ModelLoadError(f"{file} is of head format version {cfg['version']}; this visdex reads up to {VERSION}")
    return cfg


def backbone_module(emb: Embedder):
    """The torch module whose ``state_dict`` names the tensors a head file may override."""
    module = getattr(emb, "classifier", None)  # the EfficientNet of the offline models
    module = getattr(emb, "model", None) if module is None else module  # transformers models
    if module is None or not hasattr(module, "state_dict"):
        raise ModelLoadError(f"model {emb.name!r} has no torch network whose weights a fine-tuned head could change")
    return module


def apply_backbone_tensors(module, tensors: dict, where: str) -> None:
    """Copy fine-tuned tensors into the base network in place; every name and shape must match."""
    import torch

    state = module.state_dict()
    with torch.no_grad():
        for name, value in tensors.items():
            if name not in state or tuple(state[name].shape) != tuple(value.shape):
                have = tuple(state[name].shape) if name in state else "no such tensor"
                raise ModelLoadError(
                    f"{where}: tensor {name} {tuple(value.shape)} does not fit the base model ({have}); "
                    "was the head trained on another base?"
                )
            state[name].copy_(value.to(state[name].device, state[name].dtype))


class HeadEmbedder(Embedder):
    """A base :class:`Embedder` whose image vectors go through a learnt linear projection; image only."""

    def __init__(self, path: Path, base: Embedder, proj: np.ndarray | None, revision: str, config: dict,
                 bias: np.ndarray | None = None):  # fmt: skip
        self.path = path
        self.name = str(path)
        self.base = base
        self.proj = None if proj is None else np.ascontiguousarray(proj, dtype=np.float32)
        self.bias = None if bias is None or proj is None else np.asarray(bias, dtype=np.float32)
        self.dim = int(self.proj.shape[0]) if self.proj is not None else int(base.dim)
        text = bool(config.get("text")) and base.supports_text
        self.modalities = frozenset({"image", "text"} if text else {"image"})
        self.preprocess = base.preprocess
        self.device = base.device
        self.config = config
        self._revision = revision

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._project(self.base.embed_pixels(pixels))

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        return self._project(self.base.embed_texts(texts))

    def _project(self, vectors: np.ndarray) -> np.ndarray:
        if self.proj is None:
            return vectors
        out = vectors @ self.proj.T
        return l2_normalize(out if self.bias is None else out + self.bias)

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(
            name=self.name,
            source=str(self.path),
            revision=self._revision,
            dim=self.dim,
            preprocessing=json_safe(self.base.preprocess.to_dict()),
            modalities=tuple(sorted(self.modalities)),
        )


def head_revision(base_revision: str, weights_hash: str, config: dict) -> str:
    """What identifies a fine-tuned model: its base's weights, its own weights, and its shape."""
    shape = json.dumps({k: config.get(k) for k in ("base", "in_dim", "dim")}, sort_keys=True)
    return hashlib.sha256(f"{base_revision}|{weights_hash}|{shape}".encode()).hexdigest()


def load_head(path: str | Path, device: str = "cpu", batch_size: int | None = None) -> HeadEmbedder:
    """Load a head directory on an already resolved device: the base model, its fine-tuned tensors, the head.

    >>> load_head("runs/pets").dim            # doctest: +SKIP
    128
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from . import load_embedder

    path = Path(path).expanduser().resolve()
    cfg = read_head_config(path)
    base_name = str(cfg.get("base") or "")
    if not base_name:
        raise ModelLoadError(f"{path / HEAD_FILE} names no base model")
    if Path(base_name).expanduser().is_dir() and is_head_dir(base_name):
        raise ModelLoadError(f"{path}: the base {base_name} is itself a fine-tuned head; heads do not nest")
    weights = path / WEIGHTS_FILE
    try:
        tensors = load_file(str(weights))
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(f"cannot read the head weights {weights}: {short_reason(exc)}") from exc
    base = load_embedder(base_name, device=device, batch_size=batch_size)
    base_revision = base.fingerprint().revision
    if cfg.get("base_revision") and cfg["base_revision"] != base_revision:
        raise ModelLoadError(
            f"{path} was fine-tuned from {base_name} with weights {cfg['base_revision'][:12]}, but {base_name} "
            f"now has weights {base_revision[:12]}; fine-tune again from the current base"
        )
    overrides = {k[len(BACKBONE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)}
    if overrides:
        apply_backbone_tensors(backbone_module(base), overrides, str(weights))
    proj_t, bias_t = tensors.get(PROJ_KEY), tensors.get(PROJ_BIAS_KEY)
    proj = proj_t.float().numpy() if proj_t is not None else None
    if proj is not None and (proj.ndim != 2 or proj.shape[1] != base.dim):
        raise ModelLoadError(f"{weights}: projection {tuple(proj.shape)} does not take {base.dim}-d base vectors")
    bias = bias_t.float().numpy() if bias_t is not None else None
    if bias is not None and (proj is None or bias.shape != (proj.shape[0],)):
        raise ModelLoadError(f"{weights}: a bias {tuple(bias.shape)} that does not fit the projection")
    revision = head_revision(base_revision, cached_hash_files([weights]), cfg)
    return HeadEmbedder(path, base, proj, revision, cfg, bias)
