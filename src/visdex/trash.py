"""Moving files to a trash folder, with an undo: duplicates are removed and nothing is lost.

Files move to ``.visdex-trash`` inside the indexed root they belong to (hidden, so never indexed again), or
to a folder the user names, in one **batch** per call: ``<trash>/<batch id>/<path under the root>``. The
index follows: moved files leave the index (search results, duplicates, the map) and :func:`undo` brings
them back with their vectors and tags, without re-embedding when their bytes are unchanged.

Crash safety. Every move is written to a journal (``trash.db`` in the index folder: SQLite, synchronous
FULL) *before* anything moves: the file's index row, vector and tags, where it goes. Then the index drops
the rows (one transaction), then the files move one by one: a rename on the same file system, else a copy
to a hidden partial file, fsync, a check that the copy reads back the same bytes, a rename into place and
only then the unlink of the original. A ``kill -9`` at any moment therefore leaves every file either in
place or in the trash with a journal entry to undo it; the next trash operation finishes the interrupted
batch from what it finds on disk (:func:`recover`), and :func:`undo` restores it.

Only files under the index's roots are moved, never a keeper, never the last copy (a keeper must exist).

>>> from visdex.dupes import find_duplicates                               # doctest: +SKIP
>>> plan = plan_from_groups(ix, find_duplicates(ix))                       # doctest: +SKIP
>>> plan.files, plan.bytes                                                 # doctest: +SKIP
(12, 40960000)
>>> report = move_to_trash(ix, plan)                                       # doctest: +SKIP
>>> undo(ix, report.batch).restored                                        # doctest: +SKIP
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import BadQuery, DiskFull, NotFound, StoreError
from .store.db import FileRow, is_disk_full
from .store.trash_journal import JOURNAL_NAME, EntryState, Journal, batch_dir

TRASH_DIR_NAME = ".visdex-trash"
PARTIAL_SUFFIX = ".visdex-partial"
#: Member kinds (``DupeMember.kind``) that are copies and may be moved; others (a "similar shot") are look-alikes
#: for a person to review. ``DupeMember.removable``, where dupes.py gives it, decides first; members with neither
#: are all removable (the group is the verdict).
REMOVABLE_KINDS = ("exact", "copy")
_CHUNK = 1 << 20

# batch states: moving (interrupted if seen outside a run) -> moved -> undoing -> undone
# entry states: pending -> moved | kept (never left its place) | failed; moved -> restored | conflict


# -- plans ---------------------------------------------------------------------------------------
@dataclass
class PlannedMove:
    """One file to move, and the keeper it is a copy of."""

    id: int
    path: str
    size: int
    keeper_id: int
    keeper_path: str
    kind: str | None = None


@dataclass
class MovePlan:
    """What a move would do: the files (each with its keeper) and the members left alone, with why."""

    moves: list[PlannedMove] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def files(self) -> int:
        return len(self.moves)

    @property
    def bytes(self) -> int:
        return sum(m.size for m in self.moves)

    def to_dict(self) -> dict:
        return {"files": self.files, "bytes": self.bytes, "moves": [_move_json(m) for m in self.moves],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}  # fmt: skip


def _move_json(m: PlannedMove) -> dict:
    return {"id": m.id, "path": m.path, "bytes": m.size, "keeper_id": m.keeper_id, "keeper_path": m.keeper_path,
            "kind": m.kind}  # fmt: skip


def plan_moves(ix, selections: Iterable[tuple[int, Sequence[int]]]) -> MovePlan:
    """A plan from ``(keeper_id, [ids to move])`` pairs, checked against the index and the disk: every id
    indexed, no keeper moved, no file in two groups, the keeper still on disk. Raises :class:`NotFound` for
    an id not in the index, :class:`BadQuery` for a contradictory selection."""
    _require_files(ix)
    selections = [(int(k), [int(i) for i in ids]) for k, ids in selections]
    keepers = {k for k, _ in selections}
    wanted = [i for _, ids in selections for i in ids]
    rows = ix.db.files_by_ids(list(keepers) + wanted)
    missing = sorted({*keepers, *wanted} - rows.keys())
    if missing:
        raise NotFound(
            f"no indexed file with id {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            field="groups",
        )
    plan, seen, roots = MovePlan(), set(), _roots(ix)
    for keeper, ids in selections:
        krow = rows[keeper]
        for i in ids:
            row = rows[i]
            if i in keepers:
                raise BadQuery(f"{row.path} is a keeper; it cannot also be moved", field="groups", path=row.path)
            if i in seen:
                raise BadQuery(f"{row.path} is in two groups", field="groups", path=row.path)
            seen.add(i)
            try:
                _root_of(row.path, roots)
            except BadQuery as e:
                plan.skipped.append((row.path, str(e)))
                continue
            if not os.path.isfile(krow.path):
                plan.skipped.append((row.path, f"its keeper {krow.path} is not on disk: nothing would be left"))
            elif not os.path.lexists(row.path):
                plan.skipped.append((row.path, "not on disk any more"))
            else:
                plan.moves.append(PlannedMove(i, row.path, row.size, keeper, krow.path))
    return plan


def plan_from_groups(ix, groups: Sequence) -> MovePlan:
    """A plan that keeps each group's suggested keeper and moves its copies: members whose ``kind`` (where
    :mod:`visdex.dupes` gives one) is not in :data:`REMOVABLE_KINDS` are look-alikes, left for a person."""
    selections, skipped, kinds = [], [], {}
    for g in groups:
        ids = []
        for m in g.members:
            if m.id == g.keeper_id:
                continue
            kind, removable = getattr(m, "kind", None), getattr(m, "removable", None)
            if removable is False or (removable is None and kind is not None and kind not in REMOVABLE_KINDS):
                skipped.append((m.path, f"a look-alike ({kind or 'not a copy'}), not offered: review it yourself"))
                continue
            ids.append(m.id)
            kinds[m.id] = kind if kind is not None else getattr(g, "kind", None)
        if ids:
            selections.append((g.keeper_id, ids))
    plan = plan_moves(ix, selections)
    for m in plan.moves:
        m.kind = kinds.get(m.id)
    plan.skipped = skipped + plan.skipped
    return plan


# -- reports -------------------------------------------------------------------------------------
@dataclass
class MoveReport:
    batch: str
    moved: list[tuple[str, str]] = field(default_factory=list)  # (from, to)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why): left in place, still indexed
    bytes: int = 0
    copied: int = 0  # moved by copy + verify + unlink (another file system)

    def to_dict(self) -> dict:
        return {"batch": self.batch, "files": len(self.moved), "bytes": self.bytes, "copied": self.copied,
                "moved": [{"path": a, "to": b} for a, b in self.moved],
                "failed": [{"path": p, "reason": r} for p, r in self.failed]}  # fmt: skip


@dataclass
class UndoReport:
    batch: str
    restored: list[str] = field(default_factory=list)
    reindex: list[str] = field(default_factory=list)  # back on disk, bytes changed: the next `visdex index` embeds
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # (path, why): left in the trash
    bytes: int = 0

    def to_dict(self) -> dict:
        return {
            "batch": self.batch,
            "files": len(self.restored),
            "bytes": self.bytes,
            "restored": self.restored,
            "reindex": self.reindex,
            "conflicts": [{"path": p, "reason": r} for p, r in self.conflicts],
        }


@dataclass
class BatchInfo:
    id: str
    created_at: float
    state: str  # moved | undone | partly undone | interrupted
    files: int  # files in the trash now
    bytes: int
    restored: int
    trash: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


# -- the public operations -----------------------------------------------------------------------
def move_to_trash(ix, plan: MovePlan | Sequence[PlannedMove], trash: str | os.PathLike | None = None, *,
                  copy: bool = False) -> MoveReport:  # fmt: skip
    """Move the plan's files to ``trash`` (default: ``.visdex-trash`` in each file's indexed root) as one
    batch, and take them out of the index. ``copy``: copy + verify + unlink even on one file system (what a
    move across file systems does; for tests). A file that cannot be moved is reported and stays indexed.
    Raises :class:`IndexBusy` while another process writes to the index, :class:`BadQuery` for a file outside
    the indexed roots or a trash folder that would be indexed."""
    _require_files(ix)
    ix.db.hold_writer()
    moves = list(plan.moves if isinstance(plan, MovePlan) else plan)
    roots = _roots(ix)
    trash_dir = check_trash(ix, trash) if trash is not None else None
    journal = Journal(ix.db.dir)
    try:
        recover(ix, journal)
        batch = _new_batch_id(journal)
        report = MoveReport(batch)
        if not moves:
            return report
        entries: list[tuple] = []
        taken: set[str] = set()
        rows = ix.db.files_by_ids([m.id for m in moves])
        vecs = _vectors(ix, [m.id for m in moves])
        tags = _tags(ix, [m.id for m in moves])
        for seq, m in enumerate(moves):
            row = rows.get(m.id)
            if row is None:
                raise NotFound(f"no indexed file with id {m.id}", field="groups")
            root = _root_of(row.path, roots)
            base = Path(trash_dir) if trash_dir is not None else Path(root) / TRASH_DIR_NAME
            dst = _free_name(base / batch / os.path.relpath(row.path, root), taken)
            vec = vecs[m.id].tobytes() if m.id in vecs else None
            entries.append((batch, seq, m.id, os.fsencode(row.path), os.fsencode(dst), os.fsencode(m.keeper_path),
                            row.size, json.dumps(asdict(row)), vec, json.dumps(tags.get(m.id, []))))  # fmt: skip
        journal.add_batch(batch, ix.db.get_meta("fingerprint"), entries)  # before anything changes
        _drop_from_index(ix, [m.id for m in moves])
        states: list[EntryState] = []
        touched: set[str] = set()
        for (_, seq, fid, src_raw, dst_raw, *_rest), m in zip(entries, moves, strict=True):
            src, dst = os.fsdecode(src_raw), os.fsdecode(dst_raw)
            try:
                report.copied += _transfer(src, dst, copy, touched)
            except OSError as e:
                why = e.strerror or str(e)
                report.failed.append((src, why))
                states.append((seq, "failed", why))
                _restore_row(ix, json.loads(entries[seq][7]), vecs.get(fid), tags.get(fid, []))
                if is_disk_full(e) and not os.path.exists(src):  # pragma: no cover - _transfer never unlinks first
                    raise DiskFull(f"no space left to move {src}") from e
                continue
            states.append((seq, "moved", None))
            report.moved.append((src, dst))
            report.bytes += m.size
        _fsync_dirs(touched)
        journal.set_states(batch, states, "moved")
        return report
    finally:
        journal.close()


def undo(ix, batch: str | None = None) -> UndoReport:
    """Move a batch's files back (default: the latest batch not undone) and put them back in the index with
    their vectors and tags; a file whose bytes changed in the trash comes back unindexed (the next
    ``visdex index`` embeds it). A file that now exists at the original path is left in the trash (a conflict,
    reported). Undoing a batch twice is refused; an interrupted undo is finished by running it again."""
    _require_files(ix)
    ix.db.hold_writer()
    journal = Journal(ix.db.dir)
    try:
        recover(ix, journal, skip_undo=True)
        batch_id, fingerprint = _pick_batch(journal, batch)
        return _undo(ix, journal, batch_id, fingerprint)
    finally:
        journal.close()


def list_batches(ix, *, finish_interrupted: bool = True) -> list[BatchInfo]:
    """The batches of this index, newest first. An interrupted one is finished first when ``finish_interrupted``
    and no other process writes to the index (this takes ``ix``'s writer lock until it closes)."""
    if not (Path(ix.db.dir) / JOURNAL_NAME).exists():  # never moved anything (and a read-only index stays so)
        return []
    journal = Journal(ix.db.dir)
    try:
        if finish_interrupted and journal.batches(("moving", "undoing")):
            from .errors import IndexBusy

            with suppress(IndexBusy, StoreError):
                ix.db.hold_writer()
                recover(ix, journal)
        out = []
        for bid, created, state, _ in journal.batches():
            files, size, restored, dirs = journal.summary(bid)
            shown = {"moving": "interrupted", "undoing": "interrupted"}.get(state, state)
            if state == "undone" and files:
                shown = "partly undone"
            out.append(BatchInfo(bid, created, shown, files, size, restored, dirs))
        return out
    finally:
        journal.close()


def recover(ix, journal: Journal | None = None, *, skip_undo: bool = False) -> list[str]:
    """Finish batches a crash interrupted, from what is on disk: a move is completed where the file reached the
    trash and rolled back where it had not; an interrupted undo is run again. Needs the writer lock. Returns
    the batch ids put right."""
    own = journal is None
    journal = journal or Journal(ix.db.dir)
    fixed = []
    try:
        for bid, _, state, fingerprint in journal.batches(("moving", "undoing")):
            if state == "moving":
                _finish_moving(ix, journal, bid)
            elif not skip_undo:
                _undo(ix, journal, bid, fingerprint)
            fixed.append(bid)
        return fixed
    finally:
        if own:
            journal.close()


# -- moving and restoring ------------------------------------------------------------------------
def _finish_moving(ix, journal: Journal, batch: str) -> None:
    states: list[EntryState] = []
    for e in journal.entries(batch):
        if e["state"] not in ("pending", "moved"):
            continue
        src, dst = e["src"], e["dst"]
        _drop_partials(src, dst)
        if os.path.lexists(src) and os.path.lexists(dst):  # copied, not yet unlinked: finish if it is the same
            if _same_bytes(src, dst):
                os.unlink(src)
                _fsync_dir(os.path.dirname(src))
            else:
                states.append((e["seq"], "conflict", "a different file is at both places"))
                continue
        if os.path.lexists(dst):
            row = ix.db.file_by_path(src)
            if row is not None and row.id == e["file_id"]:
                _drop_from_index(ix, [row.id])
            states.append((e["seq"], "moved", None))
        elif os.path.lexists(src):  # never left: back in the index
            _restore_row(ix, json.loads(e["row"]), _vec(e["vec"]), json.loads(e["tags"]))
            states.append((e["seq"], "kept", "interrupted before it moved"))
        else:
            states.append((e["seq"], "failed", "in neither place"))
    journal.set_states(batch, states, "moved")


def _undo(ix, journal: Journal, batch: str, fingerprint: str | None) -> UndoReport:
    report = UndoReport(batch)
    entries = [e for e in journal.entries(batch) if e["state"] in ("moved", "conflict")]
    journal.set_states(batch, [], "undoing")
    same_model = fingerprint == ix.db.get_meta("fingerprint")
    states: list[EntryState] = []
    touched: set[str] = set()
    back: list[tuple[dict, np.ndarray | None, list]] = []
    for e in entries:
        src, dst = e["src"], e["dst"]
        _drop_partials(dst, src)
        if os.path.lexists(src) and os.path.lexists(dst):
            if not _same_bytes(src, dst):
                report.conflicts.append((src, f"another file is at that path now; this one stays at {dst}"))
                states.append((e["seq"], "conflict", "another file at the original path"))
                continue
            os.unlink(dst)  # copied back, not yet unlinked (an interrupted undo)
        elif os.path.lexists(dst):
            try:
                os.makedirs(os.path.dirname(src), exist_ok=True)
                _transfer(dst, src, False, touched)
            except OSError as err:
                report.conflicts.append((src, f"cannot move it back from {dst}: {err.strerror or err}"))
                states.append((e["seq"], "conflict", err.strerror or str(err)))
                continue
        elif not os.path.lexists(src):
            report.conflicts.append((src, f"not in the trash any more ({dst})"))
            states.append((e["seq"], "conflict", "gone from the trash"))
            continue
        row = json.loads(e["row"])
        if same_model and _unchanged(src, row):
            back.append((row, _vec(e["vec"]), json.loads(e["tags"])))
            report.restored.append(src)
        else:
            report.reindex.append(src)
        report.bytes += e["size"]
        states.append((e["seq"], "restored", None))
    _fsync_dirs(touched)
    _restore_rows(ix, back)  # one transaction; interrupted before it, a rerun finds the files in place and does it
    journal.set_states(batch, states, "undone")
    for e in entries:  # the batch's empty folders go, and an emptied .visdex-trash (a folder the user named stays)
        top = Path(batch_dir(e["dst"], batch))
        _prune_empty(Path(e["dst"]).parent, top.parent if top.parent.name == TRASH_DIR_NAME else top)
    return report


def _transfer(src: str, dst: str, copy: bool, touched: set[str]) -> bool:
    """Move one file without overwriting anything; True if it was copied (another file system). The folders whose
    entries changed are added to ``touched``, for the caller to fsync once (a rename not yet durable at a power
    loss leaves the file in its old place, which recovery handles); a copy is made durable before the original
    goes."""
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "the destination exists", dst)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not copy:
        try:
            os.rename(src, dst)
            touched.update((os.path.dirname(dst), os.path.dirname(src)))
            return False
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
    partial = _partial(dst)
    try:
        digest = _copy_durably(src, partial)
        if _digest(partial) != digest:
            raise OSError(errno.EIO, "the copy does not read back the same bytes", dst)
        os.rename(partial, dst)
        _fsync_dir(os.path.dirname(dst))
    except BaseException:
        with suppress(OSError):
            os.unlink(partial)
        raise
    os.unlink(src)
    touched.add(os.path.dirname(src))
    return True


def _copy_durably(src: str, dst: str) -> str:
    """Copy bytes, times and mode; fsync; return the digest of what was read."""
    h = hashlib.blake2b(digest_size=16)
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while block := fi.read(_CHUNK):
            h.update(block)
            fo.write(block)
        fo.flush()
        os.fsync(fo.fileno())
    shutil.copystat(src, dst)  # the same mtime: an undone file is "unchanged" to the next `visdex index`
    return h.hexdigest()


def _digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _same_bytes(a: str, b: str) -> bool:
    try:
        return os.path.getsize(a) == os.path.getsize(b) and _digest(a) == _digest(b)
    except OSError:
        return False


def _unchanged(path: str, row: dict) -> bool:
    """Whether the file back at ``path`` has the bytes its row (and vector) were made from."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_size != row["size"]:
        return False
    if abs(st.st_mtime - row["mtime"]) < 1e-6:
        return True
    from .decode import hash_file

    try:
        same = row["hash"] is not None and hash_file(path) == row["hash"]
    except OSError:
        return False
    if same:
        row["mtime"] = st.st_mtime  # the same bytes, touched: keep the vector, record the new mtime
    return same


def _partial(path: str) -> str:
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}{PARTIAL_SUFFIX}")


def _drop_partials(*paths: str) -> None:
    for p in paths:
        with suppress(OSError):
            os.unlink(_partial(p))


def _fsync_dirs(paths: Iterable[str]) -> None:
    for p in sorted(paths):
        _fsync_dir(p)


def _fsync_dir(path: str) -> None:
    with suppress(OSError):  # some file systems cannot open or fsync a folder; the rename is done all the same
        fd = os.open(path or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove empty folders from ``folder`` up to and including ``stop`` (the trash folder itself)."""
    folder, stop = folder.absolute(), stop.absolute()
    while folder == stop or stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


# -- the index side ------------------------------------------------------------------------------
def _drop_from_index(ix, ids: list[int]) -> None:
    with ix.db.transaction():
        if ix.db.fingerprint is not None:
            ix.store.delete(ids)
        ix.db.delete_files(ids)  # tags leave with their rows (ON DELETE CASCADE)


def _restore_row(ix, row: dict, vec: np.ndarray | None, tags: list) -> None:
    _restore_rows(ix, [(row, vec, tags)])


def _restore_rows(ix, items: list[tuple[dict, np.ndarray | None, list]]) -> None:
    """Put files back in the index as they were, with their vectors and tags, in one transaction; a file whose
    path is indexed again already (a `visdex index` ran meanwhile) or that has no vector to restore (the next
    `visdex index` embeds it) is left alone."""
    todo = [(row, vec, tags) for row, vec, tags in items
            if ix.db.file_by_path(row["path"]) is None and (vec is not None or row["status"] != "ok")]  # fmt: skip
    if not todo:
        return
    with ix.db.transaction():
        ids, vecs = [], []
        for row, vec, tags in todo:
            fid = ix.db.restore_file(FileRow(**row))
            if vec is not None:
                ids.append(fid)
                vecs.append(vec)
            if tags:
                ix.db.put_tags(fid, [(lb, s) for lb, s in tags])
        if ids:
            ix.store.upsert(ids, np.stack(vecs))


