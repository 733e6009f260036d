"""Ingest and search end to end through the Python API, on real photos and real bad files."""

from __future__ import annotations

import os
import sqlite3

import numpy as np
import pytest

from visdex import open_index
from visdex.errors import BadQuery, ModelMismatch, UnsupportedModality

from imagefactory import real_photos, write_bad_files, write_photo


def _ids_by_name(ix) -> dict[str, int]:
    rows = ix.db.conn.execute("SELECT id, path FROM files WHERE status = 'ok'").fetchall()
    return {os.path.basename(p): i for i, p in rows}


def test_index_then_search_by_text_and_image(tmp_path, folder, photos):
    with open_index(tmp_path / "ix", model="lite0-minilm") as ix:
        report = ix.add([folder])
        assert report.new == len(photos) and report.failed == 0
        assert os.path.basename(ix.search("kitten", k=3)[0].path).startswith("chelsea")
        assert os.path.basename(ix.search("breakfast drink", k=3)[0].path).startswith("coffee")
        # an example image that is not in the index: a shrunk, recompressed copy of the coffee photo
        copy = write_photo(tmp_path, "query", real_photos()["coffee"][::2, ::2], quality=60)
        hits = ix.search(str(copy), k=2)
        assert os.path.basename(hits[0].path).startswith("coffee") and hits[0].score > hits[1].score + 0.2
        # similar() to an indexed file leaves the file itself out
        sim = ix.similar(folder / photos["chelsea"].name, k=3)
        assert all(not os.path.basename(h.path).startswith("chelsea") for h in sim) and len(sim) == 3


def test_hits_carry_metadata_and_scores_are_sorted(tmp_path, folder, tiny_clip):
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        hits = ix.search("a photo", k=5)
        assert len(hits) == 5
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert all(h.width and h.height and h.format == "JPEG" for h in hits)


def test_bad_files_are_recorded_and_never_fatal(tmp_path, folder, tiny_clip):
    bad = write_bad_files(folder)
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        report = ix.add([folder])
        st = ix.status()
    failed = {os.path.basename(p) for p, _ in st.failures}
    good_bad = {k for k in ("mislabelled_png", "heic", "exif_rotated") if k in bad}
    expected_failed = {p.name for k, p in bad.items() if k not in good_bad}
    assert failed == expected_failed
    assert report.failed == len(expected_failed) == st.files_failed
    assert all(reason for _, reason in st.failures)
    assert st.files_ok == st.vectors  # nothing half-written
    # the failures are not retried while unchanged
    with open_index(tmp_path / "ix") as ix:
        again = ix.add([folder])
    assert again.failed == 0 and again.new == 0 and again.unchanged == st.files_ok + st.files_failed


def test_exif_rotation_and_heic_metadata(tmp_path, tiny_clip):
    d = tmp_path / "in"
    d.mkdir()
    bad = write_bad_files(d)
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([d])
        rot = ix.db.file_by_path(str(bad["exif_rotated"].resolve()))
        heic = ix.db.file_by_path(str(bad["heic"].resolve()))
    assert rot.status == "ok" and rot.height > rot.width  # stored landscape, shown portrait
    assert heic.status == "ok" and heic.format in ("HEIF", "HEIC")


def test_incremental_move_rename_change_delete(tmp_path, folder, photos, tiny_clip):
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        before = _ids_by_name(ix)
    n = len(before)
    (folder / "sub").mkdir()
    os.rename(folder / "chelsea.jpg", folder / "sub" / "cat-renamed.jpg")  # moved + renamed
    (folder / "rocket.jpg").unlink()  # deleted
    write_photo(folder, "coffee", real_photos()["astronaut"])  # same name, new content
    with open_index(tmp_path / "ix") as ix:
        r = ix.add([folder])
        after = _ids_by_name(ix)
        assert (r.new, r.updated, r.moved, r.removed, r.failed) == (0, 1, 1, 1, 0)
        assert r.unchanged == n - 3
        assert after["cat-renamed.jpg"] == before["chelsea.jpg"]  # kept its id and vector
        assert "rocket.jpg" not in after and len(after) == n - 1
        assert ix.store.count() == n - 1
        assert all("rocket" not in h.path for h in ix.search("rocket", k=n))
        # the changed file's vector is the new content's
        v = ix.store.get([after["coffee.jpg"]])[0]
        assert float(v @ ix.query_vector(photos["astronaut"])) > 0.99
    with open_index(tmp_path / "ix") as ix:  # nothing to do the second time
        r2 = ix.add([folder])
    assert (r2.new, r2.updated, r2.moved, r2.removed, r2.unchanged) == (0, 0, 0, 0, n - 1)


def test_model_mismatch_is_an_error_that_says_how_to_reindex(tmp_path, folder, tiny_clip, tiny_dinov2):
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
    with pytest.raises(ModelMismatch, match="--rebuild"):
        open_index(tmp_path / "ix", model=str(tiny_dinov2))
    with open_index(tmp_path / "ix") as ix:  # without --model: the index's own model
        assert len(ix.search("x", k=2)) == 2


def test_rebuild_switches_model(tmp_path, folder, tiny_clip, tiny_dinov2):
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        n = len(ix)
    with open_index(tmp_path / "ix") as ix:
        rep = ix.rebuild(str(tiny_dinov2))  # re-embeds aside and swaps: add finds nothing left to do
        r = ix.add([folder])
        assert rep.embedded == n and r.unchanged == n and len(ix) == n
        assert ix.fingerprint.dim == ix.embedder.dim and ix.fingerprint.source == str(tiny_dinov2.resolve())
        with pytest.raises(UnsupportedModality):
            ix.search("a text query", k=2)


def test_bad_queries(tmp_path, folder, tiny_clip):
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        with pytest.raises(BadQuery):
            ix.search("   ", k=3)
        with pytest.raises(BadQuery, match="no such image"):
            ix.search(str(tmp_path / "missing.jpg"), k=3)
        with pytest.raises(BadQuery):
            ix.search("x", k=0)


def test_vectors_are_normalised_float32_in_sqlite(tmp_path, folder, tiny_clip):
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        dim = ix.fingerprint.dim
    con = sqlite3.connect(tmp_path / "ix" / "index.db")
    blobs = [r[0] for r in con.execute("SELECT vec FROM vectors")]
    vecs = np.frombuffer(b"".join(blobs), np.float32).reshape(len(blobs), dim)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_process_pool_decoding_gives_same_vectors(tmp_path, tiny_clip, monkeypatch):
    from visdex import stages

    d = tmp_path / "many"
    d.mkdir()
    arrays = list(real_photos().values())
    for i in range(12):
        write_photo(d, f"img{i:02d}", np.ascontiguousarray(np.roll(arrays[i % len(arrays)], i * 7, axis=1)))
    monkeypatch.setattr(stages, "POOL_MIN_FILES", 4)
    with open_index(tmp_path / "a", model=str(tiny_clip)) as a, open_index(tmp_path / "b", model=str(tiny_clip)) as b:
        a.add([d], workers=2, batch_size=5)
        b.add([d], workers=1, batch_size=5)
        va = a.store.get(sorted(_ids_by_name(a).values()))
        vb = b.store.get(sorted(_ids_by_name(b).values()))
    np.testing.assert_allclose(va, vb, atol=1e-5)
