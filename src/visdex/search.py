"""Turning query vectors into hits: the one place an embedder's output meets the store for
reading. Query parsing and the richer query kinds build on :func:`search_vectors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .store.base import VectorStore
from .store.db import IndexDB


@dataclass
class Hit:
    """One search result."""

    id: int
    path: str
    score: float
    width: int | None = None
    height: int | None = None
    format: str | None = None
    taken_at: str | None = None
    camera: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def search_vectors(
    db: IndexDB,
    store: VectorStore,
    query: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    exclude_ids: Sequence[int] = (),
) -> list[Hit]:
    """Top-``k`` hits for one query vector, ``exclude_ids`` left out (e.g. the query image itself)."""
    exclude = {int(i) for i in exclude_ids}
    scores, ids = store.search(query.reshape(1, -1), k + len(exclude), allowed=allowed)
    pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0 and int(i) not in exclude][:k]
    rows = db.files_by_ids([i for i, _ in pairs])
    hits = []
    for i, s in pairs:
        row = rows.get(i)
        if row is None:  # vector without a row: only possible mid-write by another process
            continue
        hits.append(Hit(i, row.path, s, row.width, row.height, row.format, row.taken_at, row.camera))
    return hits
