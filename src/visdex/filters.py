"""``--where``: a small, safe filter language over indexed metadata, compiled to parameterised
SQL (user values are never pasted into SQL). The filter runs inside the search: the store is
asked for the top-k among the matching ids, not for a short list that is filtered afterwards.

Grammar: ``expr := term (("and" | "or") term)*``, ``term := "not" term | "(" expr ")" |
field op value | field "in" "(" value, ... ")"``; ops ``= != < <= > >= ~`` (``~`` is a glob,
case-insensitive). Values are bare words or quoted strings.

>>> compile_where("format = jpeg and width >= 1000")
('(lower(files.format) = lower(?)) AND (files.width >= ?)', ['jpeg', 1000.0])

Folder indexes: ``path``, ``folder``, ``name``, ``format``, ``width``, ``height``, ``size``
(``5MB``, ``200KB``), ``taken`` / ``date`` (EXIF date: ``taken >= 2023-01-01``, ``taken = 2023-05``),
``camera``, ``tag`` (zero-shot labels from ``visdex tag``). Catalog indexes: ``key``, ``title``
and every attribute column by name (``color = red``, ``price < 20``), also as ``attr.NAME``.
A ``path`` / ``folder`` value starting with ``~/`` is under the home directory (``folder = ~/Pictures``).

Limits, so that every filter either runs or is a :class:`BadQuery`: at most
:data:`MAX_NESTING` levels of ``not`` / parentheses and :data:`MAX_CONDITIONS` comparisons
(each value of an ``in`` list counts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import BadQuery

if TYPE_CHECKING:
    from .store.db import IndexDB

_TOKEN = re.compile(
    r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
    r"""|(?P<op><=|>=|!=|=|<|>|~|\(|\)|,)|(?P<word>[^\s()=<>!~,"']+))"""
)
_REST_IS_BLANK = re.compile(r"\s*\Z")
_HOME_PATH = re.compile(r"""\s*(?P<path>~/[^\s()=<>!~,"']*)""")
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2})(?::(\d{2})(?::(\d{2}))?)?)?)?)?")
# SQLite's parser stack holds about 90 open parentheses, and every level here may open two
MAX_NESTING = 20
MAX_CONDITIONS = 10_000
_FANOUT = 32  # long and / or chains are grouped this wide, so SQLite's expression tree stays shallow
_UNITS = {"b": 1, "kb": 1024, "k": 1024, "mb": 1024**2, "m": 1024**2, "gb": 1024**3, "g": 1024**3}
_DIRNAME = "rtrim(files.path, replace(files.path, '/', ''))"
_BASENAME = f"replace(files.path, {_DIRNAME}, '')"

# field -> (SQL expression, value kind): "text", "number", "size", "date"
FILE_FIELDS: dict[str, tuple[str, str]] = {
    "path": ("files.path", "text"),
    "folder": (f"rtrim({_DIRNAME}, '/')", "folder"),
    "name": (_BASENAME, "text"),
    "format": ("files.format", "text"),
    "width": ("files.width", "number"),
    "height": ("files.height", "number"),
    "size": ("files.size", "size"),
    "taken": ("files.taken_at", "date"),
    "date": ("files.taken_at", "date"),
    "camera": ("files.camera", "text"),
    "tag": ("", "tag"),
}
ITEM_FIELDS: dict[str, tuple[str, str]] = {"key": ("items.key", "text"), "title": ("items.title", "text")}


@dataclass
class Token:
    """One token of a filter: its kind ("str", "op", "word"), its text, and its 1-based position."""

    kind: str
    value: str
    pos: int


@dataclass
class WhereLeaf:
    """One comparison of a parsed filter: as written, and compiled to SQL (``sql`` with its ``params``)."""

    field: Token
    op: str  # "=", "!=", "<", "<=", ">", ">=", "~", or "in"
    values: list[str]
    sql: str
    params: list


# A parsed filter: ("and" | "or", [node, ...]) | ("not", node) | ("leaf", WhereLeaf); "and" binds tighter.
WhereNode = tuple


