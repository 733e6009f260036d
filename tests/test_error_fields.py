"""Library errors name fields, the CLI names flags (issue 11): a message about one argument writes ``{field}``
and passes ``field=`` (the Python API's name); ``str(err)`` says ``top``, the CLI ``--top``, the HTTP layer
reports ``"field": "top"``. A rule over the source keeps flag names out of library messages."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from visdex.errors import BadQuery, MissingDependency, VisdexError

from clihelp import run_cli
from serverhelp import index_gallery, local_client

SRC = Path(__file__).resolve().parents[1] / "src" / "visdex"
# They print command lines on purpose (the adapters, the advice of recommend, the benchmarks' subprocesses).
ADAPTERS = {"cli.py", "quickcli.py", "recommend.py", "bench.py"}
ADAPTER_DIRS = {"commands", "server"}
# Files whose messages the lead is rewriting in the same issue; each entry must still hold a flag (the test
# says when one can go), so the list only shrinks.
PENDING: set[str] = set()
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _error_classes(sources: list[str]) -> set[str]:
    """Names of VisdexError and every class defined (in ``sources``) on top of it."""
    names, bases = {"VisdexError"}, {}
    for text in sources:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
    while grown := {n for n, b in bases.items() if n not in names and b & names}:
        names |= grown
    return names


def _strings(node: ast.AST) -> list[str]:
    """The string literals under ``node`` in source order, an f-string's values written ``{}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)]
    return [s for child in ast.iter_child_nodes(node) for s in _strings(child)]


def flags_in_messages(source: str, errors: set[str] = frozenset({"VisdexError", "MissingDependency"})) -> list[str]:
    """``line: --flag`` for each flag named by a string inside a ``raise X(...)`` or a call of an error class
    (``errors``); text from "visdex " on is a command line, advice that may name flags."""
    found = []
    for node in ast.walk(ast.parse(source)):
        call = node.exc if isinstance(node, ast.Raise) else node
        if not isinstance(call, ast.Call):
            continue
        name = getattr(call.func, "id", getattr(call.func, "attr", None))
        if not isinstance(node, ast.Raise) and name not in errors:
            continue
        message = " ".join(_strings(call)).split("visdex ", 1)[0]
        found += [f"{call.lineno}: {flag}" for flag in FLAG.findall(message)]
    return found


def _library_files() -> dict[str, str]:
    files = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ADAPTER_DIRS or (len(rel.parts) == 1 and rel.name in ADAPTERS):
            continue
        files[rel.as_posix()] = path.read_text(encoding="utf-8")
    return files


def test_library_messages_name_fields_not_flags():
    files = _library_files()
    errors = _error_classes(list(files.values()))
    assert {"BadQuery", "MissingDependency", "TrainSetupError"} <= errors
    found = {rel: flags_in_messages(text, errors) for rel, text in files.items()}
    bad = [f"{rel}:{hit}" for rel, hits in found.items() if rel not in PENDING for hit in hits]
    assert not bad, "library messages name flags; write {field} and pass field= (see visdex.errors):\n" + "\n".join(bad)
    done = sorted(rel for rel in PENDING if not found.get(rel))
    assert not done, f"no flag left in {done}: take them out of PENDING"


def test_the_rule_catches_a_flag_and_lets_commands_and_fields_by():
    bad = """
def f(top, x):
    if top < 1:
        raise BadQuery("--top must be at least 1")
    if x:
        raise TrainSetupError(f"--out {x} exists; choose another "
                              "--out")
    err = MissingDependency("umap-learn", extra="map", purpose="--method umap")
    return NotAnError("--fine here: not an error")
"""
    assert flags_in_messages(bad, {"MissingDependency"}) == ["4: --top", "6: --out", "6: --out", "8: --method"]
    good = """
def f(top, x, path):
    if top < 1:
        raise BadQuery("{field} must be at least 1", field="top")
    if x:
        raise StoreError(f"the index at {path} is gone; re-index: " + f"visdex index --index {path} --rebuild")
    raise MissingDependency("ray", "ray", "visdex index --engine ray")
"""
    assert flags_in_messages(good) == []


# -- what each layer says ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gallery_index(tmp_path_factory, tiny_clip) -> Path:
    return index_gallery(tmp_path_factory.mktemp("fields"), tiny_clip)[0]


def _library_error(fn, *args, **kw) -> VisdexError:
    with pytest.raises(VisdexError) as info:
        fn(*args, **kw)
    return info.value


