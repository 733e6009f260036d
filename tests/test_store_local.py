import json

import numpy as np
import pytest

from visdex.errors import BadQuery, StoreError
from visdex.models.base import l2_normalize
from visdex.store import local
from visdex.store.db import SCHEMA_VERSION, IndexDB
from visdex.store.local import FAISS_NAME, LocalVectorStore

from store_contract import StoreContract, rand_vecs


class TestLocalStoreContract(StoreContract):
    def make_store(self, tmp_path, dim):
        return LocalVectorStore(IndexDB(tmp_path / "ix"), dim)


def test_faiss_file_is_derived_and_rebuilt_when_stale(tmp_path):
    db = IndexDB(tmp_path / "ix")
    store = LocalVectorStore(db, 8)
    vecs = rand_vecs(30, 8)
    store.upsert(np.arange(30), vecs)
    store.flush()
    assert (tmp_path / "ix" / FAISS_NAME).exists()
    # a later write that never reached the FAISS file (crash before flush): generation moves on
    store.upsert([100], rand_vecs(1, 8, seed=5))
    db.close()
    db2 = IndexDB(tmp_path / "ix")
    store2 = LocalVectorStore(db2, 8)
    assert store2.index.ntotal == 31  # rebuilt from SQLite, not the stale file
    _, got = store2.search(rand_vecs(1, 8, seed=5), 1)
    assert got[0][0] == 100


def test_missing_or_corrupt_faiss_file_is_rebuilt(tmp_path):
    db = IndexDB(tmp_path / "ix")
    store = LocalVectorStore(db, 8)
    vecs = rand_vecs(10, 8)
    store.upsert(np.arange(10), vecs)
    store.flush()
    (tmp_path / "ix" / FAISS_NAME).write_bytes(b"garbage")
    store2 = LocalVectorStore(IndexDB(tmp_path / "ix"), 8)
    _, got = store2.search(vecs[4:5], 1)
    assert got[0][0] == 4


def test_rolled_back_write_never_reaches_faiss(tmp_path):
    db = IndexDB(tmp_path / "ix")
    store = LocalVectorStore(db, 8)
    store.upsert(np.arange(5), rand_vecs(5, 8))
    assert store.index.ntotal == 5
    with pytest.raises(RuntimeError), db.transaction():
        store.upsert([50], rand_vecs(1, 8, seed=9))
        raise RuntimeError("crash mid-batch")
    assert store.count() == 5 and store.index.ntotal == 5


def test_newer_schema_is_refused(tmp_path):
    db = IndexDB(tmp_path / "ix")
    db.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        IndexDB(tmp_path / "ix")


def test_faiss_meta_records_generation(tmp_path):
    db = IndexDB(tmp_path / "ix")
    store = LocalVectorStore(db, 4)
    store.upsert([1, 2], rand_vecs(2, 4))
    store.flush()
    meta = json.loads((tmp_path / "ix" / (FAISS_NAME + ".json")).read_text())
    assert meta["generation"] == db.generation and meta["dim"] == 4


class TestHNSWStoreContract(StoreContract):
    def make_store(self, tmp_path, dim):
        return LocalVectorStore(IndexDB(tmp_path / "ix"), dim, ann="hnsw")


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim))
    return l2_normalize(centres[rng.integers(0, 64, n)] + 0.35 * rng.standard_normal((n, dim)))


def test_hnsw_recall_against_exact(tmp_path):
    vecs, ids = _clustered(20_000, 64), np.arange(20_000)
    hnsw = LocalVectorStore(IndexDB(tmp_path / "h"), 64, ann="hnsw")
    flat = LocalVectorStore(IndexDB(tmp_path / "f"), 64, ann="flat")
    for s in (hnsw, flat):
        s.upsert(ids, vecs)
    q = _clustered(200, 64, seed=7)
    _, got = hnsw.search(q, 10)
    _, want = flat.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want, strict=True)])
    assert recall >= 0.95, recall
    assert hnsw.info()["backend"].endswith("hnsw)")


