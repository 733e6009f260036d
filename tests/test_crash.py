"""Crash safety: kill -9 (the run and its decode workers), two writers, an interrupted rebuild, read-only
folders and full disks. Real processes, a real SQLite file, real FAISS; the crash loop itself is
benchmarks/crash_loop.py (50 kills), five of them run here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from visdex.api import open_index
from visdex.ingest import Progress
from visdex.store.db import IndexDB
from visdex.store.local import FAISS_NAME

from clihelp import SRC, run_cli

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)  # fmt: skip


def _dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


@pytest.fixture(scope="module")
def tiny_clip_b(tmp_path_factory) -> Path:
    from tinymodels import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip-b"), seed=1)


@pytest.fixture
def indexed(tmp_path, folder, tiny_clip) -> Path:
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder], batch_size=4)
    return tmp_path / "ix"


# -- 1. decode workers die with the run -------------------------------------------------------------
POOL = """
import sys, threading, time
from visdex.stages import _new_pool
def start():
    pool = _new_pool(2, None, None)
    for f in [pool.submit(time.sleep, 0.3) for _ in range(4)]:
        f.result()
    print(*pool._processes, flush=True)
    time.sleep(300)
if sys.argv[1] == "thread":  # a pool made off the main thread: no PDEATHSIG, the watching thread alone
    t = threading.Thread(target=start)
    t.start()
    t.join()
