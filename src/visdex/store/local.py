"""The embedded default store: vectors live in the index's SQLite file (the truth, written in
the same transaction as the file rows), and a FAISS index is derived from them.

The FAISS file records the database *generation* it was built from; when it is missing,
unreadable or stale (a crash after a commit but before the FAISS file was saved), it is
rebuilt from SQLite on open. In a running process the FAISS index is updated only after
the SQLite transaction commits, so a rolled-back batch never reaches it.
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

    def __init__(self, db: IndexDB, dim: int):
        self.db = db
        self.dim = int(dim)
        self.faiss_path = db.dir / FAISS_NAME
        self.meta_path = db.dir / (FAISS_NAME + ".json")
        self._index = None
        self._dirty = False

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
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _load_or_rebuild(self):
        faiss = _faiss()
        generation = self.db.generation
        try:
            meta = json.loads(self.meta_path.read_text())
            if meta.get("generation") == generation and meta.get("dim") == self.dim:
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
        meta_tmp.write_text(json.dumps({"generation": self.db.generation, "dim": self.dim, "kind": "flat"}))
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
        self._index.remove_ids(ids)
        self._index.add_with_ids(vectors, ids)
        self._dirty = True

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
        self._index.remove_ids(ids)
        self._dirty = True

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        index = self.index
        n = index.ntotal if allowed is None else min(index.ntotal, len(allowed))
        kk = min(k, n)
        if kk <= 0:
            return pad_results(np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), k)
        params = None
        if allowed is not None:
            faiss = _faiss()
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(as_ids(allowed)))
        scores, ids = index.search(queries, kk, params=params)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return pad_results(scores, ids.astype(np.int64), k)

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
        return {"backend": "local (SQLite + FAISS flat)", "count": self.count(), "dim": self.dim}

    def clear(self) -> None:
        """Drop every vector (used when an index is rebuilt with another model)."""
        with self.db.transaction() as c:
            c.execute("DELETE FROM vectors")
            self.db.bump_generation()
            self.db.after_commit(self._reset)

    def _reset(self) -> None:
        self._index = self._new_index()
        self._dirty = True
