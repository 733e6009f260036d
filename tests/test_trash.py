"""The trash: duplicates move out of the way with an undo, and nothing is lost. Real files, a real SQLite
index with FAISS, real processes killed with SIGKILL."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from visdex import open_index
from visdex.dupes import find_duplicates
from visdex.errors import BadQuery, IndexBusy, NotFound
from visdex.trash import (
    JOURNAL_NAME,
    TRASH_DIR_NAME,
    PlannedMove,
    list_batches,
    move_to_trash,
    plan_from_groups,
    plan_moves,
    undo,
)

from clihelp import SRC, run_cli

ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
COPIES = {"chelsea": ["copies/chelsea.jpg", "copies/deep/chelsea-2.jpg"], "coffee": ["more/coffee.jpg"],
          "rocket": ["copies/rocket.jpg"]}  # fmt: skip


def _hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the trash included) -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _answers(ix, folder: Path) -> list:
    """What the index answers: its rows, and the neighbours of every photo (paths, ids, scores)."""
    rows = sorted((r.id, r.path, r.size, r.mtime, r.hash) for r in ix.db.files_by_ids(ix.store.ids()).values())
    # every neighbour (no cut among ties), exact copies' equal scores in id order: FAISS orders ties by insertion
    near = [sorted((-round(h.score, 5), h.id, h.path) for h in ix.similar(p, k=len(ix)))
            for p in sorted(folder.glob("*.jpg"))]  # fmt: skip
    return [len(ix), rows, near]


@pytest.fixture
def library(tmp_path, folder, tiny_clip) -> tuple[Path, Path]:
    """(index dir, photo folder): the real photos plus exact copies of three of them in subfolders."""
    for name, copies in COPIES.items():
        for rel in copies:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / f"{name}.jpg", folder / rel)
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder], batch_size=8, workers=1)
    return tmp_path / "ix", folder


def _plan(ix):
    return plan_from_groups(ix, find_duplicates(ix, exact_only=True))


def test_move_then_undo_brings_back_every_byte_and_the_same_answers(library):
    ix_dir, folder = library
    before = _hashes(folder)
    with open_index(ix_dir) as ix:
        answers = _answers(ix, folder)
        ix.db.conn.execute("INSERT INTO tags VALUES ((SELECT id FROM files WHERE path LIKE '%deep/chelsea-2.jpg'), "
                           "'cat', 0.9)")  # fmt: skip
        plan = _plan(ix)
        assert plan.files == 4 and plan.bytes == sum(os.path.getsize(folder / r) for c in COPIES.values() for r in c)
        kept = {m.keeper_path for m in plan.moves}
        report = move_to_trash(ix, plan)
        assert len(report.moved) == 4 and report.copied == 0 and report.bytes == plan.bytes
        for src, dst in report.moved:
            assert not os.path.exists(src) and os.path.isfile(dst) and ix.db.file_by_path(src) is None
            assert Path(dst).is_relative_to(folder / TRASH_DIR_NAME / report.batch)
        assert all(os.path.isfile(k) for k in kept)
        assert len(ix) == answers[0] - 4
        moved = {s for s, _ in report.moved}
        assert not any(h.path in moved for p in folder.glob("*.jpg") for h in ix.similar(p, k=50))
        assert find_duplicates(ix, exact_only=True) == []
        assert [(b.id, b.state, b.files, b.bytes) for b in list_batches(ix)] == [(report.batch, "moved", 4, plan.bytes)]
        back = undo(ix)
        assert sorted(back.restored) == sorted(moved) and not back.reindex and not back.conflicts
        assert _hashes(folder) == before  # every byte back, the trash folder gone
        assert _answers(ix, folder) == answers  # the same rows, ids, vectors and neighbours
        assert ix.db.conn.execute("SELECT label FROM tags").fetchall() == [("cat",)]
        assert list_batches(ix)[0].state == "undone"
        with pytest.raises(NotFound):
            undo(ix)  # nothing left to undo
        with pytest.raises(BadQuery, match="undone already"):
            undo(ix, report.batch)
    with open_index(ix_dir) as ix:  # a re-scan finds nothing to do: the restored rows match the files
        r = ix.add([folder], workers=1)
        assert (r.new, r.updated, r.removed, r.moved) == (0, 0, 0, 0)


def test_move_across_file_systems_copies_verifies_and_unlinks(library, tmp_path):
    ix_dir, folder = library
    before = _hashes(folder)
    shm = Path("/dev/shm")
    other_fs = shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev
    trash = Path(shm / f"visdex-trash-test-{os.getpid()}") if other_fs else tmp_path / "elsewhere"
    try:
        with open_index(ix_dir) as ix:
            answers = _answers(ix, folder)
            # on another file system the rename fails (EXDEV) and the copy path runs; else it is forced
            report = move_to_trash(ix, _plan(ix), trash, copy=not other_fs)
            assert report.copied == 4 and len(report.moved) == 4
            for src, dst in report.moved:
                assert not os.path.exists(src) and Path(dst).is_relative_to(trash)
                assert os.path.getmtime(dst) == ix_mtime(answers, src)  # times kept: undo finds the file unchanged
            assert not list(trash.rglob("*.visdex-partial"))
            undo(ix, report.batch[:12])  # a unique prefix names a batch
            assert _hashes(folder) == before and _answers(ix, folder) == answers
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def ix_mtime(answers, path: str) -> float:
    return next(r[3] for r in answers[1] if r[1] == path)


def test_name_clashes_in_the_trash_get_new_names(library, tmp_path):
    ix_dir, folder = library
    trash = tmp_path / "bin"
    with open_index(ix_dir) as ix:
        plan = _plan(ix)
        first = move_to_trash(ix, plan.moves[:1], trash)
        dst = Path(first.moved[0][1])
        undo(ix)
        dst.parent.mkdir(parents=True)
        dst.write_bytes(b"someone else's file")  # the same batch-relative name, taken
        again = move_to_trash(ix, plan.moves[:1], trash)
        assert again.moved[0][1] != str(dst) and dst.read_bytes() == b"someone else's file"


def test_outside_the_roots_and_unsafe_trash_folders_are_refused(library, tmp_path, photos):
    ix_dir, folder = library
    loose = tmp_path / "loose.jpg"
    shutil.copy(photos["chelsea"], loose)
    with open_index(ix_dir) as ix:
        ix.add([loose], workers=1)  # indexed on its own: its root is the file, no folder to hold a trash
        keeper = ix.db.file_by_path(str(folder / "chelsea.jpg")).id
        lid = ix.db.file_by_path(str(loose)).id
        plan = plan_moves(ix, [(keeper, [lid])])  # a plan leaves it out, saying why
        assert not plan.moves and "not under an indexed folder" in plan.skipped[0][1]
        with pytest.raises(BadQuery, match="not under an indexed folder"):  # a move asked for directly is refused
            move_to_trash(ix, [PlannedMove(lid, str(loose), 1, keeper, str(folder / "chelsea.jpg"))])
        assert loose.exists() and ix.db.file_by_path(str(loose)) is not None
        plan = _plan(ix)
        with pytest.raises(BadQuery, match="would be indexed again"):
            move_to_trash(ix, plan, folder / "bin")
        with pytest.raises(BadQuery, match="inside the index folder"):
            move_to_trash(ix, plan, ix_dir / "bin")
        with pytest.raises(BadQuery, match="keeper"):
            plan_moves(ix, [(keeper, [keeper])])
        with pytest.raises(NotFound):
            plan_moves(ix, [(keeper, [10**9])])
        assert not (folder / "bin").exists() and not (ix_dir / "bin").exists()
        assert len(ix) == len(list(folder.rglob("*.jpg"))) + 1


# -- kill -9 ------------------------------------------------------------------------------------
# The k-th file-system step of a move (a rename, unlink or fsync) kills the process: every step is hit.
KILLER = """
import os, signal, sys
from visdex import open_index
from visdex.dupes import find_duplicates
from visdex.trash import move_to_trash, plan_from_groups
ix_dir, at, copy = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "copy"
ix = open_index(ix_dir)
plan = plan_from_groups(ix, find_duplicates(ix, exact_only=True))
count = [0]
def deadly(fn):
    def wrapped(*a, **kw):
        count[0] += 1
        if count[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*a, **kw)
    return wrapped