def test_hnsw_deletes_and_replacements_are_consistent_after_reopen(tmp_path):
    vecs = _clustered(3000, 32)
    store = LocalVectorStore(IndexDB(tmp_path / "h"), 32, ann="hnsw")
    store.hnsw_engine = "faiss"  # FAISS's dead nodes; hnswlib's: tests/test_store_hnsw.py
    store.upsert(np.arange(3000), vecs)
    graph = store.index
    store.delete([5, 6])
    store.upsert([7], vecs[100:101])  # 7 now holds 100's vector
    _, got = store.search(vecs[5:8], 5)
    assert not np.isin(got, [5, 6]).any()
    _, got = store.search(vecs[100:101], 2)
    assert set(got[0]) == {7, 100}
    # no rebuild: the old nodes of 5, 6 and 7 are dead (they still route searches, never returned)
    assert store.index is graph and graph.ntotal == 3001 and store.info()["dead_nodes"] == 3
    _, got = store.search(vecs, 1)
    assert (got[:, 0] >= 0).all() and not np.isin(got, [5, 6]).any() and got.max() < 3000
    store.flush()
    again = LocalVectorStore(IndexDB(tmp_path / "h"), 32)  # the ann kind is remembered
    again.hnsw_engine = "faiss"
    assert again.ann == "hnsw" and again.index.ntotal == 3001 and again.info()["dead_nodes"] == 3
    np.testing.assert_allclose(again.get([7])[0], vecs[100], atol=1e-6)
    _, got = again.search(vecs[100:101], 2)
    assert set(got[0]) == {7, 100}
    _, got = again.search(vecs[7:8], 1)  # 7's old vector is gone: its nearest is something else
    assert got[0][0] != 7


def test_hnsw_rebuilds_once_a_quarter_of_the_graph_is_dead(tmp_path):
    vecs = _clustered(2000, 32)
    store = LocalVectorStore(IndexDB(tmp_path / "h"), 32, ann="hnsw")
    store.upsert(np.arange(2000), vecs)
    graph = store.index
    store.delete(np.arange(0, 400))  # 20% dead: searched around
    assert store.index is graph and store.info()["dead_nodes"] == 400
    scores, got = store.search(vecs[:50], 10)
    assert (got >= 400).all() and (got < 2000).all()
    np.testing.assert_allclose(scores[:, 0], np.max(vecs[:50] @ vecs[400:].T, axis=1), atol=1e-5)
    store.delete(np.arange(400, 600))  # 30%: rebuilt from SQLite before the next search
    assert store.index is not graph and store.index.ntotal == 1400 and store.info()["dead_nodes"] == 0
    _, got = store.search(vecs[:5], 10)
    assert (got >= 600).all()
    # a k that needs nearly every live node is still answered in full around the dead ones
    small = LocalVectorStore(IndexDB(tmp_path / "s"), 32, ann="hnsw")
    small.upsert(np.arange(100), vecs[:100])
    small.delete(np.arange(0, 100, 5))
    _, got = small.search(vecs[:2], 80)
    assert (got >= 0).all() and not np.isin(got, np.arange(0, 100, 5)).any() and len(set(got[0])) == 80


def test_hnsw_filter_exact_for_small_sets_and_k_matches_for_large(tmp_path):
    vecs = _clustered(30_000, 32)
    store = LocalVectorStore(IndexDB(tmp_path / "h"), 32, ann="hnsw")
    store.upsert(np.arange(30_000), vecs)
    q = vecs[123]
    small = np.arange(0, 30_000, 1000)
    _, got = store.search(q[None], 5, allowed=small)
    assert list(got[0]) == list(small[np.argsort(-(vecs[small] @ q))[:5]])
    large = np.unique(np.concatenate([np.arange(1, 30_000, 2), np.arange(0, 30_000, 4)]))  # > EXACT_FILTER_MAX
    _, got = store.search(q[None], 10, allowed=large)
    assert (got[0] >= 0).sum() == 10 and set(got[0]) <= set(large.tolist())


# -- compressed and IVF-PQ kinds (issue 6) ------------------------------------------------------


