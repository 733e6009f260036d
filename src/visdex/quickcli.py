"""The plain command lines of the read commands, parsed without Typer's runtime.

Typer (0.29) checks every parameter through a pydantic ``TypeAdapter``: importing pydantic and
building the adapters costs ~0.2 s of CPU, a third of a cold ``visdex search``. A command line made
only of options the command declares, with plain values (text, numbers, paths, flags) and its
positional argument, needs none of that: :func:`quick_call` parses it from the command's own Typer
declarations (the one source of truth) and returns the call to make. Anything else -- ``--help``, an
unknown or dash-led token (the negative term ``-people``), ``--``, a value Typer would refuse or a
declaration this parser does not model -- gives ``None``, and Typer parses the line as before, with
its own messages. ``tests/test_quickcli.py`` checks that both parsers give a command the same values.
"""

from __future__ import annotations

import inspect
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NUMBER = {int: int, float: float}
# numbers written the plain way; others ("1_000", " 5", "nan") are left to Typer, which may read them otherwise
_PLAIN_NUMBER = {int: re.compile(r"[+-]?\d+"), float: re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")}


@dataclass
class _Param:
    name: str
    info: Any  # typer.models.OptionInfo / ArgumentInfo
    type: type
    decls: tuple[str, ...] = ()
    flag: bool = False
    off: tuple[str, ...] = ()  # a flag's --no-x names (declared "--x/--no-x"): they give False
    argument: bool = False
    many: bool = False  # an Argument of list[...]


def _plain_type(hint) -> tuple[type, bool] | None:
    """(base type, is a list) of ``X``, ``X | None``, ``list[X]``; None for anything else."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _plain_type(args[0]) if len(args) == 1 else None
    if typing.get_origin(hint) is list:
        inner = _plain_type(args[0]) if len(args) == 1 else None
        return (inner[0], True) if inner is not None and not inner[1] else None
    return (hint, False) if hint in (str, int, float, bool, Path) else None


def _params(fn: Callable) -> list[_Param] | None:
    """The Typer parameters of ``fn``, or None when one is declared in a way this module does not model."""
    from typer.models import ArgumentInfo, OptionInfo

    hints = typing.get_type_hints(fn)
    out = []
    for name, p in inspect.signature(fn).parameters.items():
        info = p.default
        plain = _plain_type(hints.get(name))
        if not isinstance(info, OptionInfo | ArgumentInfo) or plain is None:
            return None
        if info.parser is not None or info.default_factory is not None or getattr(info, "prompt", False):
            return None
        if getattr(info, "deprecated", False) or getattr(info, "count", False):
            return None
        if info.clamp or info.exists or info.resolve_path:
            return None
        kind, many = plain
        if isinstance(info, ArgumentInfo):
            out.append(_Param(name, info, kind, argument=True, many=many))
            continue
        decls = tuple(info.param_decls or ()) or (f"--{name.replace('_', '-')}",)
        pairs = [d.split("/") for d in decls]
        on, off = tuple(x[0].strip() for x in pairs), tuple(x[1].strip() for x in pairs if len(x) == 2)
        if many or any(len(x) > 2 for x in pairs) or not all(d.startswith("-") for d in on + off):
            return None  # repeated options, a declared Python name
        if off and kind is not bool:
            return None
        if kind is bool and (info.default not in ((None, True, False) if off else (False,))
                             or getattr(info, "is_flag", None) is False):  # fmt: skip
            return None
        out.append(_Param(name, info, kind, decls=on, flag=kind is bool, off=off))
    if sum(p.argument for p in out) > 1:
        return None
    return out


def _is_number(text: str) -> bool:
    return _PLAIN_NUMBER[float].fullmatch(text) is not None


def _convert(p: _Param, raw: str):
    """``raw`` as Typer would pass it, or a ValueError when Typer might refuse it (then Typer says why)."""
    if p.type in _NUMBER:
        if not _PLAIN_NUMBER[p.type].fullmatch(raw):
            raise ValueError(raw)
        value = _NUMBER[p.type](raw)
        if (p.info.min is not None and value < p.info.min) or (p.info.max is not None and value > p.info.max):
            raise ValueError(raw)
        return value
    if p.type is Path:
        if not raw:
            raise ValueError(raw)
        info = p.info
        if os.path.exists(raw) and (
            (info.readable and not os.access(raw, os.R_OK)) or (info.writable and not os.access(raw, os.W_OK))
            or (not info.file_okay and os.path.isfile(raw)) or (not info.dir_okay and os.path.isdir(raw))
        ):  # fmt: skip
            raise ValueError(raw)
        return Path(raw)
    return raw


def _envvar(info) -> str | None:
    names = [info.envvar] if isinstance(info.envvar, str) else list(info.envvar or [])
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def parse(fn: Callable, tokens: list[str], *, stop_at_word: bool = False) -> tuple[dict, list[str]] | None:
    """``fn``'s keyword arguments from ``tokens``, and the tokens left (after the first word when
    ``stop_at_word``: a group's options end at its command's name). None: leave the line to Typer."""
    params = _params(fn)
    if params is None:
        return None
    by_decl = {d: p for p in params if not p.argument for d in p.decls + p.off}
    raw: dict[str, Any] = {}
    words: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("-") or tok == "-":
            if stop_at_word:
                rest = tokens[i:]
                break
            words.append(tok)
            i += 1
            continue
        name, eq, value = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        p = by_decl.get(name)
        if p is None or p.info.callback is not None or (p.flag and eq):
            return None
        if p.flag:
            raw[p.name] = name not in p.off
        else:
            if not eq:
                i += 1
                if i == len(tokens) or (tokens[i].startswith("-") and not _is_number(tokens[i])):
                    return None
                value = tokens[i]
            raw[p.name] = value  # given twice: the last one, as Click does
        i += 1
    kwargs: dict[str, Any] = {}
    for p in params:
        try:
            if p.argument:
                if p.many:
                    kwargs[p.name] = [_convert(p, w) for w in words]
                    if not words and p.info.default is ...:
                        return None
                elif len(words) == 1:
                    kwargs[p.name] = _convert(p, words[0])
                else:
                    return None
                if not words and p.info.default is not ...:
                    return None  # Typer's value for a missing optional argument: left to Typer
                continue
            if p.name in raw:
                kwargs[p.name] = raw[p.name] if p.flag else _convert(p, raw[p.name])
            elif not p.flag and p.info.envvar and (env := _envvar(p.info)) is not None:
                kwargs[p.name] = _convert(p, env)
            elif p.info.default is ...:
                return None
            else:
                kwargs[p.name] = p.info.default
        except ValueError:
            return None
    if words and not any(p.argument for p in params):
        return None
    return kwargs, rest


def quick_call(app, argv: list[str], commands: tuple[str, ...]) -> Callable[[], Any] | None:
    """The call that runs ``argv`` on the Typer ``app`` -- its root callback, then one of ``commands`` --
    when the line is plain enough to parse here; None otherwise."""
    root = app.registered_callback.callback if app.registered_callback else None
    parsed = parse(root, argv, stop_at_word=True) if root is not None else ({}, argv)
    if parsed is None or not parsed[1]:
        return None
    root_kwargs, (name, *tokens) = parsed
    cmd = next((c for c in app.registered_commands if (c.name or c.callback.__name__) == name), None)
    if name not in commands or cmd is None:
        return None
    got = parse(cmd.callback, tokens)
    if got is None:
        return None

    def call():
        if root is not None:
            root(**root_kwargs)
        return cmd.callback(**got[0])

    return call
