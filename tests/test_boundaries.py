"""Boundaries between the parts of ``src/visdex``, checked on the syntax tree (nothing is imported: a few seconds
of CPU for the whole package):

a. ``sql``: all SQL lives in ``store/``: no ``.execute(`` / ``.executemany(`` / ``.executescript(`` call and no
   SQL statement in a string (SELECT ... FROM, INSERT INTO, UPDATE ... SET, DELETE FROM, CREATE TABLE, PRAGMA,
   REPLACE INTO at its start, any case) outside it;
b. ``private``: no module imports another module's ``_private`` name (``from .x import _y``,
   ``from visdex.x import _y``) or reads one off an imported visdex module (``x._y``); dunders are fine;
c. ``env``: no ``VISDEX_*`` environment variable is read outside ``config.py`` (``os.environ``, ``os.getenv``,
   a CLI option's ``envvar=``), and every ``VISDEX_*`` named anywhere is a setting of ``config.SETTINGS``;
d. ``error-text``: the HTTP layer (``server/``) never reads an error's message to decide anything
   (``str(exc)`` / ``exc.args`` compared, searched, split or ``startswith``-tested): errors carry fields;
e. ``extras``: every ``visdex[EXTRA]`` and every ``MissingDependency(..., extra=...)`` in ``src/`` names an
   extra of pyproject.toml;
f. ``internals``: no code reads or sets another object's private attribute (``ix._store = None``): an object's
   internals change through its own methods (``Index.reload_store``, ``Index.use_model``); ``self`` / ``cls``
   are fine, and so are the few private names other libraries document for use (``os._exit``);

Each rule's checker is also run on a small bad and good snippet, so a checker that stops finding anything fails.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "visdex"

# Files (relative to src/visdex) that still break a rule, and which: each is owned by someone else for now and
# is cleared by its owner (issue 11). A file listed here that no longer breaks its rule fails the test, so the
# list only shrinks. Nothing may be added to it.
PENDING: dict[str, set[str]] = {}

RULES = ("sql", "private", "env", "error-text", "extras", "internals")

# -- reading the sources -------------------------------------------------------------------------------------


@cache
def _tree(rel: str) -> ast.Module:
    return ast.parse((SRC / rel).read_text(encoding="utf-8"), filename=rel)


def _sources() -> list[str]:
    return sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _line(node: ast.AST) -> int:
    return getattr(node, "lineno", 0)


# -- a. SQL --------------------------------------------------------------------------------------------------
SQL_CALLS = {"execute", "executemany", "executescript"}
# A keyword alone starts plenty of English ("Delete the index", "Create one with"): a statement needs its second
# part too.
SQL_START = re.compile(
    r"\s*(SELECT\s.*\bFROM\b|SELECT\s+(\d|COUNT|1\b)|INSERT\s+(OR\s+\w+\s+)?INTO\b|UPDATE\s+\w+\s+SET\b"
    r"|DELETE\s+FROM\b|CREATE\s+(TABLE|INDEX|UNIQUE|TRIGGER|VIEW|TEMP|VIRTUAL)\b|PRAGMA\s+\w+|REPLACE\s+INTO\b"
    r"|VACUUM\b|DROP\s+(TABLE|INDEX|TRIGGER|VIEW)\b|ALTER\s+TABLE\b"
    r"|WITH\s+(RECURSIVE\s+)?\w+(\s*\([^)]*\))?\s+AS\s*\(\s*SELECT\b"  # a common table expression
    r"|BEGIN(\s+IMMEDIATE|\s+EXCLUSIVE)?\s*$|COMMIT\s*$|ROLLBACK\s*$)",
    re.I | re.S,
)


def _is_sql(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_START.match(node.value) is not None


def check_sql(tree: ast.AST) -> Iterator[tuple[int, str]]:
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS:
            yield _line(node), f".{node.func.attr}( call"
        elif _is_sql(node) and id(node) not in docs:
            yield _line(node), f"SQL string {node.value.strip()[:40]!r}"


# -- b. private names ----------------------------------------------------------------------------------------
def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_of(rel: str, node: ast.ImportFrom) -> str | None:
    """The dotted visdex module an import reads from, None for another package."""
    if node.level == 0:
        mod = node.module or ""
        return mod if mod == "visdex" or mod.startswith("visdex.") else None
    package = ["visdex", *Path(rel).parent.parts]  # the package this module (or __init__.py) is in
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_module(dotted: str) -> bool:
    path = SRC.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def check_private(tree: ast.AST, rel: str = "x.py") -> Iterator[tuple[int, str]]:
    modules: set[str] = set()  # local names bound to a visdex module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = _module_of(rel, node)
            if mod is None:
                continue
            for alias in node.names:
                if _private(alias.name):
                    yield _line(node), f"imports {alias.name} from {mod}"
                elif _is_module(f"{mod}.{alias.name}"):
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "visdex" or alias.name.startswith("visdex."):
                    if any(_private(p) for p in alias.name.split(".")):
                        yield _line(node), f"imports {alias.name}"
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in modules:
                yield _line(node), f"reads {base.id}.{node.attr}"


# -- f. another object's internals ---------------------------------------------------------------------------
# private names of other libraries that their own docs tell users to reach: os._exit (leave a forked child at
# once), timm's ViT position-embedding step (its documented forward_features calls it; our patch-grid cut does)
FOREIGN_PRIVATE = {"_exit", "_pos_embed"}


def check_internals(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in FOREIGN_PRIVATE:
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                continue
            verb = "sets" if isinstance(node.ctx, ast.Store) else "reads"
            yield _line(node), f"{verb} {ast.unparse(node)} (another object's internals)"


# -- c. VISDEX_* settings ------------------------------------------------------------------------------------
ENV_NAME = re.compile(r"VISDEX_[A-Z0-9_]+")


def _mentions_environ(node: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Name) and n.id in ("environ", "getenv"))
        or (isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv"))
        for n in ast.walk(node)
    )


def _visdex_names(node: ast.AST) -> list[str]:
    return [
        n.value
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and ENV_NAME.fullmatch(n.value)
    ]


def check_env(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        read: list[str] = []
        if isinstance(node, ast.Call) and _mentions_environ(node.func):  # os.environ.get(..), os.getenv(..)
            read = _visdex_names(ast.Tuple(elts=list(node.args), ctx=ast.Load()))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _mentions_environ(node.value):
            read = _visdex_names(node.slice)
        elif isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
            if any(_mentions_environ(c) for c in node.comparators):  # "VISDEX_X" in os.environ
                read = _visdex_names(node.left)
        elif isinstance(node, ast.keyword) and node.arg == "envvar":  # typer.Option(envvar=...)
            read = _visdex_names(node.value)
        for name in read:
            yield _line(node), f"reads {name} (use config.get)"


@cache
def _setting_envs() -> frozenset[str]:
    """``VISDEX_<NAME>`` of every ``Setting("name", ...)`` in config.py."""
    names = set()
    for node in ast.walk(_tree("config.py")):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Setting":
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(f"VISDEX_{first.value.upper()}")
    return frozenset(names)


def check_env_known(text: str, known: frozenset[str]) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(text.splitlines(), 1):
        for name in ENV_NAME.findall(line):
            if name not in known and not name.endswith("_"):  # "VISDEX_" + name.upper() builds one
                yield n, f"{name} is not a setting of config.SETTINGS"


# -- d. error messages in the HTTP layer ---------------------------------------------------------------------
STR_TESTS = {"startswith", "endswith", "split", "rsplit", "partition", "rpartition", "find", "rfind", "index",
             "count", "removeprefix", "removesuffix"}  # fmt: skip
STR_VIEWS = {"lower", "upper", "casefold", "strip", "lstrip", "rstrip"}  # the message still, in another case
RE_TESTS = {"search", "match", "fullmatch", "findall", "finditer", "sub", "split"}


EXC_TYPE = re.compile(r"Exception|Error|Mismatch|NotFound|BadQuery|BadImage")


def _exception_names(fn: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            names |= {node.arg} if EXC_TYPE.search(ast.unparse(node.annotation)) else set()
    return names


def _is_message(node: ast.AST, excs: set[str], aliases: set[str]) -> bool:
    """``str(e)``, ``repr(e)``, ``e.args``, ``e.args[0]``, ``f"{e}"``, or a name assigned one of them."""
    if isinstance(node, ast.Name):
        return node.id in aliases
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("str", "repr"):
        return len(node.args) == 1 and isinstance(node.args[0], ast.Name) and node.args[0].id in excs
    if isinstance(node, ast.Subscript):
        return _is_message(node.value, excs, aliases)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STR_VIEWS:
        return _is_message(node.func.value, excs, aliases)
    if isinstance(node, ast.Attribute) and node.attr == "args":
        return isinstance(node.value, ast.Name) and node.value.id in excs
    if isinstance(node, ast.JoinedStr):
        return any(
            isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Name) and v.value.id in excs
            for v in node.values
        )
    return False


def _tests_message(node: ast.AST, excs: set[str], aliases: set[str]) -> bool:
    """Whether ``node`` compares, searches or splits an error's message."""
    if isinstance(node, ast.Compare):
        return any(_is_message(x, excs, aliases) for x in [node.left, *node.comparators])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr in STR_TESTS and _is_message(node.func.value, excs, aliases):
            return True
        return node.func.attr in RE_TESTS and any(_is_message(a, excs, aliases) for a in node.args)
    return False


