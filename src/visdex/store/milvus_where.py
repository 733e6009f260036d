"""``--where`` as a Milvus boolean expression, so a filter runs inside Milvus next to the vectors
instead of shipping a list of every matching id.

The filter language and its meaning are :mod:`visdex.filters`' (SQL is the reference): the same
filter must match the same items. Every comparison on a field stored with the vectors
(:func:`file_fields`, :func:`item_fields`) is translated:
path, name, folder, format, camera, width, height, size, taken/date, a catalog's key, title and
attributes; ``=`` / ``!=`` / ``~`` (glob -> LIKE) on text, every operator on numbers and dates.
A comparison that has no faithful translation -- ``tag`` (tags change without touching vectors),
a glob with ``[...]`` classes, ``<`` / ``>`` on text, ``~`` on a number or a date -- is answered by
SQL and enters the expression as ``id in [...]``, only for that comparison.

SQL's three-valued logic is kept: a comparison on a NULL field (a PNG without EXIF date) is
neither true nor false, so ``not taken >= 2023`` leaves it out. Each node is emitted for the
polarity asked (true / false) and ``not`` flips it, with an explicit ``is not null`` guard.

>>> translate_where(db, "format = jpeg and width >= 1000").expr                      # doctest: +SKIP
'((format_lc is not null and format_lc == "jpeg") and (width is not null and width >= 1000.0))'
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..filters import FILE_FIELDS, ITEM_FIELDS, Token, WhereLeaf, WhereNode, is_number, parse_number, parse_where
from .db import IndexDB

# -- the filter fields stored with each vector ---------------------------------------------
VARCHAR_FIELDS = ("path", "path_lc", "folder", "folder_lc", "name_lc", "format_lc", "camera_lc", "taken", "key_lc",
                  "title_lc")  # fmt: skip
INT_FIELDS = ("width", "height", "size")
JSON_FIELDS = ("attrs", "attrs_num")

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """SQLite's lower(): ASCII letters only, so stored values compare as the SQL filters do."""
    return text.translate(_ASCII_LOWER)


def _opt_lower(text: str | None) -> str | None:
    return None if text is None else ascii_lower(text)


def file_fields(path: str, size: int, mtime: float, width, height, fmt, taken, camera) -> dict:
    """A file row's filter fields; folder and name are cut exactly as visdex.filters' SQL cuts them."""
    cut = path.rfind("/") + 1
    folder = path[:cut].rstrip("/")
    return {"path": path, "path_lc": ascii_lower(path), "folder": folder, "folder_lc": ascii_lower(folder),
            "name_lc": ascii_lower(path[cut:]), "format_lc": _opt_lower(fmt), "camera_lc": _opt_lower(camera),
            "taken": taken, "width": width, "height": height, "size": size, "mtime": mtime}  # fmt: skip


_REAL_PREFIX = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def sqlite_real(value) -> float:
    """``CAST(json_extract(attrs, ...) AS REAL)`` in Python: a numeric prefix of a text, else 0."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    m = _REAL_PREFIX.match(value if isinstance(value, str) else "[")
    return float(m.group(0)) if m else 0.0


def sqlite_text(value) -> str:
    """``json_extract(attrs, ...)`` as text: strings as they are, true/false as 1/0, arrays as minified JSON."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def item_fields(key: str, title: str | None, attrs: dict) -> dict:
    """A catalog item's filter fields: attributes once as SQLite reads them as text (lower-cased) and once
    as numbers (for ``price < 20``); null attributes are left out, as json_extract gives NULL for them."""
    present = {k: v for k, v in attrs.items() if v is not None}
    return {"key_lc": ascii_lower(key), "title_lc": _opt_lower(title),
            "attrs": {k: ascii_lower(sqlite_text(v)) for k, v in present.items()},
            "attrs_num": {k: sqlite_real(v) for k, v in present.items()}}  # fmt: skip


_EMPTY_FIELDS = {**dict.fromkeys(VARCHAR_FIELDS), **dict.fromkeys(INT_FIELDS), "mtime": None,
                 **dict.fromkeys(JSON_FIELDS)}  # fmt: skip