else:
    start()
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_decode_workers_exit_when_the_run_is_killed(where):
    run = _python(POOL, where)
    workers = [int(p) for p in run.stdout.readline().split()]
    assert len(workers) == 2, run.stderr.read() if run.poll() is not None else workers
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 6
    while not all(map(_dead, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [p for p in workers if not _dead(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, "decode workers outlived the killed run"


# -- 2. one writer at a time; schema creation is safe under concurrency -----------------------------
HOLD = """
import sys, time
from visdex.store.db import IndexDB
IndexDB(sys.argv[1]).hold_writer()
print("held", flush=True)
time.sleep(300)
"""


def test_a_second_writer_stops_at_once_and_readers_go_on(capsys, indexed, folder):
    holder = _python(HOLD, indexed)
    assert holder.stdout.readline().strip() == "held"
    try:
        t0 = time.monotonic()
        code, _, err = run_cli(capsys, "index", folder, "--index", indexed, "-q")
        assert code == 6 and f"index busy: another visdex process (pid {holder.pid}) is writing to" in err
        assert time.monotonic() - t0 < 10
        code, _, err = run_cli(capsys, "tag", "--labels", "cat,dog", "--index", indexed, "-q")
        assert code == 6, err
        code, out, err = run_cli(capsys, "status", "--index", indexed, "--json")
        assert code == 0 and json.loads(out)["vectors"] == 10, err
        code, out, err = run_cli(capsys, "search", next(folder.iterdir()), "--index", indexed, "--json", "-k", "1")
        assert code == 0 and out, err
    finally:
        holder.kill()  # kill -9: the OS drops the lock, nothing stale is left
        holder.wait()
    code, _, err = run_cli(capsys, "index", folder, "--index", indexed, "-q")
    assert code == 0, err


def test_runs_creating_one_new_index_at_once_all_succeed(tmp_path):
    """Each thread has its own SQLite connection, as two processes would (the race is SQLite's, not Python's)."""
    import threading

    errors = []
    for i in range(60):  # SQLITE_BUSY while another switches the new file to WAL: ~3% of rounds before the retry
        start = threading.Barrier(6)

        def create(d: Path = tmp_path / f"ix{i}", start: threading.Barrier = start) -> None:
            start.wait()
            try:
                IndexDB(d).close()
            except Exception as e:  # "table meta already exists" before the fix
                errors.append(e)

        threads = [threading.Thread(target=create) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]


# -- 3. an interrupted rebuild leaves the old index whole; re-running resumes --------------------------
class _KilledAfter(Progress):
    """Stops the run right after its first committed batch, as a kill -9 there would."""

    def advance(self, n: int = 1) -> None:
        raise KeyboardInterrupt


def _self_search_ok(ix, folder: Path) -> bool:
    for p in sorted(folder.iterdir())[:4]:
        hits = ix.search(p, k=2)
        if hits[0].path != str(p.resolve()) or abs(hits[0].score - 1) > 1e-4:
            return False
    return True


def test_an_interrupted_rebuild_leaves_the_old_index_searchable_and_resumes(indexed, folder, tiny_clip, tiny_clip_b):
    with open_index(indexed) as ix, pytest.raises(KeyboardInterrupt):
        ix.rebuild(str(tiny_clip_b), progress=_KilledAfter(), batch_size=4)
    with open_index(indexed) as ix:
        st = ix.status()
        assert st.fingerprint.source == str(tiny_clip.resolve()) and st.files_ok == st.vectors == 10
        assert _self_search_ok(ix, folder)
        assert ix.db.shadow_progress() == (4, 10)
    with open_index(indexed) as ix:
        rep = ix.rebuild(str(tiny_clip_b), batch_size=4)
        assert (rep.resumed, rep.embedded, rep.failed) == (4, 6, 0)
        st = ix.status()
        assert st.fingerprint.source == str(tiny_clip_b.resolve()) and st.files_ok == st.vectors == 10
        assert _self_search_ok(ix, folder) and ix.db.shadow_progress() is None
        assert ix.add([folder]).unchanged == 10
    with open_index(indexed) as ix, pytest.raises(KeyboardInterrupt):
        ix.rebuild(str(tiny_clip), progress=_KilledAfter(), batch_size=4)
    with open_index(indexed) as ix:  # run again with another model than the interrupted one: restarts
        assert ix.rebuild(str(tiny_clip_b), batch_size=4).resumed == 0
        assert ix.fingerprint.source == str(tiny_clip_b.resolve()) and _self_search_ok(ix, folder)


def test_a_file_that_no_longer_decodes_is_recorded_failed_by_the_rebuild(indexed, folder, tiny_clip_b):
    broken = sorted(folder.iterdir())[0]
    stat = broken.stat()
    broken.write_bytes(b"not an image any more" + b"\0" * (stat.st_size - 21))
    os.utime(broken, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: the index thinks it is unchanged
    with open_index(indexed) as ix:
        rep = ix.rebuild(str(tiny_clip_b))
        st = ix.status()
    assert rep.failed == 1 and st.files_ok == st.vectors == 9 and st.files_failed == 1
    assert "not re-embedded by the rebuild" in dict(st.failures)[str(broken.resolve())]


def test_a_catalog_rebuild_makes_the_vectors_a_fresh_index_would(tmp_path, photos, tiny_clip, tiny_clip_b):
    import csv

    names = sorted(photos)[:6]
    with open(tmp_path / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sku", "images", "title"])
        for i in range(3):
            w.writerow([f"sku{i}", f"{photos[names[2 * i]]}|{photos[names[2 * i + 1]]}", "a red cat"])
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add_catalog(tmp_path / "items.csv", text_weight=0.3)
        assert ix.rebuild(str(tiny_clip_b)).embedded == 3
        got = ix.store.get(ix.store.ids())
        assert ix.add_catalog(tmp_path / "items.csv", text_weight=0.3).unchanged == 3
    with open_index(tmp_path / "fresh", model=str(tiny_clip_b)) as fresh:
        fresh.add_catalog(tmp_path / "items.csv", text_weight=0.3)
        want = fresh.store.get(fresh.store.ids())
    assert np.allclose(got, want, atol=1e-5)


# -- 4. read-only commands never write; a read-only folder still answers; a full disk is DiskFull ----
def _snapshot(d: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir()}


def test_read_commands_write_nothing(capsys, indexed, folder):
    (indexed / FAISS_NAME).unlink()  # killed before it was saved: readers rebuild it in memory
    before = _snapshot(indexed)
    photo = next(folder.iterdir())
    for args in (["status"], ["search", photo, "-k", "3"], ["similar", photo, "-k", "3"]):
        code, _, err = run_cli(capsys, *args, "--index", indexed)
        assert code == 0, err
    assert _snapshot(indexed) == before


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-Urm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mount_namespace = pytest.mark.skipif(not sys.platform.startswith("linux") or not _unshare_works(),
                                           reason="needs unshare -Urm (a user + mount namespace)")  # fmt: skip


def _in_namespace(script: str, target: Path, *command) -> subprocess.CompletedProcess:
    """``command`` in a new user + mount namespace, after ``script`` (sh, given ``target`` as $1) mounted there."""
    argv = ["unshare", "-Urm", "sh", "-c", script + ' && shift && exec "$@"', "sh", target, *command]
    return subprocess.run(list(map(str, argv)), env=ENV, capture_output=True, text=True, timeout=600)


READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"'  # even root cannot write there


@needs_mount_namespace
def test_a_read_only_folder_answers_searches(indexed, folder):
    photo = sorted(folder.iterdir())[3]
    for args in (["search", photo, "--json", "-k", "2"], ["status", "--json"]):
        r = _in_namespace(READ_ONLY, indexed, sys.executable, "-m", "visdex", *args, "--index", indexed)
        assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["vectors"] == 10
    r = _in_namespace(READ_ONLY, indexed, sys.executable, "-m", "visdex", "index", folder, "--index", indexed, "-q")
    assert r.returncode == 5 and "read-only" in r.stderr


FULL = """
import json, os, shutil, sqlite3, subprocess, sys
src, mnt, photo, more = sys.argv[1:5]
ix = os.path.join(mnt, "ix")
shutil.copytree(src, ix)
def visdex(*args):
    r = subprocess.run([sys.executable, "-m", "visdex", *args, "--index", ix], capture_output=True, text=True)
    return {"rc": r.returncode, "out": r.stdout, "err": r.stderr[-400:]}
out = {}
from visdex.store.db import IndexDB
from visdex.errors import DiskFull
db = IndexDB(ix)  # opened while there is room: then the disk fills up under it
with open(os.path.join(mnt, "filler"), "wb", buffering=0) as f:
    try:
        while True:
            f.write(b"x" * 4096)
    except OSError:
        pass
try:
    db.add_roots(["/somewhere/else"] * 1)
    db.set_meta("big", "y" * 200_000)
    out["write"] = "no error"
except DiskFull as e:
    out["write"] = "DiskFull"
out["after"] = [db.conn.in_transaction, db.get_meta("big") is None, "/somewhere/else" not in db.roots()]
db.close()
out["status"] = visdex("status", "--json")
out["search"] = visdex("search", photo, "--json", "-k", "1")
out["index"] = visdex("index", more, "-q")
out["names"] = sorted(os.listdir(ix))
os.unlink(os.path.join(mnt, "filler"))
out["status_after"] = visdex("status", "--json")
out["integrity"] = sqlite3.connect(os.path.join(ix, "index.db")).execute("PRAGMA integrity_check").fetchone()[0]
print(json.dumps(out))
"""


@needs_mount_namespace
def test_a_full_disk_answers_reads_and_refuses_writes_cleanly(tmp_path, indexed, folder):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    more = tmp_path / "more"
    more.mkdir()
    for p in sorted(folder.iterdir())[:3]:
        shutil.copy(p, more / ("copy-" + p.name))
    tmpfs = 'mount -t tmpfs -o size=4m tmpfs "$1"'  # a small disk of its own, filled up by the script
    r = _in_namespace(tmpfs, mnt, sys.executable, "-c", FULL, indexed, mnt, next(folder.iterdir()), more)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["write"] == "DiskFull" and out["after"] == [False, True, True]
    assert out["status"]["rc"] == 0 and json.loads(out["status"]["out"])["vectors"] == 10, out["status"]
    assert out["search"]["rc"] == 0 and out["search"]["out"], out["search"]
    assert out["index"]["rc"] == 7 and "no space left" in out["index"]["err"].lower(), out["index"]
    assert not [n for n in out["names"] if n.endswith(".tmp")], out["names"]
    assert json.loads(out["status_after"]["out"])["files_ok"] == 10 and out["integrity"] == "ok"


SAVE_TOO_BIG = """
import json, os, resource, signal, sys
import numpy as np
from visdex.errors import DiskFull
from visdex.store.db import IndexDB
from visdex.store.local import LocalVectorStore
d = sys.argv[1]
rng = np.random.default_rng(0)
store = LocalVectorStore(IndexDB(d), 64)
store.upsert(np.arange(100), rng.standard_normal((100, 64)).astype("float32"))
store.flush()
saved = open(os.path.join(d, "vectors.faiss"), "rb").read()
store.upsert(np.arange(100, 3000), rng.standard_normal((2900, 64)).astype("float32"))  # committed: SQLite has it
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # the new FAISS file (~770 kB) cannot be written
try:
    store.flush()
    err = "no error"
except DiskFull as e:
    err = "DiskFull: " + str(e)
except Exception as e:
    err = type(e).__name__ + ": " + str(e)
kept = open(os.path.join(d, "vectors.faiss"), "rb").read() == saved
print(json.dumps({"error": err, "names": sorted(os.listdir(d)), "kept": kept, "count": store.count()}))
"""


def test_a_faiss_file_that_cannot_be_saved_is_disk_full_and_leaves_the_previous_one(tmp_path):
    r = _python(SAVE_TOO_BIG, tmp_path / "ix")
    stdout, stderr = r.communicate(timeout=300)
    assert r.returncode == 0, stderr
    out = json.loads(stdout)
    assert out["error"].startswith("DiskFull: cannot save the vector index"), out
    assert out["kept"] and out["count"] == 3000 and not [n for n in out["names"] if n.endswith(".tmp")], out
    from visdex.store.local import LocalVectorStore

    assert LocalVectorStore(IndexDB(tmp_path / "ix"), 64).index.ntotal == 3000  # the old file: not trusted


# -- 5. five kills in a row, then the same checks as benchmarks/crash_loop.py --------------------------
def test_crash_loop_five_kills(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from crash_loop import crash_loop
    finally:
        sys.path.remove(str(BENCHMARKS))
    res = crash_loop(tmp_path, 5, files=48, batch_size=2, phases=["rebuild", "index", "tag", "delete", "rebuild"],
                     status_inline=True, fork=True, early_fraction=0.0, log=lambda *_: None)  # fmt: skip
    assert res["failure_count"] == 0, res["failures"]
    assert res["kills_total"] >= 1 and res["orphaned_workers"] == 0 and res["final_files_indexed"] == 48


def test_integrity_helpers_see_a_broken_index(tmp_path, indexed):
    """The crash loop's checks can fail: an indexed file without a vector is reported."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from crash_loop import check_index
    finally:
        sys.path.remove(str(BENCHMARKS))
    import random

    conn = sqlite3.connect(indexed / "index.db")
    conn.execute("DELETE FROM vectors WHERE id = (SELECT MIN(id) FROM vectors)")
    conn.commit()
    conn.close()
    problems = check_index(indexed, random.Random(0))
    assert any("indexed files without a vector" in p for p in problems), problems