class TestHNSWSQ8StoreContract(StoreContract):
    def make_store(self, tmp_path, dim):
        return LocalVectorStore(IndexDB(tmp_path / "ix"), dim, ann="hnsw-sq8")


class TestFlatFP16StoreContract(StoreContract):
    def make_store(self, tmp_path, dim):
        return LocalVectorStore(IndexDB(tmp_path / "ix"), dim, ann="flat-fp16")


class TestIVFPQStoreContract(StoreContract):
    """IVF-PQ from 300 vectors on (IVFPQ_MIN lowered), so the contract runs through the real index."""

    @pytest.fixture(autouse=True)
    def _small_ivfpq(self, monkeypatch):
        monkeypatch.setattr(local, "IVFPQ_MIN", 100)

    def make_store(self, tmp_path, dim):
        store = LocalVectorStore(IndexDB(tmp_path / "ix"), dim, ann="ivfpq")
        store.nprobe = 1 << 20  # every list: the contract wants exact answers (recall is tested below)
        return store

    def test_is_ivfpq(self, store):
        store.upsert(np.arange(300), rand_vecs(300, self.dim))
        assert store.search(rand_vecs(1, self.dim), 3)[1].shape == (1, 3) and store.kind == "ivfpq"


def _embedding_like(n: int, dim: int, seed: int = 0, clusters: int = 64) -> np.ndarray:
    """Clusters whose spread decays over the dimensions (low intrinsic dimension, like image embeddings)."""
    rng = np.random.default_rng(12345)
    scales = (1.0 + np.arange(dim)) ** -0.5
    centres = rng.standard_normal((clusters, dim)) * scales
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    r = np.random.default_rng(seed)
    noise = r.standard_normal((n, dim)) * scales * 0.7 / np.sqrt((scales**2).sum())
    return l2_normalize(centres[r.integers(0, clusters, n)] + noise)


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, want, strict=True)]))


@pytest.fixture(scope="module")
def embeddings():
    return _embedding_like(6_000, 64), _embedding_like(200, 64, seed=9)


