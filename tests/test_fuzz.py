"""Property-based fuzzing of the two user-facing languages: the composed query (``visdex.query``) and
``--where`` (``visdex.filters``), down to the SQL running on a real index, and of ``visdex search`` as a
user types it. For any input: success, or a typed :class:`~visdex.errors.VisdexError`; never another
exception, never a traceback, and the CLI's exit code is one of the documented ones."""

from __future__ import annotations

import string
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from visdex import open_index
from visdex.errors import VisdexError
from visdex.filters import FILE_FIELDS, allowed_ids, compile_where, parse_where
from visdex.query import Crop, parse_query

from imagefactory import write_shots

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_CLI = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip

SHOTS = {  # name: (photo, subfolder, EXIF date, camera, format)
    "cat": ("chelsea", "2021", "2021-07-04T10:00:00", ("Canon", "Canon EOS R5"), "JPEG"),
    "coffee": ("coffee", "2022/x", "2022-01-15T08:30:00", None, "JPEG"),
    "moon": ("moon", "misc", None, None, "PNG"),
}


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, tiny_clip):
    """A folder index with metadata and tags, and a catalog index: the SQL a filter compiles to runs on both."""
    from visdex.tags import tag_index

    d = tmp_path_factory.mktemp("fuzz")
    write_shots(d / "p", SHOTS)
    files = open_index(d / "files", model=str(tiny_clip))
    files.add([d / "p"])
    tag_index(files, ["cat", "cup", "moon"], top=2)
    (d / "items.csv").write_text("sku,image,title,color,price\ns1,p/2021/cat.jpg,a cat,orange,12.5\n"
                                 "s2,p/misc/moon.png,the moon,grey,3\n")  # fmt: skip
    catalog = open_index(d / "catalog", model=str(tiny_clip))
    catalog.add_catalog(d / "items.csv")
    yield files, catalog, d
    files.close()
    catalog.close()


# -- strategies ------------------------------------------------------------------------------------------------
_QUERY_WORDS = ["+", "-", "'", '"', "2:", "0.5:", "1e400:", "nan:", "-inf:", "0:", "cat", "a dog's", "rock'n'roll",
                "'red dress'", '"at night"', "-people", "+blue", "photos/x.jpg", "~/x.jpg", "~nobody/x.png", "x.jpg",
                "'\"'\"'", "\\", "\x00", "\n", "\t", "é", "🙂", ":", "::", "1:2:3", "a" * 300]  # fmt: skip
query_text = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(_QUERY_WORDS), max_size=8).map(" ".join),
    st.lists(st.sampled_from(_QUERY_WORDS), max_size=8).map("".join),
)
query_args = st.one_of(query_text, st.lists(query_text, min_size=1, max_size=4))
crop_text = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.lists(
        st.sampled_from(["0", "0.5", "1", "-1", "nan", "inf", "1e308", "10", "abc", ""]), min_size=3, max_size=5
    ).map(",".join),  # fmt: skip
)

_FIELDS = [*FILE_FIELDS, "price", "color", "attr.color", "key", "title", "Width", "attr.a b", "bogus", "attr.'x"]
_OPS = ["=", "!=", "<", "<=", ">", ">=", "~", "in", "==", "!"]
_VALUES = ["jpeg", "png", "5MB", "200kb", "1e400", "9" * 400, "-3", "2023", "2023-05", "2023-13-01", "2023-05-20 18:00",
           "notadate", "'*nikon*'", '"a \\" b"', "'it''s'", "~/Pictures", "~", "/abs/path", "cat", "*", "[a-", "",
           "'\\'", "é"]  # fmt: skip