def _vectors(ix, ids: list[int]) -> dict[int, np.ndarray]:
    if ix.db.fingerprint is None:
        return {}
    try:
        return dict(zip(ids, ix.store.get(ids), strict=True))
    except KeyError:  # some row has no vector (yet): the others' one by one
        out = {}
        for i in ids:
            with suppress(KeyError):
                out[i] = ix.store.get([i])[0]
        return out


def _vec(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, np.float32).copy()


def _tags(ix, ids: list[int]) -> dict[int, list]:
    from .tags import tags_for

    return {i: [list(t) for t in ts] for i, ts in tags_for(ix.db, ids).items() if ts}


# -- checks --------------------------------------------------------------------------------------
def _require_files(ix) -> None:
    if ix.db.kind == "catalog":
        raise BadQuery("the trash is for folder indexes; this index holds a catalog")


def _roots(ix) -> list[str]:
    return [os.path.realpath(r) for r in ix.db.roots()]


def _root_of(path: str, roots: list[str]) -> str:
    """The indexed root holding ``path`` (the deepest), or :class:`BadQuery`: nothing outside them is moved."""
    real = os.path.realpath(path)
    inside = [r for r in roots if real == r or real.startswith(r.rstrip(os.sep) + os.sep)]
    if not inside or real in inside:
        raise BadQuery(f"{path} is not under an indexed folder; visdex moves only files it indexed there",
                       field="groups", path=path)  # fmt: skip
    if real != os.path.abspath(path):  # indexed paths are real ones; this one goes through a symbolic link
        raise BadQuery(f"{path} is reached through a symbolic link; move it yourself", field="groups", path=path)
    return max(inside, key=len)


