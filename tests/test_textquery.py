"""Start-up: commands load only what they use.

A re-scan of an unchanged folder loads no model; a text search on an index whose model's text
tower was exported answers with ``tokenizers`` + ``onnxruntime`` alone (torch and transformers
never imported) and gives the torch model's results; an empty index says so at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from visdex import open_index
from visdex.errors import IndexEmpty, ModelLoadError
from visdex.models.textquery import export_text_tower, fast_text_embedder, has_fast_text, query_graph

from clihelp import SRC, run_cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

QUERIES = ["a red car on the beach at night", "a photo of a cat", "coffee"]
# what a cold `visdex search` must not import: torch and transformers (the model), pydantic (Typer's parsing),
# Rich (plain piped output), FAISS (a small index is searched from SQLite), the ingest pipeline, command modules
HEAVY = ("torch", "transformers", "pydantic", "rich", "faiss", "visdex.ingest", "visdex.commands")


@pytest.fixture
def fast_queries(tmp_path, monkeypatch):
    """Text-tower exports switched on, into a cache of this test's own."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VISDEX_CACHE_DIR", str(cache))
    monkeypatch.setenv("VISDEX_QUERY_EXPORT", "auto")
    return cache


def _model_copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_unchanged_folder_loads_no_model(tmp_path, folder, tiny_clip):
    model = _model_copy(tiny_clip, tmp_path)
    with open_index(tmp_path / "ix", model=str(model)) as ix:
        first = ix.add([folder])
    assert first.new > 0
    for weights in model.glob("*.safetensors"):  # the model can no longer be loaded...
        weights.unlink()
    with open_index(tmp_path / "ix") as ix:
        again = ix.add([folder])  # ...and an unchanged folder does not need it
        assert not ix.model_loaded
    assert (again.new, again.updated, again.unchanged) == (0, 0, first.new)
    shutil.copy(next(iter(folder.iterdir())), folder / "new-copy.jpg")
    with open_index(tmp_path / "ix") as ix, pytest.raises(ModelLoadError):
        ix.add([folder])  # a new file does need it: the model is loaded then, and only then


