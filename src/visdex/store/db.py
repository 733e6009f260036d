"""The SQLite file that is the truth of an index: files and their metadata, failures,
the model fingerprint, and (for the embedded store) the vectors themselves.

WAL mode, one connection per ``IndexDB``, explicit transactions. Schema changes are
numbered migrations applied in order on open; an index from a newer visdex is refused
rather than misread.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..errors import DiskFull, IndexBusy, StoreError
from ..models.base import Fingerprint

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no writer lock (SQLite still serialises each transaction)
    fcntl = None

BUSY_TIMEOUT_S = 60  # how long a statement waits for another process's write lock
log = logging.getLogger(__name__)

DB_NAME = "index.db"
LOCK_NAME = "index.lock"  # held (flock) by the one process writing to the index

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
    # v4: a checksum of the set of vector ids, kept by triggers, so a saved ANN file is checked against the
    # truth without reading every row (see LocalVectorStore); the sums stay within int64 up to 2e9 vectors.
    """
    CREATE TABLE vector_set (one INTEGER PRIMARY KEY CHECK (one = 1), n INTEGER NOT NULL, s1 INTEGER NOT NULL,
                             s2 INTEGER NOT NULL);
    INSERT INTO vector_set SELECT 1, COUNT(*), COALESCE(SUM(id % 1000000007), 0),
                                  COALESCE(SUM((id % 65521) * (id % 65521)), 0) FROM vectors;
    CREATE TRIGGER vector_set_insert AFTER INSERT ON vectors BEGIN
        UPDATE vector_set SET n = n + 1, s1 = s1 + NEW.id % 1000000007, s2 = s2 + (NEW.id % 65521) * (NEW.id % 65521);
    END;
    CREATE TRIGGER vector_set_delete AFTER DELETE ON vectors BEGIN
        UPDATE vector_set SET n = n - 1, s1 = s1 - OLD.id % 1000000007, s2 = s2 - (OLD.id % 65521) * (OLD.id % 65521);
    END;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
