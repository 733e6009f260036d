"""The embedded default store: vectors live in the index's SQLite file (the truth, written in
the same transaction as the file rows), and a FAISS index is derived from them.

The FAISS file records the database *generation* it was built from and a digest of its ids; on
load it is also checked against the truth: the same ids as SQLite and a sample of its vectors equal
to theirs (close, for the compressed kinds). When it is missing, unreadable, stale (a crash after a
commit but before the file was saved) or disagrees, it is rebuilt from SQLite. In a running process
the FAISS index is updated only after the SQLite transaction commits, so a rolled-back batch never
reaches it, and only when it saw every change before (the generation moved by exactly one);
otherwise it is rebuilt.

Only the index's writer (the process holding its writer lock, see ``IndexDB.hold_writer``) saves the
file, through a temporary file of its own and a rename; readers never write, so they work on a
read-only folder or a full disk (a stale file is then rebuilt in memory).

The ANN kind (``ann``, recorded in the index's meta table, one of :data:`ANN_KINDS`):

- ``flat``: exact inner product over float32 vectors.
- ``hnsw``: an HNSW graph, efSearch=max(512, 4k): hnswlib's (M=16, efConstruction=200) when hnswlib is
  installed (``visdex[ann]``, about 2x the queries per second at 10^6), else FAISS's (M=32,
  efConstruction=80); see :mod:`visdex.store.hnsw`.
- ``ivfpq``: inverted lists + product quantisation, parameters by size (:func:`ivfpq_params`:
  nlist ~ 2 sqrt(n), dim/8 bytes per vector, nprobe = max(32, nlist/32)), trained on a sample;
  the PQ shortlist (max(200, 20k)) is re-ranked exactly with the float32 vectors from SQLite.
  Exact search below :data:`IVFPQ_MIN` vectors (k-means needs enough points to train on).
- ``auto`` (the default): flat up to :data:`AUTO_HNSW_FROM` vectors and HNSW above.
- ``-fp16`` / ``-sq8`` after auto, flat or hnsw keeps the index's copy of the vectors as float16 /
  int8 (FAISS scalar quantiser, trained per dimension): 1/2 or 1/4 of the memory. Their shortlist
  (2k or 4k) is re-ranked with the float32 vectors, so scores stay exact cosines.

Trained kinds (sq8, ivfpq) are re-trained from SQLite when the store has grown past twice the size
they were trained on. Flat and IVF-PQ remove in place. An HNSW graph cannot remove a node, so a
deleted or replaced vector's node is relabelled dead (``DEAD_LABEL + position``): it still routes
searches through the graph but is never returned (searches skip labels >= ``DEAD_LABEL`` with an id
selector). The graph is rebuilt from SQLite only once dead nodes pass :data:`HNSW_MAX_DEAD` of it.
Filters: a small allowed set (<= :data:`EXACT_FILTER_MAX` ids) is
searched exactly; a larger one through the index with an id selector (HNSW: falling back to exact
search if the graph returns fewer than k matches; IVF-PQ: doubling nprobe until k matches are found
or every list was scanned), so a filtered search returns k results whenever k items match.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import BadQuery, MissingDependency
from .base import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, VectorStore, as_ids, empty_results, pad_results
from .db import IndexDB, os_error
from .hnsw import HNSWLIB_EF_CONSTRUCTION, HNSWLIB_M, HnswlibGraph, read_index, resolve_engine, write_index

log = logging.getLogger(__name__)

FAISS_NAME = "vectors.faiss"
QUANTIZERS = ("fp16", "sq8")
ANN_KINDS = ("auto", "flat", "hnsw", "ivfpq") + tuple(f"{b}-{q}" for b in ("auto", "flat", "hnsw") for q in QUANTIZERS)
AUTO_HNSW_FROM = 100_000
IVFPQ_MIN = 10_000
EXACT_FILTER_MAX = 20_000
RETRAIN_GROWTH = 2.0  # re-train sq8 / IVF-PQ once the store holds this many times the training-time count
SQ_TRAIN_MAX = 100_000
DEAD_LABEL = 1 << 62  # HNSW nodes of deleted / replaced vectors are relabelled DEAD_LABEL + their position
HNSW_MAX_DEAD = 0.25  # rebuild the graph once this fraction of its nodes is dead
# Re-ranked shortlist per codec: max(factor * k, minimum) candidates are re-scored with float32 vectors.
SHORTLIST = {"fp16": (2, 20), "sq8": (4, 40), "ivfpq": (20, 200)}
VERIFY_SAMPLE = 32  # vectors of a saved FAISS file compared with SQLite's when it is loaded
# Up to this many vectors, a one-shot reader of a flat store (see LocalVectorStore.one_shot) searches SQLite's
# vectors with numpy: reading them (~6 us each) costs less than importing FAISS and loading and checking its file
# (~50 ms of CPU), and the truth itself needs no check.
NUMPY_EXACT_MAX = 5_000


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a core dependency
        raise MissingDependency("faiss-cpu", purpose="the embedded vector index") from e
    return faiss


def parse_ann(ann: str) -> tuple[str, str]:
    """``"hnsw-sq8"`` -> ``("hnsw", "sq8")``; ``"flat"`` -> ``("flat", "fp32")``."""
    if ann not in ANN_KINDS:
        raise BadQuery(f"unknown {{field}} {ann!r}: one of {', '.join(ANN_KINDS)}", field="ann")
    base, _, codec = ann.partition("-")
    return base, codec or ("pq" if base == "ivfpq" else "fp32")


@dataclass(frozen=True)
class IVFPQParams:
    nlist: int  # inverted lists (k-means centroids)
    m: int  # PQ sub-vectors = bytes per vector at nbits 8
    nbits: int
    nprobe: int  # lists scanned per query
    train_size: int  # vectors sampled to train on


def ivfpq_params(n: int, dim: int) -> IVFPQParams:
    """IVF-PQ parameters for ``n`` vectors: nlist the power of two nearest 2 sqrt(n) (lists of
    ~sqrt(n)/2 vectors), dim/8 sub-quantisers (at least 16) of 8 bits (64 bytes for 512-d), nprobe
    nlist/32 (at least 32), trained on 40 points per centroid.

    >>> ivfpq_params(1_000_000, 512)
    IVFPQParams(nlist=2048, m=64, nbits=8, nprobe=64, train_size=81920)
    """
    nlist = int(min(65536, max(16, 2 ** round(math.log2(max(2 * math.sqrt(max(n, 1)), 1))))))
    m = next(m for m in range(min(dim, max(dim // 8, 16)), 0, -1) if dim % m == 0)
    train = min(n, max(40 * nlist, 256 * 40))
    nbits = max(1, min(8, int(math.log2(max(n, 2)))))  # 256 centroids a sub-quantiser need 256 points
    return IVFPQParams(nlist, m, nbits, min(nlist, max(32, nlist // 32)), train)


class LocalVectorStore(VectorStore):
    """Vectors in SQLite, searched with a FAISS index derived from them.

    ``ef_search`` (HNSW), ``nprobe`` (IVF-PQ) and ``shortlist`` (candidates re-ranked exactly,
    quantised kinds) override the defaults for one store object; None keeps them. ``hnsw_engine``
    ("hnswlib" / "faiss") picks the engine of a plain ``hnsw`` graph built from now on (None: hnswlib
    when installed); a saved graph of the other engine is rebuilt.

    >>> store = LocalVectorStore(IndexDB(tmp_dir), dim=512, ann="hnsw-sq8")  # doctest: +SKIP
    """

    def __init__(self, db: IndexDB, dim: int, ann: str | None = None):
        if ann is not None:
            parse_ann(ann)
        self.db = db
        self.dim = int(dim)
        if ann is not None and ann != db.get_meta("ann"):
            db.set_meta("ann", ann)
        self.ann = db.get_meta("ann") or "auto"
        self.faiss_path = db.dir / FAISS_NAME
        self.meta_path = db.dir / (FAISS_NAME + ".json")
        self.ef_search: int | None = None
        self.nprobe: int | None = None
        self.shortlist: int | None = None
        self.hnsw_engine: str | None = None
        self._index: Any = None  # a FAISS index (SWIG, untyped) or an HnswlibGraph
        self._built: dict = {}  # {"kind", "trained_on", "dead", "generation"} of the index in memory
        self._dirty = False
        self._stale = False  # too many dead HNSW nodes, or outgrew its kind or its training
        self._small: tuple | None = None  # (generation, ids, vectors) of a small flat store, read from SQLite
        #: This store answers a search or two and is closed (the CLI): a small flat one is searched from SQLite.
        self.one_shot = False

    def kind_for(self, n: int) -> str:
        """The index kind for ``n`` vectors: "flat", "hnsw", "ivfpq", with "-fp16" / "-sq8"."""
        base, codec = parse_ann(self.ann)
        if base == "auto":
            base = "hnsw" if n >= AUTO_HNSW_FROM else "flat"
        if base == "ivfpq":
            return "ivfpq" if n >= IVFPQ_MIN else "flat"
        return base if codec == "fp32" else f"{base}-{codec}"

    @property
    def kind(self) -> str:
        """The index kind in use now (see :meth:`kind_for`)."""
        if self._index is not None and not self._stale:
            return self._built["kind"]
        return self.kind_for(self.count())

    # -- derived FAISS index --------------------------------------------------------------
    @property
    def index(self):
        if self._stale:  # rebuilt from SQLite; the file on disk is older than the database
            self._index, self._stale = None, False
        self._forget_if_behind()
        if self._index is None:
            self._index = self._load_or_rebuild()
        return self._index

    def _forget_if_behind(self) -> None:
        # Another process (or another store object of this one) changed the vectors since this index was built.
        if self._index is not None and not self.db.in_transaction and self._built.get("generation") != (
                self.db.generation):  # fmt: skip
            self._index = None

    def _ensure_loaded(self) -> None:
        # Load (or rebuild) before a write, so the write can be applied in memory after commit -- unless this
        # transaction already changed vectors: what it would read is not committed yet (rebuilt later instead).
        if self.db.vectors_changed:
            return
        self._forget_if_behind()
        if self._index is None and not self._stale:
            self._index = self._load_or_rebuild()

    def _engine(self, kind: str) -> str:
        """Who builds an index of ``kind``: hnswlib or FAISS for a plain HNSW graph, FAISS for the rest."""
        return resolve_engine(self.hnsw_engine) if kind == "hnsw" else "faiss"

    def _new_index(self, kind: str, n: int):
        if self._engine(kind) == "hnswlib":
            return HnswlibGraph(self.dim, n)
        faiss = _faiss()
        base, _, codec = kind.partition("-")
        ip = faiss.METRIC_INNER_PRODUCT
        if base == "ivfpq":
            p = ivfpq_params(n, self.dim)
            return faiss.IndexIVFPQ(faiss.IndexFlatIP(self.dim), self.dim, p.nlist, p.m, p.nbits, ip)
        qtype = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}.get(codec)
        if base == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, HNSW_M, ip) if qtype is None else faiss.IndexHNSWSQ(
                self.dim, qtype, HNSW_M, ip)  # fmt: skip
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        else:
            inner = faiss.IndexFlatIP(self.dim) if qtype is None else faiss.IndexScalarQuantizer(self.dim, qtype, ip)
        return faiss.IndexIDMap2(inner)

    def _load_or_rebuild(self):
        with self.db.snapshot():  # the generation and the vectors of one moment, whatever other processes commit
            generation, truth = self.db.generation, self._truth_signature()
            n = truth[0]
            kind = self.kind_for(n)
            index = self._load_saved(generation, kind, truth)
            if index is not None:
                return index
            log.info("building the FAISS index (%s) of %s from SQLite", kind, self.db.dir)
            index = self._new_index(kind, n)
            if not index.is_trained and n:
                size = ivfpq_params(n, self.dim).train_size if kind == "ivfpq" else SQ_TRAIN_MAX
                index.train(self._sample(self.ids(), size))
            if isinstance(index, HnswlibGraph):  # laid out in memory by coarse cluster (HnswlibGraph.build)
                index.build(self.ids(), self.iter_vectors, self.get)
            else:
                for ids, vecs in self.iter_vectors():
                    index.add_with_ids(vecs, ids)
        self._built = {"kind": kind, "trained_on": n, "dead": 0, "generation": generation}
        self._dirty = True
        return index

    def _truth_signature(self) -> tuple[int, int, int]:
        """:func:`_signature` of the ids in SQLite: kept by triggers (an older read-only index: counted)."""
        got = self.db.vector_set()
        if got is None:
            got = self.db.conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(id % 1000000007), 0), "
                "COALESCE(SUM((id % 65521) * (id % 65521)), 0) FROM vectors"
            ).fetchone()
        n, s1, s2 = got
        return int(n), int(s1), int(s2)

    def _load_saved(self, generation: int, kind: str, truth: tuple[int, int, int]):
        """The saved FAISS index if it was built from exactly what SQLite holds now, else None."""
        meta = self._disk_meta()
        if meta.get("generation") != generation or meta.get("dim") != self.dim or meta.get("kind") != kind:
            return None
        if meta.get("engine", "faiss") != self._engine(kind):
            return None  # the other HNSW engine's graph (hnswlib installed or removed since): built anew
        if "ids" in meta and tuple(meta["ids"]) != truth:  # (files saved before it was recorded: compared below)
            log.warning("the saved FAISS index of %s names other ids than SQLite: rebuilding it", self.db.dir)
            return None
        try:
            index = read_index(self.faiss_path, meta, self.dim, self.ids)
        except (OSError, RuntimeError, ValueError):
            return None
        if not self._matches(index, kind, truth, generation):
            log.warning("the saved FAISS index of %s disagrees with SQLite: rebuilding it", self.db.dir)
            return None
        self._built = {"kind": kind, "trained_on": meta.get("trained_on", truth[0]), "dead": _count_dead(index),
                       "generation": generation}  # fmt: skip
        return index

    def _matches(self, index, kind: str, truth: tuple[int, int, int], generation: int) -> bool:
        """Whether ``index`` holds the ids SQLite holds (their signature ``truth``) and, for a sample, their
        vectors: equal for the exact kinds; for the compressed ones, each decoded vector nearer its own than any
        other sampled one."""
        ids, where = _live_ids(index)
        if _signature(ids) != truth:
            return False
        if not len(ids):
            return True
        sample = np.sort(np.random.default_rng(generation).choice(ids, min(VERIFY_SAMPLE, len(ids)), False))
        try:
            decoded = _reconstruct(index, sample, where)
        except RuntimeError:
            return False
        try:
            want = self.get(sample)
        except KeyError:  # an id with no vector in SQLite (the signature is a checksum, not a proof)
            return False
        codec = kind.partition("-")[2] or ("pq" if kind == "ivfpq" else "")
        if not codec:
            return bool(np.allclose(decoded, want, atol=1e-5))
        if codec == "fp16":
            return bool(np.allclose(decoded, want, atol=2e-3))
        sims = decoded @ want.T
        own = np.diag(sims)
        return bool((own >= sims.max(axis=1) - 1e-4).all() and (own > 0.5).all())

    def _small_exact(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(ids, vectors) of a small flat store (<= NUMPY_EXACT_MAX) read from SQLite, for a one-shot search
        that need not load the FAISS index; None when not one-shot, when the FAISS index is loaded (a writer's)
        or when the store is not small and flat."""
        if not self.one_shot or self._index is not None or self._stale or self.db.in_transaction:
            return None
        with self.db.snapshot():  # the generation and the vectors of one moment
            generation = self.db.generation
            if self._small is not None and self._small[0] == generation:
                return self._small[1], self._small[2]
            n = self._truth_signature()[0]
            if n > NUMPY_EXACT_MAX or self.kind_for(n) != "flat":
                self._small = None
                return None
            parts = list(self.iter_vectors())
        ids = np.concatenate([i for i, _ in parts]) if parts else np.zeros(0, np.int64)
        vecs = np.concatenate([v for _, v in parts]) if parts else np.zeros((0, self.dim), np.float32)
        self._small = (generation, ids, vecs)
        return ids, vecs

    def iter_vectors(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) batches of every stored vector, by id, read from SQLite (the truth)."""
        cur = self.db.conn.execute("SELECT id, vec FROM vectors ORDER BY id")
        while rows := cur.fetchmany(chunk):
            ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), self.dim)
            yield ids, vecs

    def _sample(self, ids: np.ndarray, size: int) -> np.ndarray:
        """A random sample of ``size`` of the vectors of ``ids`` (all of them when there are fewer) to train on."""
        if size < len(ids):
            ids = np.sort(np.random.default_rng(0).choice(ids, size, replace=False))
        return self._get_present(ids)[1]

    def _disk_meta(self) -> dict:
        """What the saved FAISS file records (generation, kind, dead nodes...); {} when unreadable."""
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return {}

    def _disk_generation(self) -> int | None:
        return self._disk_meta().get("generation")

    def flush(self) -> None:
        """Save the FAISS index (atomically) if it lags behind SQLite; a stale one is rebuilt first. Only the
        index's writer saves (readers never write); a full disk is a DiskFull error that leaves the previous
        file and no temporary one."""
        if not self.db.holds_writer:
            return
        if self._stale:
            self._index, self._stale = None, False
        self._forget_if_behind()
        if self._index is None and self._disk_generation() != self.db.generation:
            self._index = self._load_or_rebuild()
        if not self._dirty or self._index is None:
            return
        self._save()
        self._dirty = False

    def _save(self) -> None:
        ids, _ = _live_ids(self._index)
        engine = getattr(self._index, "engine", "faiss")
        meta = {**self._built, "dim": self.dim, "count": len(ids), "ids": _signature(ids), "engine": engine}
        self._remove_orphans()
        tmps: list[str] = []
        try:
            # Temporary files of this process only (two processes once shared one name and swapped halves).
            faiss_tmp = self._temp_file(tmps, lambda f: write_index(self._index, f))
            meta_tmp = self._temp_file(tmps, lambda f: f.write(json.dumps(meta).encode()))
            # The file first, then the meta that vouches for it: a crash in between leaves a meta that does not
            # match (another generation or digest), so the file is rebuilt, never trusted.
            os.replace(faiss_tmp, self.faiss_path)
            os.replace(meta_tmp, self.meta_path)
            tmps.clear()
        except OSError as e:
            raise os_error(e, f"cannot save the vector index {self.faiss_path} (the index itself is intact)") from e
        finally:
            for t in tmps:
                with suppress(OSError):
                    os.unlink(t)

    def _temp_file(self, tmps: list[str], write) -> str:
        fd, path = tempfile.mkstemp(prefix=f".{FAISS_NAME}.{os.getpid()}.", suffix=".tmp", dir=self.db.dir)
        tmps.append(path)
        with os.fdopen(fd, "wb") as f:
            with suppress(OSError):  # mkstemp makes 0600 files: give it the database's permissions
                os.fchmod(f.fileno(), stat.S_IMODE(os.stat(self.db.path).st_mode))
            write(f)
            f.flush()
            os.fsync(f.fileno())
        return path

    def _remove_orphans(self) -> None:
        """Temporary files left by a writer killed while saving (only a writer saves, and this one is it)."""
        old = [self.db.dir / "vectors.tmp", self.db.dir / (FAISS_NAME + ".tmp")]  # names before per-process files
        for p in [*self.db.dir.glob(f".{FAISS_NAME}.*.tmp"), *old]:
            if p.name.split(".")[3:4] != [str(os.getpid())]:
                with suppress(OSError):
                    p.unlink()

    # -- contract -------------------------------------------------------------------------
    def upsert(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        self.db.hold_writer()
        self._ensure_loaded()
        with self.db.transaction() as c:
            c.executemany(
                "INSERT INTO vectors VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET vec = excluded.vec",
                [(int(i), v.tobytes()) for i, v in zip(ids, vectors, strict=True)],
            )
            gen = self.db.bump_generation()
            self.db.after_commit(lambda: self._apply_upsert(ids, vectors, gen))

    def _follows(self, gen: int) -> bool:
        """Whether the in-memory index saw every change before the one that made generation ``gen``."""
        self._dirty = True
        if self._stale or self._index is None:
            return False  # rebuilt from SQLite before the next search
        if self._built.get("generation") != gen - 1:
            self._index = None  # it missed a change: rebuilt from SQLite before the next search
            return False
        self._built["generation"] = gen
        return True

    def _apply_upsert(self, ids: np.ndarray, vectors: np.ndarray, gen: int) -> None:
        if not self._follows(gen):
            return
        index, built = self._index, self._built
        n_after = self._live() + len(ids)  # an estimate (replaced ids count twice): picks kind and retraining
        trained = built["kind"] == "ivfpq" or built["kind"].endswith("-sq8")
        if self.kind_for(n_after) != built["kind"] or (trained and n_after > RETRAIN_GROWTH * built["trained_on"]):
            self._stale = True  # crossed a size threshold: the right index is built from scratch
            return
        if isinstance(index, HnswlibGraph):  # replaced (or dead) ids are updated in place: no new dead node
            index.add_with_ids(vectors, ids)
            built["dead"] = index.dead
            return
        if built["kind"].startswith("hnsw"):
            self._kill(ids)  # a replaced vector's old node goes dead; the new one is added below
        else:
            index.remove_ids(ids)
        index.add_with_ids(vectors, ids)
        self._check_dead()

    def _live(self) -> int:
        """Vectors the in-memory index returns (its nodes minus the dead HNSW ones)."""
        return self._index.ntotal - self._built.get("dead", 0)

    def _kill(self, ids: np.ndarray) -> None:
        """Relabel the HNSW nodes holding ``ids`` as dead: they keep routing searches but are never returned."""
        if isinstance(self._index, HnswlibGraph):  # hnswlib marks them deleted instead
            self._index.kill(ids)
            self._built["dead"] = self._index.dead
            return
        labels = _labels(self._index)
        pos = np.flatnonzero(np.isin(labels, ids))
        if len(pos):
            labels[pos] = DEAD_LABEL + pos
            self._index.construct_rev_map()  # IndexIDMap2's label -> position map, from the new labels
            self._built["dead"] = self._built.get("dead", 0) + len(pos)

    def _check_dead(self) -> None:
        if self._built.get("dead", 0) > HNSW_MAX_DEAD * max(self._index.ntotal, 1):
            self._stale = True  # mostly dead weight: rebuilt from SQLite before the next search

    def delete(self, ids: Sequence[int] | np.ndarray) -> None:
        ids = as_ids(ids)
        if not len(ids):
            return
        self.db.hold_writer()
        self._ensure_loaded()
        with self.db.transaction() as c:
            c.executemany("DELETE FROM vectors WHERE id = ?", [(int(i),) for i in ids])
            gen = self.db.bump_generation()
            self.db.after_commit(lambda: self._apply_delete(ids, gen))

    def _apply_delete(self, ids: np.ndarray, gen: int) -> None:
        if not self._follows(gen):
            return
        kind = self._built["kind"]
        if self.kind_for(self._live() - len(ids)) != kind:
            self._stale = True
        elif kind.startswith("hnsw"):
            self._kill(ids)
            self._check_dead()
        else:
            self._index.remove_ids(ids)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        small = self._small_exact()
        if small is not None:
            ids, vecs = small
            if allowed is not None:
                keep = np.isin(ids, as_ids(allowed))
                ids, vecs = ids[keep], vecs[keep]
            return _exact_top_k(queries, ids, vecs, k)
        index = self.index
        live = self._live()
        n = live if allowed is None else min(live, len(allowed))
        kk = min(k, n)
        if kk <= 0:
            return empty_results(len(queries), k)
        kind = self._built["kind"]
        if allowed is not None:
            allowed = as_ids(allowed)
            if kind != "flat" and len(allowed) <= EXACT_FILTER_MAX:
                return self._exact_among(queries, allowed, k)
        codec = kind.partition("-")[2] or ("pq" if kind == "ivfpq" else "")
        factor, minimum = SHORTLIST.get("ivfpq" if kind == "ivfpq" else codec, (1, 0))
        fetch = min(live, max(kk, self.shortlist or max(factor * kk, minimum)))
        if kind == "ivfpq":
            scores, ids = self._search_ivf(index, queries, fetch, kk, allowed)
        else:
            scores, ids = self._search_idmap(index, queries, fetch, kk, allowed)
            if kind.startswith("hnsw") and (ids[:, kk - 1] < 0).any():  # rows are padded with -1 at the end
                if allowed is not None:
                    return self._exact_among(queries, allowed, k)  # the graph found too few matches: be exact
                scores, ids = self._search_idmap(index, queries, fetch, kk, None, ef=index.ntotal)  # dead nodes
        if codec:
            return self._rerank(queries, ids, k)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return pad_results(scores, ids.astype(np.int64), k)

    def _search_idmap(self, index, queries: np.ndarray, fetch: int, kk: int, allowed: np.ndarray | None,
                      ef: int | None = None):  # fmt: skip
        ef = ef or max(self.ef_search or max(HNSW_EF_SEARCH, 4 * kk), fetch)
        if isinstance(index, HnswlibGraph):
            return index.search(queries, fetch, ef, allowed)
        faiss = _faiss()
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSW):  # IndexIDMap does not pass HNSW parameters through: set them here
            inner.hnsw.efSearch = ef
        sel = _selector(allowed)  # allowed ids are real ids, never dead labels
        if sel is None and self._built.get("dead"):
            sel = faiss.IDSelectorRange(0, DEAD_LABEL)
        params = None if sel is None else faiss.SearchParameters(sel=sel)
        with _threads_for(len(queries)):
            return index.search(queries, fetch, params=params)

    def _search_ivf(self, index, queries: np.ndarray, fetch: int, kk: int, allowed: np.ndarray | None):
        """IVF-PQ search; with a filter, rows that found fewer than ``kk`` matches are searched again
        with twice the lists until they have them or every list was scanned (then all matches were seen)."""
        faiss = _faiss()
        nprobe = min(index.nlist, self.nprobe or ivfpq_params(self._built["trained_on"], self.dim).nprobe)
        sel = _selector(allowed)
        with _threads_for(len(queries)):
            scores, ids = index.search(queries, fetch, params=faiss.SearchParametersIVF(sel=sel, nprobe=nprobe))
        while sel is not None and nprobe < index.nlist:
            short = np.flatnonzero((ids >= 0).sum(axis=1) < kk)
            if not len(short):
                break
            nprobe = min(index.nlist, 2 * nprobe)
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
            scores[short], ids[short] = index.search(queries[short], fetch, params=params)
        return scores, ids

    def _rerank(self, queries: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores for each row's candidates (from the float32 vectors in SQLite), best ``k`` first."""
        present, vecs = self._get_present(np.unique(cand[cand >= 0]))
        out_s = np.full((len(queries), k), -np.inf, np.float32)
        out_i = np.full((len(queries), k), -1, np.int64)
        if not len(present):
            return out_s, out_i
        pos = np.clip(np.searchsorted(present, cand), 0, len(present) - 1)
        valid = (cand >= 0) & (present[pos] == cand)
        for row, q in enumerate(queries):
            p = pos[row][valid[row]]
            sims = vecs[p] @ q
            top = np.argsort(-sims, kind="stable")[:k]
            out_s[row, : len(top)], out_i[row, : len(top)] = sims[top], present[p[top]]
        return out_s, out_i

    def _exact_among(self, queries: np.ndarray, allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        present, vecs = self._get_present(allowed)
        return _exact_top_k(queries, present, vecs, k)

    def _get_present(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids that have vectors, sorted; their vectors), unknown ids skipped."""
        found = self._fetch(ids)
        present = np.array(sorted(found), np.int64)
        vecs = np.frombuffer(b"".join(found[int(i)] for i in present), np.float32).reshape(len(present), self.dim)
        return present, vecs

    def _fetch(self, ids: np.ndarray) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for start in range(0, len(ids), 900):
            chunk = [int(i) for i in ids[start : start + 900]]
            marks = ",".join("?" * len(chunk))
            found.update(self.db.conn.execute(f"SELECT id, vec FROM vectors WHERE id IN ({marks})", chunk).fetchall())
        return found

    def get(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = as_ids(ids)
        found = self._fetch(ids)
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            raise KeyError(f"no vectors for ids {missing[:10]}")
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        return np.frombuffer(b"".join(found[int(i)] for i in ids), np.float32).reshape(len(ids), self.dim).copy()

    def count(self) -> int:
        return self._truth_signature()[0]  # kept by triggers: no scan of the vectors

    def ids(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self.db.conn.execute("SELECT id FROM vectors ORDER BY id")), np.int64)

    def info(self) -> dict:
        kind = self.kind
        engine = self._engine(kind)
        backend = f"local (SQLite + {'FAISS' if engine == 'faiss' else engine} {kind})"
        out: dict[str, Any] = {"backend": backend, "ann": self.ann, "count": self.count(), "dim": self.dim}
        if kind.startswith("hnsw"):
            m, efc = (HNSWLIB_M, HNSWLIB_EF_CONSTRUCTION) if engine == "hnswlib" else (HNSW_M, HNSW_EF_CONSTRUCTION)
            out["params"] = {"engine": engine, "M": m, "efConstruction": efc, "efSearch": self.ef_search or
                             f"max({HNSW_EF_SEARCH}, 4k)"}  # fmt: skip
            if self._index is not None and not self._stale:
                out["dead_nodes"] = self._built.get("dead", 0)  # deleted / replaced, until the graph is rebuilt
            elif (meta := self._disk_meta()).get("generation") == self.db.generation and "dead" in meta:
                out["dead_nodes"] = int(meta["dead"])  # not loaded: what the saved graph recorded, being current
        elif kind == "ivfpq":
            fresh = self._index is not None and not self._stale
            p = ivfpq_params(self._built["trained_on"] if fresh else out["count"], self.dim)
            out["params"] = {**asdict(p), "nprobe": self.nprobe or p.nprobe}
        return out

    def clear(self) -> None:
        """Drop every vector (used when an index is rebuilt with another model)."""
        self.db.hold_writer()
        with self.db.transaction() as c:
            c.execute("DELETE FROM vectors")
            gen = self.db.bump_generation()
            self.db.after_commit(lambda: self._reset(gen))

    def _reset(self, gen: int) -> None:
        self._index = self._new_index(self.kind_for(0), 0)
        self._built = {"kind": self.kind_for(0), "trained_on": 0, "dead": 0, "generation": gen}
        self._stale = False
        self._dirty = True


def _exact_top_k(queries: np.ndarray, ids: np.ndarray, vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of ``ids`` for each query by inner product with their ``vecs``, padded to ``k``."""
    if not len(ids):
        return empty_results(len(queries), k)
    sims = queries @ vecs.T
    kk = min(k, len(ids))
    top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    order = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)
    return pad_results(np.take_along_axis(sims, order, axis=1).astype(np.float32), ids[order], k)


def _labels(index) -> np.ndarray:
    """A writable view of an IndexIDMap's labels (position -> id)."""
    if index.id_map.size() == 0:
        return np.zeros(0, np.int64)
    return _faiss().rev_swig_ptr(index.id_map.data(), index.id_map.size())


def _count_dead(index) -> int:
    if isinstance(index, HnswlibGraph):
        return index.dead
    return int((_labels(index) >= DEAD_LABEL).sum()) if hasattr(index, "id_map") else 0


def _signature(ids: np.ndarray) -> tuple[int, int, int]:
    """A checksum of an id set, the one SQLite keeps by triggers (db.vector_set): count, sum of id mod
    1000000007, sum of (id mod 65521)^2, with SQLite's remainder (the sign of the id)."""
    ids = np.asarray(ids, np.int64)
    r = np.fmod(ids, 65521)
    return len(ids), int(np.fmod(ids, 1000000007).sum()), int((r * r).sum())


def _live_ids(index) -> tuple[np.ndarray, dict | None]:
    """(sorted ids the index returns, None) for an IndexIDMap; for an IVF index also {id: (list, offset)}."""
    if isinstance(index, HnswlibGraph):
        return index.live_ids(), None
    if hasattr(index, "id_map"):
        labels = _labels(index)
        return np.sort(labels[labels < DEAD_LABEL]), None
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index)
    parts: list[np.ndarray] = []
    where: dict[int, tuple[int, int]] = {}  # id -> (inverted list, offset in it)
    for lst in range(ivf.nlist):
        size = ivf.invlists.list_size(lst)
        if size:
            ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), size).copy()
            parts.append(ids)
            where.update((int(i), (lst, off)) for off, i in enumerate(ids))
    return (np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)), where


