"""clip-retrieval interop: export to img_emb/*.npy + metadata/*.parquet, import back, search the result."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visdex import open_index
from visdex.errors import BadQuery, ModelMismatch
from visdex.interop import export_clip_retrieval, import_clip_retrieval, load_shard, read_layout
from visdex.models.base import l2_normalize

from clihelp import run_cli


def _vectors_by_path(ix) -> dict[str, np.ndarray]:
    rows = ix.db.files_by_ids(ix.store.ids())
    return {r.path: ix.store.get([i])[0] for i, r in rows.items()}


def _meta_by_path(ix) -> dict[str, tuple]:
    rows = ix.db.files_by_ids(ix.store.ids())
    return {r.path: (r.width, r.height, r.taken_at, r.status) for r in rows.values()}


@pytest.fixture
def built(tmp_path, folder, tiny_clip):
    path = tmp_path / "src-ix"
    with open_index(path, model=str(tiny_clip)) as ix:
        ix.add([folder])
    return path


def test_export_writes_clip_retrievals_layout_and_round_trips(tmp_path, built, tiny_clip, capsys):
    out = tmp_path / "emb"
    code, stdout, stderr = run_cli(capsys, "export", "--format", "clip-retrieval", str(out), "--index", str(built),
                                   "--shard-size", "4")  # fmt: skip
    assert code == 0, stderr
    with open_index(built) as ix:
        want_vecs, want_meta, n = _vectors_by_path(ix), _meta_by_path(ix), len(ix)
    shards, sidecar = read_layout(out)
    assert [s.vectors.name for s in shards][:2] == ["img_emb_0.npy", "img_emb_1.npy"]
    assert sum(s.rows for s in shards) == n and len(shards) == -(-n // 4)
    assert sidecar["fingerprint"]["dim"] == 16 and sidecar["vectors"] == n
    arr = np.load(shards[0].vectors)
    assert arr.dtype == np.float16 and arr.shape == (4, 16)  # as clip-retrieval writes them
    table = pq.read_table(shards[0].metadata)
    assert table.column_names[:3] == ["image_path", "caption", "url"]
    first = table.to_pylist()[0]
    assert first["caption"] is None and first["url"] is None
    assert np.allclose(arr[0].astype(np.float32), want_vecs[first["image_path"]], atol=1e-3)  # rows aligned

    new = tmp_path / "imported"
    code, stdout, stderr = run_cli(capsys, "import", str(out), "--model", str(tiny_clip), "--index", str(new))
    assert code == 0, stderr
    assert f"{n} new" in stdout
    with open_index(new) as ix:
        got_vecs, got_meta = _vectors_by_path(ix), _meta_by_path(ix)
        assert ix.fingerprint.compatible(open_index(built).fingerprint)
    assert got_meta == want_meta
    for p, v in want_vecs.items():  # equal up to float16 rounding, and unit length again
        assert np.allclose(got_vecs[p], l2_normalize(v.astype(np.float16))[0], atol=1e-6)
        assert np.allclose(got_vecs[p], v, atol=2e-3)

    # a text search through the model gives the same ranking on both indexes
    with open_index(built) as a, open_index(new) as b:
        ha, hb = a.search("a cat on a sofa", k=5), b.search("a cat on a sofa", k=5)
    assert [h.path for h in ha] == [h.path for h in hb]
    assert np.allclose([h.score for h in ha], [h.score for h in hb], atol=2e-3)
    code, stdout, _ = run_cli(capsys, "search", "a cat on a sofa", "--index", str(new), "-k", "1")
    assert code == 0 and ha[0].path in stdout

    # twice: nothing new, nothing duplicated
    with open_index(new, model=str(tiny_clip)) as ix:
        report = import_clip_retrieval(ix, out)
        assert (report.new, report.updated, len(ix), ix.db.counts()["ok"]) == (0, n, n, n)


def test_float32_export_is_exact_and_an_existing_folder_is_refused(tmp_path, built, tiny_clip):
    out = tmp_path / "emb32"
    with open_index(built) as ix:
        want = _vectors_by_path(ix)
        assert export_clip_retrieval(ix, out, dtype="float32").vectors == len(want)
        with pytest.raises(BadQuery, match="not an empty folder"):
            export_clip_retrieval(ix, out)
    with open_index(tmp_path / "ix32", model=str(tiny_clip)) as ix:
        import_clip_retrieval(ix, out)
        got = _vectors_by_path(ix)
    assert got.keys() == want.keys() and all(np.array_equal(got[p], want[p]) for p in want)


def _write_shard(folder, name: str, vecs: np.ndarray, rows: dict[str, list]) -> None:
    """One shard exactly as clip-retrieval's writer makes it: np.save of float16 vectors, a parquet of columns."""
    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(exist_ok=True)
    np.save(folder / "img_emb" / f"img_emb_{name}.npy", vecs.astype(np.float16))
    pq.write_table(pa.table(rows), folder / "metadata" / f"metadata_{name}.parquet")


