"""The embedded default store: vectors live in the index's SQLite file (the truth, written in
the same transaction as the file rows), and a FAISS index is derived from them.

The FAISS file records the database *generation* it was built from; when it is missing,
unreadable or stale (a crash after a commit but before the FAISS file was saved), it is
rebuilt from SQLite on open. In a running process the FAISS index is updated only after
the SQLite transaction commits, so a rolled-back batch never reaches it.

The ANN kind (``ann``, recorded in the index's meta table): ``flat`` is exact inner product;
``hnsw`` is a FAISS HNSW graph (M=32, efConstruction=80, efSearch=max(512, 4k)); ``auto``
(the default) is flat up to :data:`AUTO_HNSW_FROM` vectors and HNSW above. HNSW cannot remove
vectors, so a delete or a replaced vector marks the graph stale and it is rebuilt from SQLite
before the next search (adds are applied incrementally). Filters: a small allowed set
(<= :data:`EXACT_FILTER_MAX` ids) is searched exactly; a larger one through the graph with an
id selector, falling back to exact search if the graph returns fewer than k matches.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from ..errors import MissingDependency
from .base import VectorStore, as_ids, pad_results
from .db import IndexDB

log = logging.getLogger(__name__)

FAISS_NAME = "vectors.faiss"
ANN_KINDS = ("auto", "flat", "hnsw")
AUTO_HNSW_FROM = 100_000
EXACT_FILTER_MAX = 20_000
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 512


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a core dependency
        raise MissingDependency("faiss-cpu", purpose="the embedded vector index") from e
    return faiss


class LocalVectorStore(VectorStore):
    """Vectors in SQLite, exact inner-product search with FAISS.

    >>> store = LocalVectorStore(IndexDB(tmp_dir), dim=512)  # doctest: +SKIP
    """

    def __init__(self, db: IndexDB, dim: int, ann: str | None = None):
        if ann is not None and ann not in ANN_KINDS:
            from ..errors import BadQuery

            raise BadQuery(f"unknown --ann {ann!r}: one of {', '.join(ANN_KINDS)}")
        self.db = db
        self.dim = int(dim)
        if ann is not None and ann != db.get_meta("ann"):
            db.set_meta("ann", ann)
        self.ann = db.get_meta("ann") or "auto"
        self.faiss_path = db.dir / FAISS_NAME
        self.meta_path = db.dir / (FAISS_NAME + ".json")
        self._index = None
        self._dirty = False
        self._stale = False  # an HNSW graph that still holds deleted or replaced vectors

    @property
    def kind(self) -> str:
        """The index kind in use now: "flat" or "hnsw"."""
        if self.ann == "auto":
            return "hnsw" if self.count() >= AUTO_HNSW_FROM else "flat"
        return self.ann

    # -- derived FAISS index --------------------------------------------------------------
    @property
    def index(self):
        if self._index is None:
            self._index = self._load_or_rebuild()
        return self._index

    def _ensure_loaded(self) -> None:
        # Load (or rebuild) before a write, so the write can be applied in memory after commit.
        if self._index is None:
            self._index = self._load_or_rebuild()

    def _new_index(self):
        faiss = _faiss()
        if self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            return faiss.IndexIDMap2(inner)
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _is_hnsw(self, index) -> bool:
        faiss = _faiss()
        return isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW)

    def _load_or_rebuild(self):
        faiss = _faiss()
        generation = self.db.generation
        try:
            meta = json.loads(self.meta_path.read_text())
            if meta.get("generation") == generation and meta.get("dim") == self.dim and meta.get("kind") == self.kind:
                index = faiss.read_index(str(self.faiss_path))
                if index.ntotal == self.count():
                    return index
        except (OSError, ValueError, RuntimeError):
            pass
        log.info("rebuilding the FAISS index of %s from SQLite", self.db.dir)
        index = self._new_index()
        for ids, vecs in self._iter_vectors():
            index.add_with_ids(vecs, ids)
        self._dirty = True
        return index

    def _iter_vectors(self, chunk: int = 65536):
        cur = self.db.conn.execute("SELECT id, vec FROM vectors ORDER BY id")
        while rows := cur.fetchmany(chunk):
            ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), self.dim)
            yield ids, vecs

    def _disk_generation(self) -> int | None:
        try:
            return json.loads(self.meta_path.read_text()).get("generation")
        except (OSError, ValueError):
            return None

    def flush(self) -> None:
        """Save the FAISS index (atomically) if it lags behind SQLite."""
        if self._index is None and self._disk_generation() != self.db.generation:
            self._index = self._load_or_rebuild()
        if not self._dirty or self._index is None:
            return
        faiss = _faiss()
        tmp = self.faiss_path.with_suffix(".tmp")
        faiss.write_index(self._index, str(tmp))
        os.replace(tmp, self.faiss_path)
        meta_tmp = self.meta_path.with_suffix(".tmp")
        meta_tmp.write_text(json.dumps({"generation": self.db.generation, "dim": self.dim, "kind": self.kind}))
        os.replace(meta_tmp, self.meta_path)
        self._dirty = False

    # -- contract -------------------------------------------------------------------------
    def upsert(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        self._ensure_loaded()
        with self.db.transaction() as c:
            c.executemany(
                "INSERT INTO vectors VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET vec = excluded.vec",
                [(int(i), v.tobytes()) for i, v in zip(ids, vectors, strict=True)],
            )
            self.db.bump_generation()
            self.db.after_commit(lambda: self._apply_upsert(ids, vectors))

    def _apply_upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self._is_hnsw(self._index):
            self._stale = self._stale or self._has_any(ids)
        else:
            self._index.remove_ids(ids)
        self._index.add_with_ids(vectors, ids)
        self._dirty = True

    def _has_any(self, ids: np.ndarray) -> bool:
        """Whether any of ``ids`` is already in the graph (then a replace leaves a stale copy)."""
        present = _faiss().vector_to_array(self._index.id_map)
        return bool(np.isin(ids, present).any())

    def delete(self, ids: Sequence[int] | np.ndarray) -> None:
        ids = as_ids(ids)
        if not len(ids):
            return
        self._ensure_loaded()
        with self.db.transaction() as c:
            c.executemany("DELETE FROM vectors WHERE id = ?", [(int(i),) for i in ids])
            self.db.bump_generation()
            self.db.after_commit(lambda: self._apply_delete(ids))

    def _apply_delete(self, ids: np.ndarray) -> None:
        if self._is_hnsw(self._index):
            self._stale = True
        else:
            self._index.remove_ids(ids)
        self._dirty = True

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if self._stale:  # deleted or replaced vectors still in the HNSW graph: rebuild it from SQLite
            self._index, self._stale = None, False
            self.db.bump_generation()
        index = self.index
        n = index.ntotal if allowed is None else min(index.ntotal, len(allowed))
        kk = min(k, n)
        if kk <= 0:
            return pad_results(np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), k)
        faiss = _faiss()
        hnsw = self._is_hnsw(index)
        if hnsw:  # IndexIDMap does not pass HNSW search parameters through: set efSearch on the graph
            faiss.downcast_index(index.index).hnsw.efSearch = max(HNSW_EF_SEARCH, 4 * k)
        params = None
        if allowed is not None:
            allowed = as_ids(allowed)
            if hnsw and len(allowed) <= EXACT_FILTER_MAX:
                return self._exact_among(queries, allowed, k)
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        scores, ids = index.search(queries, kk, params=params)
        if hnsw and allowed is not None and (ids >= 0).sum(axis=1).min() < kk:
            return self._exact_among(queries, allowed, k)  # the graph found too few matches: be exact
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return pad_results(scores, ids.astype(np.int64), k)

    def _exact_among(self, queries: np.ndarray, allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        present, vecs = self._get_present(allowed)
        if not len(present):
            return pad_results(np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), k)
        sims = queries @ vecs.T
        kk = min(k, len(present))
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)
        return pad_results(np.take_along_axis(sims, order, axis=1).astype(np.float32), present[order], k)

    def _get_present(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids that have vectors, their vectors), unknown ids skipped."""
        found: dict[int, bytes] = {}
        for start in range(0, len(ids), 900):
            chunk = [int(i) for i in ids[start : start + 900]]
            marks = ",".join("?" * len(chunk))
            found.update(self.db.conn.execute(f"SELECT id, vec FROM vectors WHERE id IN ({marks})", chunk).fetchall())
        present = np.array(sorted(found), np.int64)
        vecs = np.frombuffer(b"".join(found[int(i)] for i in present), np.float32).reshape(len(present), self.dim)
        return present, vecs

    def get(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = as_ids(ids)
        found: dict[int, bytes] = {}
        for start in range(0, len(ids), 900):
            chunk = [int(i) for i in ids[start : start + 900]]
            marks = ",".join("?" * len(chunk))
            found.update(self.db.conn.execute(f"SELECT id, vec FROM vectors WHERE id IN ({marks})", chunk).fetchall())
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            raise KeyError(f"no vectors for ids {missing[:10]}")
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        return np.frombuffer(b"".join(found[int(i)] for i in ids), np.float32).reshape(len(ids), self.dim).copy()

    def count(self) -> int:
        return self.db.conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def ids(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self.db.conn.execute("SELECT id FROM vectors ORDER BY id")), np.int64)

    def info(self) -> dict:
        kind = self.kind
        return {"backend": f"local (SQLite + FAISS {kind})", "ann": self.ann, "count": self.count(), "dim": self.dim}

    def clear(self) -> None:
        """Drop every vector (used when an index is rebuilt with another model)."""
        with self.db.transaction() as c:
            c.execute("DELETE FROM vectors")
            self.db.bump_generation()
            self.db.after_commit(self._reset)

    def _reset(self) -> None:
        self._index = self._new_index()
        self._dirty = True