@st.composite
def where_expr(draw, depth: int = 0) -> str:
    """A --where built from the grammar's pieces, well-formed or nearly so, nested a few levels."""
    kind = draw(st.sampled_from(["leaf", "leaf", "in", "not", "paren", "and", "or"] if depth < 4 else ["leaf"]))
    if kind == "leaf":
        return f"{draw(st.sampled_from(_FIELDS))} {draw(st.sampled_from(_OPS))} {draw(st.sampled_from(_VALUES))}"
    if kind == "in":
        values = draw(st.lists(st.sampled_from(_VALUES), max_size=5))
        return f"{draw(st.sampled_from(_FIELDS))} in ({', '.join(values)})"
    if kind == "not":
        return f"not {draw(where_expr(depth + 1))}"
    if kind == "paren":
        return f"({draw(where_expr(depth + 1))})"
    return f" {kind} ".join(draw(st.lists(where_expr(depth + 1), min_size=2, max_size=4)))


where_text = st.one_of(
    st.text(max_size=60),
    where_expr(),
    st.lists(
        st.sampled_from(["(", ")", "not", "and", "or", "in", ",", "'", '"', *_FIELDS, *_OPS, *_VALUES]), max_size=12
    ).map(" ".join),  # fmt: skip
    st.integers(20, 60).map(lambda n: "(" * n + "width > 1" + ")" * n),
    st.integers(1, 2000).map(lambda n: "tag in (" + ",".join(f"t{i}" for i in range(n)) + ")"),
)


# -- the library -----------------------------------------------------------------------------------------------
@FUZZ
@given(query=query_args, crop=crop_text)
def test_parse_query_succeeds_or_raises_a_visdex_error(query, crop):
    try:
        parsed = parse_query(query, crop=crop)
    except VisdexError as e:
        assert str(e)  # a message for the user
        return
    assert parsed.terms and any(t.weight > 0 for t in parsed.terms)
    assert all(0 < abs(t.weight) <= 1000 for t in parsed.terms)


@FUZZ
@given(text=st.text(max_size=40))
def test_crop_parse_succeeds_or_raises_a_visdex_error(text):
    try:
        Crop.parse(text).box(640, 480)
    except VisdexError as e:
        assert str(e)


@FUZZ
@given(expr=where_text, catalog=st.booleans())
def test_where_compiles_and_runs_on_a_real_index_or_is_a_bad_query(indexes, expr, catalog):
    files, items, _ = indexes
    ix = items if catalog else files
    try:
        parse_where(expr, catalog=catalog)
        sql, params = compile_where(expr, catalog=catalog)
    except VisdexError as e:
        assert str(e).startswith("where")
        return
    assert sql and all(isinstance(p, (str, float)) for p in params)
    try:
        allowed_ids(ix.db, expr)  # the real SQLite file: no OperationalError, no RecursionError
    except VisdexError as e:
        assert "too complex" in str(e)


# -- the command line ------------------------------------------------------------------------------------------
_CLI_ARGS = [
    "-n", "3", "0", "1000000000000", "--where", "--crop", "0,0,0.5,0.5", "nan,0,1,1", "--min-score", "x", "--within",
    "-1", "--json", "--model", "no-such-model", "-k", "cat", "a dog's toy", "beach -people", "'2:red dress' + blue",
    "photos/none.jpg", "format = png", "taken >= notadate", "(((", "--", "-",
]  # fmt: skip


def _run(args: list[str]) -> tuple[int, str]:
    """``visdex ARGS`` through the real entry point, with typer's CliRunner capturing the streams."""
    from typer.testing import CliRunner

    from visdex.cli import main

    old = sys.argv
    sys.argv = ["visdex", *args]
    code = 0
    try:
        with CliRunner().isolation() as (_, err, _output):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            stderr = err.getvalue().decode(errors="replace")
    finally:
        sys.argv = old
    return code, stderr


@FUZZ_CLI
@given(args=st.lists(st.one_of(st.sampled_from(_CLI_ARGS), st.text(alphabet=string.printable, max_size=12)),
                     min_size=1, max_size=5))  # fmt: skip
def test_cli_search_exits_with_a_documented_code(indexes, args):
    files, _, _ = indexes
    code, stderr = _run(["search", *args, "--index", str(files.path)])
    assert "Traceback" not in stderr and "unexpected" not in stderr, (args, stderr)
    assert code in (0, 2, 3), (args, code, stderr)  # 0 results (or none), 2 the user's input, 3 --model mismatch
