"""Sources past local folders: WebDataset tar shards (as img2dataset writes them) and fsspec URLs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from visdex.api import open_index
from visdex.sources import expand_braces, expand_roots, scan_roots, write_shard

from clihelp import run_cli

fsspec = pytest.importorskip("fsspec")


def _shards(tmp_path, photos, per_shard=3, bad=False):
    """img2dataset's layout: shards/00000.tar with 000000000.jpg + .txt + .json (url, caption, key)."""
    d = tmp_path / "shards"
    d.mkdir()
    files = sorted(photos.values())[: 2 * per_shard]
    expected = {}
    for s in range(2):
        samples = []
        for j, p in enumerate(files[s * per_shard : (s + 1) * per_shard]):
            key = f"{s:05d}{j:04d}"
            rec = {"url": f"https://example.com/{p.name}", "key": key, "caption": f"json caption {p.stem}"}
            sample = {"key": key, "jpg": p.read_bytes(), "json": rec}
            if j != 1:  # img2dataset writes .txt when captions exist; one sample falls back to the json caption
                sample["txt"] = f"a photo of {p.stem}"
            samples.append(sample)
            expected[f"{d / f'{s:05d}.tar'}#{key}.jpg"] = (p, sample.get("txt", rec["caption"]), rec["url"])
        if bad and s == 1:
            samples.append({"key": "broken", "jpg": b"\xff\xd8\xff truncated", "txt": "nothing"})
        write_shard(d / f"{s:05d}.tar", samples)
    return d, expected


def test_brace_expansion():
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{a,b}/{8..10}") == ["a/8", "a/9", "a/10", "b/8", "b/9", "b/10"]
    assert expand_braces("no/{braces}") == ["no/{braces}"]


def test_webdataset_shards_round_trip(capsys, tmp_path, photos, tiny_clip):
    """Every sample indexed once, with its caption and url as attributes and the same vector as the same JPEG
    indexed from a folder; a second run changes nothing; a bad sample is recorded, not fatal."""
    d, expected = _shards(tmp_path, photos, bad=True)
    code, out, err = run_cli(capsys, "index", f"{d}/{{00000..00001}}.tar", "--index", tmp_path / "ix", "--model",
                             tiny_clip, "--json", "-q")  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert (report["new"], report["failed"]) == (6, 1)
    with open_index(tmp_path / "ix", create=False) as ix:
        rows = {r.path: r for r in ix.db.files_under(ix.db.roots())}
        assert set(rows) == set(expected) | {f"{d / '00001.tar'}#broken.jpg"}
        attrs = ix.db.file_attrs([r.id for r in rows.values()])
        for path, (_, caption, url) in expected.items():
            a = attrs[rows[path].id]
            assert (a["caption"], a["url"], a["json"]["url"]) == (caption, url, url)
        shard_vecs = dict(zip(expected, ix.store.get([rows[p].id for p in expected]), strict=True))
    folder = tmp_path / "same"
    folder.mkdir()
    for p, _, _ in expected.values():
        (folder / p.name).write_bytes(p.read_bytes())
    with open_index(tmp_path / "folder", model=str(tiny_clip)) as ix:
        ix.add([folder])
        by_name = {r.path.rsplit("/", 1)[1]: r.id for r in ix.db.files_under([str(folder)])}
        for path, (p, _, _) in expected.items():
            np.testing.assert_allclose(shard_vecs[path], ix.store.get([by_name[p.name]])[0], atol=1e-6)
    code, out, err = run_cli(capsys, "index", "--index", tmp_path / "ix", "--json", "-q")  # re-scan the roots
    assert code == 0 and json.loads(out)["unchanged"] == 7, err


def test_fsspec_memory_folder_and_file_url_shard(tmp_path, photos, tiny_clip):
    fs = fsspec.filesystem("memory")
    names = sorted(photos)[:4]
    for n in names:
        fs.pipe(f"/visdex-test/photos/{n}.jpg", photos[n].read_bytes())
    fs.pipe("/visdex-test/photos/notes.txt", b"not an image")
    try:
        with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
            assert ix.add(["memory://visdex-test/photos/"]).new == 4
            assert ix.add(["memory://visdex-test/photos"]).unchanged == 4  # same root, with or without the slash
            fs.rm("/visdex-test/photos/" + names[0] + ".jpg")
            report = ix.add(["memory://visdex-test/photos"])
            assert (report.removed, report.unchanged) == (1, 3)
            paths = sorted(r.path for r in ix.db.files_under(["memory://visdex-test/photos"]))
            assert paths == [f"memory://visdex-test/photos/{n}.jpg" for n in names[1:]]
    finally:
        fs.rm("/visdex-test", recursive=True)
    d, expected = _shards(tmp_path, photos)
    url = f"file://{d}/00000.tar"
    assert [i.path for i in scan_roots(expand_roots([url]))] == [f"{url}#{k.rsplit('#', 1)[1]}" for k in
                                                                 list(expected)[:3]]  # fmt: skip
    with open_index(tmp_path / "ix2", model=str(tiny_clip)) as ix:
        assert ix.add([url]).new == 3


def test_missing_shard_is_an_error_before_anything_is_written(capsys, tmp_path, tiny_clip):
    code, _, err = run_cli(capsys, "index", f"{tmp_path}/{{00000..00001}}.tar", "--index", tmp_path / "ix",
                           "--model", tiny_clip, "-q")  # fmt: skip
    assert code != 0 and "00000.tar" in err


def test_webdataset_captions_reach_a_clip_retrieval_export(capsys, tmp_path, photos, tiny_clip):
    pa = pytest.importorskip("pyarrow.parquet")
    d, expected = _shards(tmp_path, photos)
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([d / "00000.tar", d / "00001.tar"])
    code, _, err = run_cli(capsys, "export", "--format", "clip-retrieval", tmp_path / "emb", "--index", tmp_path / "ix")
    assert code == 0, err
    table = pa.read_table(tmp_path / "emb" / "metadata" / "metadata_0.parquet").to_pylist()
    got = {r["image_path"]: (r["caption"], r["url"]) for r in table}
    assert got == {path: (caption, url) for path, (_, caption, url) in expected.items()}