def check_error_text(tree: ast.Module) -> Iterator[tuple[int, str]]:
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)]
    top = ast.Module(body=[s for s in tree.body if not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef |
                                                                      ast.ClassDef)], type_ignores=[])  # fmt: skip
    for fn in [top, *functions]:
        excs = _exception_names(fn)
        if not excs:
            continue
        aliases: set[str] = set()
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and _is_message(node.value, excs, aliases):
                aliases |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(fn):
            if _tests_message(node, excs, aliases):
                yield _line(node), "decides by an error's message text (give the error a field instead)"


# -- e. extras -----------------------------------------------------------------------------------------------
EXTRA_MENTION = re.compile(r"visdex\[([A-Za-z0-9_,\- ]+)\]")


@cache
def _extras() -> frozenset[str]:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        return frozenset(tomllib.load(f)["project"]["optional-dependencies"])


def check_extras(tree: ast.AST, text: str, extras: frozenset[str]) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(text.splitlines(), 1):
        for group in EXTRA_MENTION.findall(line):
            for extra in (e.strip() for e in group.split(",")):
                if extra not in extras:
                    yield n, f"visdex[{extra}] is not an extra of pyproject.toml"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == (
            "MissingDependency"
        ):
            given = [k.value for k in node.keywords if k.arg == "extra"] + node.args[1:2]
            for g in given:
                if isinstance(g, ast.Constant) and isinstance(g.value, str) and g.value not in extras:
                    yield _line(node), f"MissingDependency names the extra {g.value!r}, not in pyproject.toml"