def _reconstruct(index, ids: np.ndarray, where: dict | None) -> np.ndarray:
    """The vectors the index keeps for ``ids`` (decoded, for the compressed kinds)."""
    if where is None:
        return np.stack([index.reconstruct(int(i)) for i in ids])
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index)
    out = np.empty((len(ids), ivf.d), np.float32)
    for row, i in enumerate(ids):
        ivf.reconstruct_from_offset(*where[int(i)], faiss.swig_ptr(out[row]))
    return out


@contextmanager
def _threads_for(queries: int):
    """One OpenMP thread for a single query. FAISS starts its thread team for every call (IndexIDMap's
    id translation), which on a busy machine costs more than the search: at load 11 on 2 cores an
    HNSW query of 50k vectors took 23 ms with 2 threads, 2.3 ms with one. The setting is per thread."""
    if queries > 1:
        yield
        return
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _selector(allowed: np.ndarray | None):
    """A FAISS id selector for ``allowed``: a bitmap when the ids are dense enough (one bit per id up
    to the largest; a set of 500k ids takes ~1 ms instead of ~20 ms to build), else a hash set."""
    if allowed is None:
        return None
    faiss = _faiss()
    top = int(allowed.max()) + 1 if len(allowed) else 0
    if len(allowed) and allowed.min() >= 0 and top <= 64 * len(allowed):
        mask = np.zeros(top, bool)
        mask[allowed] = True
        bits = np.packbits(mask, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))  # n counts bytes
        sel.referenced_bits = bits  # the selector reads this buffer: keep it alive as long as the selector
        return sel
    return faiss.IDSelectorBatch(allowed)
