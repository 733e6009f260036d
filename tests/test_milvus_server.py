"""The Milvus store against a real Milvus server: the PyPI package ``milvus`` (2.3.5, an embedded standalone
server binary; ``pip install 'visdex[milvus-server]'``, Linux) started once for the module on a free port, its data
under tmp. What milvus-lite cannot show: aliases (re-sizing an index without downtime), the server-side index types
as the server describes them, a server older than 2.5 (no nullable fields), its import API, kill -9 of an indexing
run. ``VISDEX_TEST_MILVUS_URL=milvus://host:19530`` runs them against a server already running instead.

Run: ``python -m pytest tests/test_milvus_server.py -m milvus_server``."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.milvus_server]
pytest.importorskip("pymilvus", reason="pymilvus is not installed: pip install 'visdex[milvus]'")

from visdex import open_index  # noqa: E402
from visdex.models.base import l2_normalize  # noqa: E402
from visdex.store import milvus  # noqa: E402
from visdex.store.db import IndexDB  # noqa: E402
from visdex.store.milvus import MilvusVectorStore, parse_milvus_url  # noqa: E402
from visdex.store.milvus_where import lit as milvus_where_lit  # noqa: E402

from clihelp import run_cli, spawn_cli  # noqa: E402
from imagefactory import write_photo, write_shots  # noqa: E402
from store_contract import rand_vecs  # noqa: E402

START_S = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """``milvus://127.0.0.1:PORT`` of a real server for the module (every store gets its own collection)."""
    if url := os.environ.get("VISDEX_TEST_MILVUS_URL"):
        yield url
        return
    if not sys.platform.startswith("linux") or importlib.util.find_spec("milvus") is None:
        pytest.skip("the Milvus server package is not installed: pip install 'visdex[milvus-server]' (Linux)")
    from milvus import MilvusServer

    srv = MilvusServer(wait_for_started=False)
    srv.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
    srv.listen_port = _free_port()
    srv.start()
    try:
        srv.wait_started(timeout=START_S * 1000)  # the binary unpacks and starts etcd, then Milvus: ~10 s
    except (TimeoutError, RuntimeError) as e:
        log = Path(srv.config.base_data_dir) / "logs" / "milvus-stderr.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        srv.stop()
        pytest.fail(f"the Milvus server did not start ({e}); another one running here holds /run/milvus?\n{tail}")
    yield f"milvus://127.0.0.1:{srv.listen_port}"
    srv.stop()


def _client(url: str):
    return milvus.connect(parse_milvus_url(url))


def _version(url: str) -> tuple[int, int]:
    return milvus._server_version(_client(url))


def _rows_and_distinct(store: MilvusVectorStore) -> tuple[int, int]:
    ids = store.ids()
    return len(ids), len(set(ids.tolist()))


# -- index, search, --where, status ----------------------------------------------------------------------------
def test_index_search_where_and_status(capsys, tmp_path, server, tiny_clip, monkeypatch):
    """`visdex index` two roots into the server, search with a --where under one root (the search request carries
    ``root in [...]``, the partition key, so Milvus reads only that root's partitions), `visdex status` shows the
    index type and load state the server reports."""
    for name, photos in (("a", ("coffee", "chelsea", "rocket")), ("b", ("astronaut", "moon", "camera"))):
        write_shots(tmp_path / name, {f"{name}{p}": (p, "", None, None, "JPEG") for p in photos})
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    code, _, err = run_cli(capsys, "index", a, b, "--index", tmp_path / "ix", "--model", tiny_clip, "--store", server,
                           "-q")  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli(capsys, "status", "--index", tmp_path / "ix", "--json")
    st = json.loads(out)["store"]
    assert code == 0 and (st["index"], st["load_state"], st["count"]) == ("HNSW", "Loaded", 6), err
    assert st["index_params"]["M"] == str(milvus.HNSW_M)  # as the server describes it (strings)
    assert st["alias_of"].startswith(st["collection"] + "__")  # searches go through an alias
    assert st["filter_fields"] == (_version(server) >= milvus.NULLABLE_SINCE)
    code, out, _ = run_cli(capsys, "status", "--index", tmp_path / "ix")
    assert "HNSW" in out and "loaded" in out

    client = _client(server)
    desc = client.describe_collection(st["collection"])
    assert [f["name"] for f in desc["fields"] if f.get("is_partition_key")] == ["root"]
    assert len(client.list_partitions(st["collection"])) == milvus.PARTITIONS
    sent: list[str] = []
    real = client.search
    monkeypatch.setattr(client, "search", lambda *x, **kw: sent.append(kw["filter"]) or real(*x, **kw))
    code, out, err = run_cli(capsys, "search", "a photo", "--index", tmp_path / "ix", "--where", f"folder = '{a}'",
                             "--json", "-k", "10")  # fmt: skip
    hits = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(hits) == 3 and all(h["path"].startswith(a + "/") for h in hits), err
    assert len(sent) == 1 and sent[0].startswith(f'(root in ["{a}"]) and ')
    code, out, _ = run_cli(capsys, "search", "a photo", "--index", tmp_path / "ix", "--where", "name ~ 'bmoon*'",
                           "--json")  # fmt: skip
    assert [os.path.basename(json.loads(line)["path"]) for line in out.splitlines()] == ["bmoon.jpg"]


