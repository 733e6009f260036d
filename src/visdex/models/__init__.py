"""Model registry: list the catalog, look a name up, load an embedder.

A model is named by its catalog name (``clip-vit-b-32``), by ``hf:<repo-id>`` for any CLIP,
SigLIP / SigLIP 2 or DINOv2 repo on the Hugging Face hub, by ``open_clip:ARCH/PRETRAINED`` or
``open_clip:hf-hub:<repo>``, by ``timm:NAME``, or by the path of a local directory (``save_pretrained``,
an OpenCLIP or a timm folder). Each family's adapter in :mod:`visdex.models.families` does the loading.
Importing this package is cheap: torch and transformers are imported only when a model is loaded.

>>> [spec.name for spec in list_models()][:2]
['clip-vit-b-32', 'clip-vit-b-16']
>>> emb = load_embedder("lite0-minilm")                    # doctest: +SKIP
>>> emb.embed_texts(["a kitten"]).shape                    # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelLoadError, UnknownModel
from .base import Embedder, Fingerprint, Preprocess
from .catalog import CATALOG, ModelSpec

if TYPE_CHECKING:
    from .families.base import Family, ModelRef

__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "Fingerprint",
    "ModelSpec",
    "Preprocess",
    "get_spec",
    "list_models",
    "load_embedder",
    "resolve_device",
    "resolve_family",
]

DEFAULT_MODEL = "clip-vit-b-32"
_BY_NAME = {spec.name: spec for spec in CATALOG}


def list_models() -> list[ModelSpec]:
    """Every catalog entry, the default first.

    >>> "lite0-minilm" in [s.name for s in list_models()]
    True
    """
    return list(CATALOG)


def get_spec(name: str) -> ModelSpec:
    """The catalog entry called ``name``; :class:`~visdex.errors.UnknownModel` (listing the known names) if none.

    >>> get_spec("dinov2-small").modalities
    ('image',)
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownModel(name, list(_BY_NAME)) from None


def resolve_family(name: str) -> tuple[Family, ModelRef]:
    """The family adapter that owns ``name`` (catalog name, prefixed name or local directory) and the reference
    it loads it by. Reads no weights and imports no torch; :class:`~visdex.errors.UnknownModel` for a name no
    family takes.

    >>> resolve_family("timm:resnet50.a1_in1k")[0].name  # doctest: +SKIP
    'timm'
    """
    from .families import resolve

    return resolve(name, list(_BY_NAME))


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` if a CUDA GPU is usable, else ``"mps"`` (Apple), else ``"cpu"``.

    An explicit device is checked, so asking for a GPU that is not there fails here, clearly.

    >>> resolve_device("cpu")
    'cpu'
    """
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    kind = device.split(":")[0]
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if not available.get(kind, False):
        raise ModelLoadError(f"device {device!r} is not available here; use 'auto' or 'cpu'")
    return device


def load_embedder(
    name: str = DEFAULT_MODEL, device: str = "auto", batch_size: int | None = None, backend: str | None = None
) -> Embedder:
    """Load a model by catalog name, ``hf:<repo-id>``, ``open_clip:...``, ``timm:...`` or local directory.

    ``backend`` (``torch``, ``onnx``, ``onnx-int8``), or the same as a name prefix
    (``onnx-int8:clip-vit-b-32``), picks the runtime; see :mod:`visdex.models.onnx`.

    Raises :class:`~visdex.errors.UnknownModel` for a name that is none of these (or a model type
    visdex cannot run) and :class:`~visdex.errors.ModelLoadError` when the weights cannot be had.

    >>> load_embedder("effnet-lite0", device="cpu").dim     # doctest: +SKIP
    1280
    >>> load_embedder("effnet-lite0", backend="onnx-int8").fingerprint().revision[-10:]  # doctest: +SKIP
    '+onnx-int8'
    """
    from .onnx import split_backend, with_backend

    chosen, name = split_backend(with_backend(name, backend))
    if chosen != "torch":
        from .onnx import load_onnx

        return load_onnx(name, chosen, device=device, batch_size=batch_size)
    path = Path(name).expanduser()
    if name not in _BY_NAME and path.is_dir():
        from .head import is_head_dir, load_head

        if is_head_dir(path):  # written by `visdex finetune labelled`: a base model plus a learnt head
            return load_head(path, device=resolve_device(device), batch_size=batch_size)
    # The family adapter owns loading; resolving reads no weights, so a bad name fails before torch is imported.
    adapter, ref = resolve_family(name)
    return adapter.load(ref, device=resolve_device(device), batch_size=batch_size)