# -- the rules over src/visdex -------------------------------------------------------------------------------
def _applies(rule: str, rel: str) -> bool:
    if rule == "sql":
        return not rel.startswith("store/")
    if rule == "env":
        return rel != "config.py"
    if rule == "error-text":
        return rel.startswith("server/")
    return True


def _findings(rule: str, rel: str) -> list[tuple[int, str]]:
    tree = _tree(rel)
    text = (SRC / rel).read_text(encoding="utf-8")
    found: list[tuple[int, str]] = []
    if rule == "sql":
        found += check_sql(tree)
    elif rule == "private":
        found += check_private(tree, rel)
    elif rule == "env":
        found += check_env(tree)
    elif rule == "error-text":
        found += check_error_text(tree)
    elif rule == "extras":
        found += check_extras(tree, text, _extras())
    elif rule == "internals":
        found += check_internals(tree)
    return sorted(set(found))


@pytest.mark.parametrize("rule", RULES)
def test_rule_holds_over_src(rule):
    broken = []
    for rel in _sources():
        if _applies(rule, rel) and rule not in PENDING.get(rel, set()):
            broken += [f"src/visdex/{rel}:{n}: {what}" for n, what in _findings(rule, rel)]
    assert not broken, f"rule {rule!r} broken:\n" + "\n".join(broken)


