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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadQuery
from .filters import compile_where
from .store import browse_sql
from .store.db import IndexDB

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


def _filter(db: IndexDB, where: str | None) -> tuple[str, list]:
    if not where or not where.strip():
        return "1", []
    return compile_where(where, catalog=db.kind == "catalog")


def _parse_cursor(cursor: str) -> tuple[str, int]:
    date, sep, ident = cursor.rpartition("|")
    if not sep or not ident.lstrip("-").isdigit():
        raise BadQuery("cursor: give the next_cursor of the page before", field="cursor")
    return date, int(ident)


def browse(
    db: IndexDB,
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
    total = browse_sql.count_files(db, cond, params, ids)
    before = _parse_cursor(cursor) if cursor else None
    if before is not None:
        offset = 0
    rows = browse_sql.page_files(db, cond, params, limit=limit + 1, offset=offset, before=before, ids=ids)
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


def _browse_catalog(db: IndexDB, where: str | None, offset: int, limit: int, cursor: str | None) -> BrowsePage:
    cond, params = _filter(db, where)
    total = browse_sql.count_items(db, cond, params)
    before = _parse_cursor(cursor)[1] if cursor else None
    if before is not None:
        offset = 0
    rows = browse_sql.page_items(db, cond, params, limit=limit + 1, offset=offset, before=before)
    more = len(rows) > limit
    items: list[dict[str, Any]] = [
        {"id": i, "key": k, "name": t or k, "date": None, "date_source": None} for i, k, t in rows[:limit]
    ]
    return BrowsePage(
        items,
        total,
        offset,
        offset + len(items) if more and not cursor else None,
        f"|{items[-1]['id']}" if more and items else None,
    )


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def facets(db: IndexDB, *, where: str | None = None, limit: int = 50) -> Facets:
    """Value counts of folder, year, month (taken), camera, format and tag among the files ``where`` selects.
    Each value carries the ``where`` clause that selects it, for a UI to add."""
    cond, params = _filter(db, where)
    if db.kind == "catalog":
        return Facets(browse_sql.count_items(db, cond, params), {f: [] for f in FACET_FIELDS})
    total = browse_sql.count_files(db, cond, params)
    clauses = {
        "folder": lambda v: f"folder = {_quoted(v)}",
        "year": lambda v: f"taken = {v}",
        "month": lambda v: f"taken = {v}",
        "camera": lambda v: f"camera = {_quoted(v)}",
        "format": lambda v: f"format = {v}",
        "tag": lambda v: f"tag = {_quoted(v)}",
    }
    out = {
        name: [
            {"value": v, "count": n, "where": clause(v)}
            for v, n in browse_sql.facet_counts(db, name, cond, params, limit)
        ]
        for name, clause in clauses.items()
    }
    return Facets(total, out)
