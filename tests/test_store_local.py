import json

import numpy as np
import pytest

from visdex.errors import StoreError
from visdex.models.base import l2_normalize
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
    store.upsert(np.arange(3000), vecs)
    store.delete([5, 6])
    store.upsert([7], vecs[100:101])  # 7 now holds 100's vector
    _, got = store.search(vecs[5:6], 5)
    assert 5 not in got[0] and 6 not in got[0]
    _, got = store.search(vecs[100:101], 2)
    assert set(got[0]) == {7, 100}
    store.flush()
    again = LocalVectorStore(IndexDB(tmp_path / "h"), 32)  # the ann kind is remembered
    assert again.ann == "hnsw" and again.index.ntotal == 2998
    np.testing.assert_allclose(again.get([7])[0], vecs[100], atol=1e-6)
    _, got = again.search(vecs[100:101], 2)
    assert set(got[0]) == {7, 100}


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
