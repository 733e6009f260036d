"""A one-shot reader (the CLI's `visdex search`) searches a small flat store straight from SQLite with numpy:
the same hits as the FAISS index, no FAISS import, and it sees what a writer committed since."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from visdex.store import local
from visdex.store.db import IndexDB
from visdex.store.local import FAISS_NAME, LocalVectorStore

from clihelp import SRC
from store_contract import rand_vecs


def _reader(path, one_shot=True):
    store = LocalVectorStore(IndexDB(path, create=False), 16)
    store.one_shot = one_shot
    return store


@pytest.mark.parametrize("allowed", [None, np.arange(0, 200, 3)])
def test_one_shot_search_equals_faiss(tmp_path, allowed):
    writer = LocalVectorStore(IndexDB(tmp_path / "ix"), 16)
    writer.upsert(np.arange(200), rand_vecs(200, 16))
    writer.flush()
    queries = rand_vecs(4, 16, seed=3)
    faiss_s, faiss_i = _reader(tmp_path / "ix", one_shot=False).search(queries, 10, allowed=allowed)
    quick = _reader(tmp_path / "ix")
    got_s, got_i = quick.search(queries, 10, allowed=allowed)
    assert quick._index is None  # the FAISS file was never loaded
    np.testing.assert_array_equal(got_i, faiss_i)
    np.testing.assert_allclose(got_s, faiss_s, atol=1e-6)


def test_one_shot_reader_sees_new_commits_and_ignores_a_bad_faiss_file(tmp_path):
    writer = LocalVectorStore(IndexDB(tmp_path / "ix"), 16)
    writer.upsert(np.arange(20), rand_vecs(20, 16))
    writer.flush()
    (tmp_path / "ix" / FAISS_NAME).write_bytes(b"garbage")  # derived data: the truth is SQLite's
    reader = _reader(tmp_path / "ix")
    new = rand_vecs(1, 16, seed=77)
    assert reader.search(new, 1)[1][0][0] != 500
    writer.upsert([500], new)  # committed by another store object (another process, for the reader)
    assert reader.search(new, 1)[1][0][0] == 500
    assert (tmp_path / "ix" / FAISS_NAME).read_bytes() == b"garbage"  # a reader never writes


def test_large_or_quantised_stores_use_faiss(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "NUMPY_EXACT_MAX", 10)
    writer = LocalVectorStore(IndexDB(tmp_path / "ix"), 16)
    writer.upsert(np.arange(30), rand_vecs(30, 16))
    writer.flush()
    reader = _reader(tmp_path / "ix")
    reader.search(rand_vecs(1, 16, seed=1), 5)
    assert reader._index is not None  # more than NUMPY_EXACT_MAX vectors: the FAISS index


def test_one_shot_search_does_not_import_faiss(tmp_path):
    writer = LocalVectorStore(IndexDB(tmp_path / "ix"), 16)
    writer.upsert(np.arange(50), rand_vecs(50, 16))
    writer.flush()
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "from visdex.store.db import IndexDB\n"
        "from visdex.store.local import LocalVectorStore\n"
        f"s = LocalVectorStore(IndexDB({str(tmp_path / 'ix')!r}, create=False), 16)\n"
        "s.one_shot = True\n"
        "ids = s.search(np.ones((1, 16), np.float32), 3)[1][0].tolist()\n"
        "print(json.dumps({'ids': ids, 'faiss': 'faiss' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["faiss"] is False and len(got["ids"]) == 3