def scalar_fields(db: IndexDB, ids: Sequence[int]) -> dict[int, dict]:
    """Filter fields of ``ids`` from the index database (an id without a row gets nulls)."""
    out: dict[int, dict] = {}
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), 900):
        chunk = ids[start : start + 900]
        marks = ",".join("?" * len(chunk))
        if db.kind == "catalog":
            sql = f"SELECT id, key, title, attrs FROM items WHERE id IN ({marks})"
            for i, key, title, attrs in db.conn.execute(sql, chunk):
                out[i] = item_fields(key, title, json.loads(attrs))
        else:
            sql = ("SELECT id, path, size, mtime, width, height, format, taken_at, camera FROM files "
                   f"WHERE id IN ({marks})")  # fmt: skip
            for i, *row in db.conn.execute(sql, chunk):
                out[i] = file_fields(*row)
    return {i: {**_EMPTY_FIELDS, **out.get(i, {})} for i in ids}


# -- translation ---------------------------------------------------------------------------
# filter field -> (Milvus field, nullable)
_TEXT = {"path": ("path_lc", False), "name": ("name_lc", False), "format": ("format_lc", True),
         "camera": ("camera_lc", True), "key": ("key_lc", False), "title": ("title_lc", True)}  # fmt: skip
_NUMBER = {"width": ("width", True), "height": ("height", True), "size": ("size", False)}
_ORDER = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "=": "==", "!=": "!="}


@dataclass(frozen=True)
class MilvusFilter:
    """A translated filter: ``expr`` for Milvus; ``fallbacks`` comparisons were answered by SQL id lists. ``ids``:
    the whole filter answered by SQL (a collection without filter fields), searched as ``expr and id in [...]``."""

    expr: str
    fallbacks: int = 0
    ids: np.ndarray | None = field(default=None, compare=False, repr=False)


def lit(text: str) -> str:
    """A Milvus string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def glob_to_like(pattern: str) -> str | None:
    """SQLite GLOB -> Milvus LIKE (``*`` -> ``%``, ``?`` -> ``_``, literal ``% _ \\`` escaped);
    None for ``[...]`` classes, which LIKE lacks."""
    out = []
    for ch in pattern:
        if ch == "[":
            return None
        out.append({"*": "%", "?": "_"}.get(ch) or ("\\" + ch if ch in "%_\\" else ch))
    return "".join(out)


def _num(x: float) -> str:
    return repr(float(x))


class _Translator:
    """Walks :func:`visdex.filters.parse_where`'s tree (the one grammar) and emits Milvus expressions."""

    def __init__(self, db):
        self.db, self.catalog = db, db.kind == "catalog"
        self.fallbacks = 0

    # -- emitting ------------------------------------------------------------------------
    def emit(self, node: WhereNode, positive: bool) -> str:
        """The expression true exactly where SQL evaluates ``node`` to TRUE (positive) or FALSE."""
        kind, arg = node
        if kind == "not":
            return self.emit(arg, not positive)
        if kind in ("and", "or"):
            joiner = " and " if (kind == "and") == positive else " or "
            return "(" + joiner.join(self.emit(n, positive) for n in arg) + ")"
        return self.leaf(arg, positive)

    def leaf(self, leaf: WhereLeaf, positive: bool) -> str:
        ops = ["="] * len(leaf.values) if leaf.op == "in" else [leaf.op]
        found = [self.compare(leaf.field, op, v) for op, v in zip(ops, leaf.values, strict=True)]
        conds = [c for c in found if c is not None]
        if len(conds) < len(found):
            return self.fallback(leaf, positive)
        guards = {g for _, g in conds if g}
        cond = conds[0][0] if len(conds) == 1 else "(" + " or ".join(c for c, _ in conds) + ")"
        body = cond if positive else f"not ({cond})"
        return "(" + " and ".join([*sorted(guards), body]) + ")" if guards else f"({body})"

    def fallback(self, leaf: WhereLeaf, positive: bool) -> str:
        """SQL answers this comparison: the ids where it is TRUE (or FALSE), as ``id in [...]``."""
        self.fallbacks += 1
        table = "items" if self.catalog else "files"
        where = f"({leaf.sql})" if positive else f"NOT ({leaf.sql})"
        rows = self.db.conn.execute(f"SELECT id FROM {table} WHERE status = 'ok' AND {where}", leaf.params)
        ids = np.fromiter((r[0] for r in rows), np.int64)
        return f"id in [{','.join(map(str, ids.tolist()))}]"

    def compare(self, ftok: Token, op: str, raw: str) -> tuple[str, str | None] | None:
        """(condition, null guard) for one comparison, or None when it has no faithful translation."""
        name = ftok.value.lower()
        if self.catalog and name not in ITEM_FIELDS:
            return _attr(ftok.value[5:] if name.startswith("attr.") else ftok.value, op, raw)
        if name in _TEXT:
            field, nullable = _TEXT[name]
            return _text(field, op, raw, f"{field} is not null" if nullable else None)
        kind = FILE_FIELDS[name][1]
        if kind in ("number", "size"):
            field, nullable = _NUMBER[name]
            if op == "~":
                return None
            guard = f"{field} is not null" if nullable else None
            return f"{field} {_ORDER[op]} {_num(parse_number(raw, kind, ftok))}", guard
        if kind == "folder":
            return _folder(op, raw)
        if kind == "date":
            return _date(op, raw)
        return None  # tag