# -- the index types, as the server builds them -----------------------------------------------------------------
@pytest.mark.parametrize(("ann", "kind", "params"), [
    ("hnsw", "HNSW", {"M": "32", "efConstruction": "80"}),
    ("ivf-sq8", "IVF_SQ8", {"nlist": "32"}),  # sized for the 300 vectors: 2 sqrt(300) -> 32
    ("ivfpq", "IVF_PQ", {"nlist": "32", "m": "16", "nbits": "8"}),
    ("diskann", "DISKANN", {}),
])  # fmt: skip
def test_each_ann_builds_the_index_it_names(tmp_path, server, ann, kind, params):
    store = MilvusVectorStore(IndexDB(tmp_path / "ix"), 16, server, ann=ann)
    vecs = rand_vecs(300, 16)
    store.upsert(np.arange(300), vecs)
    store.flush()
    idx = _client(server).describe_index(store.collection, "vector")
    assert idx["index_type"] == kind and {k: idx[k] for k in params} == params
    info = store.info()
    assert (info["index"], info["load_state"]) == (kind, "Loaded")
    _, ids = store.search(vecs[:1], 5)
    assert (ids[0] >= 0).all() and (ids[0][0] == 0 or kind in ("IVF_PQ", "IVF_SQ8"))


# -- re-sizing without downtime ------------------------------------------------------------------------------------
def test_resize_builds_aside_and_searches_keep_answering(tmp_path, server):
    """An IVF index outgrown twice over is re-built in a new collection; the alias moves when it is loaded. A
    second store (another reader of the index, as `visdex serve` would be) searches all the while: every search
    answers, with k results."""
    db = IndexDB(tmp_path / "ix")
    store = MilvusVectorStore(db, 16, server, ann="ivf-sq8")
    vecs = rand_vecs(3000, 16)
    store.upsert(np.arange(100), vecs[:100])
    store.flush()
    client = _client(server)
    first = client.describe_alias(store.collection)["collection_name"]
    assert client.describe_index(store.collection, "vector")["nlist"] == "16"
    store.upsert(np.arange(100, 3000), vecs[100:])
    store.push()

    reader = MilvusVectorStore(IndexDB(tmp_path / "ix"), 16)
    answered, failed = [], []
    done = threading.Event()

    def resize():
        try:
            assert store.fit_index() is True
        finally:
            done.set()

    t = threading.Thread(target=resize)
    t.start()
    while not done.is_set():
        try:
            _, ids = reader.search(vecs[:2], 10)
            answered.append(int((ids >= 0).sum()))
        except Exception as e:  # noqa: BLE001 - any failure is what this test looks for
            failed.append(repr(e))
    t.join()
    assert not failed and len(answered) >= 5 and set(answered) == {20}, (failed, answered[:10])
    now = client.describe_alias(store.collection)["collection_name"]
    assert now != first and not client.has_collection(first)
    assert client.describe_index(store.collection, "vector")["nlist"] == "128"
    assert store.count() == 3000 and _rows_and_distinct(store) == (3000, 3000)
    _, ids = reader.search(vecs[:1], 5)
    assert 0 in ids[0]
    store.drop_collection()
    assert not client.has_collection(now) and store.collection not in client.list_collections()


