"""Duplicates on real photos with generated edits: copies are found, burst-like look-alikes are not."""

from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter

import pytest

from dupeset import build, source_of
from visdex import open_index
from visdex.dupes import default_threshold, find_duplicates

from clihelp import run_cli


@pytest.fixture(scope="module")
def dupe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dupes")
    build(d)
    return d


def _precision_recall(ix, groups) -> tuple[float, float]:
    """Pair-level: every pair inside a predicted group against every pair of copies of one source."""
    rows = ix.db.conn.execute("SELECT path FROM files WHERE status = 'ok'").fetchall()
    per_source = Counter(source_of(p) for (p,) in rows)
    truth = sum(n * (n - 1) // 2 for n in per_source.values())
    pred = tp = 0
    for g in groups:
        for a, b in itertools.combinations(g.members, 2):
            pred += 1
            tp += source_of(a.path) == source_of(b.path)
    return tp / max(pred, 1), tp / truth


@pytest.mark.parametrize("model", ["effnet-lite0", "lite0-minilm"])
def test_default_threshold_separates_copies_from_similar_shots(tmp_path, dupe_dir, model):
    with open_index(tmp_path / "ix", model=model) as ix:
        ix.add([dupe_dir])
        groups = find_duplicates(ix)
        precision, recall = _precision_recall(ix, groups)
        assert precision >= 0.95 and recall >= 0.95, (precision, recall)
        # the burst pairs are never merged: a window and its shifted twin stay apart
        for g in groups:
            assert len({source_of(m.path) for m in g.members}) == 1
        # embeddings alone cannot tell burst frames from copies: the pixel check is what separates them
        loose = find_duplicates(ix, verify=False)
        assert _precision_recall(ix, loose)[0] < precision


def test_keeper_is_largest_then_oldest(tmp_path, dupe_dir):
    with open_index(tmp_path / "ix", model="effnet-lite0") as ix:
        ix.add([dupe_dir])
        for g in find_duplicates(ix):
            k = g.keeper
            assert all((k.width or 0) * (k.height or 0) >= (m.width or 0) * (m.height or 0) for m in g.members)
            assert g.members[0].id == g.keeper_id


def test_exact_duplicates_and_cli(capsys, tmp_path, folder, tiny_clip):
    shutil.copy(folder / "coffee.jpg", folder / "coffee-copy.jpg")
    (folder / "sub").mkdir()
    shutil.copy(folder / "coffee.jpg", folder / "sub" / "coffee.jpg")
    ix = tmp_path / "ix"
    run_cli(capsys, "index", folder, "--index", ix, "--model", tiny_clip, "-q")
    code, out, err = run_cli(capsys, "dupes", "--index", ix, "--exact-only", "--json", "--out", tmp_path / "g.csv")
    assert code == 0, err
    groups = [json.loads(line) for line in out.splitlines()]
    assert len(groups) == 1 and groups[0]["kind"] == "exact" and len(groups[0]["members"]) == 3
    assert (tmp_path / "g.csv").read_text().count("\n") == 4  # header + 3 members
    code, out, _ = run_cli(capsys, "dupes", "--index", ix)
    assert code == 0 and "keep" in out and "1 groups" in out


def test_thresholds_are_per_model():
    assert default_threshold("effnet-lite0") != default_threshold("lite0-minilm")
    assert default_threshold("clip-vit-b-32") == default_threshold("clip-vit-l-14")
    assert 0 < default_threshold("/some/local/model") < 1
