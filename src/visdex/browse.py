"""Browsing an index without a query: the library newest first, a page at a time, and facet counts.

The date of a file is when it was taken (EXIF) or, without one, its modification time: the order a
photo library is read in. Pages are fetched by ``offset`` or, better for endless scrolling, by the
``cursor`` of the page before (keyset paging: a file added while one scrolls shifts nothing).
A ``where`` filter (:mod:`visdex.filters`) narrows both the pages and the facet counts.

>>> page = browse(ix.db, where="camera ~ '*canon*'", limit=50)      # doctest: +SKIP
>>> page.total, page.items[0]["date"], page.next_cursor             # doctest: +SKIP
(412, '2024-06-01T10:12:00', '2023-12-24T18:00:00|5121')
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadQuery
from .filters import _DIRNAME, _TOO_COMPLEX, compile_where

# The date a file is shown under: EXIF taken, else mtime, both as ISO 8601 text (sortable as text).
DATE_SQL = "COALESCE(files.taken_at, strftime('%Y-%m-%dT%H:%M:%S', files.mtime, 'unixepoch'))"
FOLDER_SQL = f"rtrim({_DIRNAME}, '/')"
MAX_LIMIT = 1000
FACET_FIELDS = ("folder", "year", "month", "camera", "format", "tag")


@dataclass
class BrowsePage:
    """One page of the library: ``items`` (dicts: id, path, name, date, date_source, size, ...), how many
    match in all (``total``), and where the next page starts (``next_offset`` / ``next_cursor``; None at the end)."""

    items: list[dict]
    total: int
    offset: int
    next_offset: int | None
    next_cursor: str | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Facets:
    """Counts of the values of each field among the files a filter selects, most common first
    (``year`` / ``month``: newest first). Each entry: ``{"value": ..., "count": n, "where": clause}``."""

    total: int
    fields: dict[str, list[dict]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"total": self.total, **self.fields}


def _filter(db, where: str | None) -> tuple[str, list]:
    if not where or not where.strip():
        return "1", []
    return compile_where(where, catalog=db.kind == "catalog")


def _run(db, sql: str, params: list) -> list[tuple]:
    try:
        return db.conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as e:
        if not _TOO_COMPLEX.search(str(e)):
            raise
        raise BadQuery(f"where: the filter is too complex for SQLite ({e}); use fewer conditions") from None


def _parse_cursor(cursor: str) -> tuple[str, int]:
    date, sep, ident = cursor.rpartition("|")
    if not sep or not ident.lstrip("-").isdigit():
        raise BadQuery("cursor: give the next_cursor of the page before", field="cursor")
    return date, int(ident)


def browse(
    db,
    *,
    where: str | None = None,
    offset: int = 0,
    limit: int = 100,
    cursor: str | None = None,
    ids: list[int] | None = None,
) -> BrowsePage:
    """The indexed files (or catalog items) newest first; ``cursor`` (from the page before) wins over ``offset``;
    ``ids``: only these (e.g. the members of a cluster)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    if offset < 0:
        raise BadQuery("offset must be 0 or more", field="offset")
    if db.kind == "catalog":
        return _browse_catalog(db, where, offset, limit, cursor)
    cond, params = _filter(db, where)
    if ids is not None:  # one parameter however many: a JSON array read by SQLite
        cond, params = f"({cond}) AND files.id IN (SELECT value FROM json_each(?))", [*params, json.dumps(ids)]
    base = f"FROM files WHERE files.status = 'ok' AND ({cond})"
    total = _run(db, f"SELECT COUNT(*) {base}", params)[0][0]
    page_sql = f"SELECT files.id, files.path, files.size, files.width, files.height, files.format, files.taken_at, " \
               f"files.camera, files.mtime, {DATE_SQL} AS d {base}"  # fmt: skip
    page_params = list(params)
    if cursor:
        date, ident = _parse_cursor(cursor)
        page_sql += f" AND ({DATE_SQL} < ? OR ({DATE_SQL} = ? AND files.id < ?))"
        page_params += [date, date, ident]
        offset = 0
    page_sql += " ORDER BY d DESC, files.id DESC LIMIT ? OFFSET ?"
    rows = _run(db, page_sql, [*page_params, limit + 1, offset])
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {"id": i, "path": p, "name": Path(p).name, "size": size, "width": w, "height": h, "format": fmt,
         "taken_at": taken, "camera": cam, "mtime": mtime, "date": d, "date_source": "taken" if taken else "modified"}
        for i, p, size, w, h, fmt, taken, cam, mtime, d in rows
    ]  # fmt: skip
    last = items[-1] if items else None
    return BrowsePage(
        items,
        total,
        offset,
        offset + len(items) if more and not cursor else None,
        f"{last['date']}|{last['id']}" if more and last else None,
    )


