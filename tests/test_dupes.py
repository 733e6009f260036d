"""Duplicates on real photos with generated edits: copies are found, burst-like look-alikes are not."""

from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from dupeset import build, source_of
from visdex import open_index
from visdex.dupes import CANDIDATE_EF, NEIGHBOURS, _candidate_pairs, default_threshold, find_duplicates
from visdex.store.db import IndexDB
from visdex.store.hnsw import hnswlib_installed
from visdex.store.local import LocalVectorStore

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


# -- the candidate stage at scale: the store's ANN index, a small efSearch ------------------------------------------
class _SpyStore(LocalVectorStore):
    """A real store that notes the efSearch each search ran with."""

    def search(self, queries, k, allowed=None):
        self.seen_ef = getattr(self, "seen_ef", []) + [self.ef_search]
        return super().search(queries, k, allowed)


def _planted(n: int, dim: int, copies: int, seed: int = 0) -> tuple[np.ndarray, set]:
    """Clustered unit vectors whose last ``copies`` rows are near-copies (cosine ~0.97) of earlier rows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))
    x = centres[rng.integers(0, 50, n)] + 0.6 * rng.standard_normal((n, dim))
    src = rng.choice(n - copies, copies, replace=False)
    x[n - copies :] = x[src] + 0.15 * np.linalg.norm(x[src], axis=1, keepdims=True) / np.sqrt(dim) * (
        rng.standard_normal((copies, dim)))  # fmt: skip
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), {(int(s), int(c)) for s, c in zip(src, range(n - copies, n), strict=True)}


@pytest.mark.parametrize("engine", ["hnswlib", "faiss"])
def test_candidate_pass_finds_planted_copies_with_a_small_ef(tmp_path, engine):
    if engine == "hnswlib" and not hnswlib_installed():
        pytest.skip("hnswlib not installed (visdex[ann])")
    vecs, planted = _planted(6000, 48, 60)
    store = _SpyStore(IndexDB(tmp_path / "ix"), 48, ann="hnsw")
    store.hnsw_engine = engine
    store.upsert(np.arange(len(vecs)), vecs)
    pairs = _candidate_pairs(SimpleNamespace(store=store), 0.9)
    assert planted <= {(a, b) for a, b, _ in pairs}
    assert set(store.seen_ef) == {CANDIDATE_EF} and store.ef_search is None  # the pass's ef, then the default
    store.ef_search = 300  # a caller's own setting is kept
    _candidate_pairs(SimpleNamespace(store=store), 0.9)
    assert store.seen_ef[-1] == 300 and store.ef_search == 300


def test_candidate_pairs_are_each_knn_pair_once_with_its_exact_cosine(tmp_path):
    vecs, _ = _planted(1500, 16, 30, seed=3)
    store = LocalVectorStore(IndexDB(tmp_path / "ix"), 16, ann="flat")
    ids = np.arange(1500) * 7 + 3  # ids that are not row numbers
    store.upsert(ids, vecs)
    got = _candidate_pairs(SimpleNamespace(store=store), 0.8)
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    want = {}
    for row in range(len(vecs)):
        for col in np.argsort(-sims[row])[:NEIGHBOURS]:
            if sims[row, col] >= 0.8:
                a, b = sorted((int(ids[row]), int(ids[col])))
                want[(a, b)] = float(sims[row, col])
    assert len(got) == len({(a, b) for a, b, _ in got}) and all(a < b for a, b, _ in got)
    assert {(a, b) for a, b, _ in got} == set(want)
    np.testing.assert_allclose([s for _, _, s in got], [want[(a, b)] for a, b, _ in got], atol=1e-5)
