"""The graph behind ``--ann hnsw``: hnswlib when it is installed (``pip install 'visdex[ann]'``), else FAISS.

Why two engines: at 10^6 vectors (512-d, one thread, one query per call) hnswlib's graph answers
more queries per second than FAISS's IndexHNSWFlat at the same recall@10, and builds a better graph
for its build time (benchmarks/results/ann-hnsw-1e6.json). Without hnswlib, FAISS builds the graph
(nothing new to install); the quantised kinds (``hnsw-fp16``, ``hnsw-sq8``) are FAISS only.

:class:`HnswlibGraph` gives LocalVectorStore the parts of a FAISS index it uses (``ntotal``,
``add_with_ids``, ``is_trained``) plus ``build`` / ``kill`` / ``search`` / ``write``. Its labels are the
store's ids. A deleted id's node is marked deleted: it keeps routing searches and is never
returned, and hnswlib keeps searching until it holds ``ef`` live results, so a search still
finds k when k live nodes are reachable. A replaced id's node is updated in place (hnswlib
re-links its neighbours) and re-adding a deleted id revives its node, so neither leaves a dead node.

>>> graph = HnswlibGraph(dim=512)                                  # doctest: +SKIP
>>> graph.add_with_ids(vecs, ids); graph.search(vecs[:1], 10, ef=64)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from ..errors import BadQuery, MissingDependency

ENGINES = ("hnswlib", "faiss")
# hnswlib's defaults. At 3*10^5 vectors M=24 or 32 (efConstruction 120-200) and efConstruction=400 cost as
# much CPU per query as M=16, efConstruction=200 at the same recall@10, and build slower.
HNSWLIB_M, HNSWLIB_EF_CONSTRUCTION = 16, 200
# A graph built from scratch is laid out by coarse cluster (see HnswlibGraph.build) from this many vectors;
# smaller ones fit the CPU caches in any order.
LAYOUT_FROM = 50_000
LAYOUT_LISTS, LAYOUT_SKELETON, LAYOUT_SEED = 1024, 0.2, 0
_CHUNK = 32_768
_HEADER = struct.Struct("<6Qi I 3Q d Q")  # hnswlib's saveIndex header (little-endian x86-64 / arm64 layouts)


def hnswlib_installed() -> bool:
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(requested: str | None) -> str:
    """The HNSW engine to build: ``requested`` ("hnswlib" / "faiss"), or with None hnswlib when installed."""
    if requested not in (None, *ENGINES):
        raise BadQuery(f"unknown HNSW engine {requested!r}: one of {', '.join(ENGINES)}")
    if requested == "hnswlib" and not hnswlib_installed():
        raise MissingDependency("hnswlib", extra="ann", purpose="the hnswlib HNSW engine")
    return requested or ("hnswlib" if hnswlib_installed() else "faiss")


class HnswlibGraph:
    """An hnswlib inner-product graph keyed by the store's ids, with the set of its dead (deleted) ids."""

    engine = "hnswlib"
    is_trained = True

    def __init__(self, dim: int, capacity: int = 0, *, m: int = HNSWLIB_M,
                 ef_construction: int = HNSWLIB_EF_CONSTRUCTION, _index=None, dead=()):  # fmt: skip
        import hnswlib

        self.dim = int(dim)
        if _index is None:
            _index = hnswlib.Index(space="ip", dim=self.dim)
            _index.init_index(max(int(capacity), 1024), m, ef_construction, random_seed=100)
        self._index = _index
        self._dead: set[int] = set(dead)

    @property
    def ntotal(self) -> int:
        """Nodes in the graph, dead ones included (as FAISS's ``ntotal`` of the relabelled graph)."""
        return self._index.element_count

    @property
    def dead(self) -> int:
        return len(self._dead)

    @property
    def params(self) -> dict:
        return {"M": self._index.M, "efConstruction": self._index.ef_construction}

    def build(self, ids: np.ndarray, batches, fetch) -> None:
        """Add every vector of a store to this empty graph, laid out in memory by coarse cluster.

        hnswlib keeps each node's vector and links in one array, in the order nodes were added; a
        search walks from a node to its neighbours, which are nearly all in the node's own cluster,
        so adding vectors cluster by cluster puts what one search reads close together (fewer cache
        and TLB misses). A random fifth goes first, in random order, so that the graph's long links
        are made before the clusters come one by one (clusters alone build a poorer graph).
        ``ids``: the store's ids; ``batches()``: (ids, vectors) batches of all of them; ``fetch(ids)``:
        their vectors, in that order.
        """
        if len(ids) < LAYOUT_FROM:
            for chunk, vecs in batches():
                self.add_with_ids(vecs, chunk)
            return
        order = _cluster_order(ids, batches, fetch, self.dim)
        for start in range(0, len(order), _CHUNK):
            chunk = order[start : start + _CHUNK]
            self.add_with_ids(fetch(chunk), chunk)

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add ``ids``; an id already in the graph is updated in place (a dead one comes back to life)."""
        if not len(ids):
            return
        if self._dead:
            self._dead.difference_update(np.asarray(ids, np.int64).tolist())
        need = self._index.element_count + len(ids)
        if need > self._index.max_elements:
            self._index.resize_index(max(need, 2 * self._index.max_elements))  # doubling: amortised copies
        self._index.add_items(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))

    def live_ids(self) -> np.ndarray:
        """The ids a search can return, sorted."""
        labels = np.sort(np.asarray(self._index.get_ids_list(), np.int64))
        return np.setdiff1d(labels, np.fromiter(self._dead, np.int64, len(self._dead)), assume_unique=True)

    def reconstruct(self, i: int) -> np.ndarray:
        """The vector the graph keeps for live id ``i`` (RuntimeError when it has none)."""
        return np.asarray(self._index.get_items([int(i)]), np.float32)[0]

    def kill(self, ids: np.ndarray) -> None:
        """Mark the nodes of ``ids`` dead; ids not in the graph (or dead already) are skipped."""
        for i in np.asarray(ids, np.int64).tolist():
            if i in self._dead:
                continue
            try:
                self._index.mark_deleted(i)
            except RuntimeError:  # not in the graph
                continue
            self._dead.add(i)

    def search(self, queries: np.ndarray, k: int, ef: int, allowed: np.ndarray | None = None):
        """(scores, ids) of the ``k`` best live nodes (allowed ones only, if given), ``ef`` >= k candidates
        kept. A row that the graph cannot fill (fewer than k reachable matches) comes back all -1."""
        live = self.ntotal - len(self._dead)
        k = min(int(k), live)
        q = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        filt = None
        if allowed is not None:
            # hnswlib searches on until it holds ef *allowed* nodes: scaled by the allowed share, ef makes it visit
            # about as many nodes as without a filter (10^6 vectors, 5% allowed: ef 512 50 ms a query, ef 26 2 ms,
            # recall@10 1.0 and 0.997).
            ef = min(ef, max(2 * k, math.ceil(ef * len(allowed) / max(live, 1))))
            filt = _membership(allowed)
        self._index.set_ef(max(int(ef), k))
        try:  # one thread with a filter: hnswlib calls it under the GIL, threads would only queue for it
            labels, dist = self._index.knn_query(q, k, num_threads=1 if filt else -1, filter=filt)
        except RuntimeError:  # some row found fewer than k: hnswlib refuses the whole batch
            return self._search_rows(q, k, filt)
        return np.subtract(1.0, dist, out=dist), labels.view(np.int64)  # ids < 2**63: the same bits

    def _search_rows(self, q: np.ndarray, k: int, filt):
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for r in range(len(q)):
            try:
                labels, dist = self._index.knn_query(q[r : r + 1], k, num_threads=1, filter=filt)
            except RuntimeError:
                continue
            scores[r], ids[r] = 1.0 - dist[0], labels[0]
        return scores, ids

    def write(self, f) -> None:
        """Write the graph into the open binary file ``f`` (hnswlib writes only to a path: f's own, by its fd)."""
        f.flush()
        fd_dir = next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)
        if fd_dir is not None:
            self._index.save_index(f"{fd_dir}/{f.fileno()}")
            f.seek(0, os.SEEK_END)
            return
        with tempfile.TemporaryDirectory() as tmp:  # no fd paths (Windows): through a file of its own
            self._index.save_index(os.path.join(tmp, "graph.bin"))
            with open(os.path.join(tmp, "graph.bin"), "rb") as src:
                shutil.copyfileobj(src, f, 1 << 24)

    @classmethod
    def load(cls, path: str | os.PathLike, dim: int, live_ids=None) -> HnswlibGraph:
        """Read a saved graph; ValueError when the file is not an hnswlib graph of ``dim`` floats.
        ``live_ids`` (the store's ids; a callable, asked only when there are dead nodes) tells the dead
        ones apart: hnswlib keeps a deleted node's label, and labels missing from the store are dead."""
        import hnswlib

        _check_header(Path(path), dim)
        index = hnswlib.Index(space="ip", dim=int(dim))
        try:
            index.load_index(str(path))
        except RuntimeError as e:  # hnswlib checks the file's length against its link lists
            raise ValueError(f"not a readable hnswlib graph: {e}") from e
        dead = ()
        if live_ids is not None:
            dead = np.setdiff1d(np.asarray(index.get_ids_list(), np.int64), live_ids()).tolist()
        return cls(dim, _index=index, dead=dead)


