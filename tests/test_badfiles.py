"""End to end: ``visdex index`` over a corpus of bad, odd and hostile files (tests/badfiles.py).

Every entry is indexed or recorded as failed with its reason, nothing crashes or hangs (each run
has a deadline), a rerun works, EXIF orientations give the vectors of a physically rotated copy,
and the index still answers searches afterwards. Once through the library with the process pool,
once through the CLI in a subprocess with in-process decoding.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

from badfiles import ORIENTED, BadFile, after_listing, write_badfiles
from visdex import open_index
from visdex.ingest import Progress
from visdex.stages import POOL_MIN_FILES

from clihelp import run_cli, spawn_cli

MODEL = "effnet-lite0"  # real weights from a pip package: vectors that tell orientations apart, no download
DEADLINE_S = 240  # a hang fails the test instead of stalling the run


def _within_deadline(fn, seconds: float = DEADLINE_S):
    """Run ``fn`` in a daemon thread; fail if it is still running after ``seconds`` (a FIFO once hung it forever)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            box["error"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s: a file made indexing hang"
    if "error" in box:
        raise box["error"]
    return box["value"]


class _ChangesAfterListing(Progress):
    """ingest calls start() once the folder is listed and before anything is decoded: the moment to pull the rug."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.skipped: list[tuple[str, str]] = []

    def start(self, total: int) -> None:
        after_listing(self.folder)

    def failed(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))


def _key(root: str, case: BadFile) -> str:
    """The path the index records: resolved, except a link that does not resolve (broken, a loop)."""
    p = os.path.join(root, case.name)
    return p if os.path.islink(p) and not os.path.exists(p) else os.path.realpath(p)


def _check_rows(rows: dict, root: str, cases: list[BadFile], skip_kinds: set[str] = frozenset()) -> None:
    wrong = []
    for case in cases:
        if case.kind in skip_kinds:
            continue
        row = rows.get(_key(root, case))
        want, _, reason = case.expectation.partition(": ")
        got = "absent" if row is None else ("indexed" if row.status == "ok" else "failed")
        if got != want or (want == "failed" and reason.lower() not in (row.error or "").lower()):
            wrong.append(f"{case.kind} ({case.name!r}): expected {case.expectation!r}, got {got} {row and row.error!r}")
    assert not wrong, "\n".join(wrong)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[BadFile]]:
    folder = tmp_path_factory.mktemp("corpus") / "bad"
    return folder, write_badfiles(folder)


@pytest.fixture(scope="module")
def library_run(corpus, tmp_path_factory):
    """The corpus indexed through the library with a process pool (workers=2), files changing after listing."""
    folder, cases = corpus
    ix = open_index(tmp_path_factory.mktemp("lib") / "ix", model=MODEL)
    progress = _ChangesAfterListing(folder)
    report = _within_deadline(lambda: ix.add([folder], progress=progress, workers=2))
    yield ix, report, progress
    ix.close()


@pytest.mark.skipif(sys.platform != "linux", reason="other systems refuse names that are not UTF-8")
def test_a_name_that_is_not_utf8_is_indexed_and_found_on_every_rerun(tmp_path, photos):
    # It used to abort the whole run, and every rerun, with "UnicodeEncodeError ... surrogates not allowed".
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(photos["coffee"], d / "ok.jpg")
    bad = os.path.join(os.fsdecode(os.fsencode(d)), os.fsdecode(b"bad_\xff.jpg"))
    shutil.copy(photos["rocket"], bad)
    with open_index(tmp_path / "ix", model=MODEL) as ix:
        assert ix.add([d]).new == 2
        assert ix.add([d]).unchanged == 2  # the rerun finds it by its path
        row = ix.db.file_by_path(os.path.realpath(bad))
        assert row.status == "ok" and os.fsencode(row.path).endswith(b"/bad_\xff.jpg")  # the bytes on disk
        assert [h.path for h in ix.similar(os.path.join(d, "ok.jpg"), k=1)] == [row.path]
        os.rename(bad, d / "renamed.jpg")  # a move away from the odd name keeps the vector
        assert ix.add([d]).moved == 1


def test_corpus_has_the_kinds_asked_for(corpus):
    _, cases = corpus
    kinds = {c.kind for c in cases}
    assert len(kinds) >= 40 and len({c.name for c in cases}) == len(cases)
    for needed in ("zero-byte", "1x100000 PNG", "FIFO named x.jpg", "replaced by a FIFO after listing",
                   "name with invalid UTF-8 bytes", "symlink to itself", "GIF with 1000 frames"):  # fmt: skip
        assert needed in kinds or (needed == "name with invalid UTF-8 bytes" and os.name != "posix"), needed


def test_every_file_is_indexed_or_failed_with_its_reason(corpus, library_run):
    folder, cases = corpus
    ix, report, progress = library_run
    root = os.path.realpath(folder)
    rows = {r.path: r for r in ix.db.files_under([root])}
    _check_rows(rows, root, cases)
    expected = [c for c in cases if c.expectation != "absent"]
    assert len(rows) == len(expected)  # nothing recorded that the corpus does not hold
    failed = [c for c in cases if c.expectation.startswith("failed")]
    assert report.failed == len(failed) and report.new == len(expected) - len(failed)
    assert report.new + report.failed >= POOL_MIN_FILES  # so workers=2 decoded in a process pool
    assert sorted(p for p, _ in progress.skipped) == sorted(_key(root, c) for c in failed)
    status = ix.status(max_failures=1000)
    assert status.files_failed == len(failed) and status.vectors == report.new
    assert {p for p, _ in status.failures} == {_key(root, c) for c in failed}
    assert all(reason for _, reason in status.failures)


def test_exif_orientations_match_a_physically_rotated_copy(corpus, library_run):
    folder, _ = corpus
    ix = library_run[0]
    root = os.path.realpath(folder)
    variants = (".png", ".jpg", "_rotated.png")
    names = ["upright.png", "o6_untagged.png", *(f"o{o}{v}" for o in ORIENTED for v in variants)]
    ids = {name: ix.db.file_by_path(os.path.join(root, "oriented", name)).id for name in names}
    vecs = dict(zip(ids, ix.store.get(list(ids.values())), strict=True))
    upright = vecs["upright.png"]
    for o in ORIENTED:
        assert float(vecs[f"o{o}.png"] @ upright) > 0.9999, o  # lossless: the upright pixels, the same vector
        # the JPEG against Pillow's exif_transpose of it, saved as PNG: the same pixels, the same vector
        assert float(vecs[f"o{o}.jpg"] @ vecs[f"o{o}_rotated.png"]) > 0.9999, o
        assert float(vecs[f"o{o}.jpg"] @ upright) > 0.9, o  # and close to the upright original (JPEG noise)
    # the control: the same stored pixels without the tag are another image to the model (0.68 with effnet-lite0)
    assert float(vecs["o6_untagged.png"] @ upright) < 0.85
    for o in ORIENTED:
        row = ix.db.file_by_path(os.path.join(root, "oriented", f"o{o}.png"))
        assert (row.width, row.height) == (96, 64)  # the size a viewer shows


def test_the_index_answers_and_a_rerun_settles(corpus, library_run):
    folder, cases = corpus
    ix = library_run[0]
    root = os.path.realpath(folder)
    hits = ix.similar(os.path.join(root, "oriented", "upright.png"), k=8)
    assert len(hits) == 8 and all(Path(h.path).parent.name == "oriented" for h in hits[:5])
    bad_name = next((c for c in cases if c.kind == "name with invalid UTF-8 bytes"), None)
    if bad_name is not None:  # found by a search, and by its own path: the name round-trips through SQLite
        path = os.path.join(root, bad_name.name)
        assert ix.similar(path, k=3) and ix.db.file_by_path(path).status == "ok"
    # A rerun (the invalid UTF-8 name used to abort every rerun): the files changed after listing are now a
    # FIFO, a folder, an empty file and nothing; everything else is unchanged and not read again.
    again = _within_deadline(lambda: ix.add([folder], workers=1))
    changed = {"deleted between listing and decoding", "replaced by a directory after listing",
               "replaced by a FIFO after listing", "emptied after listing"}  # fmt: skip
    assert again.new == 0 and again.removed == 2 and again.failed == 2  # the FIFO and the emptied file, read again
    assert again.unchanged == sum(c.expectation != "absent" and c.kind not in changed for c in cases)


def test_cli_index_status_search_over_the_corpus(capsys, corpus, library_run, tmp_path):
    folder, cases = corpus  # after the library run: the files changed after listing stay changed
    ix = tmp_path / "ix"
    args = ("index", folder, "--index", ix, "--model", MODEL, "--workers", "1")
    code, out, err = _within_deadline(lambda: run_cli(capsys, *args))  # in-process: torch is imported once
    assert code == 0, err
    root = os.path.realpath(folder)
    gone = {"deleted between listing and decoding", "replaced by a directory after listing"}
    now = [c for c in cases if c.kind not in gone]
    failed = [c for c in now if c.expectation.startswith("failed")]
    indexed = sum(c.expectation == "indexed" for c in now)
    assert f"{indexed} new" in out and f"{len(failed)} failed" in out and "visdex status" in out
    assert "Traceback" not in err and "skipping" in err and "not a regular file but a FIFO" in err

    # A new process with a strict UTF-8 stdout, as on a desktop with LANG=en_US.UTF-8: the failure list holds a
    # name that is not UTF-8, and printing it must not crash.
    proc = spawn_cli("status", "--index", ix, env={"PYTHONIOENCODING": "utf-8"}, errors="surrogateescape")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "not a regular file but a FIFO" in out and "exceeds the limit" in out and "empty file" in out
    bad_name = next((c for c in failed if c.kind == "broken file with a non-UTF-8 name"), None)
    if bad_name is not None:
        assert os.path.join(root, bad_name.name) in out  # its own bytes, as ls prints them
    proc = spawn_cli("status", "--index", ix, "--json", env={"PYTHONIOENCODING": "utf-8"}, errors="surrogateescape")
    out, err = proc.communicate(timeout=120)
    st = json.loads(out)
    assert proc.returncode == 0 and st["files_failed"] == len(failed) and st["files_ok"] == indexed
    assert {f["path"] for f in st["failures"]} == {_key(root, c) for c in failed}

    probe = next((c for c in cases if c.kind == "name with invalid UTF-8 bytes"), None)
    probe_path = os.path.join(root, probe.name) if probe else os.path.join(root, "oriented", "upright.png")
    code, out, err = run_cli(capsys, "similar", probe_path, "--index", ix, "-n", str(indexed), "--json")
    assert code == 0, err
    found = [json.loads(line)["path"] for line in out.splitlines()]
    assert len(found) == indexed - 1 and probe_path not in found  # every other file; itself left out
    assert {_key(root, c) for c in now if c.expectation == "indexed"} == set(found) | {probe_path}