def _browse_catalog(db, where, offset, limit, cursor) -> BrowsePage:
    cond, params = _filter(db, where)
    base = f"FROM items WHERE items.status = 'ok' AND ({cond})"
    total = _run(db, f"SELECT COUNT(*) {base}", params)[0][0]
    sql, page_params = f"SELECT items.id, items.key, items.title {base}", list(params)
    if cursor:
        _, ident = _parse_cursor(cursor)
        sql += " AND items.id < ?"
        page_params.append(ident)
        offset = 0
    rows = _run(db, sql + " ORDER BY items.id DESC LIMIT ? OFFSET ?", [*page_params, limit + 1, offset])
    more = len(rows) > limit
    items = [{"id": i, "key": k, "name": t or k, "date": None, "date_source": None} for i, k, t in rows[:limit]]
    return BrowsePage(
        items,
        total,
        offset,
        offset + len(items) if more and not cursor else None,
        f"|{items[-1]['id']}" if more and items else None,
    )


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def facets(db, *, where: str | None = None, limit: int = 50) -> Facets:
    """Value counts of folder, year, month (taken), camera, format and tag among the files ``where`` selects.
    Each value carries the ``where`` clause that selects it, for a UI to add."""
    if db.kind == "catalog":
        cond, params = _filter(db, where)
        total = _run(db, f"SELECT COUNT(*) FROM items WHERE status = 'ok' AND ({cond})", params)[0][0]
        return Facets(total, {f: [] for f in FACET_FIELDS})
    cond, params = _filter(db, where)
    base = f"FROM files WHERE files.status = 'ok' AND ({cond})"
    total = _run(db, f"SELECT COUNT(*) {base}", params)[0][0]
    exprs = {
        "folder": (FOLDER_SQL, "n DESC, v", lambda v: f"folder = {_quoted(v)}"),
        "year": ("substr(files.taken_at, 1, 4)", "v DESC", lambda v: f"taken = {v}"),
        "month": ("substr(files.taken_at, 1, 7)", "v DESC", lambda v: f"taken = {v}"),
        "camera": ("files.camera", "n DESC, v", lambda v: f"camera = {_quoted(v)}"),
        "format": ("lower(files.format)", "n DESC, v", lambda v: f"format = {v}"),
    }
    out: dict[str, list[dict]] = {}
    for name, (expr, order, clause) in exprs.items():
        rows = _run(
            db,
            f"SELECT {expr} AS v, COUNT(*) AS n {base} AND {expr} IS NOT NULL GROUP BY v ORDER BY {order} LIMIT ?",
            [*params, limit],
        )
        out[name] = [{"value": v, "count": n, "where": clause(v)} for v, n in rows]
    rows = _run(
        db,
        f"SELECT tags.label AS v, COUNT(*) AS n FROM tags JOIN files ON files.id = tags.file_id "
        f"WHERE files.status = 'ok' AND ({cond}) GROUP BY v ORDER BY n DESC, v LIMIT ?",
        [*params, limit],
    )
    out["tag"] = [{"value": v, "count": n, "where": f"tag = {_quoted(v)}"} for v, n in rows]
    return Facets(total, out)
