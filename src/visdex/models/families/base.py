"""What a model family adapter is: the one place that knows how a family loads, runs, exports and trains.

Callers (the loader, the GPU batcher, the ONNX exporter, fine-tuning, ``bench``, ``recommend``)
ask the embedder's adapter (:func:`visdex.models.families.adapter_for`) and never look at the
family themselves. Adapter modules import torch and the family's library lazily, inside their
methods, so importing one is cheap.

>>> FamilyProfile(good_for="text and image search", contrastive_loss="InfoNCE").cnn
False
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import config
from ...errors import ModelLoadError

if TYPE_CHECKING:
    import numpy as np

    from ..base import Embedder
    from ..catalog import ModelSpec


@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it: ``name`` as typed, ``source`` what the family loads (hub id, architecture,
    path), the catalog entry when there is one, and whether ``source`` is a local directory."""

    name: str
    source: str
    spec: ModelSpec | None = None
    local: bool = False


@dataclass(frozen=True)
class FamilyProfile:
    """What ``recommend`` needs to know about a family (per-model numbers live in the catalog rows).

    ``contrastive_loss``: the loss ``finetune captions`` uses (None: the family has no text tower).
    """

    good_for: str
    contrastive_loss: str | None = None
    cnn: bool = False


class Stage:
    """One cut point for metric learning: the state-dict name prefixes it owns and the function that runs it."""

    def __init__(self, names: tuple[str, ...], run: Callable):
        self.names, self.run = names, run


@dataclass
class Stages:
    """An image network cut into stages: ``stem`` (never trained), ``stages`` in order, ``pool`` -> vectors.

    ``module`` is the torch module whose ``named_parameters`` the stage names refer to.
    """

    module: Any
    stem: Callable
    stages: list[Stage] = field(default_factory=list)
    pool: Callable = lambda h: h


@dataclass
class CaptionTraining:
    """What ``finetune captions`` trains in one image-text model, as the family lays it out.

    ``towers``: ``{"image"|"text": (whole tower, encoder blocks in order, top: final norm + projection)}``, each
    a list of modules or bare parameters. ``image_features`` (pixel tensor) and ``text_features`` (texts) run
    with gradients and return unnormalised vectors, exactly as indexing computes them. The loss is SigLIP's
    sigmoid loss when ``logit_bias`` is set, else CLIP's InfoNCE. ``save(model, folder)`` writes a model
    folder (of ``model``, a copy of the embedder's with LoRA merged) that this family loads back.
    """

    towers: dict[str, tuple[list, list, list]]
    image_features: Callable
    text_features: Callable
    logit_scale: Any
    save: Callable[[Any, Path], None]
    logit_bias: Any = None


class Family:
    """A model family adapter. Subclasses set the class attributes and override what their family does.

    ``catalog_families``: the ``family`` values of catalog rows (and of ``Embedder.family``) this adapter
    serves. ``prefixes``: name schemes it loads (``open_clip:``). ``order``: lower claims local folders first.
    """

    name: str = ""
    catalog_families: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    profile: FamilyProfile = FamilyProfile(good_for="")
    order: int = 50

    # -- naming and loading ------------------------------------------------------------------------
    def claims_dir(self, path: Path) -> bool:
        """Whether a local directory holds a model of this family."""
        return False

    def load(self, ref: ModelRef, device: str, batch_size: int | None) -> Embedder:
        raise NotImplementedError

    def identity(self, ref: ModelRef) -> dict:
        """Source, weights revision and preprocessing of ``ref`` without loading it (and without torch): the key
        of its ONNX export. ``revision`` is ``"unknown"`` when the weights are not on this machine yet."""
        raise NotImplementedError

    # -- running -------------------------------------------------------------------------------------
    def image_forward(self, emb: Embedder) -> tuple[Callable, Callable[[np.ndarray], np.ndarray]] | None:
        """(normalised torch batch -> raw features, raw features as numpy -> final vectors) for the GPU batcher;
        None when the embedder has no torch image forward."""
        return None

    def onnx_towers(self, emb: Embedder, pixels) -> dict:
        """``{"image"|"text": (module, example inputs, input names, "transformer"|"cnn")}`` to export to ONNX."""
        raise ModelLoadError(f"the ONNX backend cannot export {type(emb).__name__} ({emb.name})")

    def tokenizer_settings(self, emb: Embedder) -> dict:
        """How the exported text tower's input is tokenised: ``max_length``, ``padding`` ("longest" or
        "max_length"), ``lowercase``; the exporter adds the rest."""
        raise ModelLoadError(f"{emb.name} has no text tower to export")

    def export_tokenizer(self, emb: Embedder):
        """The transformers tokenizer whose ``tokenizer.json`` the torch-free query path loads."""
        return getattr(emb, "tokenizer", None)

    def caption_training(self, emb: Embedder) -> CaptionTraining | None:
        """How ``finetune captions`` trains ``emb``; None when the family cannot (no text tower, or not trainable)."""
        return None

    def trainable_stages(self, emb: Embedder) -> Stages | None:
        """The image network cut into stages for ``finetune labelled --train-blocks N``; None: head only."""
        return None

    def naive_forward(self, ref: ModelRef) -> tuple[Callable, int]:
        """(PIL images -> torch features, dim) built the way the family's library documents it: ``bench``'s
        baseline."""
        raise ModelLoadError(f"no library recipe for {ref.name} to benchmark against")