def test_text_search_without_torch_equals_torch(fast_queries, tmp_path, folder, tiny_clip):
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        want = {q: [(h.path, h.score) for h in ix.search(q, k=5)] for q in QUERIES}
        torch_vecs = ix.embedder.embed_texts(QUERIES)
        assert ix.model_loaded
        assert ix.prepare_text_queries()
        assert not ix.prepare_text_queries()  # cached: exported once
        fp = ix.fingerprint
    assert has_fast_text(str(tiny_clip), ready=True)  # the export and its query-ready copy
    one_shot = fast_text_embedder(str(tiny_clip), fp, one_shot=True)
    assert one_shot.query_graph is not None and one_shot.query_graph.with_suffix(".onnx.data").is_file()
    cosines = (one_shot.embed_texts(QUERIES) * torch_vecs).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
    code = (
        "import json, sys\n"
        "from visdex import open_index\n"
        f"ix = open_index({str(tmp_path / 'ix')!r})\n"
        f"hits = {{q: [(h.path, h.score) for h in ix.search(q, k=5)] for q in {QUERIES!r}}}\n"
        "print(json.dumps({'hits': hits, 'loaded': ix.model_loaded,\n"
        "                  'heavy': sorted(m for m in ('torch', 'transformers') if m in sys.modules)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["heavy"] == [] and got["loaded"] is False
    for q in QUERIES:
        assert [p for p, _ in got["hits"][q]] == [p for p, _ in want[q]]
        np.testing.assert_allclose([s for _, s in got["hits"][q]], [s for _, s in want[q]], atol=1e-5)

    # the command line, cold: the one-shot path (query-ready graph, SQLite's vectors, quick parse, plain output)
    code = (
        "import atexit, json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "atexit.register(lambda: sys.stderr.write('HEAVY ' + json.dumps([m for m in heavy if m in sys.modules])))\n"
        "from visdex.cli import main\n"
        f"sys.argv = ['visdex', 'search', {QUERIES[0]!r}, '--index', {str(tmp_path / 'ix')!r}, '-n', '5', '--json']\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stderr.rsplit("HEAVY ", 1)[1]) == []
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["path"] for r in rows] == [p for p, _ in want[QUERIES[0]]]
    np.testing.assert_allclose([r["score"] for r in rows], [s for _, s in want[QUERIES[0]]], atol=1e-5)

    # an export made before query-ready copies existed gets its copy at its first fast query; a cache the copy
    # cannot be written to leaves the export itself answering, the same way
    copies = list((fast_queries / "onnx").glob("*/query/*/graph.onnx"))
    assert len(copies) == 1
    shutil.rmtree(copies[0].parents[1])  # as an older visdex left it: the export alone
    assert has_fast_text(str(tiny_clip)) and not has_fast_text(str(tiny_clip), ready=True)
    plain = fast_text_embedder(str(tiny_clip), fp)  # makes the copy
    assert plain.query_graph == copies[0] and has_fast_text(str(tiny_clip), ready=True)
    export = copies[0].parents[2]
    assert query_graph(export, "text.onnx", make=False) == copies[0]
    shutil.rmtree(copies[0].parents[1])
    (export / "query").write_text("not a folder")  # the copy cannot be made: the export answers, the same way
    fallback = fast_text_embedder(str(tiny_clip), fp, one_shot=True)
    assert fallback.query_graph is None
    np.testing.assert_allclose(fallback.embed_texts(QUERIES), plain.embed_texts(QUERIES), atol=1e-5)


def test_fast_path_is_off_when_asked(fast_queries, tmp_path, folder, tiny_clip, monkeypatch):
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        assert ix.prepare_text_queries()
        fp = ix.fingerprint
    assert fast_text_embedder(str(tiny_clip), fp) is not None
    monkeypatch.setenv("VISDEX_QUERY_EXPORT", "off")
    assert fast_text_embedder(str(tiny_clip), fp) is None
    with open_index(tmp_path / "ix") as ix:
        ix.search("a cat", k=1)
        assert ix.model_loaded


def test_image_only_model_has_no_text_export(fast_queries, tmp_path, folder, tiny_dinov2):
    with open_index(tmp_path / "ix", model=str(tiny_dinov2)) as ix:
        ix.add([folder])
        assert not ix.prepare_text_queries()
    assert export_text_tower(str(tiny_dinov2)) is None
    assert not (fast_queries / "onnx").exists()


def test_cli_index_exports_the_text_tower(fast_queries, capsys, tmp_path, folder, tiny_clip):
    code, out, err = run_cli(capsys, "index", folder, "--index", tmp_path / "ix", "--model", tiny_clip, "-q")
    assert code == 0, err
    assert has_fast_text(str(tiny_clip))


def test_cli_search_exports_in_the_background(fast_queries, capsys, tmp_path, folder, tiny_clip, monkeypatch):
    """An index made without the export (older visdex, or exports off) gets it after its first text search."""
    monkeypatch.setenv("VISDEX_QUERY_EXPORT", "off")
    code, _, err = run_cli(capsys, "index", folder, "--index", tmp_path / "ix", "--model", tiny_clip, "-q")
    assert code == 0, err
    assert not has_fast_text(str(tiny_clip))
    monkeypatch.setenv("VISDEX_QUERY_EXPORT", "auto")
    monkeypatch.setenv("PYTHONPATH", SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code, out, err = run_cli(capsys, "search", "a cat", "--index", tmp_path / "ix", "-n", "2")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 2  # answered at once; the export runs on in another process
    deadline = time.monotonic() + 120
    while not has_fast_text(str(tiny_clip)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert has_fast_text(str(tiny_clip))


def test_one_background_export_at_a_time(fast_queries, tiny_clip):
    """Searches made while a background export runs each start one; all but the first leave at once."""
    from visdex.models.textquery import _export_lock

    env = {**os.environ, "PYTHONPATH": SRC}
    with _export_lock(str(tiny_clip)) as mine:  # as the first export holds it
        assert mine
        cmd = [sys.executable, "-m", "visdex.models.textquery", str(tiny_clip)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    assert not has_fast_text(str(tiny_clip))  # the second one exported nothing


def test_search_on_an_empty_index_says_so(capsys, tmp_path):
    with open_index(tmp_path / "ix", model="clip-vit-b-32") as ix, pytest.raises(IndexEmpty, match="is empty"):
        ix.search("a cat")
    t0 = time.perf_counter()
    code, _, err = run_cli(capsys, "search", "a cat", "--index", tmp_path / "ix")
    assert code == IndexEmpty.exit_code and "is empty" in err and "visdex index" in err
    assert time.perf_counter() - t0 < 10  # no model was loaded, nothing was fetched from a hub


def test_cpu_indexing_runs_onnx_fp32_with_the_models_own_fingerprint(
    fast_queries, tmp_path, folder, tiny_clip, monkeypatch, cpu_flags
):
    """The default CPU backend on a CPU without AMX: ONNX fp32 once its export pays for itself; the vectors and
    the fingerprint are the torch model's, so one index takes vectors from either (a GPU later, the CPU now)."""
    import visdex.api
    from visdex.models.onnx import OnnxEmbedder

    files = sorted(folder.iterdir())
    half = tmp_path / "half"
    half.mkdir()
    for f in files[: len(files) // 2]:
        shutil.copy(f, half / f.name)
    monkeypatch.setenv("VISDEX_CPU_BACKEND", "torch")
    with open_index(tmp_path / "torch", model=str(tiny_clip)) as ix:
        ix.add([folder])
        want = {h.path.rsplit("/", 1)[-1]: ix.store.get([h.id])[0] for h in ix.search("a cat", k=100)}
        torch_fp = ix.fingerprint
    monkeypatch.setenv("VISDEX_CPU_BACKEND", "auto")
    cpu_flags("avx2")  # a CPU without AMX: there auto picks ONNX fp32 (with AMX, torch bf16)
    monkeypatch.setattr(visdex.api, "ONNX_MIN_IMAGES", 10_000)  # too few images to pay for an export: torch
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([half])
        assert not isinstance(ix._embedder, OnnxEmbedder)
    monkeypatch.setattr(visdex.api, "ONNX_MIN_IMAGES", 1)  # enough: export once, then ONNX Runtime embeds
    with open_index(tmp_path / "ix") as ix:
        report = ix.add([half, folder])
        assert (report.new, report.unchanged) == (len(files), len(files) // 2)
        assert isinstance(ix._embedder, OnnxEmbedder) and ix._embedder.same_as_model
        assert ix.fingerprint.compatible(torch_fp)
        got = {h.path.rsplit("/", 1)[-1]: ix.store.get([h.id])[0] for h in ix.search("a cat", k=100)}
    assert set(got) == set(want)
    for name, vec in want.items():
        assert float(vec @ got[name]) > 0.9999, name
    assert has_fast_text(str(tiny_clip))  # the fp32 export's text tower answers text queries too