def test_every_visdex_variable_is_a_setting():
    broken = []
    for rel in _sources():
        if "env" in PENDING.get(rel, set()):
            continue
        text = (SRC / rel).read_text(encoding="utf-8")
        broken += [f"src/visdex/{rel}:{n}: {what}" for n, what in check_env_known(text, _setting_envs())]
    assert not broken, "\n".join(broken)


def test_pending_is_current():
    """An entry of PENDING whose file keeps its rule now is taken out, so the list only shrinks."""
    stale = []
    for rel, rules in PENDING.items():
        assert (SRC / rel).is_file(), rel
        assert rules <= set(RULES), (rel, rules - set(RULES))
        stale += [f"{rel}: {rule}" for rule in sorted(rules) if not _findings(rule, rel)]
    assert not stale, "these keep their rule now; take them out of PENDING:\n" + "\n".join(stale)


# -- each checker finds what it is for -----------------------------------------------------------------------
def _run(check: Callable[..., Iterator[tuple[int, str]]], code: str, *extra) -> list[tuple[int, str]]:
    return list(check(ast.parse(code), *extra))


@pytest.mark.parametrize(
    "code",
    [
        "db.conn.execute('x', ())",
        "c.executemany(sql, rows)",
        "conn.executescript(SCHEMA)",
        "sql = 'SELECT id FROM files WHERE status = ?'",
        "q = f'select count(*) {base}'",
        "q = 'INSERT OR REPLACE INTO tags VALUES (?, ?, ?)'",
        "q = f'DELETE FROM tags WHERE label IN ({marks})'",
        "q = 'update files set mtime = -1'",
        "q = 'CREATE TABLE t (a)'",
        "q = 'PRAGMA user_version'",
        "q = 'REPLACE INTO t VALUES (1)'",
        "q = 'WITH best AS (SELECT 1) SELECT * FROM best'",
        "q = 'ALTER TABLE files ADD COLUMN x'",
    ],
)
def test_sql_checker_finds(code):
    assert _run(check_sql, code)


@pytest.mark.parametrize(
    "code",
    [
        "def f():\n    'SELECT id FROM files: a docstring may say what it runs'\n",
        "msg = 'Delete the index folder to start again'",
        "msg = 'Create one with: visdex index PATH'",
        "msg = 'select a model first'",
        "msg = 'with care as (the docs say) it goes'",
        "cond = 'lower(files.format) = lower(?)'",
        "pool.submit(fn)",
    ],
)
def test_sql_checker_passes(code):
    assert not _run(check_sql, code)


@pytest.mark.parametrize(
    "code",
    [
        "from .ingest import _decoded",
        "from ..filters import FILE_FIELDS, _Tok",
        "from visdex.store.db import _os_error",
        "from .. import trash\ntrash._vectors(ix, [])",
        "import visdex.filters as f\nf._TOO_COMPLEX",
    ],
)
def test_private_checker_finds(code):
    assert _run(check_private, code, "server/routes.py")


def test_private_checker_resolves_relative_imports():
    assert _module_of("server/__init__.py", ast.parse("from .app import x").body[0]) == "visdex.server.app"
    assert _module_of("server/routes.py", ast.parse("from ..store import db").body[0]) == "visdex.store"
    assert _module_of("api.py", ast.parse("from . import config").body[0]) == "visdex"
    assert _run(check_private, "from . import state\nstate._lock", "server/__init__.py")


