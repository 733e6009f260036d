"""Types are part of the build: ``mypy src/visdex`` (settings in pyproject.toml) must find nothing. mypy comes
with the ``test`` extra, so this runs wherever the suite does, CI included; its cache (``.mypy_cache``) makes a
re-run take seconds, a cold run about a minute on 2 cores."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_is_clean():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[test]' installs it)")
    r = subprocess.run([sys.executable, "-m", "mypy", "src/visdex"], cwd=ROOT, capture_output=True, text=True,
                       timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
