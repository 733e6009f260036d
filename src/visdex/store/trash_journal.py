"""The trash journal of one index (``trash.db`` in the index folder): which files :mod:`visdex.trash` moved where,
in batches, with what it needs to undo each move (the file's index row, vector and tags). SQLite with synchronous
FULL: an entry is on disk before its file moves.

>>> journal = Journal(ix.db.dir)                                  # doctest: +SKIP
>>> journal.batches(("moved",))                                   # doctest: +SKIP
[('20260101-120000-ab12', 1767268800.0, 'moved', '{"model": ...}')]
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from ..errors import DiskFull, StoreError
from .db import sqlite_code

JOURNAL_NAME = "trash.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, state TEXT NOT NULL, fingerprint TEXT, undone_at REAL
);
CREATE TABLE IF NOT EXISTS entries (
    batch TEXT NOT NULL REFERENCES batches(id), seq INTEGER NOT NULL, file_id INTEGER NOT NULL,
    src BLOB NOT NULL, dst BLOB NOT NULL, keeper BLOB, size INTEGER NOT NULL, row TEXT NOT NULL, vec BLOB,
    tags TEXT NOT NULL DEFAULT '[]', state TEXT NOT NULL, error TEXT, PRIMARY KEY (batch, seq)
);
"""
# batch states: moving (interrupted if seen outside a run) -> moved -> undoing -> undone
# entry states: pending -> moved | kept (never left its place) | failed; moved -> restored | conflict

BatchRow = tuple[str, float, str, str | None]  # (id, created_at, state, fingerprint)
EntryState = tuple[int, str, str | None]  # (seq, state, error)


def _full(e: sqlite3.Error) -> bool:
    return sqlite_code(e) == sqlite3.SQLITE_FULL


class Journal:
    """The trash journal of one index (``trash.db``): owns its SQL. Commits are fsynced (synchronous FULL):
    an entry is on disk before its file moves."""

    def __init__(self, index_dir: str | os.PathLike):
        self.path = Path(index_dir) / JOURNAL_NAME
        try:
            self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(SCHEMA)
        except sqlite3.OperationalError as e:
            if _full(e):
                raise DiskFull(f"no space left for the trash journal {self.path}") from e
            raise StoreError(f"cannot open the trash journal {self.path}: {e}") from e

    def _write(self, sql_rows: list[tuple[str, Sequence]]) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for sql, rows in sql_rows:
                self.conn.executemany(sql, rows)
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if _full(e):
                raise DiskFull(f"no space left for the trash journal {self.path}; nothing was moved") from e
            raise

    def add_batch(self, batch: str, fingerprint: str | None, entries: list[tuple]) -> None:
        """A new batch (state ``moving``) and its entries (``pending``): (batch, seq, file id, src, dst, keeper,
        size, row JSON, vector bytes, tags JSON) each."""
        self._write([
            ("INSERT INTO batches (id, created_at, state, fingerprint) VALUES (?, ?, 'moving', ?)",
             [(batch, time.time(), fingerprint)]),
            ("INSERT INTO entries (batch, seq, file_id, src, dst, keeper, size, row, vec, tags, state) "
             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')", entries),
        ])  # fmt: skip

    def set_states(self, batch: str, states: Sequence[EntryState], batch_state: str | None = None) -> None:
        """(seq, state, error) of some entries, and the batch's new state, in one commit."""
        work: list[tuple[str, Sequence]] = [("UPDATE entries SET state = ?, error = ? WHERE batch = ? AND seq = ?",
                                             [(st, why, batch, seq) for seq, st, why in states])]  # fmt: skip
        if batch_state is not None:
            undone = time.time() if batch_state == "undone" else None
            work.append(("UPDATE batches SET state = ?, undone_at = COALESCE(?, undone_at) WHERE id = ?",
                         [(batch_state, undone, batch)]))  # fmt: skip
        self._write(work)

    def entries(self, batch: str) -> list[dict[str, Any]]:
        cols = ("seq", "file_id", "src", "dst", "keeper", "size", "row", "vec", "tags", "state")
        sql = f"SELECT {', '.join(cols)} FROM entries WHERE batch = ? ORDER BY seq"
        out = []
        for r in self.conn.execute(sql, (batch,)):
            e = dict(zip(cols, r, strict=True))
            e["src"], e["dst"] = os.fsdecode(e["src"]), os.fsdecode(e["dst"])
            out.append(e)
        return out

    def batches(self, states: Sequence[str] | None = None) -> list[BatchRow]:
        """(id, created_at, state, fingerprint) of the batches (in ``states``), newest first."""
        sql = "SELECT id, created_at, state, fingerprint FROM batches"
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
        return list(self.conn.execute(sql + " ORDER BY created_at DESC, id DESC", tuple(states or ())))

    def summary(self, batch: str) -> tuple[int, int, int, list[str]]:
        """(files in the trash, their bytes, restored, trash folders) of a batch."""
        moved, size, restored, dsts = 0, 0, 0, set()
        for st, n, b, dst in self.conn.execute("SELECT state, 1, size, dst FROM entries WHERE batch = ?", (batch,)):
            if st in ("moved", "conflict"):
                moved, size = moved + n, size + b
                dsts.add(batch_dir(os.fsdecode(dst), batch))
            restored += st == "restored"
        return moved, size, restored, sorted(dsts)

    def close(self) -> None:
        with suppress(sqlite3.Error):
            self.conn.close()


def batch_dir(dst: str, batch: str) -> str:
    """The folder of ``batch`` that a moved file's destination ``dst`` lies in."""
    p = Path(dst)
    while p.name != batch and p.parent != p:
        p = p.parent
    return str(p)