def test_a_killed_resize_leaves_the_old_collection_in_use(tmp_path, server, monkeypatch):
    """A re-size that fails half-way (here: the copy) drops its half-made collection; searches never left the old."""
    store = MilvusVectorStore(IndexDB(tmp_path / "ix"), 16, server, ann="ivf-sq8")
    store.upsert(np.arange(100), rand_vecs(100, 16))
    store.flush()
    store.upsert(np.arange(100, 400), rand_vecs(300, 16, seed=2))
    store.push()
    client = _client(server)
    old = client.describe_alias(store.collection)["collection_name"]
    monkeypatch.setattr(client, "insert", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(milvus.StoreError, match="re-build the vector index"):
        store.flush()
    monkeypatch.undo()
    assert client.describe_alias(store.collection)["collection_name"] == old
    assert [c for c in client.list_collections() if c.startswith(store.collection)] == [old]
    assert store.count() == 400


# -- migrate and rebuild: the alias and its collection go together ----------------------------------------------------
def test_migrate_round_trip_and_rebuild_on_the_server(capsys, tmp_path, folder, server, tiny_clip):
    ix = tmp_path / "ix"
    assert run_cli(capsys, "index", folder, "--index", ix, "--model", tiny_clip, "-q")[0] == 0

    def results() -> list:
        code, out, err = run_cli(capsys, "search", "breakfast", "--index", ix, "-n", "5", "--json",
                                 "--where", "width > 100")  # fmt: skip
        assert code == 0, err
        return [(r["path"], round(r["score"], 4)) for r in map(json.loads, out.splitlines())]

    before = results()
    code, out, err = run_cli(capsys, "migrate", "--index", ix, "--to", server, "-q")
    assert code == 0 and "moved" in out, err
    assert results() == before
    client = _client(server)
    with open_index(ix) as index:
        name = index.store.collection
        physical = client.describe_alias(name)["collection_name"]
        index.rebuild(str(tiny_clip))  # the same model again: every vector re-embedded into a new collection
        index.add([folder])
        assert index.store.collection == name and client.describe_alias(name)["collection_name"] != physical
        assert not client.has_collection(physical) and _rows_and_distinct(index.store)[1] == len(index)
    assert results() == before
    code, out, err = run_cli(capsys, "migrate", "--index", ix, "--to", "local", "-q")
    assert code == 0, err
    assert results() == before
    assert not [c for c in client.list_collections() if c.startswith(name)]  # the alias's collection is dropped


# -- kill -9 of an indexing run, then resume -----------------------------------------------------------------------
def test_kill_9_mid_index_then_resume_writes_each_vector_once(tmp_path, server, tiny_clip):
    rng = np.random.default_rng(0)
    src = tmp_path / "pics"
    src.mkdir()
    for i in range(48):
        write_photo(src, f"p{i:02d}", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    ix = tmp_path / "ix"
    run = spawn_cli("index", src, "--index", ix, "--model", tiny_clip, "--store", server, "--batch-size", "2", "-q")
    deadline = time.monotonic() + 120
    ok = 0
    while ok < 6 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            with sqlite3.connect(f"file:{ix / 'index.db'}?mode=ro", uri=True, timeout=1) as c:
                ok = c.execute("SELECT COUNT(*) FROM files WHERE status = 'ok'").fetchone()[0]
        except sqlite3.Error:
            continue
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert 6 <= ok < 48, run.stderr.read()
    with open_index(ix) as index:
        assert index.store.pending() > 0  # committed, not yet in Milvus: the outbox holds them
    again = spawn_cli("index", src, "--index", ix, "-q")
    assert again.wait(timeout=300) == 0, again.stderr.read()
    with open_index(ix) as index:
        assert index.store.pending() == 0
        assert _rows_and_distinct(index.store) == (48, 48) == (index.db.counts()["ok"], 48)


KILLED_IMPORT = """
import os, signal, sys
import numpy as np
from visdex.store import milvus
from visdex.store.db import IndexDB
from visdex.store.milvus_bulk import BulkImporter
milvus.BULK_MIN = 20
BulkImporter.wait = lambda self, job: os.kill(os.getpid(), signal.SIGKILL)  # killed while the job runs
store = milvus.MilvusVectorStore(IndexDB(sys.argv[1]), 16, sys.argv[2],
                                 bulk=BulkImporter(sys.argv[3], sys.argv[4]))
with store.bulk_load(40):
    store.upsert(np.arange(40), np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32))
"""


def test_an_import_killed_mid_job_is_waited_for_and_written_once(tmp_path, server, monkeypatch):
    """kill -9 while the server runs an import job: the next process waits for the job and for its rows to reach
    searches (a 2.3 server loads them ~20 s after it calls the job done), then writes what is left: 40 rows once."""
    import subprocess

    from visdex.store.milvus_bulk import BulkImporter

    from clihelp import SRC

    stage = tmp_path / "stage"
    stage.mkdir()
    uri = parse_milvus_url(server).uri
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-c", KILLED_IMPORT, tmp_path / "ix", server, uri, f"file://{stage}"],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == -signal.SIGKILL, run.stderr
    db = IndexDB(tmp_path / "ix")
    assert db.get_meta(milvus.META_IMPORT) is not None
    monkeypatch.setattr(milvus, "BULK_MIN", 20)  # this process would import the 40 rows too
    store = MilvusVectorStore(db, 16, bulk=BulkImporter(uri, f"file://{stage}"))
    assert store.pending() == 40
    assert store.count() == 40 and _rows_and_distinct(store) == (40, 40)
    time.sleep(25)  # long enough for a 2.3 server to load the job's segments: still once
    assert store.count() == 40 and store.pending() == 0 and db.get_meta(milvus.META_IMPORT) is None


# -- visdex import (clip-retrieval layout) -----------------------------------------------------------------------
def _clip_retrieval_folder(path, vecs: np.ndarray, names: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (path / "img_emb").mkdir(parents=True)
    (path / "metadata").mkdir()
    np.save(path / "img_emb" / "img_emb_0.npy", vecs.astype(np.float16))
    pq.write_table(pa.table({"image_path": names, "caption": [f"c {n}" for n in names]}),
                   path / "metadata" / "metadata_0.parquet")  # fmt: skip


def test_import_reaches_the_server(capsys, tmp_path, server, tiny_clip, monkeypatch, caplog):
    """`visdex import` into the server with a bulk stage set. A 2.3 server has no import-jobs API (HTTP 404 on
    /v2/vectordb/jobs/import): the staged Parquet files go through its gRPC bulk insert, one task a file, and the
    push waits until searches see the rows; 2.4+ runs one REST import job. Each row once, in its root's partition,
    the vectors those exported; importing again adds nothing."""
    pytest.importorskip("pyarrow")
    from visdex.store import milvus_bulk

    stage = tmp_path / "stage"  # the server runs here on local storage: it reads absolute paths
    stage.mkdir()
    monkeypatch.setenv("VISDEX_MILVUS_BULK_STAGE", f"file://{stage}")
    monkeypatch.setenv("VISDEX_STORE", server)
    monkeypatch.setattr(milvus, "BULK_MIN", 20)
    monkeypatch.setattr(milvus, "FILE_ROWS", 25)
    monkeypatch.setattr(milvus_bulk, "POLL_S", 0.2)
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(60, 16)).astype(np.float32)
    names = [f"/data/shop/{i:03d}.jpg" for i in range(60)]
    _clip_retrieval_folder(tmp_path / "emb", vecs, names)
    with caplog.at_level(logging.INFO, logger="visdex.store"):
        code, out, err = run_cli(capsys, "import", tmp_path / "emb", "--model", tiny_clip, "--index", tmp_path / "ix")
    assert code == 0 and "60 new" in out, err
    assert "bulk insert did not run" not in caplog.text
    assert "Milvus bulk insert: 60 vectors in 3 file(s)" in caplog.text
    assert ("using gRPC bulk insert" in caplog.text) == (_version(server) < (2, 4))
    assert list(stage.iterdir()) == []  # staged files removed
    with open_index(tmp_path / "ix") as ix:
        assert _rows_and_distinct(ix.store) == (60, 60) and ix.store.pending() == 0
        got = ix.store.get([ix.db.file_by_path(n).id for n in names])
        np.testing.assert_allclose(got, l2_normalize(vecs.astype(np.float16).astype(np.float32)), atol=1e-6)
        with sqlite3.connect(ix.db.path) as c:
            roots = dict(c.execute("SELECT root, COUNT(*) FROM files GROUP BY root").fetchall())
        client = _client(server)
        for root, n in roots.items():  # routed by the partition key: a root's filter finds all of its rows
            hits = client.query(ix.store.collection, filter=f"root == {milvus_where_lit(root)}", output_fields=["id"])
            assert len(hits) == n
    code, out, _ = run_cli(capsys, "import", tmp_path / "emb", "--model", tiny_clip, "--index", tmp_path / "ix")
    with open_index(tmp_path / "ix") as ix:
        assert code == 0 and _rows_and_distinct(ix.store) == (60, 60)  # twice: nothing added