@pytest.mark.parametrize(
    "code",
    [
        "from ._version import __version__",
        "from numpy import _core",
        "from .routes import served, require_token",
        "self._store = None",
        "from .. import trash\ntrash.__doc__",
        "from .filters import compile_where\ncompile_where._cache",  # a function's attribute: not a module's name
    ],
)
def test_private_checker_passes(code):
    assert not _run(check_private, code, "server/routes.py")


@pytest.mark.parametrize(
    "code",
    [
        "os.environ.get('VISDEX_BENCHMARKS')",
        "os.getenv('VISDEX_BATCH_SIZE', '32')",
        "os.environ['VISDEX_TOKEN']",
        "x = 'VISDEX_STORE' in os.environ",
        "typer.Option(None, '--token', envvar='VISDEX_TOKEN')",
    ],
)
def test_env_checker_finds(code):
    assert _run(check_env, code)


@pytest.mark.parametrize(
    "code",
    [
        "env = {**os.environ, 'VISDEX_QUERY_EXPORT': 'off'}",  # setting one for a child process is not reading
        "os.environ['VISDEX_CPU_BACKEND'] = choice",
        "os.environ.get('RAY_ADDRESS')",
        "msg = 'set VISDEX_MAX_PIXELS to raise it'",
    ],
)
def test_env_checker_passes(code):
    assert not _run(check_env, code)


def test_unknown_visdex_variables_are_found():
    known = frozenset({"VISDEX_INDEX"})
    assert list(check_env_known("'VISDEX_INDEX' and f'VISDEX_{name}' and VISDEX_", known)) == []
    assert [n for n, _ in check_env_known("x\n# VISDEX_BENCHMARKS points at ...", known)] == [2]


@pytest.mark.parametrize(
    "code",
    [
        "try:\n    f()\nexcept VisdexError as e:\n    if str(e).startswith('no such image file'):\n        pass\n",
        "def h(request, exc: Exception):\n    return 'which' in str(exc)\n",
        "try:\n    f()\nexcept ValueError as e:\n    msg = str(e)\n    name = msg.split(', which')[0]\n",
        "try:\n    f()\nexcept ValueError as e:\n    ok = e.args[0] == 'gone'\n",
        "try:\n    f()\nexcept OSError as e:\n    bad = PATTERN.search(str(e))\n",
        "try:\n    f()\nexcept OSError as e:\n    full = 'full' in str(e).lower()\n",
    ],
)
def test_error_text_checker_finds(code):
    assert _run(check_error_text, code)


@pytest.mark.parametrize(
    "code",
    [
        "try:\n    f()\nexcept BadQuery as e:\n    raise BadQuery(str(e), field='q') from None\n",
        "def h(request, exc: Exception):\n    return {'error': str(exc), 'field': exc.field}\n",
        "try:\n    f()\nexcept BadQuery as e:\n    if e.path is not None:\n        pass\n",
    ],
)
def test_error_text_checker_passes(code):
    assert not _run(check_error_text, code)


def test_extras_checker():
    extras = frozenset({"server", "onnx"})
    bad = "raise MissingDependency('umap-learn', extra='map')\nmsg = \"pip install 'visdex[gpux]'\"\n"
    assert len(_run(check_extras, bad, bad, extras)) == 2
    assert len(_run(check_extras, "MissingDependency('x', 'nope')", "", extras)) == 1
    good = "raise MissingDependency('fastapi', extra='server')\n# pip install 'visdex[server,onnx]'\n"
    assert _run(check_extras, good, good, extras) == []


@pytest.mark.parametrize(
    "code",
    [
        "ix._store = None",
        "ix._store, x = None, 1",
        "self.ix._text_embedder = emb",
        "emb._image_batch(x)",
        "f(state._lock)",
    ],
)
def test_internals_checker_finds(code):
    assert _run(check_internals, code)


@pytest.mark.parametrize(
    "code",
    [
        "self._store = None",
        "cls._cache.clear()",
        "super()._setup()",
        "os._exit(1)",
        "ix.reload_store()",
        "x.__class__",
        "m._pos_embed(x)",
    ],
)
def test_internals_checker_passes(code):
    assert not _run(check_internals, code)
