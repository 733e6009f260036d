"""The vector store contract. Every backend (embedded SQLite+FAISS, Milvus) passes the same
contract tests (tests/store_contract.py).

Ids are int64 item ids shared with the index database; vectors are float32, L2-normalised,
so the score is the inner product (= cosine).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

# HNSW graph parameters (FAISS and Milvus alike): links per node, build and search beam widths (the search beam
# grows to 4k for larger k)
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 512


class VectorStore(ABC):
    dim: int

    @abstractmethod
    def upsert(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace the vectors of ``ids`` (shape (n, dim) float32)."""

    @abstractmethod
    def delete(self, ids: Sequence[int] | np.ndarray) -> None:
        """Remove ``ids``; unknown ids are ignored."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product for each query row: ``(scores, ids)`` of shape (q, k),
        best first, padded with score -inf and id -1. ``allowed`` restricts the search to
        those ids (the top-k among matching items, not a post-filtered short list)."""

    @abstractmethod
    def get(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Vectors of ``ids`` in the given order; a missing id raises KeyError."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def ids(self) -> np.ndarray:
        """All stored ids (int64)."""

    def iter_vectors(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored ``(ids, vectors)``, in batches of at most ``chunk`` rows, in no promised order. This
        default reads ids, then vectors by batch; a backend that can stream both in one pass overrides it."""
        ids = np.sort(self.ids())
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            yield part, self.get(part)

    def compile_where(self, where: str) -> Any:
        """A ``where`` filter in the backend's own terms, for a backend that filters by itself (Milvus): the
        caller passes it to :meth:`search` as ``allowed``. None (this default) means the backend filters by
        ids: the caller finds the ids matching ``where`` in the index database and passes those."""
        return None

    def clear(self) -> None:
        """Drop every vector (an index rebuilt with another model). Backends do it in one step."""
        self.delete(self.ids())

    @property
    def index(self) -> Any:
        """The backend's own search object (a FAISS index, a Milvus client), made or loaded on first use: reading
        it does that now, so a server's first query does not wait for it."""
        raise NotImplementedError

    def info(self) -> dict:
        return {"backend": type(self).__name__, "count": self.count(), "dim": self.dim}

    def flush(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Persist derived data (ANN files). Truth is already durable after each write."""

    def close(self) -> None:
        self.flush()


def as_ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


def pad_results(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (q, m) results to (q, k) with -inf / -1 so every backend returns one shape."""
    q, m = ids.shape
    if m >= k:
        return scores[:, :k], ids[:, :k]
    s = np.full((q, k), -np.inf, np.float32)
    i = np.full((q, k), -1, np.int64)
    s[:, :m], i[:, :m] = scores, ids
    return s, i


def empty_results(q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(q, k) results with nothing found: every score -inf, every id -1."""
    return pad_results(np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64), k)
