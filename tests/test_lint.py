"""Style is part of the build: ``ruff check`` and ``ruff format --check`` over the sources, tests and benchmarks
must be clean (ruff comes with the ``test`` extra, so this runs wherever the suite does, CI included)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["src", "tests", "benchmarks"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(exe).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    return subprocess.run([exe, *args, *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_is_clean():
    r = _ruff("check", "--no-cache")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_ruff_format_is_clean():
    r = _ruff("format", "--check", "--no-cache")
    assert r.returncode == 0, "run `ruff format src tests benchmarks`:\n" + r.stdout[-4000:] + r.stderr[-2000:]