def _cluster_order(ids: np.ndarray, batches, fetch, dim: int) -> np.ndarray:
    """``ids`` in build order: a random fifth, then the rest cluster by cluster (spherical k-means of a
    sample, :data:`LAYOUT_LISTS` clusters), by id within a cluster."""
    import faiss

    rng = np.random.default_rng(LAYOUT_SEED)
    lists = min(LAYOUT_LISTS, len(ids) // 40)
    sample = np.sort(rng.choice(ids, min(len(ids), 40 * lists), replace=False))
    kmeans = faiss.Kmeans(dim, lists, niter=10, seed=LAYOUT_SEED, spherical=True)
    kmeans.train(np.ascontiguousarray(fetch(sample), np.float32))
    parts, label_parts = [], []
    for chunk, vecs in batches():
        parts.append(chunk)
        label_parts.append(kmeans.index.search(np.ascontiguousarray(vecs, np.float32), 1)[1][:, 0])
    all_ids, labels = np.concatenate(parts), np.concatenate(label_parts)
    first = rng.permutation(len(all_ids))[: int(LAYOUT_SKELETON * len(all_ids))]
    rest = np.ones(len(all_ids), bool)
    rest[first] = False
    rest = np.flatnonzero(rest)
    rest = rest[np.lexsort((all_ids[rest], labels[rest]))]
    return np.concatenate([all_ids[first], all_ids[rest]])


def _check_header(path: Path, dim: int) -> None:
    """hnswlib trusts its header; a damaged one could make it read or allocate garbage, so check it first."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(_HEADER.size)
    if len(raw) < _HEADER.size:
        raise ValueError("truncated hnswlib graph")
    off0, cap, count, per_elem, label_off, data_off, maxlevel, entry, max_m, max_m0, m, mult, efc = _HEADER.unpack(raw)
    ok = (off0 == 0 and data_off == max_m0 * 4 + 4 and label_off == data_off + 4 * dim and per_elem == label_off + 8
          and count <= cap and 0 < m <= max_m <= max_m0 <= 4096 and maxlevel >= -1 and 0 < mult < 10
          and _HEADER.size + count * per_elem + 4 * count <= size and (count == 0 or entry < count))  # fmt: skip
    if not ok:
        raise ValueError(f"not an hnswlib graph of {dim}-d vectors")


def _membership(allowed: np.ndarray):
    """A fast ``id -> bool`` for hnswlib's filter callback, called for every node a filtered search reaches:
    a byte per id up to the largest when the ids are dense enough (~1 ms for 10^6 ids, where a set of
    500k ids takes ~30 ms to build), else a set."""
    allowed = np.asarray(allowed, np.int64)
    top = int(allowed.max()) + 1 if len(allowed) else 0
    if len(allowed) and allowed.min() >= 0 and top <= 64 * len(allowed):
        mask = np.zeros(top, np.uint8)
        mask[allowed] = 1
        table = mask.tobytes()
        return lambda i: i < top and table[i] == 1
    return frozenset(allowed.tolist()).__contains__


def read_index(path: Path, meta: dict, dim: int, live_ids):
    """The saved index at ``path`` as its engine (``meta["engine"]``, FAISS when absent) wrote it;
    ``live_ids()`` gives the store's ids (asked only for an hnswlib graph with dead nodes)."""
    if meta.get("engine") == "hnswlib":
        return HnswlibGraph.load(path, dim, live_ids if meta.get("dead") else None)
    import faiss

    return faiss.read_index(str(path))


def write_index(index, f) -> None:
    """Write ``index`` with its own engine's writer into the open binary file ``f``."""
    if isinstance(index, HnswlibGraph):
        index.write(f)
        return
    import faiss

    # the SWIG module has PyCallbackIOWriter; faiss's bundled type stubs leave it out
    faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))  # type: ignore[attr-defined]
