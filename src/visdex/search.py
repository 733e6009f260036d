"""Turning query vectors into hits: the one place an embedder's output meets the store for
reading. Query parsing and the richer query kinds build on :func:`search_vectors`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .errors import BadQuery
from .query import MAX_K
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
    # catalog items (None for folder indexes): the item id from the catalog, its title, attributes, images
    key: str | None = None
    title: str | None = None
    attrs: dict | None = None
    images: list[str] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.key is None:  # a file: leave out the catalog fields
            for f in ("key", "title", "attrs", "images"):
                d.pop(f)
        return d


def search_vectors(
    db: IndexDB,
    store: VectorStore,
    query: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    exclude_ids: Sequence[int] = (),
    rescore: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    shortlist: int | None = None,
) -> list[Hit]:
    """Top-``k`` hits for one query vector, ``exclude_ids`` left out (e.g. the query image itself).
    ``rescore(ids, cosines) -> scores``: re-rank the best ``shortlist`` candidates by those scores (hubness
    reduction, :mod:`visdex.hubness`); hits keep their cosine as ``score``, in the re-ranked order."""
    if k > MAX_K:  # stores allocate k-sized results: -n 10**12 would ask for terabytes
        raise BadQuery(f"at most {MAX_K:,} results per query, not {k:,}")
    exclude = {int(i) for i in exclude_ids}
    depth = k if rescore is None else min(max(k, shortlist or k), MAX_K)
    scores, ids = store.search(query.reshape(1, -1), depth + len(exclude), allowed=allowed)
    pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0 and int(i) not in exclude]
    if rescore is not None and len(pairs) > 1:
        adjusted = rescore(np.array([i for i, _ in pairs]), np.array([s for _, s in pairs], np.float32))
        pairs = [pairs[j] for j in np.argsort(-adjusted, kind="stable")]
    return hydrate(db, pairs[:k])


def hydrate(db: IndexDB, pairs: Sequence[tuple[int, float]]) -> list[Hit]:
    """(id, score) pairs -> hits with their file (or catalog item) metadata, in the given order.
    An id without a row (possible only mid-write by another process) is dropped."""
    ids = [i for i, _ in pairs]
    if db.kind == "catalog":
        items = db.items_by_ids(ids)
        return [
            Hit(i, it["images"][0] if it["images"] else "", s, key=it["key"], title=it["title"], attrs=it["attrs"],
                images=it["images"])
            for i, s in pairs
            if (it := items.get(i)) is not None
        ]  # fmt: skip
    rows = db.files_by_ids(ids)
    return [
        Hit(i, row.path, s, row.width, row.height, row.format, row.taken_at, row.camera)
        for i, s in pairs
        if (row := rows.get(i)) is not None
    ]


def cut_hits(hits: list[Hit], min_score: float | None = None, within: float | None = None) -> list[Hit]:
    """Drop hits under ``min_score``, and those more than ``within`` below the best one. A relative
    cutoff travels across models; a flat cosine threshold does not (CLIP text-image cosines sit
    around 0.2-0.35, image-image ones near 0.8-1.0)."""
    if min_score is not None:
        hits = [h for h in hits if h.score >= min_score]
    if within is not None and hits:
        if within < 0:
            raise BadQuery("{field} must be >= 0", field="within")
        top = hits[0].score
        hits = [h for h in hits if h.score >= top - within]
    return hits