os.rename, os.unlink, os.fsync = deadly(os.rename), deadly(os.unlink), deadly(os.fsync)
move_to_trash(ix, plan, copy=copy)
print("finished", count[0])
"""


def _consistent(ix, folder: Path, before: dict[str, str]) -> None:
    """Every file is in place (and indexed) or in the trash (and not indexed) with a journal entry for it."""
    import sqlite3

    journal = sqlite3.connect(ix.db.dir / JOURNAL_NAME)
    dst_of = {os.fsdecode(s): os.fsdecode(d) for s, d in journal.execute("SELECT src, dst FROM entries")}
    journal.close()
    for rel, digest in before.items():
        src = str(folder / rel)
        if os.path.exists(src):
            assert hashlib.sha256(Path(src).read_bytes()).hexdigest() == digest
        else:
            dst = Path(dst_of[src])
            assert hashlib.sha256(dst.read_bytes()).hexdigest() == digest, rel


# by default every other or third step (each run is a fresh interpreter); every one of them with -m slow
@pytest.mark.parametrize(
    ("mode", "stride"),
    [("rename", 2), ("copy", 3), pytest.param("rename", 1, marks=pytest.mark.slow),
     pytest.param("copy", 1, marks=pytest.mark.slow)],
)  # fmt: skip
def test_kill_9_at_every_step_of_a_move_leaves_files_that_undo_restores(library, mode, stride):
    ix_dir, folder = library
    before = _hashes(folder)
    with open_index(ix_dir) as ix:
        answers = _answers(ix, folder)
    at, seen_finish, kills = 1, False, 0
    while not seen_finish:
        run = subprocess.run([sys.executable, "-c", KILLER, str(ix_dir), str(at), mode], env=ENV,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        seen_finish = run.returncode == 0
        assert seen_finish or run.returncode == -signal.SIGKILL, run.stderr
        kills += not seen_finish
        with open_index(ix_dir) as ix:
            _consistent(ix, folder, before)
            if list_batches(ix):  # the batch got as far as its journal; listing finished the crashed move:
                for rel in before:  # in place and indexed, or in the trash and not
                    src = str(folder / rel)
                    assert (ix.db.file_by_path(src) is not None) == os.path.exists(src), (at, rel)
                undo(ix)
            assert _hashes(folder) == before, at
            assert _answers(ix, folder) == answers, at
            (ix_dir / JOURNAL_NAME).unlink()  # each run starts from a clean journal
        at += stride
    assert kills >= 4, kills


UNDO_KILLER = KILLER.replace("plan = plan_from_groups(ix, find_duplicates(ix, exact_only=True))\n", "").replace(
    "move_to_trash(ix, plan, copy=copy)", "from visdex.trash import undo; undo(ix)"
)


def test_kill_9_during_an_undo_then_undo_again_brings_everything_back(library, tmp_path):
    ix_dir, folder = library
    before = _hashes(folder)
    with open_index(ix_dir) as ix:
        answers = _answers(ix, folder)
    at, finished = 1, False
    while not finished:
        with open_index(ix_dir) as ix:
            move_to_trash(ix, _plan(ix), tmp_path / f"bin-{at}", copy=at % 2 == 0)  # undo copies back for even ones
        run = subprocess.run([sys.executable, "-c", UNDO_KILLER, str(ix_dir), str(at), "-"], env=ENV,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        finished = run.returncode == 0
        assert finished or run.returncode == -signal.SIGKILL, run.stderr
        with open_index(ix_dir) as ix:
            if not finished:
                assert list_batches(ix)[0].state == "undone"  # the interrupted undo was finished by looking
            assert _hashes(folder) == before, at
            assert _answers(ix, folder) == answers, at
        at += 3


def test_undo_leaves_a_file_in_the_trash_when_its_place_is_taken_and_tries_again(library):
    ix_dir, folder = library
    before = _hashes(folder)
    with open_index(ix_dir) as ix:
        report = move_to_trash(ix, _plan(ix))
        src, dst = report.moved[0]
        Path(src).write_bytes(b"a new file with the old name")
        back = undo(ix)
        assert [p for p, _ in back.conflicts] == [src] and len(back.restored) == 3
        assert Path(src).read_bytes() == b"a new file with the old name" and os.path.exists(dst)
        assert list_batches(ix)[0].state == "partly undone"
        os.unlink(src)
        again = undo(ix, report.batch)
        assert again.restored == [src] and not again.conflicts
        assert _hashes(folder) == before


def test_a_second_writer_is_refused_while_a_move_would_run(library):
    ix_dir, folder = library
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from visdex.store.db import IndexDB; "
                               "IndexDB(sys.argv[1]).hold_writer(); print('held', flush=True); time.sleep(60)",
                               str(ix_dir)], env=ENV, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with open_index(ix_dir) as ix:
            plan = _plan(ix)
            with pytest.raises(IndexBusy):
                move_to_trash(ix, plan)
        assert all(os.path.exists(m.path) for m in plan.moves)
    finally:
        holder.kill()
        holder.wait()


# -- the command line ---------------------------------------------------------------------------
def test_cli_dry_run_moves_nothing_apply_moves_and_undo_restores(library, capsys):
    ix_dir, folder = library
    before = _hashes(folder)
    code, out, err = run_cli(capsys, "dupes", "--index", ix_dir, "--exact-only", "--trash")
    assert code == 0, err
    assert "dry run" in out and "would move 4 files" in out and " -> " in out
    assert str(folder / "copies" / "deep" / "chelsea-2.jpg") in out
    assert _hashes(folder) == before and not (ix_dir / JOURNAL_NAME).exists()
    code, out, err = run_cli(capsys, "dupes", "--index", ix_dir, "--exact-only", "--trash", "--apply")
    assert code == 0, err
    assert "moved 4 files" in out and "visdex trash undo" in out
    assert not (folder / "copies" / "rocket.jpg").exists()
    code, out, err = run_cli(capsys, "trash", "list", "--index", ix_dir)
    assert code == 0 and "moved" in out and "4 files" in out
    code, out, err = run_cli(capsys, "trash", "undo", "--index", ix_dir)
    assert code == 0, err
    assert "restored 4 files" in out
    assert _hashes(folder) == before
    code, out, err = run_cli(capsys, "trash", "undo", "--index", ix_dir)
    assert code == 2 and "nothing to undo" in err
    code, out, err = run_cli(capsys, "dupes", "--index", ix_dir, "--move-to", folder / "bin", "--apply")
    assert code == 2 and "would be indexed again" in err


# -- the HTTP API -------------------------------------------------------------------------------
def _client(ix_dir: Path, **kw):
    from visdex.server import create_app

    from serverhelp import local_client

    return local_client(create_app(ix_dir, **kw))


def test_http_preview_apply_list_undo(library):
    ix_dir, folder = library
    before = _hashes(folder)
    with _client(ix_dir) as c:
        keeper = c.get("/api/search", params={"id": 1, "k": 1}).status_code  # a search before: the index is served
        assert keeper == 200
        groups = c.get("/api/duplicates", params={"exact_only": True}).json()["groups"]
        chosen = [{"keeper_id": g["keeper_id"], "move_ids": [m["id"] for m in g["members"] if m["id"] !=
                   g["keeper_id"]]} for g in groups]  # fmt: skip
        pre = c.post("/api/trash/preview", json={"groups": chosen})
        assert pre.status_code == 200, pre.text
        body = pre.json()
        assert body["files"] == 4 and body["bytes"] == sum(m["bytes"] for m in body["moves"]) > 0
        assert c.post("/api/trash/preview", json={"suggested": True, "exact_only": True}).json()["files"] == 4
        assert _hashes(folder) == before  # a preview moves nothing
        moved = c.post("/api/trash/apply", json={"suggested": True, "exact_only": True})
        assert moved.status_code == 200, moved.text
        batch = moved.json()["batch"]
        assert moved.json()["files"] == 4
        gone = {m["path"] for m in moved.json()["moved"]}
        assert not any(os.path.exists(p) for p in gone)
        hits = c.get("/api/search", params={"id": 1, "k": 50}).json()["results"]
        assert hits and not gone & {h["path"] for h in hits}  # the served index follows
        listed = c.get("/api/trash/batches").json()
        assert listed["count"] == 1 and listed["batches"][0]["id"] == batch and listed["batches"][0]["files"] == 4
        back = c.post("/api/trash/undo", json={"batch": batch})
        assert back.status_code == 200 and back.json()["files"] == 4, back.text
        assert _hashes(folder) == before
        hits = c.get("/api/search", params={"id": 1, "k": 50}).json()["results"]
        assert gone <= {h["path"] for h in hits}
        assert c.post("/api/trash/undo", json={}).status_code == 404
        assert c.post("/api/trash/apply", json={"groups": chosen, "suggested": True}).status_code == 422
        # a page elsewhere can POST text/plain without a CORS preflight: never read as JSON, nothing moves
        plain = c.post("/api/trash/apply", content=b'{"suggested": true}', headers={"Content-Type": "text/plain"})
        assert plain.status_code == 422 and _hashes(folder) == before
        assert c.post("/api/trash/apply", json={"suggested": True, "trash": "relative/bin"}).status_code == 422
        bad = c.post("/api/trash/apply", json={"suggested": True, "exact_only": True, "trash": str(folder / "bin")})
        assert bad.status_code == 422 and bad.json()["field"] == "trash"
        assert c.post("/api/trash/preview", json={"groups": [{"keeper_id": 1, "move_ids": [10**9]}]}).status_code == 404
        spec = c.get("/openapi.json").json()
        for path in ("/api/trash/preview", "/api/trash/apply", "/api/trash/batches", "/api/trash/undo"):
            op = next(iter(spec["paths"][path].values()))
            assert "$ref" in op["responses"]["200"]["content"]["application/json"]["schema"], path
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from visdex.store.db import IndexDB; "
                                   "IndexDB(sys.argv[1]).hold_writer(); print('held', flush=True); time.sleep(60)",
                                   str(ix_dir)], env=ENV, stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert holder.stdout.readline().strip() == "held"
            busy = c.post("/api/trash/apply", json={"suggested": True, "exact_only": True})
            assert busy.status_code == 409 and "busy" in busy.json()["error"]
            assert c.post("/api/trash/undo", json={}).status_code == 409
        finally:
            holder.kill()
            holder.wait()
    assert _hashes(folder) == before


def test_http_trash_routes_need_the_token(library):
    ix_dir, _ = library
    with _client(ix_dir, token="s3cret") as c:
        assert c.get("/api/trash/batches").status_code == 401
        assert c.post("/api/trash/apply", json={"suggested": True}).status_code == 401
        ok = c.get("/api/trash/batches", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json() == {"count": 0, "batches": []}
        assert c.get("/api/trash/batches", params={"token": "s3cret"}).status_code == 401  # header only, as /api


def test_only_copies_are_offered_look_alikes_stay(library):
    ix_dir, folder = library
    with open_index(ix_dir) as ix:
        groups = find_duplicates(ix, exact_only=True)
        chelsea = next(g for g in groups if len(g.members) == 3)
        other = next(m for m in chelsea.members if m.id != chelsea.keeper_id)
        other.kind, other.removable = "similar shot", False  # what dupes.py says of another capture of a scene
        plan = plan_from_groups(ix, groups)
        assert other.path not in {m.path for m in plan.moves} and plan.files == 3
        assert any(p == other.path and "look-alike" in why for p, why in plan.skipped)
