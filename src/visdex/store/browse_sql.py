"""The SQL of reads over an index's ``files`` (or catalog ``items``) that a ``--where`` filter narrows: the ids
it selects (:func:`visdex.filters.allowed_ids`), the pages and counts of :mod:`visdex.browse` and its facet
counts. The filter comes as :func:`visdex.filters.compile_where` made it, SQL with ``?`` parameters (``"1"``
and no parameters: everything); user values are never pasted into SQL. A filter too complex for SQLite to
prepare is a :class:`~visdex.errors.BadQuery` that says so.

>>> count_files(db, "(lower(files.format) = lower(?))", ["jpeg"])       # doctest: +SKIP
412
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import BadQuery
from ..filters import FILE_FIELDS
from .db import IndexDB

# SQLite's refusals of a statement too big to prepare: expression tree depth, parser stack, too many terms
TOO_COMPLEX = re.compile(r"too large|too many|too deep|stack overflow|too long", re.I)
# The date a file is shown under: EXIF taken, else mtime, both as ISO 8601 text (sortable as text).
DATE_SQL = "COALESCE(files.taken_at, strftime('%Y-%m-%dT%H:%M:%S', files.mtime, 'unixepoch'))"
FOLDER_SQL = FILE_FIELDS["folder"][0]  # the folder facet counts what the `folder = X` filter selects
# facet -> (SQL expression over files, ORDER BY of its counts)
FACET_SQL = {
    "folder": (FOLDER_SQL, "n DESC, v"),
    "year": ("substr(files.taken_at, 1, 4)", "v DESC"),
    "month": ("substr(files.taken_at, 1, 7)", "v DESC"),
    "camera": ("files.camera", "n DESC, v"),
    "format": ("lower(files.format)", "n DESC, v"),
}

FileRowTuple = tuple[int, str, int, Any, Any, Any, Any, Any, float, str]


def _run(db: IndexDB, sql: str, params: Sequence, advice: str = "use fewer conditions") -> list[Any]:
    try:
        return db.conn.execute(sql, list(params)).fetchall()
    except sqlite3.OperationalError as e:
        if not TOO_COMPLEX.search(str(e)):
            raise
        raise BadQuery(f"where: the filter is too complex for SQLite ({e}); {advice}") from None


def matching_ids(db: IndexDB, cond: str, params: Sequence, *, catalog: bool = False) -> np.ndarray:
    """Ids of the indexed files (or catalog items) that ``cond`` selects."""
    table = "items" if catalog else "files"
    rows = _run(db, f"SELECT id FROM {table} WHERE status = 'ok' AND ({cond})", params,
                "use fewer conditions or less nesting")  # fmt: skip
    return np.fromiter((r[0] for r in rows), np.int64, count=len(rows))


def _with_ids(cond: str, params: Sequence, ids: Sequence[int] | None) -> tuple[str, list]:
    if ids is None:
        return cond, list(params)
    # one parameter however many ids: a JSON array read by SQLite
    return f"({cond}) AND files.id IN (SELECT value FROM json_each(?))", [*params, json.dumps([int(i) for i in ids])]


def count_files(db: IndexDB, cond: str, params: Sequence, ids: Sequence[int] | None = None) -> int:
    """Indexed files that ``cond`` selects (among ``ids`` when given)."""
    cond, args = _with_ids(cond, params, ids)
    return _run(db, f"SELECT COUNT(*) FROM files WHERE files.status = 'ok' AND ({cond})", args)[0][0]


def page_files(
    db: IndexDB,
    cond: str,
    params: Sequence,
    *,
    limit: int,
    offset: int = 0,
    before: tuple[str, int] | None = None,
    ids: Sequence[int] | None = None,
) -> list[FileRowTuple]:
    """Up to ``limit`` indexed files that ``cond`` selects, newest first (by :data:`DATE_SQL`, then id), after the
    first ``offset``, or (keyset paging) only those before ``before`` = (date, id): rows of (id, path, size, width,
    height, format, taken_at, camera, mtime, date)."""
    cond, args = _with_ids(cond, params, ids)
    sql = (
        "SELECT files.id, files.path, files.size, files.width, files.height, files.format, files.taken_at, "
        f"files.camera, files.mtime, {DATE_SQL} AS d FROM files WHERE files.status = 'ok' AND ({cond})"
    )
    if before is not None:
        sql += f" AND ({DATE_SQL} < ? OR ({DATE_SQL} = ? AND files.id < ?))"
        args += [before[0], before[0], before[1]]
    return _run(db, sql + " ORDER BY d DESC, files.id DESC LIMIT ? OFFSET ?", [*args, limit, offset])


def count_items(db: IndexDB, cond: str, params: Sequence) -> int:
    """Indexed catalog items that ``cond`` selects."""
    return _run(db, f"SELECT COUNT(*) FROM items WHERE items.status = 'ok' AND ({cond})", params)[0][0]


def page_items(
    db: IndexDB, cond: str, params: Sequence, *, limit: int, offset: int = 0, before: int | None = None
) -> list[tuple[int, str, str | None]]:
    """Up to ``limit`` catalog items that ``cond`` selects, newest (highest id) first, after the first ``offset``
    or only those with an id below ``before``: rows of (id, key, title)."""
    sql = f"SELECT items.id, items.key, items.title FROM items WHERE items.status = 'ok' AND ({cond})"
    args = list(params)
    if before is not None:
        sql += " AND items.id < ?"
        args.append(before)
    return _run(db, sql + " ORDER BY items.id DESC LIMIT ? OFFSET ?", [*args, limit, offset])


def facet_counts(db: IndexDB, facet: str, cond: str, params: Sequence, limit: int) -> list[tuple[Any, int]]:
    """(value, files) of one facet (:data:`FACET_SQL`, or ``"tag"``) among the indexed files ``cond`` selects,
    most common first (``year`` / ``month``: newest first), at most ``limit``."""
    if facet == "tag":
        sql = (
            "SELECT tags.label AS v, COUNT(*) AS n FROM tags JOIN files ON files.id = tags.file_id "
            f"WHERE files.status = 'ok' AND ({cond}) GROUP BY v ORDER BY n DESC, v LIMIT ?"
        )
    else:
        expr, order = FACET_SQL[facet]
        sql = (
            f"SELECT {expr} AS v, COUNT(*) AS n FROM files WHERE files.status = 'ok' AND ({cond}) "
            f"AND {expr} IS NOT NULL GROUP BY v ORDER BY {order} LIMIT ?"
        )
    return _run(db, sql, [*params, limit])