def _lex(expr: str) -> list[Token]:
    toks: list[Token] = []
    pos = 0
    while pos < len(expr) and not _REST_IS_BLANK.match(expr, pos):
        home = _HOME_PATH.match(expr, pos)
        if home and toks and toks[-1].kind == "op" and toks[-1].value != ")":
            # "~/..." where a value goes is a path under the home directory, not the glob operator
            toks.append(Token("word", home.group("path"), home.start("path") + 1))
            pos = home.end()
            continue
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise BadQuery(f"where: cannot read {expr[pos:].strip()[:20]!r} at position {pos + 1}")
        kind = m.lastgroup or ""  # the pattern's groups are all named: one of them matched
        val = m.group(kind)
        if kind == "str":
            val = re.sub(r"\\(.)", r"\1", val[1:-1], flags=re.S)
        toks.append(Token(kind, val, m.start(kind) + 1))
        pos = m.end()
    return toks


class _Parser:
    """The grammar, once: builds the tree, compiling each comparison to SQL as it is read (so errors come
    in the order they appear in the filter)."""

    def __init__(self, expr: str, catalog: bool):
        self.toks, self.i, self.expr, self.catalog = _lex(expr), 0, expr, catalog
        self.params: list = []
        self.depth = self.conditions = 0

    def peek(self) -> Token | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise BadQuery(f"where: {self.expr!r} ends too early")
        self.i += 1
        return tok

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "word" and tok.value.lower() == word

    def expr_(self) -> WhereNode:
        return self._chain("or", self.and_)

    def and_(self) -> WhereNode:
        return self._chain("and", self.term)

    def _chain(self, word: str, part) -> WhereNode:
        parts = [part()]
        while self.is_word(word):
            self.take()
            parts.append(part())
        return parts[0] if len(parts) == 1 else (word, parts)

    def term(self) -> WhereNode:
        tok = self.peek()
        nested = self.is_word("not") or (tok is not None and tok.kind == "op" and tok.value == "(")
        if tok is None or not nested:
            return ("leaf", self.comparison())
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise BadQuery(
                f"where: nested too deeply at position {tok.pos} (at most {MAX_NESTING} levels of "
                "'not' and parentheses)"
            )
        self.take()
        if tok.kind == "word":  # not
            node = ("not", self.term())
        else:
            node = self.expr_()
            close = self.take()
            if close.value != ")":
                raise BadQuery(f"where: expected ')' at position {close.pos}")
        self.depth -= 1
        return node

    def comparison(self) -> WhereLeaf:
        ftok = self.take()
        if ftok.kind != "word":
            raise BadQuery(f"where: expected a field name at position {ftok.pos}, got {ftok.value!r}")
        sql, kind = self.field(ftok)
        start = len(self.params)
        if self.is_word("in"):
            self.take()
            values = [self.value(v, kind, ftok) for v in self.value_list()]
            self.count(len(values), ftok)
            if kind in ("text", "number", "size", "tag"):  # one SQL IN: a long OR chain is slow to prepare
                cond = f"({self.compare_in(sql, kind, values, ftok)})"
            else:
                cond = "(" + _join([self.compare(sql, kind, "=", v, ftok) for v in values], "OR") + ")"
            return WhereLeaf(ftok, "in", values, cond, self.params[start:])
        op = self.take()
        if op.kind != "op" or op.value in "(),":
            raise BadQuery(f"where: expected an operator (= != < <= > >= ~ in) after {ftok.value!r} at {op.pos}")
        val = self.take()
        if val.kind == "op":
            raise BadQuery(f"where: expected a value after {ftok.value} {op.value} at position {val.pos}")
        self.count(1, ftok)
        raw = self.value(val.value, kind, ftok, op.value)
        cond = f"({self.compare(sql, kind, op.value, raw, ftok)})"
        return WhereLeaf(ftok, op.value, [raw], cond, self.params[start:])

    def count(self, n: int, ftok: Token) -> None:
        self.conditions += n
        if self.conditions > MAX_CONDITIONS:
            raise BadQuery(
                f"where: more than {MAX_CONDITIONS:,} comparisons (at position {ftok.pos}); "
                "filter on a folder, a tag or a range instead"
            )

    def value(self, raw: str, kind: str, ftok: Token, op: str = "=") -> str:
        """A value as compared: ``~/`` expanded for paths and folders, dates checked (a glob is taken as written)."""
        if kind in ("folder", "text") and ftok.value.lower() in ("path", "folder") and raw.startswith("~/"):
            return str(Path(raw).expanduser())
        if kind == "date" and op != "~":
            return _date(raw, ftok)
        return raw

    def value_list(self) -> list[str]:
        if self.take().value != "(":
            raise BadQuery("where: 'in' takes a list in parentheses: tag in (beach, sea)")
        values = []
        while True:
            v = self.take()
            if v.kind == "op":
                raise BadQuery(f"where: expected a value at position {v.pos}")
            values.append(v.value)
            sep = self.take()
            if sep.value == ")":
                return values
            if sep.value != ",":
                raise BadQuery(f"where: expected ',' or ')' at position {sep.pos}")

    def field(self, tok: Token) -> tuple[str, str]:
        name = tok.value.lower()
        if self.catalog:
            if name in ITEM_FIELDS:
                return ITEM_FIELDS[name]
            attr = tok.value[5:] if name.startswith("attr.") else tok.value
            if not re.fullmatch(r"[\w .-]+", attr):
                raise BadQuery(f"where: bad attribute name {attr!r}")
            return f"json_extract(items.attrs, '$.\"{attr}\"')", "attr"
        if name not in FILE_FIELDS:
            known = ", ".join(FILE_FIELDS)
            raise BadQuery(f"where: unknown field {tok.value!r} at position {tok.pos}; fields: {known}")
        return FILE_FIELDS[name]

    def compare_in(self, sql: str, kind: str, values: list[str], ftok: Token) -> str:
        """``field in (...)`` as SQL's IN, for the kinds whose ``=`` is a plain comparison."""
        if kind in ("number", "size"):
            self.params += [parse_number(v, kind, ftok) for v in values]
            return f"{sql} IN ({', '.join('?' * len(values))})"
        self.params += values
        marks = ", ".join(["lower(?)"] * len(values))
        if kind == "tag":
            return f"EXISTS (SELECT 1 FROM tags WHERE tags.file_id = files.id AND lower(label) IN ({marks}))"
        return f"lower({sql}) IN ({marks})"

    def compare(self, sql: str, kind: str, op: str, raw: str, ftok: Token) -> str:
        sqlop = "<>" if op == "!=" else op
        if kind == "tag":
            if op not in ("=", "!=", "~"):
                raise BadQuery("where: tag takes = != ~ (e.g. tag = beach)")
            cmp = "lower(label) GLOB lower(?)" if op == "~" else "lower(label) = lower(?)"
            self.params.append(raw)
            exists = f"EXISTS (SELECT 1 FROM tags WHERE tags.file_id = files.id AND {cmp})"
            return f"NOT {exists}" if op == "!=" else exists
        if op == "~":
            self.params.append(raw)
            return f"lower({sql}) GLOB lower(?)"
        if kind in ("number", "size"):
            self.params.append(parse_number(raw, kind, ftok))
            return f"{sql} {sqlop} ?"
        if kind == "folder" and op in ("=", "!="):
            folder = str(Path(raw).resolve()) if "/" in raw else raw
            if "/" in folder:  # an absolute folder: everything below it
                self.params += [folder, folder.rstrip("/") + "/*"]
                clause = f"({sql} = ? OR files.path GLOB ?)"
            else:  # a bare folder name: any folder of that name
                self.params += [folder, "*/" + folder]
                clause = f"({sql} = ? OR {sql} GLOB ?)"
            return f"NOT {clause}" if op == "!=" else clause
        if kind == "date" and op in ("=", "!="):
            self.params.append(raw + "*")
            return f"{sql} {'NOT ' if op == '!=' else ''}GLOB ?"
        if kind == "attr" and is_number(raw):
            self.params.append(float(raw))
            return f"CAST({sql} AS REAL) {sqlop} ?"
        self.params.append(raw)
        if kind in ("text", "attr", "folder") and op in ("=", "!="):
            return f"lower({sql}) {sqlop} lower(?)"
        return f"{sql} {sqlop} ?"


