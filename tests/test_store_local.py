import json

import numpy as np
import pytest

from visdex.errors import StoreError
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