def check_trash(ix, trash: str | os.PathLike) -> str:
    """A user-named trash folder as an absolute path, or :class:`BadQuery`: it must not be a file or inside the
    index folder, and must be hidden from indexing (outside the roots, or under a folder whose name starts
    with a dot)."""
    roots = _roots(ix)
    t = os.path.realpath(os.path.expanduser(os.fspath(trash)))
    if os.path.exists(t) and not os.path.isdir(t):
        raise BadQuery(f"the trash {trash} is a file, not a folder", field="trash", path=str(trash))
    index_dir = os.path.realpath(ix.db.dir)
    if t == index_dir or t.startswith(index_dir + os.sep):
        raise BadQuery(f"the trash {trash} is inside the index folder", field="trash", path=str(trash))
    for r in roots:
        if t == r or t.startswith(r.rstrip(os.sep) + os.sep):
            rel = Path(os.path.relpath(t, r)).parts
            if not any(p.startswith(".") for p in rel):
                raise BadQuery(f"the trash {trash} is inside the indexed folder {r}, so its files would be indexed "
                               f"again; choose a folder outside it, or a hidden one (e.g. {TRASH_DIR_NAME})",
                               field="trash", path=str(trash))  # fmt: skip
    return t


def _free_name(dst: Path, taken: set[str]) -> str:
    """``dst``, or ``name~2.ext``, ``name~3.ext``... when that name is taken (on disk or in this batch)."""
    candidate, n = str(dst), 1
    while candidate in taken or os.path.lexists(candidate) or os.path.lexists(_partial(candidate)):
        n += 1
        candidate = str(dst.with_name(f"{dst.stem}~{n}{dst.suffix}"))
    taken.add(candidate)
    return candidate


def _new_batch_id(journal: Journal) -> str:
    known = {b[0] for b in journal.batches()}
    while True:
        bid = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)
        if bid not in known:
            return bid


def _pick_batch(journal: Journal, batch: str | None) -> tuple[str, str | None]:
    rows = journal.batches()
    if batch is None:
        live = [r for r in rows if r[2] in ("moved", "undoing")]
        if not live:
            raise NotFound("nothing to undo: no batch in the trash (visdex trash list shows them)", field="batch")
        return live[0][0], live[0][3]
    match = [r for r in rows if r[0] == batch] or [r for r in rows if r[0].startswith(batch)]
    if not match:
        raise NotFound(f"no trash batch {batch!r} (visdex trash list shows them)", field="batch")
    if len(match) > 1:
        raise BadQuery(f"{batch!r} names {len(match)} batches; give more of the id", field="batch")
    bid, _, state, fingerprint = match[0]
    if state == "undone" and not journal.summary(bid)[0]:  # files left in the trash (conflicts) may be tried again
        raise BadQuery(f"batch {bid} was undone already", field="batch")
    return bid, fingerprint