def is_number(text: str) -> bool:
    return re.fullmatch(r"[-+]?\d+(\.\d+)?", text) is not None


def _date(raw: str, tok: Token) -> str:
    """A date as stored (ISO 8601, ``T`` between day and time), or the prefix of one: ``2023``, ``2023-05``,
    ``2023-05-20 18:00``; anything else is a BadQuery, not a comparison that quietly matches nothing."""
    m = _DATE.fullmatch(raw.strip())
    if m is not None:
        year, month, day, hour, minute, second = (int(x or 0) for x in m.groups())  # the year always matches
        try:
            datetime(year, month or 1, day or 1, hour, minute, second)
            return raw.strip().replace(" ", "T")
        except ValueError:
            pass
    raise BadQuery(f"where: {tok.value} needs a date like 2023, 2023-05, 2023-05-20 or 2023-05-20T18:00, not {raw!r}")


def _join(parts: list[str], op: str) -> str:
    """``parts`` joined by AND / OR, grouped :data:`_FANOUT` wide: SQLite nests a flat chain one level per
    term and refuses past 1000 levels ("Expression tree is too large")."""
    while len(parts) > _FANOUT:
        parts = [f"({f' {op} '.join(parts[i : i + _FANOUT])})" for i in range(0, len(parts), _FANOUT)]
    return f" {op} ".join(parts)


