"""The family registry: every module in this package that defines ``FAMILY`` is a family adapter.

Adding a family is one module here (a :class:`~visdex.models.families.base.Family` subclass instance
named ``FAMILY``), its catalog rows, and its tests; nothing else in visdex names families.

>>> sorted(f.name for f in families())                          # doctest: +SKIP
['clip', 'conse', 'dinov2', 'open_clip', 'siglip', 'timm']
>>> adapter_for(load_embedder("effnet-lite0")).name               # doctest: +SKIP
'conse'
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path

from ...errors import UnknownModel
from .base import CaptionTraining, Family, FamilyProfile, ModelRef, Stage, Stages

__all__ = [
    "CaptionTraining",
    "Family",
    "FamilyProfile",
    "ModelRef",
    "Stage",
    "Stages",
    "adapter_for",
    "families",
    "family",
    "resolve",
]


@functools.cache
def families() -> tuple[Family, ...]:
    """Every family adapter, in the order they claim local folders. Imports no torch."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        adapter = getattr(module, "FAMILY", None)
        if isinstance(adapter, Family):
            found.append(adapter)
    return tuple(sorted(found, key=lambda f: (f.order, f.name)))


@functools.cache
def _by_family() -> dict[str, Family]:
    out = {}
    for adapter in families():
        for key in (adapter.name, *adapter.catalog_families):
            out[key] = adapter
    return out


def family(name: str) -> Family:
    """The adapter serving catalog family (or adapter name) ``name``."""
    try:
        return _by_family()[name]
    except KeyError:
        raise UnknownModel(name, sorted(_by_family())) from None


def adapter_for(emb) -> Family | None:
    """The adapter that made ``emb`` (by its ``family`` attribute); None for embedders no family owns."""
    return _by_family().get(str(getattr(emb, "family", "") or ""))


def resolve(name: str, known: list[str]) -> tuple[Family, ModelRef]:
    """(adapter, reference) for a catalog name, a ``<prefix>:...`` name or a local model directory.

    ``known`` (the catalog names) goes into the :class:`UnknownModel` raised for anything else.
    """
    from ..catalog import CATALOG

    for spec in CATALOG:
        if spec.name == name:
            return family(spec.family), ModelRef(name, spec.source, spec)
    for adapter in families():
        for prefix in adapter.prefixes:
            if name.startswith(prefix) and len(name) > len(prefix):
                return adapter, ModelRef(name, name[len(prefix) :])
    path = Path(name).expanduser()
    if path.is_dir():
        for adapter in families():
            if adapter.claims_dir(path):
                return adapter, ModelRef(str(path.resolve()), str(path.resolve()), local=True)
        from ..hf import local_model_type

        local_model_type(path)  # raises the reason no family takes the folder (no config.json, unsupported type)
    raise UnknownModel(name, known)