def test_a_folder_made_like_clip_retrieval_is_imported_and_searched(tmp_path, tiny_clip, capsys):
    from visdex.models import load_embedder

    words = ["red", "blue", "green", "cat", "dog", "tree"]
    vecs = load_embedder(str(tiny_clip), device="cpu").embed_texts(words) * 3.0  # not unit length: normalised
    src = tmp_path / "cr"
    # Three partitions of a 10-partition run (names padded to 2 digits); files input: image_path is the path,
    # caption from the .txt; webdataset input: image_path is the sample key and url comes from the .json.
    _write_shard(src, "00", vecs[:2], {"image_path": ["/data/imgs/red.jpg", "rel/blue.png"],
                                       "caption": ["red", "blue"]})  # fmt: skip
    _write_shard(src, "01", vecs[2:4], {"image_path": ["/data/imgs/green.jpg", "/data/imgs/cat.jpg"],
                                        "caption": ["green", "cat"]})  # fmt: skip
    _write_shard(src, "02", vecs[4:], {"image_path": ["000000012", "000000013"], "caption": ["dog", "tree"],
                                       "url": ["https://example.com/dog.jpg", "https://example.com/tree.jpg"],
                                       "key": ["000000012", "000000013"]})  # fmt: skip
    ixp = tmp_path / "ix"
    code, stdout, stderr = run_cli(capsys, "import", str(src), "--model", str(tiny_clip), "--index", str(ixp),
                                   "--image-root", str(tmp_path / "base"))  # fmt: skip
    assert code == 0, stderr
    assert "6 rows from 3 shard(s): 6 new" in stdout
    with open_index(ixp) as ix:
        paths = sorted(_vectors_by_path(ix))
        assert paths == sorted(["/data/imgs/red.jpg", str(tmp_path / "base/rel/blue.png"), "/data/imgs/green.jpg",
                                "/data/imgs/cat.jpg", "https://example.com/dog.jpg",
                                "https://example.com/tree.jpg"])  # fmt: skip
        for word in words:  # each vector was that word's text embedding: the text finds it first
            assert ix.search(word, k=1)[0].path.rsplit("/", 1)[-1].split(".")[0] == word
        assert all(np.isclose(np.linalg.norm(v), 1, atol=1e-5) for v in _vectors_by_path(ix).values())
    code, stdout, _ = run_cli(capsys, "search", "dog", "--index", str(ixp), "-k", "1")
    assert code == 0 and "https://example.com/dog.jpg" in stdout

    # and back out: the URL rows keep their url, the files their path
    out = tmp_path / "back"
    with open_index(ixp) as ix:
        export_clip_retrieval(ix, out, shard_size=100)
    _, rows = load_shard(read_layout(out)[0][0])
    by_url = {r["url"]: r["image_path"] for r in rows if r["url"]}
    assert by_url == {"https://example.com/dog.jpg": None, "https://example.com/tree.jpg": None}


def test_vectors_of_another_dimension_or_model_are_refused_and_the_index_is_untouched(tmp_path, built, tiny_clip,
                                                                                      capsys):  # fmt: skip
    bad = tmp_path / "bad"
    _write_shard(bad, "0", l2_normalize(np.random.default_rng(0).normal(size=(3, 8))),
                 {"image_path": ["/x/a.jpg", "/x/b.jpg", "/x/c.jpg"]})  # fmt: skip
    with open_index(built) as ix:
        before = (len(ix), ix.db.generation, ix.db.counts())
    code, _, stderr = run_cli(capsys, "import", str(bad), "--model", str(tiny_clip), "--index", str(built))
    assert code == ModelMismatch.exit_code and "8-d" in stderr and "16-d" in stderr
    # a fresh index is refused before any model fingerprint is written
    with open_index(tmp_path / "fresh", model=str(tiny_clip)) as ix:
        with pytest.raises(ModelMismatch):
            import_clip_retrieval(ix, bad)
        assert ix.fingerprint is None

    # the right dimension, but the sidecar names another model
    out = tmp_path / "emb"
    with open_index(built) as ix:
        export_clip_retrieval(ix, out)
    meta = json.loads((out / "visdex.json").read_text())
    meta["fingerprint"]["source"], meta["fingerprint"]["name"] = "openai/clip-vit-base-patch32", "clip-vit-b-32"
    (out / "visdex.json").write_text(json.dumps(meta))
    code, _, stderr = run_cli(capsys, "import", str(out), "--model", str(tiny_clip), "--index", str(built))
    assert code == ModelMismatch.exit_code and "clip-vit-b-32" in stderr
    with open_index(built) as ix:
        assert (len(ix), ix.db.generation, ix.db.counts()) == before


def test_an_interrupted_import_keeps_whole_shards_and_resumes(tmp_path, built, tiny_clip):
    out = tmp_path / "emb"
    with open_index(built) as ix:
        export_clip_retrieval(ix, out, shard_size=3)
        n = len(ix)
    layout, _ = read_layout(out)
    assert len(layout) >= 2

    def dies_after_first():
        yield load_shard(layout[0])
        vecs, rows = load_shard(layout[1])
        # its file rows are written, then its vectors (cut to 8-d) fail inside the shard's transaction
        yield vecs[:, :8], rows
        raise AssertionError("not reached")

    dest = tmp_path / "dest"
    with open_index(dest, model=str(tiny_clip)) as ix, pytest.raises(ValueError):  # the reshape to 16-d
        import_clip_retrieval(ix, out, shards=dies_after_first())
    with open_index(dest) as ix:  # opens, holds exactly the first shard, answers searches
        assert len(ix) == ix.db.counts()["ok"] == layout[0].rows
        assert len(ix.search("a photo", k=10)) == layout[0].rows
    with open_index(dest, model=str(tiny_clip)) as ix:
        report = import_clip_retrieval(ix, out)
        assert (report.new, report.updated) == (n - layout[0].rows, layout[0].rows)
        assert len(ix) == ix.db.counts()["ok"] == n
