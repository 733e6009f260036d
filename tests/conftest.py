"""Shared fixtures. Every test gets its own data dir (index, caches) through an autouse
fixture, and nothing ever reaches the Hugging Face hub."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# fp32 torch for module- and session-scoped fixtures too (they are built before the per-test settings below): on
# a CPU with AMX, auto would run bf16 there and fp32 in the test, and exact comparisons would differ by ~1e-3.
os.environ["VISDEX_CPU_BACKEND"] = "torch"


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(request, tmp_path_factory):
    """One derived-data cache (class embeddings, weight hashes) for the run, never the user's; kept in
    pytest's cache dir so only the first run pays for it."""
    old = os.environ.get("VISDEX_CACHE_DIR")
    pytest_cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    path = pytest_cache.mkdir("visdex-model-cache") if pytest_cache else tmp_path_factory.mktemp("visdex-cache")
    os.environ["VISDEX_CACHE_DIR"] = str(path)
    yield
    if old is None:
        os.environ.pop("VISDEX_CACHE_DIR", None)
    else:
        os.environ["VISDEX_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VISDEX_INDEX", str(tmp_path / "default-index"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("VISDEX_WORKERS", "1")
    # Text queries through the exported ONNX text tower are tested where asked (test_textquery.py); elsewhere
    # the model itself answers, and no command starts a background export.
    monkeypatch.setenv("VISDEX_QUERY_EXPORT", "off")
    monkeypatch.setenv("VISDEX_CPU_BACKEND", "torch")  # likewise CPU indexing on ONNX (test_textquery.py)


@pytest.fixture
def cpu_flags(tmp_path, monkeypatch):
    """``cpu_flags("amx_bf16 avx2")``: from then on this test runs as on a CPU whose ``/proc/cpuinfo`` lists those
    flags (what decides bf16 on the CPU); returns that cpuinfo file's path."""
    import visdex.models.families.base as families_base

    made: list[Path] = []

    def use(flags: str) -> str:
        path = tmp_path / f"cpuinfo-{len(made)}"
        path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 avx512f {flags}\n\n")
        made.append(path)
        monkeypatch.setattr(families_base, "CPUINFO", str(path))
        families_base.cpu_has_amx_bf16.cache_clear()
        return str(path)

    yield use
    families_base.cpu_has_amx_bf16.cache_clear()


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """scikit-image's bundled real photos written as JPEGs, name -> path."""
    from imagefactory import real_photos, write_photo

    d = tmp_path_factory.mktemp("photos")
    return {name: write_photo(d, name, arr) for name, arr in real_photos().items()}


@pytest.fixture
def folder(tmp_path, photos) -> Path:
    """A fresh folder with a copy of every real photo, for tests that index and then change files."""
    d = tmp_path / "photos"
    d.mkdir()
    for p in photos.values():
        shutil.copy(p, d / p.name)
    return d


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from tinymodels import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory) -> Path:
    from tinymodels import make_tiny_dinov2

    return make_tiny_dinov2(tmp_path_factory.mktemp("tiny-dinov2"))


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory) -> Path:
    from tinymodels import make_tiny_siglip

    return make_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


# -- the web UI's browser tests (Debian's Chromium through Playwright) ------------------------------------------
@pytest.fixture(scope="module")
def browser():
    from serverhelp import CHROMIUM, CHROMIUM_ARGS

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set VISDEX_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