@pytest.fixture(scope="module")
def small_thresholds():
    """IVF-PQ from 1,000 vectors and exact filtering only up to 1,000 allowed ids: the real code paths
    of a large store, on a set small enough for fast tests."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(local, "IVFPQ_MIN", 1_000)
        mp.setattr(local, "EXACT_FILTER_MAX", 1_000)
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory, embeddings, small_thresholds):
    """One store per ANN kind over ``embeddings``, built once for the read-only tests."""
    stores = {}

    def get(ann: str) -> LocalVectorStore:
        if ann not in stores:
            vecs, _ = embeddings
            stores[ann] = LocalVectorStore(IndexDB(tmp_path_factory.mktemp(ann)), 64, ann=ann)
            stores[ann].upsert(np.arange(len(vecs)), vecs)
        return stores[ann]

    return get


@pytest.mark.parametrize("ann", ["ivfpq", "hnsw-sq8", "hnsw-fp16", "flat-sq8"])
def test_compressed_kinds_recall_and_exact_scores(built, embeddings, ann):
    vecs, q = embeddings
    store = built(ann)
    scores, got = store.search(q, 10)
    sims = q @ vecs.T
    want = np.argsort(-sims, axis=1)[:, :10]
    assert store.kind == ann and _recall(got, want) >= 0.95
    # the shortlist is re-ranked with the float32 vectors: scores are exact cosines, best first
    np.testing.assert_allclose(scores, np.take_along_axis(sims, got, axis=1), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_ivfpq_parameters_by_size(built, embeddings):
    p = local.ivfpq_params(1_000_000, 512)
    assert (p.nlist, p.m, p.nbits) == (2048, 64, 8) and 40 * p.nlist <= p.train_size <= 1_000_000
    assert local.ivfpq_params(100_000, 768).m == 96 and local.ivfpq_params(10_000, 512).nlist == 256
    store = built("ivfpq")
    info = store.info()
    assert info["backend"].endswith("ivfpq)") and info["params"]["nlist"] == local.ivfpq_params(6_000, 64).nlist
    assert store.index.nlist == info["params"]["nlist"]
    assert store.index.pq.M == 16  # 64-d: 16 bytes a vector (dim / 8, at least 16)


def test_ivfpq_below_its_minimum_is_exact(tmp_path):
    vecs = rand_vecs(500, 16)
    store = LocalVectorStore(IndexDB(tmp_path / "ix"), 16, ann="ivfpq")
    store.upsert(np.arange(500), vecs)
    assert store.kind == "flat"
    _, got = store.search(vecs[:3], 1)
    assert list(got[:, 0]) == [0, 1, 2]


@pytest.mark.parametrize("ann", ["hnsw", "ivfpq", "hnsw-sq8"])
def test_filter_through_the_index_returns_exactly_k(built, embeddings, ann):
    vecs, q = embeddings
    store = built(ann)
    ids = np.arange(len(vecs))
    allowed = ids[ids % 10 != 0]  # > EXACT_FILTER_MAX: searched through the index with an id selector
    assert len(allowed) > local.EXACT_FILTER_MAX
    _, got = store.search(q[:50], 10, allowed=allowed)
    assert ((got >= 0).sum(axis=1) == 10).all() and np.isin(got, allowed).all()
    want = allowed[np.argsort(-(q[:50] @ vecs[allowed].T), axis=1)[:, :10]]
    assert _recall(got, want) >= 0.95


def test_ivfpq_filter_widens_the_probe_until_k_matches(built, embeddings):
    vecs, _ = embeddings
    store = built("ivfpq")
    q = vecs[:1]
    _, (first_list,) = store.index.quantizer.search(q, 1)
    in_first = faiss_list_ids(store.index, int(first_list[0]))
    allowed = np.setdiff1d(np.arange(len(vecs)), in_first)  # nothing allowed in the one list probed first
    assert len(allowed) > local.EXACT_FILTER_MAX and len(in_first) > 0
    store.nprobe = 1
    try:
        _, got = store.search(q, 10, allowed=allowed)
    finally:
        store.nprobe = None
    assert (got >= 0).sum() == 10 and np.isin(got, allowed).all()


def faiss_list_ids(index, list_no: int) -> np.ndarray:
    import faiss

    n = index.invlists.list_size(list_no)
    return faiss.rev_swig_ptr(index.invlists.get_ids(list_no), n).copy()


@pytest.mark.parametrize("ann", ["ivfpq", "hnsw-sq8", "flat-fp16"])
def test_deletes_and_replacements_are_consistent(tmp_path, embeddings, small_thresholds, ann):
    vecs = embeddings[0][:3_000]
    store = LocalVectorStore(IndexDB(tmp_path / "ix"), 64, ann=ann)
    store.upsert(np.arange(len(vecs)), vecs)
    assert store.kind == ann
    store.delete([5, 6])
    store.upsert([7], vecs[100:101])  # 7 now holds 100's vector
    _, got = store.search(vecs[5:7], 5)
    assert not np.isin(got, [5, 6]).any()
    _, got = store.search(vecs[100:101], 2)
    assert set(got[0]) == {7, 100}
    store.flush()
    again = LocalVectorStore(IndexDB(tmp_path / "ix"), 64)
    assert again.ann == ann and again.index.ntotal - again.info().get("dead_nodes", 0) == len(vecs) - 2
    _, got = again.search(vecs[100:101], 2)
    assert set(got[0]) == {7, 100}
    _, got = again.search(vecs[7:8], 1)  # 7's old vector is gone: its nearest is something else
    assert got[0][0] != 7


def test_auto_switches_to_hnsw_when_the_store_grows(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "AUTO_HNSW_FROM", 500)
    vecs = rand_vecs(800, 16)
    store = LocalVectorStore(IndexDB(tmp_path / "ix"), 16)
    store.hnsw_engine = "faiss"  # the FAISS graph is looked at below
    store.upsert(np.arange(400), vecs[:400])
    assert store.search(vecs[:1], 1)[1][0][0] == 0 and store.kind == "flat"
    store.upsert(np.arange(400, 800), vecs[400:])  # crosses the threshold in a running process
    assert store.search(vecs[700:701], 1)[1][0][0] == 700
    assert store.kind == "hnsw" and "HNSW" in type(faiss_inner(store.index)).__name__
    store.flush()
    again = LocalVectorStore(IndexDB(tmp_path / "ix"), 16)
    again.hnsw_engine = "faiss"
    assert again.kind == "hnsw" and "HNSW" in type(faiss_inner(again.index)).__name__


def faiss_inner(index):
    import faiss

    return faiss.downcast_index(index.index)


def test_trained_kinds_retrain_when_the_store_has_doubled(tmp_path, embeddings, small_thresholds):
    vecs, q = embeddings
    store = LocalVectorStore(IndexDB(tmp_path / "ix"), 64, ann="ivfpq")
    store.upsert(np.arange(1_500), vecs[:1_500])
    store.search(q[:1], 1)
    assert store.index.nlist == local.ivfpq_params(1_500, 64).nlist
    store.upsert(np.arange(1_500, 4_000), vecs[1_500:4_000])  # > twice the training-time count
    _, got = store.search(q, 10)
    assert store.index.nlist == local.ivfpq_params(4_000, 64).nlist == store.info()["params"]["nlist"]
    assert _recall(got, np.argsort(-(q @ vecs[:4_000].T), axis=1)[:, :10]) >= 0.95


def test_ann_kinds_and_unknown_kind(tmp_path):
    assert {"auto", "flat", "hnsw", "ivfpq", "hnsw-sq8", "hnsw-fp16", "flat-sq8", "auto-fp16"} <= set(local.ANN_KINDS)
    assert local.parse_ann("hnsw-sq8") == ("hnsw", "sq8") and local.parse_ann("flat") == ("flat", "fp32")
    with pytest.raises(BadQuery, match="ivfpq"):
        LocalVectorStore(IndexDB(tmp_path / "ix"), 8, ann="ivfpq-sq8")


@pytest.mark.parametrize("allowed", [[3, 5, 100, 7], [2, 10**12]])  # dense ids: a bitmap; sparse: a hash set
def test_id_selector_membership(allowed):
    sel = local._selector(np.array(allowed, np.int64))
    probe = [0, 2, 3, 4, 5, 7, 8, 100, 101, 5000, 10**12, 10**12 + 1]
    assert [i for i in probe if sel.is_member(i)] == sorted(allowed)


# -- crash safety: the derived FAISS file is checked against SQLite, saved only by the writer ---------
def test_saved_faiss_that_disagrees_with_sqlite_is_rebuilt(tmp_path):
    """Same generation and count, other vectors (a file saved from another process's state): not trusted."""
    store = LocalVectorStore(IndexDB(tmp_path / "ix"), 8)
    vecs = rand_vecs(20, 8)
    store.upsert(np.arange(20), vecs)
    store.flush()
    store.db.conn.execute("UPDATE vectors SET vec = ? WHERE id = 3", (vecs[17].tobytes(),))  # behind FAISS's back
    store.db.conn.execute("UPDATE vectors SET vec = ? WHERE id = 17", (vecs[3].tobytes(),))
    again = LocalVectorStore(IndexDB(tmp_path / "ix"), 8)
    scores, got = again.search(vecs[3:4], 1)
    assert got[0][0] == 17 and scores[0][0] == pytest.approx(1.0, abs=1e-5)


def test_a_writer_that_missed_another_writers_change_never_saves_it_as_current(tmp_path):
    """Two store objects on one index (as two processes were): the first one's in-memory index never saw the
    second one's replacement, so it must not be saved under the new generation."""
    vecs = rand_vecs(12, 8)
    first = LocalVectorStore(IndexDB(tmp_path / "ix"), 8)
    first.upsert(np.arange(10), vecs[:10])
    second = LocalVectorStore(IndexDB(tmp_path / "ix"), 8)
    second.upsert([5], vecs[11:12])  # 5 now holds another vector; the count is unchanged
    first.upsert([0], vecs[:1])
    first.flush()
    again = LocalVectorStore(IndexDB(tmp_path / "ix"), 8)
    scores, got = again.search(vecs[11:12], 1)
    assert got[0][0] == 5 and scores[0][0] == pytest.approx(1.0, abs=1e-5)


def test_saves_use_temporary_files_of_their_own_and_leave_none(tmp_path):
    store = LocalVectorStore(IndexDB(tmp_path / "ix"), 8)
    store.upsert(np.arange(5), rand_vecs(5, 8))
    orphans = [tmp_path / "ix" / ".vectors.faiss.999999.abc.tmp", tmp_path / "ix" / "vectors.tmp"]
    for p in orphans:  # left by writers killed while saving
        p.write_bytes(b"half a file")
    store.flush()
    names = sorted(p.name for p in (tmp_path / "ix").iterdir())
    assert names == ["index.db", "index.db-shm", "index.db-wal", "index.lock", FAISS_NAME, FAISS_NAME + ".json"]
    meta = json.loads((tmp_path / "ix" / (FAISS_NAME + ".json")).read_text())
    assert meta["count"] == 5 and meta["ids"] == [5, 10, 30]  # the id set's checksum, compared with SQLite's


def test_a_reader_never_writes_even_when_the_faiss_file_is_stale(tmp_path):
    writer = LocalVectorStore(IndexDB(tmp_path / "ix"), 8)
    writer.upsert(np.arange(5), rand_vecs(5, 8))
    writer.db.close()
    (tmp_path / "ix" / FAISS_NAME).unlink(missing_ok=True)  # killed before it saved
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ix").iterdir()}
    reader = LocalVectorStore(IndexDB(tmp_path / "ix"), 8)
    assert reader.search(rand_vecs(1, 8), 2)[1].shape == (1, 2)
    reader.close()
    reader.db.close()
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ix").iterdir()}
    assert after == before and not reader.db.holds_writer


def test_writer_lock_one_process_at_a_time(tmp_path):
    import os
    import subprocess
    import sys

    def other_process_takes_it() -> subprocess.CompletedProcess:
        code = (f"from visdex.store.db import IndexDB\nIndexDB({str(tmp_path / 'ix')!r}).hold_writer()\n"
                "print('took it')")  # fmt: skip
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    db, same = IndexDB(tmp_path / "ix"), IndexDB(tmp_path / "ix")
    db.hold_writer()
    same.hold_writer()  # the same process: shared (its stores notice each other's writes by the generation)
    other = other_process_takes_it()
    busy = f"IndexBusy: index busy: another visdex process (pid {os.getpid()})"
    assert other.returncode == 1 and busy in other.stderr
    db.close()
    assert other_process_takes_it().returncode == 1  # still held by ``same``
    same.close()
    assert other_process_takes_it().stdout.strip() == "took it"


def test_the_id_checksum_kept_by_triggers_matches_the_ids(tmp_path):
    from visdex.store.local import _signature

    store = LocalVectorStore(IndexDB(tmp_path / "ix"), 4)
    store.upsert([3, -7, 2**40, 65521 * 3 + 5], rand_vecs(4, 4))
    store.upsert([3], rand_vecs(1, 4, seed=2))  # replaced: the set is unchanged
    store.delete([-7, 999])
    assert store.db.vector_set() == _signature(store.ids()) == _signature(np.array([3, 2**40, 65521 * 3 + 5]))
    store.clear()
    assert store.db.vector_set() == (0, 0, 0)


def test_an_index_of_schema_3_gets_the_checksum_of_its_vectors(tmp_path):
    import sqlite3

    from visdex.store import db as dbmod
    from visdex.store.local import _signature

    db = IndexDB(tmp_path / "ix")
    LocalVectorStore(db, 4).upsert([1, 5, 9], rand_vecs(3, 4))
    db.close()
    conn = sqlite3.connect(tmp_path / "ix" / dbmod.DB_NAME)
    conn.executescript("DROP TRIGGER vector_set_insert; DROP TRIGGER vector_set_delete; DROP TABLE vector_set; "
                       "PRAGMA user_version = 3;")  # fmt: skip
    conn.close()
    again = IndexDB(tmp_path / "ix")
    assert again.schema_version == SCHEMA_VERSION and again.vector_set() == _signature(np.array([1, 5, 9]))