def _text(field: str, op: str, raw: str, guard: str | None) -> tuple[str, str | None] | None:
    if op == "~":
        like = glob_to_like(ascii_lower(raw))
        return None if like is None else (f"{field} like {lit(like)}", guard)
    if op in ("=", "!="):
        return f"{field} {_ORDER[op]} {lit(ascii_lower(raw))}", guard
    return None  # < > on text: SQLite's collation, not worth guessing


def _folder(op: str, raw: str) -> tuple[str, str | None] | None:
    if op == "~":
        like = glob_to_like(ascii_lower(raw))
        return None if like is None else (f"folder_lc like {lit(like)}", None)
    if op not in ("=", "!="):
        return None
    folder = str(Path(raw).expanduser().resolve()) if ("/" in raw or raw.startswith("~")) else raw
    if "/" in folder:  # an absolute folder: everything below it
        like, other = glob_to_like(folder.rstrip("/") + "/*"), "path"
    else:  # a bare folder name: any folder of that name
        like, other = glob_to_like("*/" + folder), "folder"
    if like is None:
        return None
    cond = f"(folder == {lit(folder)} or {other} like {lit(like)})"
    return (cond if op == "=" else f"not {cond}"), None  # cond is parenthesised


def _date(op: str, raw: str) -> tuple[str, str | None] | None:
    guard = "taken is not null"
    if op in ("=", "!="):  # a prefix: taken = 2023-05
        like = glob_to_like(raw + "*")
        if like is None:
            return None
        cond = f"taken like {lit(like)}"
        return (cond if op == "=" else f"not ({cond})"), guard
    if op == "~":
        return None
    return f"taken {_ORDER[op]} {lit(raw)}", guard


def _attr(name: str, op: str, raw: str) -> tuple[str, str | None] | None:
    text, num = f"attrs[{lit(name)}]", f"attrs_num[{lit(name)}]"
    if op == "~":
        like = glob_to_like(ascii_lower(raw))
        return None if like is None else (f"{text} like {lit(like)}", f"exists {text}")
    if is_number(raw):
        return f"{num} {_ORDER[op]} {_num(float(raw))}", f"exists {num}"
    if op in ("=", "!="):
        return f"{text} {_ORDER[op]} {lit(ascii_lower(raw))}", f"exists {text}"
    return None


def translate_where(db, where: str) -> MilvusFilter:
    """``--where`` -> a :class:`MilvusFilter` for the index ``db`` (files or catalog). Bad filters raise
    the same :class:`~visdex.errors.BadQuery` as the SQL compiler: both use one parser."""
    t = _Translator(db)
    tree = parse_where(where, catalog=t.catalog)
    return MilvusFilter(t.emit(tree, True), t.fallbacks)
