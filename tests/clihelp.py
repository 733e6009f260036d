"""Run the real CLI entry point in-process (fast) or as a subprocess (for signals)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``visdex ARGS`` through :func:`visdex.cli.main`: (exit code, stdout, stderr)."""
    from visdex.cli import main

    old = sys.argv
    sys.argv = ["visdex", *map(str, args)]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def spawn_cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    e = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "visdex", *map(str, args)],
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )
