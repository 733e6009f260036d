"""The SQLite file that is the truth of an index: files and their metadata, failures,
the model fingerprint, and (for the embedded store) the vectors themselves.

WAL mode, one connection per ``IndexDB``, explicit transactions. Schema changes are
numbered migrations applied in order on open; an index from a newer visdex is refused
rather than misread.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError
from ..models.base import Fingerprint

DB_NAME = "index.db"

# Each entry upgrades the schema by one version. Never edit a released entry: append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE roots (path TEXT PRIMARY KEY, added_at REAL NOT NULL);
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        root TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime REAL NOT NULL,
        hash TEXT,
        width INTEGER,
        height INTEGER,
        format TEXT,
        taken_at TEXT,
        camera TEXT,
        status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
        error TEXT,
        indexed_at REAL NOT NULL
    );
    CREATE INDEX files_hash ON files(hash);
    CREATE INDEX files_root ON files(root);
    CREATE INDEX files_status ON files(status);
    CREATE TABLE vectors (id INTEGER PRIMARY KEY, vec BLOB NOT NULL);
    """,
    # v2: catalogs. In a catalog index the vectors are keyed by item id (items, not files, are found).
    """
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        title TEXT,
        attrs TEXT NOT NULL DEFAULT '{}',
        images TEXT NOT NULL DEFAULT '[]',
        row_hash TEXT,
        status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
        error TEXT,
        indexed_at REAL NOT NULL
    );
    CREATE INDEX items_status ON items(status);
    """,
    # v3: zero-shot tags (visdex tag), usable in --where 'tag = beach'; they leave with their file.
    """
    CREATE TABLE tags (
        file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
        label TEXT NOT NULL,
        score REAL NOT NULL,
        PRIMARY KEY (file_id, label)
    );
    CREATE INDEX tags_label ON tags(label);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

FILE_COLUMNS = (
    "id", "path", "root", "size", "mtime", "hash", "width", "height", "format", "taken_at", "camera",
    "status", "error", "indexed_at",
)  # fmt: skip


@dataclass
class FileRow:
    """One row of the ``files`` table."""

    id: int
    path: str
    root: str
    size: int
    mtime: float
    hash: str | None
    width: int | None
    height: int | None
    format: str | None
    taken_at: str | None
    camera: str | None
    status: str
    error: str | None
    indexed_at: float


class IndexDB:
    """The SQLite file of one index. Use :meth:`transaction` for every write."""

    def __init__(self, directory: str | Path, *, create: bool = True):
        self.dir = Path(directory)
        self.path = self.dir / DB_NAME
        if not self.path.exists() and not create:
            from ..errors import IndexNotFound

            raise IndexNotFound(f"no index at {self.dir} (create one with: visdex index PATH --index {self.dir})")
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self.conn.text_factory = _db_text  # file names that are not UTF-8 come back as os.fsdecode gave them
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open the index database {self.path}: {e}") from e
        self._on_commit: list[Callable[[], None]] = []
        self._depth = 0

    # -- schema ---------------------------------------------------------------------------
    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"index {self.dir} has schema version {version}, newer than this visdex understands "
                f"({SCHEMA_VERSION}); upgrade visdex"
            )
        for v in range(version, SCHEMA_VERSION):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _split_sql(MIGRATIONS[v]):
                    self.conn.execute(stmt)
                self.conn.execute(f"PRAGMA user_version = {v + 1}")
                if v == 0:
                    self.conn.execute("INSERT INTO meta VALUES ('created_at', ?)", (str(time.time()),))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    # -- transactions ---------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested calls join the outer one. Callbacks registered with
        :meth:`after_commit` run only once the outermost transaction has committed."""
        if self._depth == 0:
            self.conn.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield self.conn
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self.conn.execute("ROLLBACK")
                self._on_commit.clear()
            raise
        self._depth -= 1
        if self._depth == 0:
            self.conn.execute("COMMIT")
            callbacks, self._on_commit = self._on_commit, []
            for cb in callbacks:
                cb()

    def after_commit(self, callback: Callable[[], None]) -> None:
        if self._depth == 0:
            callback()
        else:
            self._on_commit.append(callback)

    # -- meta -----------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value)
            )

    @property
    def fingerprint(self) -> Fingerprint | None:
        raw = self.get_meta("fingerprint")
        return Fingerprint.from_json(raw) if raw else None

    def set_fingerprint(self, fp: Fingerprint) -> None:
        self.set_meta("fingerprint", fp.to_json())

    def bump_generation(self) -> int:
        """Count of vector changes; the derived ANN file records the one it was built from."""
        with self.transaction() as c:
            c.execute(
                "INSERT INTO meta VALUES ('generation', '1') "
                "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )
            return int(c.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    @property
    def kind(self) -> str:
        """"files" (a folder index) or "catalog" (items from a CSV / JSONL catalog)."""
        return self.get_meta("kind") or "files"

    # -- roots ----------------------------------------------------------------------------
    def add_roots(self, roots: Iterable[str]) -> None:
        with self.transaction() as c:
            rows = [(os.fsencode(r), time.time()) for r in roots]
            c.executemany("INSERT OR IGNORE INTO roots VALUES (CAST(? AS TEXT), ?)", rows)

    def roots(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT path FROM roots ORDER BY path")]

    # -- files ----------------------------------------------------------------------------
    def _rows(self, sql: str, params: Sequence = ()) -> list[FileRow]:
        cols = ", ".join(FILE_COLUMNS)
        return [FileRow(*r) for r in self.conn.execute(f"SELECT {cols} FROM files {sql}", params)]

    def files_under(self, roots: Sequence[str]) -> list[FileRow]:
        """Rows whose root is one of ``roots`` or whose path lies below one of them."""
        out: dict[int, FileRow] = {}
        for r in roots:
            raw, prefix = os.fsencode(r), os.fsencode(r.rstrip("/") + "/")
            sql = "WHERE root = CAST(? AS TEXT) OR path = CAST(? AS TEXT) OR substr(CAST(path AS BLOB), 1, ?) = ?"
            for row in self._rows(sql, (raw, raw, len(prefix), prefix)):
                out[row.id] = row
        return list(out.values())

    def file_by_path(self, path: str) -> FileRow | None:
        rows = self._rows("WHERE path = CAST(? AS TEXT)", (os.fsencode(path),))
        return rows[0] if rows else None

    def files_by_ids(self, ids: Sequence[int]) -> dict[int, FileRow]:
        out: dict[int, FileRow] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 900):  # SQLite's host-parameter limit
            chunk = ids[start : start + 900]
            marks = ",".join("?" * len(chunk))
            out.update((r.id, r) for r in self._rows(f"WHERE id IN ({marks})", chunk))
        return out

    def items_by_ids(self, ids: Sequence[int]) -> dict[int, dict]:
        """Catalog items by id: key, title, attrs (dict), images (list of paths)."""
        out: dict[int, dict] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for i, key, title, attrs, images in self.conn.execute(
                f"SELECT id, key, title, attrs, images FROM items WHERE id IN ({marks})", chunk
            ):
                out[i] = {"key": key, "title": title, "attrs": json.loads(attrs), "images": json.loads(images)}
        return out

    def item_counts(self) -> dict[str, int]:
        got = dict(self.conn.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())
        return {"ok": got.get("ok", 0), "failed": got.get("failed", 0)}

    def failed_items(self, limit: int | None = None) -> list[tuple[str, str]]:
        sql = "SELECT key, COALESCE(error, '') FROM items WHERE status = 'failed' ORDER BY key"
        return [tuple(r) for r in self.conn.execute(sql + (f" LIMIT {int(limit)}" if limit else ""))]

    def failed_files(self, limit: int | None = None) -> list[FileRow]:
        return self._rows("WHERE status = 'failed' ORDER BY path" + (f" LIMIT {int(limit)}" if limit else ""))

    def counts(self) -> dict[str, int]:
        got = dict(self.conn.execute("SELECT status, COUNT(*) FROM files GROUP BY status").fetchall())
        return {"ok": got.get("ok", 0), "failed": got.get("failed", 0)}

    def upsert_file(self, rec: dict) -> int:
        """Insert or update by path; returns the row id (kept across updates)."""
        cols = [c for c in FILE_COLUMNS if c != "id"]
        values = [os.fsencode(rec[c]) if c in ("path", "root") else rec.get(c) for c in cols]
        marks = ", ".join("CAST(? AS TEXT)" if c in ("path", "root") else "?" for c in cols)
        sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "path")
        with self.transaction() as c:
            return c.execute(
                f"INSERT INTO files ({', '.join(cols)}) VALUES ({marks}) "
                f"ON CONFLICT(path) DO UPDATE SET {sets} RETURNING id",
                values,
            ).fetchone()[0]

    def move_file(self, file_id: int, path: str, root: str, mtime: float) -> None:
        with self.transaction() as c:
            sql = "UPDATE files SET path = CAST(? AS TEXT), root = CAST(? AS TEXT), mtime = ? WHERE id = ?"
            c.execute(sql, (os.fsencode(path), os.fsencode(root), mtime, file_id))

    def delete_files(self, ids: Sequence[int]) -> None:
        with self.transaction() as c:
            c.executemany("DELETE FROM files WHERE id = ?", [(int(i),) for i in ids])

    def close(self) -> None:
        with suppress(sqlite3.Error):
            self.conn.close()


def _db_text(raw: bytes) -> str:
    """TEXT values back to str. Paths are bound as their file-system bytes (``os.fsencode``) and cast to TEXT, so a
    name that is not UTF-8 is stored as it is on disk; surrogateescape gives back what ``os.fsdecode`` gave."""
    return raw.decode("utf-8", "surrogateescape")


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
