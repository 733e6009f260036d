"""The quick parse of plain read-command lines (visdex.quickcli) gives each command exactly the values
Typer would, and leaves every other line to Typer. (That a cold `visdex search` then imports none of
the heavy modules is checked in test_textquery.py, next to the export it needs.)"""

from __future__ import annotations

import pytest
import typer.main

from visdex import cli
from visdex.quickcli import _params, parse, quick_call

from clihelp import run_cli

PLAIN = {
    "search": [
        ["a cat"],
        ["a", "red", "car"],
        ["a cat", "-n", "5", "--index", "/tmp/some index", "--json"],
        ["x", "--min-score=0.2", "--within", "0.05", "-k", "3", "--where", "taken >= 2023 and format = jpeg"],
        ["--top", "7", "dog", "--model", "clip-vit-b-32", "--crop", "0.1,0.1,0.5,0.5", "-i", "ix"],
        ["x", "--min-score", "-0.5", "-n", "1", "-n", "4"],  # a negative value; the last of a repeated option
        ["beach.jpg + at night"],
        ["x", "--hubness"],  # a --x/--no-x flag, either way, or not given (its default)
        ["x", "--no-hubness", "--json"],
    ],
    "similar": [["photo.jpg"], ["12", "-n", "3", "--json", "--where", "format = png"]],
    "status": [[], ["--json", "--failures", "5"], ["--index=/tmp/ix"]],
}

# lines Typer must parse: help, negative terms, option syntax the quick parser does not model, bad values
TYPER_ONLY = [
    ["search", "--help"],
    ["search", "beach", "-people"],
    ["search", "--", "-x"],
    ["search", "x", "-n5"],
    ["search", "x", "-n", "0"],
    ["search", "x", "-n", "many"],
    ["search", "x", "-n", "1_000"],
    ["search", "x", "--json=yes"],
    ["search", "x", "--index"],
    ["search"],
    ["similar", "a.jpg", "b.jpg"],
    ["--version"],
    ["--help"],
    [],
    ["index", "photos"],
    ["models"],
    ["dupes"],
]


def _typer_values(name: str, tokens: list[str]) -> dict:
    command = typer.main.get_command(cli.app).commands[name]
    return command.make_context(name, list(tokens)).params


@pytest.mark.parametrize(("name", "tokens"), [(n, t) for n, lines in PLAIN.items() for t in lines])
def test_quick_parse_gives_typers_values(name, tokens, monkeypatch):
    monkeypatch.delenv("VISDEX_INDEX", raising=False)
    fn = next(c.callback for c in cli.app.registered_commands if c.callback.__name__ == name)
    got = parse(fn, tokens)
    assert got is not None, tokens
    assert got[0] == _typer_values(name, tokens)
    assert quick_call(cli.app, [name, *tokens], cli.QUICK_COMMANDS) is not None


@pytest.mark.parametrize("name", cli.QUICK_COMMANDS)
def test_every_quick_command_is_modelled(name):
    """An option added to a quick command in a way the quick parser does not model would silently send every
    such command line back through Typer (0.2 s of pydantic): model it in visdex.quickcli."""
    fn = next(c.callback for c in cli.app.registered_commands if c.callback.__name__ == name)
    assert _params(fn) is not None, name


def test_quick_parse_leaves_the_index_variable_to_config(monkeypatch):
    """VISDEX_INDEX is a setting (visdex.config): neither parser reads it, the library does (test_cli checks
    that a command run with it set opens that index)."""
    monkeypatch.setenv("VISDEX_INDEX", "/tmp/from-env")
    root = parse(cli._root, ["search", "x"], stop_at_word=True)
    assert root is not None and root[0]["index"] is None
    assert parse(cli.search, ["x"])[0] == _typer_values("search", ["x"])


@pytest.mark.parametrize("argv", TYPER_ONLY, ids=lambda a: " ".join(a) or "(none)")
def test_other_lines_are_left_to_typer(argv):
    assert quick_call(cli.app, argv, cli.QUICK_COMMANDS) is None


def test_root_options_before_the_command(monkeypatch):
    monkeypatch.delenv("VISDEX_INDEX", raising=False)
    root, rest = parse(cli._root, ["--index", "/tmp/ix", "--traceback", "search", "a cat"], stop_at_word=True)
    assert (str(root["index"]), root["traceback"], rest) == ("/tmp/ix", True, ["search", "a cat"])


def test_typer_still_answers_what_the_quick_parse_leaves(capsys, tmp_path):
    code, _, err = run_cli(capsys, "search", "x", "-n", "0", "--index", tmp_path / "ix")
    assert code == 2 and "--top" in err and "greater than or equal to 1" in err  # Typer's message, as before
    code, out, _ = run_cli(capsys, "search", "--help")
    assert code == 0 and "--top" in out
