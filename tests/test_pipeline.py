"""The ingest pipeline's structure: decode, model and writes overlap; order and failures survive it.

No timings: each test checks a property that a serialised or reordering pipeline would break.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from visdex import ingest, open_index, stages
from visdex.files import FileInfo
from visdex.models.base import Preprocess

from imagefactory import real_photos, write_bad_files, write_photo

PRE = Preprocess(size=32, resize_to=36)


def _infos(paths) -> list[FileInfo]:
    return [FileInfo(str(p), str(p.parent), p.stat().st_size, p.stat().st_mtime) for p in paths]


@pytest.fixture
def mixed(tmp_path):
    """20 photos with the bad files spread between them: (paths in order, names of the bad ones)."""
    arrays = list(real_photos().values())
    (tmp_path / "bad").mkdir()
    bad = write_bad_files(tmp_path / "bad")
    undecodable = [p for k, p in bad.items() if k not in ("mislabelled_png", "heic", "exif_rotated")]
    paths = []
    for i in range(20):
        paths.append(write_photo(tmp_path, f"img{i:02d}", np.ascontiguousarray(np.roll(arrays[i % 10], i, axis=0))))
        if i % 3 == 0 and undecodable:
            paths.append(undecodable.pop())
    return paths, {p.name for p in paths if p.parent.name == "bad"}


@pytest.mark.parametrize("workers,chunk,window", [(1, 4, None), (2, 1, 1), (2, 3, 2), (2, 4, None)])
def test_decoded_keeps_input_order_and_records_failures(mixed, monkeypatch, workers, chunk, window):
    paths, bad_names = mixed
    monkeypatch.setattr(stages, "POOL_MIN_FILES", 4)
    results = list(stages.decoded(_infos(paths), PRE, workers, chunk=chunk, window=window))
    assert [r.info.path for r in results] == [str(p) for p in paths]
    failed = {os.path.basename(r.info.path) for r in results if isinstance(r, stages.Failed)}
    assert failed == bad_names and all(r.reason for r in results if isinstance(r, stages.Failed))
    loaded = [r for r in results if isinstance(r, stages.Loaded)]
    assert all(r.pixels.shape == (32, 32, 3) and r.pixels.dtype == np.uint8 for r in loaded)


def test_model_runs_while_the_next_batch_is_collected(tmp_path, folder, tiny_clip):
    """The model thread embeds batch k while the caller keeps pulling batch k+1 from the decoders.

    The embed function below refuses to finish batch k until batch k+1 has been pulled; a
    pipeline that embeds and then decodes (one after the other) never gets there and fails.
    """
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        emb = ix.embedder
        ix.ensure_fingerprint()
        infos = _infos(sorted(folder.glob("*.jpg")))
        pulled: list[int] = []
        pulled_more = threading.Condition()
        embed_threads = set()

        def batches():
            decoded = stages.decoded(infos, emb.preprocess, 1)
            for k, batch in enumerate(ingest._batches(decoded, 2, ingest.Progress())):
                with pulled_more:
                    pulled.append(k)
                    pulled_more.notify_all()
                yield batch

        calls = []

        def embed(batch):
            k = len(calls)
            calls.append(k)
            embed_threads.add(threading.current_thread().name)
            last = (len(infos) + 1) // 2 - 1
            with pulled_more:  # wait (bounded) until the next batch has been pulled
                assert pulled_more.wait_for(lambda: k == last or k + 1 in pulled, timeout=30), "pipeline is serial"
            return stages.embed_batch(emb, batch)

        report = ingest.IngestReport()
        ingest._embed_and_store(ix.db, ix.store, embed, batches(), set(), report, ingest.Progress())
        assert report.new == len(infos) and len(ix) == len(infos)
        assert embed_threads and threading.current_thread().name not in embed_threads
        # writes happened in batch order: ids follow the file order
        rows = ix.db.conn.execute("SELECT path FROM files ORDER BY id").fetchall()
        assert [r[0] for r in rows] == [i.path for i in infos]


def test_a_model_error_stops_the_run_and_keeps_committed_batches(tmp_path, folder, tiny_clip):
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        emb = ix.embedder
        ix.ensure_fingerprint()
        infos = _infos(sorted(folder.glob("*.jpg")))
        calls = []

        def embed(batch):
            calls.append(len(batch))
            if len(calls) == 3:
                raise RuntimeError("out of memory")
            return stages.embed_batch(emb, batch)

        batches = ingest._batches(stages.decoded(infos, emb.preprocess, 1), 2, ingest.Progress())
        with pytest.raises(RuntimeError, match="out of memory"):
            ingest._embed_and_store(ix.db, ix.store, embed, batches, set(), ingest.IngestReport(), ingest.Progress())
        assert len(ix) == 4 and ix.db.counts()["ok"] == 4  # the two batches before the failure, whole
    with open_index(tmp_path / "ix") as ix:  # and the next run resumes
        report = ix.add([folder])
        assert report.new == len(infos) - 4 and len(ix) == len(infos)


def test_pool_ingest_of_many_files_equals_in_process(tmp_path, tiny_clip, monkeypatch):
    """A pool run with small chunks and a small window gives the same rows and vectors as one process."""
    d = tmp_path / "many"
    d.mkdir()
    arrays = list(real_photos().values())
    for i in range(30):
        write_photo(d, f"img{i:02d}", np.ascontiguousarray(np.roll(arrays[i % len(arrays)], i * 5, axis=1)))
    write_bad_files(d)
    monkeypatch.setattr(stages, "POOL_MIN_FILES", 4)
    monkeypatch.setattr(stages, "CHUNK_FILES", 3)
    monkeypatch.setattr(stages, "PREFETCH_IMAGES", 6)
    vecs = []
    for name, workers in (("pool", 2), ("inproc", 1)):
        with open_index(tmp_path / name, model=str(tiny_clip)) as ix:
            report = ix.add([d], workers=workers, batch_size=4)
            rows = dict(ix.db.conn.execute("SELECT path, id FROM files WHERE status = 'ok'").fetchall())
            by_name = {os.path.basename(p): ix.store.get([i])[0] for p, i in rows.items()}
            vecs.append((report.new, report.failed, by_name))
    (n1, f1, v1), (n2, f2, v2) = vecs
    assert (n1, f1) == (n2, f2) and n1 >= 30 and f1 >= 5 and set(v1) == set(v2)
    for name in v1:
        np.testing.assert_allclose(v1[name], v2[name], atol=1e-5)


def test_the_gpu_path_is_a_stage_that_never_imports_ingest():
    """ingest picks the stages (visdex.stages: CPU, or visdex.gpu on CUDA) and runs them; neither stage module
    imports ingest back, even lazily inside a function (the cycle this replaced: gpu.py reached for ingest's
    private decode workers and result types)."""
    import ast

    import visdex

    src = Path(visdex.__file__).parent
    for name in ("gpu.py", "stages.py"):
        imported = set()
        for node in ast.walk(ast.parse((src / name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                imported.add((node.module or "").rsplit(".", 1)[-1])
                imported |= {a.name for a in node.names if node.module is None}  # from . import ingest
            elif isinstance(node, ast.Import):
                imported |= {a.name.rsplit(".", 1)[-1] for a in node.names}
        assert "ingest" not in imported, f"{name} imports visdex.ingest"
