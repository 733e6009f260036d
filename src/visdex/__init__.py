"""visdex: semantic image search.

>>> from visdex import open_index                               # doctest: +SKIP
>>> ix = open_index("my-index", model="lite0-minilm")           # doctest: +SKIP
>>> ix.add(["photos/"]); ix.search("kitten", k=5)               # doctest: +SKIP

Imports are lazy so that ``import visdex`` (and decode worker processes) stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "open_index": "api",
    "Index": "api",
    "IndexStatus": "api",
    "Hit": "search",
    "IngestReport": "ingest",
    "list_models": "models",
    "load_embedder": "models",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from .api import Index, IndexStatus, open_index  # noqa: F401
    from .ingest import IngestReport  # noqa: F401
    from .models import list_models, load_embedder  # noqa: F401
    from .search import Hit  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'visdex' has no attribute {name!r}")
