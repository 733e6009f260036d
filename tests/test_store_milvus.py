"""The Milvus store on milvus-lite: the shared store contract, the outbox that keeps SQLite and Milvus
consistent, --where pushdown (same matches as SQL), the CLI with --store, and visdex migrate."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="pymilvus is not installed: pip install 'visdex[milvus]'")
pytest.importorskip("milvus_lite", reason="milvus-lite is not installed: pip install 'visdex[milvus]'")

from visdex import open_index  # noqa: E402
from visdex.errors import BadQuery, BadSetting, MissingDependency, StoreError  # noqa: E402
from visdex.filters import allowed_ids  # noqa: E402
from visdex.interop import import_clip_retrieval  # noqa: E402
from visdex.models.base import l2_normalize  # noqa: E402
from visdex.store import milvus  # noqa: E402
from visdex.store.backends import parse_store  # noqa: E402
from visdex.store.db import IndexDB  # noqa: E402
from visdex.store.milvus import MilvusVectorStore, parse_milvus_url  # noqa: E402
from visdex.store.milvus_where import glob_to_like, translate_where  # noqa: E402

from clihelp import run_cli  # noqa: E402
from imagefactory import real_photos, write_photo, write_shots  # noqa: E402
from store_contract import StoreContract, rand_vecs  # noqa: E402


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> str:
    """One milvus-lite file (one server process) for the module; every store gets its own collection."""
    return f"milvus:{tmp_path_factory.mktemp('milvus') / 'vectors.db'}"


class TestMilvusStoreContract(StoreContract):
    filters_itself = True

    @pytest.fixture
    def store(self, tmp_path, lite):
        return MilvusVectorStore(IndexDB(tmp_path / "ix"), self.dim, lite)


def _query_ids(store: MilvusVectorStore, expr: str) -> set[int]:
    rows = store.index.query(store.collection, filter=expr, output_fields=["id"])
    return {int(r["id"]) for r in rows}


# -- consistency: the outbox ----------------------------------------------------------------
def test_rolled_back_write_never_reaches_milvus(tmp_path, lite):
    db = IndexDB(tmp_path / "ix")
    store = MilvusVectorStore(db, 8, lite)
    store.upsert(np.arange(5), rand_vecs(5, 8))
    with pytest.raises(RuntimeError), db.transaction():
        store.upsert([50], rand_vecs(1, 8, seed=9))
        store.delete([1])
        raise RuntimeError("crash mid-batch")
    assert store.count() == 5 and sorted(store.ids().tolist()) == [0, 1, 2, 3, 4]


def test_committed_writes_survive_a_crash_before_the_push(tmp_path, lite, monkeypatch):
    monkeypatch.setattr(milvus, "PUSH_AT", 10**9)  # nothing is pushed after the commit: as if killed right then
    db = IndexDB(tmp_path / "ix")
    MilvusVectorStore(db, 8, lite).upsert(np.arange(20), rand_vecs(20, 8))
    db.close()
    again = MilvusVectorStore(IndexDB(tmp_path / "ix"), 8)  # "the next process": store and collection recorded
    assert again.pending() == 20
    assert again.count() == 20 and again.pending() == 0  # a read pushes what was committed first
    vecs = rand_vecs(20, 8)
    np.testing.assert_allclose(again.get([7])[0], vecs[7], atol=1e-6)


def test_moved_file_updates_its_filter_fields(tmp_path, lite):
    db = IndexDB(tmp_path / "ix")
    store = MilvusVectorStore(db, 8, lite)
    with db.transaction():
        fid = db.upsert_file({"path": "/p/a/x.jpg", "root": "/p", "size": 10, "mtime": 1.0, "indexed_at": 1.0,
                              "status": "ok", "format": "JPEG", "width": 640, "height": 480})  # fmt: skip
        store.upsert([fid], rand_vecs(1, 8))
    assert store.search(rand_vecs(1, 8), 1, allowed=store.compile_where("folder = /p/a"))[1][0][0] == fid
    db.move_file(fid, "/p/b/x.jpg", "/p", 2.0)  # no new vector: the trigger queues a metadata refresh
    assert store.search(rand_vecs(1, 8), 1, allowed=store.compile_where("folder = /p/a"))[1][0][0] == -1
    assert store.search(rand_vecs(1, 8), 1, allowed=store.compile_where("folder = /p/b"))[1][0][0] == fid
    np.testing.assert_allclose(store.get([fid])[0], rand_vecs(1, 8)[0], atol=1e-6)


def test_huge_allowed_sets_are_searched_in_chunks(tmp_path, lite, monkeypatch):
    monkeypatch.setattr(milvus, "ID_FILTER_CHUNK", 7)
    store = MilvusVectorStore(IndexDB(tmp_path / "ix"), 8, lite)
    vecs = rand_vecs(100, 8)
    store.upsert(np.arange(100), vecs)
    allowed = np.arange(0, 100, 3)
    q = rand_vecs(1, 8, seed=4)[0]
    _, got = store.search(q[None], 5, allowed=allowed)
    assert list(got[0]) == list(allowed[np.argsort(-(vecs[allowed] @ q))[:5]])


# -- --where pushdown ------------------------------------------------------------------------
SHOTS = {  # name: (photo, subfolder, EXIF date, camera, format)
    "cat2021": ("chelsea", "2021", "2021-07-04T10:00:00", ("Canon", "Canon EOS R5"), "JPEG"),
    "coffee2022": ("coffee", "2022", "2022-01-15T08:30:00", ("NIKON CORPORATION", "NIKON D750"), "JPEG"),
    "rocket2023": ("rocket", "2023/trip", "2023-05-20T18:00:00", ("Canon", "Canon EOS R5"), "JPEG"),
    "moon2023": ("moon", "2023", "2023-11-02T23:59:00", None, "PNG"),
    "coins_1": ("coins", "misc", None, None, "PNG"),
}

PUSHED = [  # every comparison here runs inside Milvus (no SQL id list)
    "format = png", "format != png", "taken >= 2023", "taken = 2022-01", "taken < 2022 or camera ~ '*nikon*'",
    "camera = 'Canon EOS R5' and not taken >= 2023", "folder = 2023", "folder ~ '*/2023*'", "name ~ 'c*'",
    "width > 500", "size < 1KB", "format in (png, webp)", "(format = png or taken < 2022) and name != coins_1.png",
    "format = PNG", "not camera = canon", "not (width > 500 or taken < 2022)", "name ~ 'coins?1*'", "name ~ 'coins_1*'",
    "height <= 512 and size >= 1", "taken != 2023", "camera != 'nikon d750'", "path ~ '*rocket*'",
]  # fmt: skip
FALLBACK = ["tag = cat", "name ~ '[cm]*'", "path < /zzz", "width ~ '5*'"]


@pytest.fixture(scope="module")
def two_indexes(tmp_path_factory, lite):
    """The same photos in a local index and a Milvus one."""
    d = tmp_path_factory.mktemp("f")
    write_shots(d / "p", SHOTS)
    local = open_index(d / "local", model="lite0-minilm")
    local.add([d / "p"])
    mil = open_index(d / "milvus", model="lite0-minilm", store=lite)
    mil.add([d / "p"])
    with mil.db.transaction() as c:  # a tag, for the SQL fallback
        c.execute("INSERT INTO tags SELECT id, 'cat', 0.9 FROM files WHERE path LIKE '%cat2021%'")
    yield local, mil, d
    local.close()
    mil.close()


@pytest.mark.parametrize("expr", PUSHED + FALLBACK)
def test_pushdown_matches_what_sql_matches(two_indexes, expr):
    _, mil, _ = two_indexes
    f = translate_where(mil.db, expr)
    assert (f.fallbacks == 0) == (expr in PUSHED), f.expr
    assert _query_ids(mil.store, f.expr) == set(allowed_ids(mil.db, expr).tolist()), f.expr


def test_filtered_search_equals_the_local_store(two_indexes):
    local, mil, d = two_indexes
    assert "milvus" in mil.status().store["backend"]
    for expr in (None, "format = png", "taken >= 2022 and not folder = trip", "tag = cat or width < 600"):
        want = [(h.path, round(h.score, 4)) for h in local.search("a cup of coffee", k=3, where=expr)]
        got = [(h.path, round(h.score, 4)) for h in mil.search("a cup of coffee", k=3, where=expr)]
        assert got == want and got, expr
    coffee = d / "p" / "2022" / "coffee2022.jpg"
    assert [h.path for h in mil.similar(coffee, k=4)] == [h.path for h in local.similar(coffee, k=4)]


def test_catalog_attributes_pushdown(tmp_path, lite):
    d = tmp_path / "shop"
    d.mkdir()
    photos = real_photos()
    lines = ["sku,image,title,color,price"]
    rows = [("chelsea", "orange", "12.5"), ("coffee", "Red", "30"), ("rocket", "red", "8"), ("moon", "", "n/a")]
    for i, (name, color, price) in enumerate(rows):
        write_photo(d, name, photos[name])
        lines.append(f"s{i},{name}.jpg,{name},{color},{price}")
    (d / "items.csv").write_text("\n".join(lines) + "\n")
    with open_index(tmp_path / "ix", model="lite0-minilm", store=lite) as ix:
        ix.add_catalog(d / "items.csv")
        for expr in ("color = red and price < 20", "attr.color = RED", "title ~ 'cof*'", "price >= 12.5",
                     "not price > 10", "color != red", "key in (s0, s3)", "price = 8"):  # fmt: skip
            f = translate_where(ix.db, expr)
            assert f.fallbacks == 0 and _query_ids(ix.store, f.expr) == set(allowed_ids(ix.db, expr).tolist()), expr
        assert [h.key for h in ix.search("kitten", k=5, where="color = red and price < 20")] == ["s2"]


def test_glob_to_like_escapes_like_wildcards():
    assert glob_to_like("IMG_1*.j?g") == "IMG\\_1%.j_g"
    assert glob_to_like("100%") == "100\\%" and glob_to_like("[ab]*") is None


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_index_search_with_store_then_without(capsys, tmp_path, folder, lite):
    ix = tmp_path / "ix"
    code, out, err = run_cli(capsys, "index", folder, "--index", ix, "--model", "lite0-minilm", "--store", lite, "-q")
    assert code == 0, err
    code, out, err = run_cli(capsys, "search", "kitten", "--index", ix, "-n", "2", "--json")  # no --store
    assert code == 0, err
    assert "chelsea" in json.loads(out.splitlines()[0])["path"]
    code, out, _ = run_cli(capsys, "search", "kitten", "--index", ix, "--where", "name ~ 'c*'", "--json")
    assert code == 0 and {os.path.basename(json.loads(r)["path"])[0] for r in out.splitlines()} == {"c"}
    code, out, _ = run_cli(capsys, "status", "--index", ix, "--json")
    st = json.loads(out)
    assert st["store"]["backend"].startswith("milvus") and st["vectors"] == st["files_ok"] > 0
    (folder / "coffee.jpg").unlink()  # pruned: its vector leaves Milvus too
    code, out, err = run_cli(capsys, "index", "--index", ix, "-q")
    assert code == 0 and "1 removed" in out, err
    code, out, _ = run_cli(capsys, "status", "--index", ix, "--json")
    assert json.loads(out)["vectors"] == st["vectors"] - 1
    code, _, err = run_cli(capsys, "index", folder, "--index", ix, "--store", "local", "-q")
    assert code == 2 and "visdex migrate" in err  # an index with vectors keeps its store


def test_migrate_round_trip_keeps_results(capsys, tmp_path, folder, lite):
    ix = tmp_path / "ix"
    assert run_cli(capsys, "index", folder, "--index", ix, "--model", "lite0-minilm", "-q")[0] == 0

    def results() -> list:
        code, out, err = run_cli(capsys, "search", "breakfast", "--index", ix, "-n", "5", "--json",
                                 "--where", "width > 100")  # fmt: skip
        assert code == 0, err
        return [(r["path"], round(r["score"], 5)) for r in map(json.loads, out.splitlines())]

    before = results()
    code, out, err = run_cli(capsys, "migrate", "--index", ix, "--to", lite, "-q")
    assert code == 0 and "moved" in out and "to milvus:" in out, err
    db = IndexDB(ix)
    assert db.get_meta("store").startswith("milvus:")
    assert db.conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 0  # the vectors left SQLite
    db.close()
    assert results() == before
    code, out, err = run_cli(capsys, "migrate", "--index", ix, "--to", "local", "--json")
    assert code == 0 and json.loads(out)["vectors"] > 0, err
    assert results() == before
    code, _, err = run_cli(capsys, "migrate", "--index", ix, "--to", "local")
    assert code == 2 and "already" in err


def test_rebuild_with_another_model_replaces_the_collection(tmp_path, folder, lite, tiny_clip):
    with open_index(tmp_path / "ix", model="lite0-minilm", store=lite) as ix:
        ix.add([folder])
        old = ix.store.collection
        ix.rebuild(str(tiny_clip))
        ix.add([folder])
        assert ix.store.dim == ix.fingerprint.dim != 384 and len(ix) == len(list(folder.iterdir()))
        assert ix.store.collection == old  # same name, new dimension


# -- bad stores ------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["foo://x", "milvus:", "milvus:./vectors", "milvus://", "milvus://h:port",
                                 "milvus://h/a/b", "milvus://h?collection=9bad"])  # fmt: skip
def test_bad_store_urls(url):
    with pytest.raises(BadQuery, match="^bad store") as err:  # the library names the field; the CLI its flag
        parse_store(url)
    assert err.value.field == "store" and err.value.named("--store").startswith("bad --store")


def test_store_url_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_store("milvus:./v.db").uri == str(tmp_path / "v.db")
    spec = parse_milvus_url("milvus://root:Milvus@db.example:19531/shop")
    assert spec.uri == "http://db.example:19531" and spec.token == "root:Milvus" and spec.db_name == "shop"
    assert spec.url == "milvus://db.example:19531/shop" and "Milvus@" not in repr(spec)  # never recorded
    assert parse_milvus_url("milvus+https://cloud.example?token=abc").uri == "https://cloud.example:443"


def test_bad_or_unreachable_store_writes_nothing(capsys, tmp_path, folder):
    ix = tmp_path / "ix"
    code, _, err = run_cli(capsys, "index", folder, "--index", ix, "--store", "foo://x", "-q")
    assert code == 2 and "--store" in err and not ix.exists()
    code, _, err = run_cli(capsys, "index", folder, "--index", ix, "--store", "milvus://127.0.0.1:1", "-q")
    assert code == 5 and "cannot reach Milvus at http://127.0.0.1:1" in err and "Traceback" not in err
    assert not ix.exists()


def test_missing_pymilvus_names_the_extra(capsys, tmp_path, folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # import pymilvus -> ImportError
    monkeypatch.setattr(milvus, "_clients", {})
    with pytest.raises(MissingDependency, match=r"pip install 'visdex\[milvus\]'"):
        milvus.connect(parse_milvus_url("milvus://localhost"))
    code, _, err = run_cli(capsys, "index", folder, "--index", tmp_path / "ix", "--store", "milvus://localhost", "-q")
    assert code == 4 and "visdex[milvus]" in err and not (tmp_path / "ix").exists()


def test_lost_collection_is_an_error_not_an_empty_index(tmp_path, lite):
    db = IndexDB(tmp_path / "ix")
    store = MilvusVectorStore(db, 8, lite)
    store.upsert([1], rand_vecs(1, 8))
    assert store.count() == 1
    store.index.drop_collection(store.collection)
    with pytest.raises(StoreError, match="--rebuild"):
        MilvusVectorStore(db, 8).count()


# -- production settings: index type by the embedded store's rule, partition key, status ------------------
@pytest.mark.parametrize(("ann", "kind", "params"), [
    ("flat", "FLAT", {}),
    ("hnsw", "HNSW", {"M": 32, "efConstruction": 80}),
    ("hnsw-sq8", "IVF_SQ8", {"nlist": 32}),  # sized for the 300 vectors: 2 sqrt(300) -> 32
    ("ivfpq", "IVF_PQ", {"nlist": 32, "m": 16, "nbits": 8}),
    ("diskann", "DISKANN", {}),
])  # fmt: skip
def test_index_type_follows_ann_and_status_reports_it(tmp_path, lite, ann, kind, params, monkeypatch):
    """milvus-lite builds every one of these (its describe_index reports the type, not the parameters: the
    parameters handed to pymilvus' documented add_index are checked)."""
    from pymilvus.milvus_client.index import IndexParams

    sent = []
    add_index = IndexParams.add_index

    def spy(self, field, **kw):
        sent.append((field, kw))
        return add_index(self, field, **kw)

    monkeypatch.setattr(IndexParams, "add_index", spy)
    store = MilvusVectorStore(IndexDB(tmp_path / "ix"), 16, lite, ann=ann)
    vecs = rand_vecs(300, 16)
    store.upsert(np.arange(300), vecs)
    info = store.info()
    assert (info["index"], info["load_state"], info["partition_key"]) == (kind, "Loaded", "root")
    assert sent == [("vector", {"index_type": kind, "metric_type": "IP", "params": params})]
    assert info["index_params"] == params
    assert kind in info["backend"] and "loaded" in info["backend"]
    _, ids = store.search(vecs[:1], 5)
    assert ids[0][0] == 0 or kind in ("IVF_PQ", "IVF_SQ8")  # lossy codes may rank a near neighbour first


def test_search_parameters_per_index_type():
    """What search sends per index type (the server-side kinds milvus-lite does not rank by: checked here)."""
    assert milvus.search_params("HNSW", 10) == {"ef": 512}
    assert milvus.search_params("HNSW", 2000) == {"ef": 8000}
    assert milvus.search_params("IVF_PQ", 10) == {"nprobe": milvus.IVF_NPROBE}
    assert milvus.search_params("IVF_SQ8", 10) == {"nprobe": milvus.IVF_NPROBE}
    assert milvus.search_params("DISKANN", 10) == {"search_list": 100}
    assert milvus.search_params("DISKANN", 500) == {"search_list": 500}
    assert milvus.index_params("IVF_PQ", 512) == {"nlist": 1024, "m": 64, "nbits": 8}
    assert 512 % milvus.index_params("IVF_PQ", 512)["m"] == 0


def test_recommended_plan_sets_the_milvus_index():
    from visdex.sizing import plan_store

    gib = 1 << 30
    assert milvus.ann_for_plan(plan_store(10**7, 512, 64 * gib)) == "hnsw"
    assert milvus.ann_for_plan(plan_store(10**7, 512, 8 * gib)) in ("ivf-sq8", "ivfpq")
    assert milvus.ann_for_plan(plan_store(10**9, 512, 1 * gib)) == "diskann"


def test_filtered_search_prunes_to_the_roots_partitions(tmp_path, lite):
    """Each vector carries its root as the partition key; a filter under one root adds ``root in [...]``."""
    for name, photos in (("a", ("coffee", "chelsea", "rocket")), ("b", ("astronaut", "moon", "camera"))):
        write_shots(tmp_path / name, {f"{name}{p}": (p, "", None, None, "JPEG") for p in photos})
    with open_index(tmp_path / "ix", model="lite0-minilm", store=lite) as ix:
        ix.add([tmp_path / "a", tmp_path / "b"])
        a = str(tmp_path / "a")
        f = ix.store.compile_where(f"folder = '{a}'")
        assert f.expr.startswith(f'(root in ["{a}"])')
        assert "root in" not in ix.store.compile_where("width > 10").expr
        assert _query_ids(ix.store, f'root == "{a}"') == {r.id for r in ix.db.files_under([a])}
        hits = ix.search("a photo", k=10, where=f"path ~ '{a}/*'")
        assert hits and all(h.path.startswith(a + "/") for h in hits)
        assert milvus.root_clause("folder = 'trip'", [a], False) is None  # relative: says nothing about roots


# -- index sizing: IVF nlist / nprobe from the collection's size, DISKANN past the RAM budget ----------------------
def _spy_add_index(monkeypatch) -> list:
    from pymilvus.milvus_client.index import IndexParams

    sent = []
    add_index = IndexParams.add_index

    def spy(self, field, **kw):
        sent.append((kw["index_type"], kw["params"]))
        return add_index(self, field, **kw)

    monkeypatch.setattr(IndexParams, "add_index", spy)
    return sent


def test_ivf_lists_follow_the_collection_size_and_grow_with_it(tmp_path, lite, monkeypatch):
    """nlist by the embedded store's rule for the rows there are (2 sqrt(n), a power of two), re-built once the
    collection doubled; the search sends the nprobe that goes with the nlist built."""
    sent = _spy_add_index(monkeypatch)
    store = MilvusVectorStore(IndexDB(tmp_path / "ix"), 16, lite, ann="ivf-sq8")
    vecs = rand_vecs(2100, 16)
    store.upsert(np.arange(100), vecs[:100])
    store.flush()  # made for the 100 rows waiting
    assert sent == [("IVF_SQ8", {"nlist": 16})] == [("IVF_SQ8", milvus.index_params("IVF_SQ8", 16, 100))]
    store.upsert(np.arange(100, 2100), vecs[100:])
    store.flush()  # 21x the rows it was sized for: re-built
    assert sent[1:] == [("IVF_SQ8", {"nlist": 128})] and store.info()["index_params"] == {"nlist": 128}
    assert store.fit_index() is False  # the right size now: left alone
    assert store.info()["alias_of"] is None and store.collection in store.index.list_collections()  # lite: in place
    searched = []
    real_search = store.index.search
    monkeypatch.setattr(store.index, "search", lambda *a, **kw: searched.append(kw["search_params"]) or
                        real_search(*a, **kw))  # fmt: skip
    _, ids = store.search(vecs[:1], 5)
    assert searched == [{"metric_type": "IP", "params": {"nprobe": 32}}] and 0 in ids[0]
    assert store.count() == 2100


def test_ivf_and_diskann_parameters_for_large_collections(tmp_path, monkeypatch):
    """What a Milvus server would be sent for collections too large to build here."""
    assert milvus.ivf_lists(10_000, 512) == (256, 32)
    assert milvus.ivf_lists(10**8, 512) == (1024, 32)  # capped at one segment's rows (1 GB of 512-d vectors)
    assert milvus.ivf_lists(10**8, 64) == (4096, 128)  # 64-d: 4M rows a segment
    assert milvus.search_params("IVF_PQ", 10, nlist=4096) == {"nprobe": 128}
    assert milvus.index_params("IVF_PQ", 512, 10**7) == {"nlist": 1024, "m": 64, "nbits": 8}
    gib = 1024**3
    assert milvus.auto_index(10**6, 512, 64 * gib) == "HNSW"
    assert milvus.auto_index(10**8, 512, 64 * gib) in ("IVF_SQ8", "IVF_PQ")
    assert milvus.auto_index(10**9, 512, 8 * gib) == "DISKANN"
    # --ann auto on a server: the plan for the rows announced, with VISDEX_MILVUS_MEMORY as the budget
    monkeypatch.setenv("VISDEX_MILVUS_MEMORY", "8GB")
    server = MilvusVectorStore(IndexDB(tmp_path / "ix"), 512, "milvus://db.example:19530")
    assert server._index_plan(10**9) == ("DISKANN", {})
    assert server._index_plan(10**5) == ("HNSW", {"M": 32, "efConstruction": 80})
    monkeypatch.setenv("VISDEX_MILVUS_MEMORY", "lots")
    with pytest.raises(BadSetting, match="VISDEX_MILVUS_MEMORY"):
        server._index_plan(10)


# -- bulk insert ------------------------------------------------------------------------------------------------
class FakeMilvusImport:
    """Milvus' import REST API (create / describe / list) in front of a milvus-lite collection: a job reads the
    staged Parquet files from the bucket and inserts their rows, as a server's import does. A job says
    'Importing' at its first describe, 'Completed' after. ``refuse``: every create answers an error code."""

    def __init__(self, client, bucket: str, refuse: bool = False):
        import http.server
        import threading

        self.client, self.bucket, self.refuse = client, bucket, refuse
        self.calls: list[tuple[str, dict, str | None]] = []
        self.jobs: dict[str, list[str]] = {}
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint = self.path.rsplit("/", 1)[-1]
                fake.calls.append((self.path, body, self.headers.get("Authorization")))
                answer = json.dumps(getattr(fake, endpoint)(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def create(self, body: dict) -> dict:
        import fsspec
        import pyarrow.parquet as pq

        if self.refuse:
            return {"code": 1100, "message": "import is disabled on this server"}
        for [f] in body["files"]:
            with fsspec.open(f"{self.bucket}/{f}", "rb") as fh:
                rows = pq.read_table(fh).to_pylist()
            for r in rows:
                r.update({k: json.loads(r[k]) for k in ("attrs", "attrs_num") if r[k] is not None})
            self.client.insert(body["collectionName"], rows)
        job = str(len(self.jobs) + 1)
        self.jobs[job] = ["Importing", "Completed"]
        return {"code": 0, "data": {"jobId": job}}

    def describe(self, body: dict) -> dict:
        states = self.jobs[body["jobId"]]
        return {"code": 0, "data": {"jobId": body["jobId"], "state": states.pop(0) if len(states) > 1 else states[0]}}

    def list(self, body: dict) -> dict:
        return {"code": 0, "data": {"records": [{"jobId": j, "state": s.pop(0) if len(s) > 1 else s[0]}
                                                for j, s in self.jobs.items()]}}  # fmt: skip

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _clip_retrieval_folder(path, vecs: np.ndarray, names: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (path / "img_emb").mkdir(parents=True)
    (path / "metadata").mkdir()
    np.save(path / "img_emb" / "img_emb_0.npy", vecs.astype(np.float16))
    pq.write_table(pa.table({"image_path": names, "caption": [f"c {n}" for n in names], "url": [None] * len(names)}),
                   path / "metadata" / "metadata_0.parquet")  # fmt: skip


@pytest.fixture
def bulk(lite, monkeypatch):
    """A fake import API over the module's milvus-lite, staging in fsspec's memory file system."""
    fsspec = pytest.importorskip("fsspec")
    from visdex.store import milvus_bulk

    monkeypatch.setattr(milvus, "BULK_MIN", 20)
    monkeypatch.setattr(milvus, "FILE_ROWS", 16)
    monkeypatch.setattr(milvus_bulk, "POLL_S", 0.01)
    mem = fsspec.filesystem("memory")
    if mem.exists("/milvus-bucket"):
        mem.rm("/milvus-bucket", recursive=True)
    fake = FakeMilvusImport(milvus.connect(parse_milvus_url(lite)), "memory://milvus-bucket")
    yield fake, milvus_bulk.BulkImporter(fake.url, "memory://milvus-bucket/visdex-bulk", token="root:Milvus")
    fake.close()


def _distinct_and_rows(store) -> tuple[int, int]:
    rows = store.index.query(store.collection, filter="", output_fields=["id"], limit=16_384)
    return len({r["id"] for r in rows}), len(rows)


def test_import_into_milvus_runs_one_bulk_import_job(tmp_path, lite, bulk, tiny_clip):
    """New vectors go as staged Parquet files in one import job (the parameters Milvus' API documents); a second
    import of the same rows plus new ones upserts the known ids and imports only the new: nothing twice."""
    fake, importer = bulk
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(50, 16)).astype(np.float32)
    names = [f"/data/p/{i:03d}.jpg" for i in range(50)]
    _clip_retrieval_folder(tmp_path / "a", vecs[:40], names[:40])
    with open_index(tmp_path / "ix", model=str(tiny_clip), store=lite) as ix:
        ix.store.bulk = importer
        assert import_clip_retrieval(ix, tmp_path / "a").new == 40
        creates = [body for path, body, _ in fake.calls if path.endswith("/create")]
        assert len(creates) == 1 and creates[0]["collectionName"] == ix.store.collection
        assert [len(f) for f in creates[0]["files"]] == [1, 1, 1]  # 40 rows in files of 16
        assert all(f[0].startswith("visdex-bulk/") and f[0].endswith(".parquet") for f in creates[0]["files"])
        assert {auth for *_, auth in fake.calls} == {"Bearer root:Milvus"}
        assert [p.rsplit("/", 1)[1] for p, *_ in fake.calls].count("describe") == 2  # polled until Completed
        assert ix.store.pending() == 0 and _distinct_and_rows(ix.store) == (40, 40)
        assert __import__("fsspec").filesystem("memory").find("/milvus-bucket") == []  # staged files removed
        _clip_retrieval_folder(tmp_path / "b", vecs[10:50], names[10:50])  # 30 known, 10 new (< BULK_MIN)
        report = import_clip_retrieval(ix, tmp_path / "b")
        assert (report.new, report.updated) == (10, 30)
        assert len([c for c in fake.calls if c[0].endswith("/create")]) == 1  # too few new ones: upserts
        assert _distinct_and_rows(ix.store) == (50, 50)
        got = ix.store.get([ix.db.file_by_path(n).id for n in names])
        np.testing.assert_allclose(got, l2_normalize(vecs.astype(np.float16).astype(np.float32)), atol=1e-6)
        hits = ix.store.search(got[:1], 1)[1][0]
        assert hits[0] == ix.db.file_by_path(names[0]).id


def test_a_server_that_refuses_bulk_import_gets_upserts(tmp_path, lite, bulk, tiny_clip):
    fake, importer = bulk
    fake.refuse = True
    rng = np.random.default_rng(1)
    _clip_retrieval_folder(tmp_path / "a", rng.normal(size=(30, 16)).astype(np.float32),
                           [f"/data/q/{i}.jpg" for i in range(30)])  # fmt: skip
    with open_index(tmp_path / "ix", model=str(tiny_clip), store=lite) as ix:
        ix.store.bulk = importer
        assert import_clip_retrieval(ix, tmp_path / "a").new == 30
        assert [p.rsplit("/", 1)[1] for p, *_ in fake.calls] == ["create", "list"]  # refused; no job left to wait for
        assert ix.store.pending() == 0 and _distinct_and_rows(ix.store) == (30, 30)
        assert ix.db.get_meta(milvus.META_IMPORT) is None


def test_an_import_job_left_by_a_killed_process_is_waited_for(tmp_path, lite, bulk):
    """A process killed while its job ran leaves the job recorded: the next push waits until the server says no
    job of the collection runs, then upserts what is left in the outbox."""
    fake, importer = bulk
    db = IndexDB(tmp_path / "ix")
    store = MilvusVectorStore(db, 8, lite, bulk=importer)
    store.upsert(np.arange(5), rand_vecs(5, 8))
    store.flush()
    fake.jobs["7"] = ["Pending", "Importing", "Importing", "Completed"]
    db.set_meta(milvus.META_IMPORT, json.dumps({"collection": store.collection, "files": []}))
    store.upsert([5], rand_vecs(1, 8, seed=3))
    assert store.count() == 6
    assert [p.rsplit("/", 1)[1] for p, *_ in fake.calls] == ["list"] * 4
    assert db.get_meta(milvus.META_IMPORT) is None


def test_import_into_milvus_lite_uses_batched_upserts(capsys, tmp_path, built_local, tiny_clip, lite, monkeypatch):
    """milvus-lite runs no import jobs: `visdex import` into a milvus-lite index upserts in batches, even with a
    stage set; the vectors are those exported."""
    monkeypatch.setenv("VISDEX_MILVUS_BULK_STAGE", "memory://milvus-bucket/visdex-bulk")
    monkeypatch.setenv("VISDEX_STORE", lite)
    out = tmp_path / "emb"
    assert run_cli(capsys, "export", out, "--index", built_local, "--dtype", "float32")[0] == 0
    code, stdout, err = run_cli(capsys, "import", out, "--model", tiny_clip, "--index", tmp_path / "mil")
    assert code == 0 and " new" in stdout, err
    with open_index(built_local) as a, open_index(tmp_path / "mil") as b:
        assert "milvus" in b.status().store["backend"] and b.store.bulk is None
        ids_a, ids_b = a.store.ids(), b.store.ids()
        pa_, pb = a.db.files_by_ids(ids_a), b.db.files_by_ids(ids_b)
        va = dict(zip([pa_[i].path for i in ids_a], a.store.get(ids_a), strict=True))
        vb = dict(zip([pb[i].path for i in ids_b], b.store.get(ids_b), strict=True))
        assert sorted(va) == sorted(vb) and len(va) == len(a)
        for p in va:
            np.testing.assert_allclose(va[p], vb[p], atol=1e-6)


@pytest.fixture
def built_local(tmp_path, folder, tiny_clip):
    with open_index(tmp_path / "src-ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
    return tmp_path / "src-ix"


def test_cli_takes_milvus_index_kinds_for_a_milvus_index(capsys, tmp_path, folder, lite):
    """`--ann ivf-sq8` / `diskann` (Milvus' own kinds) for an index in Milvus; the embedded store refuses them."""
    ix = tmp_path / "ix"
    code, _, err = run_cli(capsys, "index", folder, "--index", ix, "--model", "lite0-minilm", "--store", lite, "--ann",
                           "ivf-sq8", "-q")  # fmt: skip
    assert code == 0, err
    code, out, _ = run_cli(capsys, "status", "--index", ix, "--json")
    st = json.loads(out)["store"]
    assert st["index"] == "IVF_SQ8" and st["index_params"] == {"nlist": 16}  # sized for the 8 photos
    code, _, err = run_cli(capsys, "index", folder, "--index", tmp_path / "local", "--ann", "diskann", "-q")
    assert code == 2 and "unknown --ann 'diskann'" in err
