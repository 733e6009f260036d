"""Clusters of an index: spherical k-means (FAISS) on the stored vectors, each cluster with its
size and its most central images.

>>> [(c.size, c.central[0][1]) for c in cluster_index(ix, k=5)]     # doctest: +SKIP
[(120, '/photos/beach/1.jpg'), ...]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .errors import BadQuery
from .models.base import l2_normalize

TRAIN_SAMPLE = 200_000  # k-means is trained on a sample this large; every vector is then assigned
CENTRAL = 5


@dataclass
class Cluster:
    id: int
    size: int
    member_ids: list[int]
    central: list[tuple[int, str, float]]  # (id, path, cosine to the centroid), most central first

    def to_dict(self) -> dict:
        return asdict(self)


def auto_k(n: int) -> int:
    """sqrt(n/2), the classic rule of thumb, within [2, 64]: enough groups to browse, not too many."""
    return max(2, min(64, round(math.sqrt(n / 2))))


def cluster_index(ix, k: int | None = None, *, seed: int = 0, progress=None) -> list[Cluster]:
    """Cluster every vector of ``ix`` into ``k`` groups (``None``: :func:`auto_k`), largest first."""
    import faiss

    ids = ix.store.ids()
    n = len(ids)
    if n < 2:
        raise BadQuery("clustering needs at least two indexed images")
    k = auto_k(n) if k is None else k
    if not 1 <= k <= n:
        raise BadQuery(f"{{field}} must be between 1 and the number of indexed items ({n})", field="k")
    vecs = ix.store.get(ids)
    rng = np.random.default_rng(seed)
    train = vecs if n <= TRAIN_SAMPLE else vecs[rng.choice(n, TRAIN_SAMPLE, replace=False)]
    km = faiss.Kmeans(vecs.shape[1], k, niter=25, seed=seed, spherical=True, verbose=False, min_points_per_centroid=1,
                      max_points_per_centroid=max(256, len(train) // k + 1))  # fmt: skip
    km.train(train)
    assert km.centroids is not None  # train() sets them
    centroids = l2_normalize(km.centroids)
    sims = vecs @ centroids.T
    assign = sims.argmax(axis=1)
    paths = {i: r.path for i, r in ix.db.files_by_ids(ids).items()} if ix.db.kind == "files" else {}
    if ix.db.kind == "catalog":
        paths = {i: it["key"] for i, it in ix.db.items_by_ids(ids).items()}
    out = []
    for c in range(k):
        members = np.flatnonzero(assign == c)
        if not len(members):
            continue
        order = members[np.argsort(-sims[members, c])]
        central = [(int(ids[j]), paths.get(int(ids[j]), ""), round(float(sims[j, c]), 4)) for j in order[:CENTRAL]]
        out.append(Cluster(0, len(members), [int(ids[j]) for j in order], central))
    out.sort(key=lambda cl: -cl.size)
    for i, cl in enumerate(out):
        cl.id = i
    if progress is not None:
        progress.start(1)
        progress.advance(1)
    return out
