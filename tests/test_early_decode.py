"""Decoding starts while the model loads, on the preprocessing the model had last time (a hint in the cache):
its results are used only when the loaded model's preprocessing is the hint; a wrong hint costs time, never
vectors. The time it saves is measured side by side (see docs/speed.md), not here."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import visdex.stages
from visdex import open_index
from visdex.api import _hint_path, preprocess_hint


def _vectors(ix) -> dict[str, np.ndarray]:
    rows = ix.db.conn.execute("SELECT id, path FROM files").fetchall()
    return {path.rsplit("/", 1)[-1]: ix.store.get([i])[0] for i, path in rows}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A cache of this test's own: the session's shared one holds hints that other tests' runs left."""
    monkeypatch.setenv("VISDEX_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def pooled(monkeypatch):
    """Decode in a pool (the photo folder is small) and record each decode pass's preprocessing, in order."""
    import visdex.ingest as ingest

    monkeypatch.setattr(visdex.stages, "POOL_MIN_FILES", 1)
    calls: list = []
    real = visdex.stages.decoded

    def recorded(files, preprocess, workers, **kw):
        calls.append(preprocess)
        return real(files, preprocess, workers, **kw)

    monkeypatch.setattr(visdex.stages, "decoded", recorded)
    monkeypatch.setattr(ingest, "decoded", recorded)
    return calls


def test_the_hint_is_remembered_and_a_right_one_gives_the_same_vectors(tmp_path, folder, tiny_clip, pooled):
    assert preprocess_hint(str(tiny_clip)) is None
    with open_index(tmp_path / "a", model=str(tiny_clip)) as ix:
        ix.add([folder], workers=2)
        want = ix.embedder.preprocess
        first = _vectors(ix)
    assert preprocess_hint(str(tiny_clip)) == want  # what the next run decodes with while the model loads
    pooled.clear()
    with open_index(tmp_path / "b", model=str(tiny_clip)) as ix:
        ix.add([folder], workers=2)
        second = _vectors(ix)
    assert pooled == [want]  # one pass, started on the hint before the model loaded, and kept
    assert first.keys() == second.keys() and len(first) > 5
    for name in first:
        np.testing.assert_allclose(first[name], second[name], atol=1e-6)


def test_a_wrong_hint_is_dropped(tmp_path, folder, tiny_clip, pooled):
    with open_index(tmp_path / "a", model=str(tiny_clip)) as ix:
        ix.add([folder], workers=2)
        right = ix.embedder.preprocess
        want = _vectors(ix)
    wrong = dataclasses.replace(right, size=right.size + 8, resize_to=right.resize_to + 8)
    _hint_path(str(tiny_clip)).write_text(json.dumps(dataclasses.asdict(wrong)))
    assert preprocess_hint(str(tiny_clip)) == wrong
    pooled.clear()
    with open_index(tmp_path / "b", model=str(tiny_clip)) as ix:
        ix.add([folder], workers=2)
        got = _vectors(ix)
    assert pooled == [wrong, right]  # the early pass was dropped, the files decoded again
    for name in want:
        np.testing.assert_allclose(want[name], got[name], atol=1e-6)
    assert preprocess_hint(str(tiny_clip)) == right  # corrected for the next run


def test_a_damaged_hint_is_no_hint(tmp_path, tiny_clip):
    path = _hint_path(str(tiny_clip))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert preprocess_hint(str(tiny_clip)) is None