def test_tag_labels_and_template(capsys, gallery_index):
    from visdex import open_index
    from visdex.tags import parse_labels, prompts_for, tag_index

    code, _, err = run_cli(capsys, "tag", "--labels", "beach", "--index", gallery_index)
    assert code == 2 and "give at least two labels (--labels 'beach,mountain,city'" in err
    e = _library_error(parse_labels, "beach")
    assert e.field == "labels" and str(e).startswith("give at least two labels (labels 'beach,mountain,city'")

    code, _, err = run_cli(capsys, "tag", "--labels", "a,b", "--template", "{}{}", "--index", gallery_index)
    assert code == 2 and "error: --template '{}{}': give exactly one {}" in err
    e = _library_error(prompts_for, ["a"], "{}{}")
    assert e.field == "template" and str(e).startswith("template '{}{}': give exactly one {}")

    # the CLI's --top stops 0 itself (Typer's min=1); the library says the same of its argument
    with open_index(gallery_index) as ix:
        e = _library_error(tag_index, ix, ["a", "b"], top=0)
    assert isinstance(e, BadQuery) and e.field == "top" and str(e) == "top must be at least 1"
    assert e.named("--top") == "--top must be at least 1"


def test_quick_path_search_names_its_flag(capsys, gallery_index):
    from visdex import cli, open_index
    from visdex.quickcli import quick_call

    argv = ["search", "a cat", "--within", "-1", "--index", str(gallery_index)]
    assert quick_call(cli.app, argv, cli.QUICK_COMMANDS) is not None  # this line skips Typer's parser
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "error: --within must be >= 0" in err
    with open_index(gallery_index) as ix:
        e = _library_error(ix.search, "a cat", within=-1)
    assert e.field == "within" and str(e) == "within must be >= 0"


def test_dupes_threshold(capsys, gallery_index):
    from visdex import open_index
    from visdex.dupes import find_duplicates

    code, _, err = run_cli(capsys, "dupes", "--threshold", "2", "--index", gallery_index)
    assert code == 2 and "error: --threshold is a cosine between -1 and 1" in err
    with open_index(gallery_index) as ix:
        e = _library_error(find_duplicates, ix, threshold=2.0)
    assert e.field == "threshold" and str(e) == "threshold is a cosine between -1 and 1"


def test_finetune_val_fraction(capsys, tmp_path):
    from visdex.train.metric import finetune_labelled

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("path,label\n" + "".join(f"{c}{i}.jpg,{c}\n" for c in "xyz" for i in range(2)))
    code, _, err = run_cli(capsys, "finetune", "labelled", pairs, "-o", tmp_path / "out", "-m", "effnet-lite0",
                           "--val-fraction", "1.5")  # fmt: skip
    assert code == 2 and "error: --val-fraction must be between 0 and 1 (exclusive), not 1.5" in err
    e = _library_error(finetune_labelled, "effnet-lite0", pairs, tmp_path / "out", val_fraction=1.5)
    assert e.field == "val_fraction" and str(e).startswith("val_fraction must be between 0 and 1")
    # another check of the same function: the field it names is the argument at fault
    e = _library_error(finetune_labelled, "effnet-lite0", pairs, tmp_path / "out", epochs=0)
    assert e.field == "epochs" and str(e) == "epochs must be at least 1, not 0"


def test_cli_names_for_fields():
    """A field the running command has no parameter for reads as its dashed name; a positional argument as
    its metavar; a root option (``--index``) is found from any command."""
    from visdex import cli

    cli._load_command_modules()
    assert cli._cli_name("k", ["search", "x"]) == "--top"  # the parameter k is the option -n/--top
    assert cli._cli_name("query", ["search", "x"]) == "QUERY"
    assert cli._cli_name("out", ["finetune", "labelled", "d", "-o", "o"]) == "--out"  # out_dir: the dashed name
    assert cli._cli_name("index", ["--index", "ix", "tag"]) == "--index"
    assert cli._cli_name("batch", ["trash", "undo", "3"]) == "BATCH"  # a command of a sub-group
    assert cli._cli_name("gpus_per_worker", ["dupes"]) == "--gpus-per-worker"


def test_http_reports_the_field(gallery_index, monkeypatch):
    """A library error that a route passes through: the JSON names the field, the message names no flag."""
    from visdex.server import create_app

    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn not installed (import umap raises ImportError)
    with local_client(create_app(gallery_index)) as client:
        r = client.get("/api/map", params={"method": "umap", "wait": 30})
    body = r.json()
    assert r.status_code == MissingDependency.http_status and body["field"] == "method", body
    assert "(needed for method umap)" in body["error"] and "--" not in body["error"]