READABLE_FROM = 3  # a read-only index of this schema version or later is searched without upgrading it

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
        if not self.dir.exists():
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise os_error(e, f"cannot create the index folder {self.dir}") from e
        self.readonly = False  # True: opened read-only (a read-only folder or mount, or a full disk)
        self._writer = False  # holds the index's writer lock (see hold_writer)
        self._on_commit: list[Callable[[], None]] = []
        self._depth = 0
        self._bumped = False  # the open transaction changed vectors (bumped the generation)
        # Opening can meet SQLITE_BUSY without SQLite's busy handler being asked: switching a new file to WAL
        # while another process does the same, or reading while it rebuilds the WAL index. Those are brief:
        # retry the whole open (each step is idempotent) for as long as the busy timeout would have waited.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._open()
                return
            except sqlite3.DatabaseError as e:
                busy = isinstance(e, sqlite3.OperationalError) and sqlite_code(e) in (
                    sqlite3.SQLITE_BUSY,
                    sqlite3.SQLITE_LOCKED,
                )
                if not busy or time.monotonic() > deadline:
                    raise StoreError(f"cannot open the index database {self.path}: {e}") from e
                with suppress(Exception):
                    self.conn.close()
                time.sleep(random.uniform(0.005, 0.05))  # jittered: the racers must not retry in step

    def _open(self) -> None:
        self.readonly = False
        if _writable(self.path):
            try:
                self.conn = self._connect(self.path)
                self.conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as e:
                # A full disk cannot even hold WAL's shared-memory file: still answer reads.
                if not self.path.exists() or sqlite_code(e) not in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
                                                                 sqlite3.SQLITE_CANTOPEN):  # fmt: skip
                    raise
                log.warning("opening %s read-only: %s", self.path, e)
                self.conn = self._connect_readonly()
        else:
            self.conn = self._connect_readonly()
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _connect(self, target: str | Path, uri: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False, uri=uri)
        conn.text_factory = _db_text  # file names that are not UTF-8 come back as os.fsdecode gave them
        return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        """A read-only connection. WAL needs its -shm file: in a read-only folder or on a full disk that cannot
        be made, so the file is then read as immutable (what was last checkpointed into it)."""
        self.readonly = True
        base = self.path.absolute().as_uri()
        for query in ("?mode=ro", "?immutable=1"):
            conn = self._connect(base + query, uri=True)
            try:
                conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError:
                conn.close()
                if query == "?immutable=1":
                    raise
        raise AssertionError("unreachable")

    # -- schema ---------------------------------------------------------------------------
    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"index {self.dir} has schema version {version}, newer than this visdex understands "
                f"({SCHEMA_VERSION}); upgrade visdex"
            )
        if version < SCHEMA_VERSION and self.readonly:
            if version >= READABLE_FROM:  # later versions only add what reads can do without
                return
            raise StoreError(
                f"index {self.dir} has schema version {version} and is read-only here; open it once "
                f"with write access (any visdex command) to upgrade it to version {SCHEMA_VERSION}"
            )
        for v in range(version, SCHEMA_VERSION):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have applied it while this one waited for the write lock (two first runs).
                if self.conn.execute("PRAGMA user_version").fetchone()[0] > v:
                    self.conn.execute("COMMIT")
                    continue
                for stmt in _split_sql(MIGRATIONS[v]):
                    self.conn.execute(stmt)
                self.conn.execute(f"PRAGMA user_version = {v + 1}")
                if v == 0:
                    self.conn.execute("INSERT INTO meta VALUES ('created_at', ?)", (str(time.time()),))
                self.conn.execute("COMMIT")
            except BaseException as e:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError) and sqlite_code(e) == sqlite3.SQLITE_FULL:
                    raise DiskFull(f"no space left to create the index at {self.dir}") from e
                raise

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    # -- transactions ---------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested calls join the outer one. Callbacks registered with
        :meth:`after_commit` run only once the outermost transaction has committed. A full disk
        is a :class:`DiskFull` error, the transaction rolled back whole."""
        if self._depth == 0:
            if self.readonly:
                raise StoreError(f"the index at {self.dir} is read-only here (a read-only folder or mount, or a full "
                                 "disk): it can be searched, not changed")  # fmt: skip
            self._begin()
        self._depth += 1
        try:
            yield self.conn
        except BaseException as e:
            self._depth -= 1
            if self._depth == 0:
                self._end("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise self._translate(e) from e
            raise
        self._depth -= 1
        if self._depth == 0:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as e:
                self._end("ROLLBACK")
                raise self._translate(e) from e
            callbacks, self._on_commit, self._bumped = self._on_commit, [], False
            for cb in callbacks:
                cb()

    def _begin(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self._translate(e) from e

    def _end(self, how: str) -> None:
        # SQLite rolls a transaction back by itself after SQLITE_FULL and some I/O errors: then none is open.
        if self.conn.in_transaction:
            with suppress(sqlite3.Error):
                self.conn.execute(how)
        self._on_commit.clear()
        self._bumped = False

    def _translate(self, e: sqlite3.Error) -> Exception:
        """SQLite's errors that a user can act on, as visdex errors; others unchanged."""
        code = sqlite_code(e)
        if code == sqlite3.SQLITE_FULL:
            return DiskFull(f"no space left on the disk of {self.dir}: the last change was rolled back, everything "
                            "committed before it is kept; free some space and run the command again")  # fmt: skip
        if code == sqlite3.SQLITE_READONLY:
            return StoreError(f"the index at {self.dir} cannot be written here (read-only): {e}")
        return e

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @property
    def vectors_changed(self) -> bool:
        """The open transaction changed vectors (an in-memory ANN index no longer matches what it reads)."""
        return self._depth > 0 and self._bumped

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """Reads that must agree with each other (the generation and the vectors it counts): one read
        transaction, so a commit by another process in between is not half seen. Inside a write
        transaction: that one."""
        if self._depth > 0 or self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            with suppress(sqlite3.Error):
                self.conn.execute("COMMIT")

    # -- the writer lock ------------------------------------------------------------------
    def hold_writer(self) -> None:
        """Become the index's one writer until :meth:`close`: an exclusive lock on ``index.lock``, which
        the OS drops when the process ends (a kill -9 leaves no stale lock). Another process holding it
        is an :class:`IndexBusy` error at once. Readers never take it and never wait for it."""
        if self._writer:
            return
        if self.readonly:
            raise StoreError(f"the index at {self.dir} is read-only here (a read-only folder or mount, or a full "
                             "disk): it can be searched, not changed")  # fmt: skip
        _lock_dir(self.dir)
        self._writer = True

    @property
    def holds_writer(self) -> bool:
        return self._writer

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
            self._bumped = True
            c.execute(
                "INSERT INTO meta VALUES ('generation', '1') "
                "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )
            return int(c.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    def vector_set(self) -> tuple[int, int, int] | None:
        """(count, sum of id mod 1000000007, sum of (id mod 65521)^2) of the stored vectors' ids, kept by triggers;
        None for an index of an older schema opened read-only."""
        try:
            row = self.conn.execute("SELECT n, s1, s2 FROM vector_set").fetchone()
        except sqlite3.OperationalError:
            return None
        return tuple(row) if row else None

    @property
    def kind(self) -> str:
        """ "files" (a folder index) or "catalog" (items from a CSV / JSONL catalog)."""
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

    def restore_file(self, row: FileRow) -> int:
        """Put back a row removed by :meth:`delete_files` (visdex.trash undo): under its old id when that is free,
        else a new one; returns the id. The path must not be indexed already."""
        taken = self.conn.execute("SELECT 1 FROM files WHERE id = ?", (row.id,)).fetchone() is not None
        rec = {c: getattr(row, c) for c in FILE_COLUMNS if c != "id"}
        cols = [c for c in FILE_COLUMNS if c != "id" or not taken]
        values = [os.fsencode(rec[c]) if c in ("path", "root") else (row.id if c == "id" else rec[c]) for c in cols]
        marks = ", ".join("CAST(? AS TEXT)" if c in ("path", "root") else "?" for c in cols)
        with self.transaction() as c:
            sql = f"INSERT INTO files ({', '.join(cols)}) VALUES ({marks}) RETURNING id"
            return c.execute(sql, values).fetchone()[0]

    def put_tags(self, file_id: int, tags: Iterable[tuple[str, float]]) -> None:
        """(label, score) tags of one file, as ``visdex tag`` stored them (restored by visdex.trash undo)."""
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", [(file_id, lb, s) for lb, s in tags])

    def delete_tags(self, labels: Sequence[str]) -> None:
        """Forget every file's score of these labels (before they are scored again)."""
        with self.transaction() as c:
            c.execute(f"DELETE FROM tags WHERE label IN ({','.join('?' * len(labels))})", list(labels))

    def upsert_tags(self, rows: Sequence[tuple[int, str, float]]) -> None:
        """(file id, label, score) rows; a label scored again for a file replaces its score."""
        with self.transaction() as c:
            c.executemany("INSERT INTO tags VALUES (?, ?, ?) ON CONFLICT(file_id, label) DO UPDATE SET "
                          "score = excluded.score", rows)  # fmt: skip

    def tags_of(self, ids: Sequence[int]) -> dict[int, list[tuple[str, float]]]:
        """file id -> its (label, score) tags, best first (an empty list for a file without tags)."""
        out: dict[int, list[tuple[str, float]]] = {int(i): [] for i in ids}
        keys = list(out)
        for start in range(0, len(keys), 900):  # SQLite's host-parameter limit
            chunk = keys[start : start + 900]
            sql = f"SELECT file_id, label, score FROM tags WHERE file_id IN ({','.join('?' * len(chunk))}) " \
                  "ORDER BY score DESC"  # fmt: skip
            for fid, label, score in self.conn.execute(sql, chunk):
                out[fid].append((label, score))
        return out

    def tag_counts(self) -> list[tuple[str, int]]:
        """(label, files tagged with it), most common first."""
        sql = "SELECT label, COUNT(*) FROM tags GROUP BY label ORDER BY COUNT(*) DESC, label"
        return [(label, n) for label, n in self.conn.execute(sql)]

    # -- catalog items ----------------------------------------------------------------------
    def item_keys(self) -> dict[str, tuple[int, str | None]]:
        """key -> (id, row hash) of every catalog item, failed ones too."""
        return {k: (i, h) for k, i, h in self.conn.execute("SELECT key, id, row_hash FROM items")}

    def delete_items(self, ids: Sequence[int]) -> None:
        with self.transaction() as c:
            c.executemany("DELETE FROM items WHERE id = ?", [(int(i),) for i in ids])

    def upsert_item(self, key: str, title: str | None, attrs: dict, images: Sequence[str], row_hash: str,
                    status: str, error: str | None, indexed_at: float) -> int:  # fmt: skip
        """Insert or update a catalog item by key; returns its id (kept across updates)."""
        values = (key, title, json.dumps(attrs, sort_keys=True), json.dumps(list(images)), row_hash, status, error,
                  indexed_at)  # fmt: skip
        with self.transaction() as c:
            return c.execute(
                "INSERT INTO items (key, title, attrs, images, row_hash, status, error, indexed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET title = excluded.title, "
                "attrs = excluded.attrs, images = excluded.images, row_hash = excluded.row_hash, "
                "status = excluded.status, error = excluded.error, indexed_at = excluded.indexed_at RETURNING id",
                values,
            ).fetchone()[0]

    # -- the vectors table, written directly (visdex.migrate moves vectors in from another store) ----------
    def delete_all_vectors(self) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM vectors")

    def insert_vectors(self, rows: Iterable[tuple[int, bytes]]) -> None:
        """(id, float32 vector bytes) rows; the caller bumps the generation (the ANN file is rebuilt from them)."""
        with self.transaction() as c:
            c.executemany("INSERT INTO vectors VALUES (?, ?)", rows)

    def vacuum(self) -> None:
        """Give the space of deleted rows back to the file system (rewrites the file; outside a transaction)."""
        self.conn.execute("VACUUM")

    # -- a rebuild's vectors, built aside (see visdex.rebuild) -------------------------------
    # One row per file or item re-embedded so far with the new model, stamped with what the row was when it
    # was read (size + mtime, or a catalog row's hash) so a resumed rebuild re-embeds whatever changed since.
    def shadow_fingerprint(self) -> str | None:
        """The fingerprint (JSON) of the model an unfinished rebuild is re-embedding with, None when none is."""
        return self.get_meta("rebuild_fingerprint")

    def start_shadow(self, fingerprint: str) -> int:
        """Begin (or resume, for the same model) a rebuild; returns how many vectors it already has."""
        with self.transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS rebuild_vectors (id INTEGER PRIMARY KEY, vec BLOB, error TEXT, "
                      "size INTEGER, mtime REAL, row_hash TEXT)")  # fmt: skip
            if self.shadow_fingerprint() != fingerprint:
                c.execute("DELETE FROM rebuild_vectors")
                self.set_meta("rebuild_fingerprint", fingerprint)
            return c.execute("SELECT COUNT(*) FROM rebuild_vectors").fetchone()[0]

    def shadow_todo_files(self) -> list[FileRow]:
        """Indexed files the rebuild has not re-embedded yet (or that changed since it did)."""
        return self._rows("WHERE status = 'ok' AND NOT EXISTS (SELECT 1 FROM rebuild_vectors s WHERE s.id = files.id "
                          "AND s.size = files.size AND s.mtime = files.mtime) ORDER BY id")  # fmt: skip

    def shadow_todo_items(self) -> list[dict]:
        """Catalog items the rebuild has not re-embedded yet (or that changed since it did)."""
        sql = (
            "SELECT id, key, title, attrs, images, row_hash FROM items WHERE status = 'ok' AND NOT EXISTS "
            "(SELECT 1 FROM rebuild_vectors s WHERE s.id = items.id AND s.row_hash IS items.row_hash) ORDER BY id"
        )
        return [{"id": i, "key": k, "title": t, "attrs": json.loads(a), "images": json.loads(im), "row_hash": h}
                for i, k, t, a, im, h in self.conn.execute(sql)]  # fmt: skip

    def put_shadow(self, rows: Sequence[tuple]) -> None:
        """(id, vector bytes or None, error or None, size, mtime, row_hash) rows of the rebuild."""
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO rebuild_vectors VALUES (?, ?, ?, ?, ?, ?)", rows)

    def shadow_ready(self, chunk: int = 16384) -> Iterator[list[tuple[int, bytes]]]:
        """(id, vector) batches of the rebuild for every current indexed row (files or items)."""
        table, match = ("items", "s.row_hash IS t.row_hash") if self.kind == "catalog" else (
            "files", "s.size = t.size AND s.mtime = t.mtime")  # fmt: skip
        cur = self.conn.execute(f"SELECT s.id, s.vec FROM rebuild_vectors s JOIN {table} t ON t.id = s.id "
                                f"WHERE t.status = 'ok' AND s.vec IS NOT NULL AND {match} ORDER BY s.id")  # fmt: skip
        while rows := cur.fetchmany(chunk):
            yield rows

    def shadow_misses(self) -> list[tuple[int, str]]:
        """Indexed rows the rebuild has no vector for: (id, why)."""
        table, match = ("items", "s.row_hash IS t.row_hash") if self.kind == "catalog" else (
            "files", "s.size = t.size AND s.mtime = t.mtime")  # fmt: skip
        sql = (
            f"SELECT t.id, COALESCE(s.error, 'changed while the rebuild ran') FROM {table} t LEFT JOIN "
            f"rebuild_vectors s ON s.id = t.id AND {match} WHERE t.status = 'ok' AND s.vec IS NULL"
        )
        return [tuple(r) for r in self.conn.execute(sql)]

    def fail_rows(self, rows: Sequence[tuple[int, str]]) -> None:
        """Mark files (or items) failed with a reason; a file's mtime is reset so the next run looks at it again."""
        with self.transaction() as c:
            if self.kind == "catalog":
                c.executemany("UPDATE items SET status = 'failed', error = ?, row_hash = NULL WHERE id = ?",
                              [(why, int(i)) for i, why in rows])  # fmt: skip
            else:
                c.executemany("UPDATE files SET status = 'failed', error = ?, mtime = -1 WHERE id = ?",
                              [(why, int(i)) for i, why in rows])  # fmt: skip

    def drop_shadow(self) -> None:
        with self.transaction() as c:
            c.execute("DROP TABLE IF EXISTS rebuild_vectors")
            c.execute("DELETE FROM meta WHERE key = 'rebuild_fingerprint'")

    def shadow_progress(self) -> tuple[int, int] | None:
        """(re-embedded, to do in all) of an unfinished rebuild, None when none is under way."""
        if self.shadow_fingerprint() is None:
            return None
        table = "items" if self.kind == "catalog" else "files"
        total = self.conn.execute(f"SELECT COUNT(*) FROM {table} WHERE status = 'ok'").fetchone()[0]
        try:
            done = self.conn.execute("SELECT COUNT(*) FROM rebuild_vectors").fetchone()[0]
        except sqlite3.OperationalError:
            done = 0
        return min(done, total), total

    # -- attributes of shard samples (caption, url, key, json; see visdex.sources) ----------------
    # A side table made on first use (outside the migration chain: an index without shards never has it);
    # rows leave with their file.
    def set_file_attrs(self, rows: Sequence[tuple[int, dict]]) -> None:
        with self.transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS file_attrs (file_id INTEGER PRIMARY KEY REFERENCES files(id) "
                      "ON DELETE CASCADE, caption TEXT, url TEXT, attrs TEXT NOT NULL)")  # fmt: skip
            c.executemany(
                "INSERT OR REPLACE INTO file_attrs VALUES (?, ?, ?, ?)",
                [(fid, a.get("caption"), a.get("url"), json.dumps(a, sort_keys=True)) for fid, a in rows],
            )

    def file_attrs(self, ids: Sequence[int]) -> dict[int, dict]:
        """file id -> the attributes stored with it (only files that have some)."""
        if not ids or self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'file_attrs'").fetchone() is None:
            return {}
        out: dict[int, dict] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = [int(i) for i in ids[start : start + 900]]
            sql = f"SELECT file_id, attrs FROM file_attrs WHERE file_id IN ({', '.join('?' * len(chunk))})"
            out.update((fid, json.loads(a)) for fid, a in self.conn.execute(sql, chunk))
        return out

    def close(self) -> None:
        with suppress(sqlite3.Error):
            self.conn.close()
        if self._writer:
            self._writer = False
            _unlock_dir(self.dir)


def _db_text(raw: bytes) -> str:
    """TEXT values back to str. Paths are bound as their file-system bytes (``os.fsencode``) and cast to TEXT, so a
    name that is not UTF-8 is stored as it is on disk; surrogateescape gives back what ``os.fsdecode`` gave."""
    return raw.decode("utf-8", "surrogateescape")


def _split_sql(script: str) -> list[str]:
    """The statements of ``script``; a trigger's body (``BEGIN ...; END``) stays one statement."""
    out, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                out.append(current.strip())
            current = ""
    return out


# -- errors --------------------------------------------------------------------------------------
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def sqlite_code(e: sqlite3.Error) -> int:
    """The primary SQLite result code of an error (SQLITE_FULL, SQLITE_IOERR...), -1 when unknown."""
    return getattr(e, "sqlite_errorcode", -1) & 0xFF if getattr(e, "sqlite_errorcode", None) is not None else -1


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in _FULL_ERRNOS


def os_error(e: OSError, what: str) -> Exception:
    if is_disk_full(e):
        return DiskFull(f"{what}: {e.strerror} (free some space and run the command again)")
    return StoreError(f"{what}: {e.strerror or e}")


def _writable(db_path: Path) -> bool:
    """Whether this process may write the index (a read-only mount answers False even for root)."""
    return os.access(db_path.parent, os.W_OK) and (not db_path.exists() or os.access(db_path, os.W_OK))


# -- the writer lock: one per index folder and process, shared by that process's IndexDBs ----------
_locks: dict[str, list] = {}  # realpath -> [fd, holders]
_locks_guard = threading.Lock()


def _lock_dir(directory: Path) -> None:
    key = os.path.realpath(directory)
    with _locks_guard:
        held = _locks.get(key)
        if held is not None:  # this process already writes there (two IndexDBs of one index)
            held[1] += 1
            return
        if fcntl is None:  # pragma: no cover
            _locks[key] = [-1, 1]
            return
        path = os.path.join(key, LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise os_error(e, f"cannot open the writer lock {path}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                who = f"pid {holder}" if holder else "pid unknown"
                raise IndexBusy(f"index busy: another visdex process ({who}) is writing to {key}; wait for it to "
                                "finish (searches keep working meanwhile)") from None  # fmt: skip
            raise os_error(e, f"cannot lock {path}") from e
        with suppress(OSError):  # only for the message above: a full disk must not stop the writer
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _locks[key] = [fd, 1]


def _unlock_dir(directory: Path) -> None:
    key = os.path.realpath(directory)
    with _locks_guard:
        held = _locks.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del _locks[key]
            if held[0] >= 0:
                with suppress(OSError):
                    os.ftruncate(held[0], 0)
                os.close(held[0])  # closing the descriptor releases the flock


def _holder(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None