CPUINFO = "/proc/cpuinfo"


@functools.cache
def cpu_has_amx_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX, Sapphire Rapids and later): there
    torch's oneDNN kernels run a vision tower 2.5-6x faster in bf16 than in fp32. AVX-512 BF16 alone (Zen 4/5,
    Cooper Lake) does not count: emulated on an AMX Xeon, bf16 ran a ViT-B/32 at 0.6x fp32's speed
    (``benchmarks/cpu_isa.py``). Linux only (``/proc/cpuinfo``)."""
    if cpuinfo is None and not sys.platform.startswith("linux"):
        return False
    try:
        with open(cpuinfo or CPUINFO, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split(":", 1)[-1].split()
    except OSError:
        return False
    return False


def cpu_bf16_default() -> bool:
    """Whether torch image forward passes on a CPU run in bfloat16 unless an embedder says otherwise:
    ``cpu_backend`` ``bf16``, or ``auto`` on a CPU with AMX (:func:`cpu_has_amx_bf16`)."""
    choice = config.get("cpu_backend")
    return choice == "bf16" or (choice == "auto" and cpu_has_amx_bf16())


def uses_cpu_bf16(emb: Embedder) -> bool:
    """Whether ``emb``'s next image forward pass runs in bfloat16 on the CPU: its own ``cpu_bf16`` when set
    (:func:`full_precision`); else ``cpu_backend`` ``bf16``; else ``auto`` on an AMX CPU for an embedder whose
    ``cpu_bf16_auto`` allows it (the offline CNNs do not: their vectors drift more)."""
    if str(getattr(emb, "device", "cpu")) != "cpu":
        return False
    own = getattr(emb, "cpu_bf16", None)
    if own is not None:
        return bool(own)
    choice = config.get("cpu_backend")
    if choice == "bf16":
        return True
    return choice == "auto" and bool(getattr(emb, "cpu_bf16_auto", True)) and cpu_has_amx_bf16()


def cpu_autocast(emb: Embedder):
    """torch's bfloat16 autocast when :func:`uses_cpu_bf16`, else a context that does nothing. Matrix products
    and convolutions run in bf16 with fp32 accumulation; norms, softmax and the output stay fp32, so vectors
    move by a cosine of about 1e-5 (transformers) to 2e-3 (small CNNs) -- less than the GPU's fp16 path."""
    if not uses_cpu_bf16(emb):
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16)


@contextlib.contextmanager
def full_precision(emb: Embedder) -> Iterator[Embedder]:
    """``emb`` with fp32 CPU forward passes for the duration (reference vectors: the ONNX export's check)."""
    before = emb.__dict__.get("cpu_bf16", None)
    emb.cpu_bf16 = False
    try:
        yield emb
    finally:
        emb.cpu_bf16 = before


def torch_batches(emb: Embedder, pixels: np.ndarray, forward: Callable) -> np.ndarray:
    """Run ``forward`` over (n, 3, H, W) float32 pixels in ``emb.batch_size`` chunks on ``emb.device``
    (``emb.dtype`` when set; bf16 autocast on a CPU when :func:`uses_cpu_bf16`), returning float32 numpy
    features (not normalised)."""
    import numpy as np
    import torch

    pixels = np.asarray(pixels, dtype=np.float32)
    dtype = getattr(emb, "dtype", torch.float32)
    step = int(getattr(emb, "batch_size", 32) or 32)
    outs = []
    with torch.inference_mode(), cpu_autocast(emb):
        for start in range(0, len(pixels), step):
            x = torch.from_numpy(pixels[start : start + step]).to(emb.device, dtype)
            outs.append(forward(x).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, emb.dim), np.float32)