def parse_number(raw: str, kind: str, tok: Token) -> float:
    m = re.fullmatch(r"([-+]?\d+(?:\.\d+)?)\s*([a-zA-Z]*)", raw)
    unit = (m.group(2).lower() if m else "") or "b"
    if not m or (kind == "number" and m.group(2)) or unit not in _UNITS:
        raise BadQuery(f"where: {tok.value} needs a number{' (like 5MB)' if kind == 'size' else ''}, not {raw!r}")
    return float(m.group(1)) * (_UNITS[unit] if kind == "size" else 1)


def parse_where(expr: str, *, catalog: bool = False) -> WhereNode:
    """``expr`` -> its tree (see :data:`WhereNode`), every comparison already checked and compiled to SQL;
    :class:`BadQuery` for a filter that cannot be read. Other back ends (Milvus) walk this tree."""
    if not expr or not expr.strip():
        raise BadQuery("where: the filter is empty")
    p = _Parser(expr, catalog)
    tree = p.expr_()
    tok = p.peek()
    if tok is not None:
        raise BadQuery(f"where: unexpected {tok.value!r} at position {tok.pos} (join conditions with and / or)")
    return tree


def _sql(node: WhereNode, params: list) -> str:
    kind, arg = node
    if kind == "leaf":
        params += arg.params
        return arg.sql
    if kind == "not":
        return f"NOT ({_sql(arg, params)})"
    parts = [_sql(n, params) for n in arg]  # nested and / or parenthesised; comparisons already are
    return _join([p if n[0] == "leaf" else f"({p})" for n, p in zip(arg, parts, strict=True)], kind.upper())


def compile_where(expr: str, *, catalog: bool = False) -> tuple[str, list]:
    """``expr`` -> (SQL boolean expression over ``files`` (or ``items``), parameters)."""
    params: list = []
    return _sql(parse_where(expr, catalog=catalog), params), params


def allowed_ids(db: IndexDB, expr: str) -> np.ndarray:
    """Ids of the indexed files (or catalog items) that match ``expr``."""
    from .store.browse_sql import matching_ids

    catalog = db.kind == "catalog"
    sql, params = compile_where(expr, catalog=catalog)
    return matching_ids(db, sql, params, catalog=catalog)
