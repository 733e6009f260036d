"""Duplicates on real photos with generated edits: copies are found and offered for removal; similar shots
(burst frames, a stereo pair, shifted windows) are told apart from copies and shown separately."""

from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from dupeset import build, scene_of, source_of
from visdex import open_index
from visdex.dupes import (
    CANDIDATE_EF,
    NEIGHBOURS,
    SIMILAR_SHOT,
    UnionFind,
    Verified,
    candidate_pairs,
    default_threshold,
    find_duplicates,
    verify_pairs,
)
from visdex.store.db import IndexDB
from visdex.store.hnsw import hnswlib_installed
from visdex.store.local import LocalVectorStore

from clihelp import run_cli


@pytest.fixture(scope="module")
def dupe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dupes")
    build(d, hard=False)
    return d


# a stereo pair, a three-frame burst, two windows shifted by a third and a single photo, each with its edited copies
HARD_SCENES = ("motorcycle", "coffee-burst", "rocket", "camera")


@pytest.fixture(scope="module")
def hard_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dupes-hard")
    build(d, scenes=HARD_SCENES)
    return d


def _precision_recall(ix, groups) -> tuple[float, float]:
    """Pair-level: every pair inside a predicted group against every pair of copies of one source."""
    rows = ix.db.conn.execute("SELECT path FROM files WHERE status = 'ok'").fetchall()
    per_source = Counter(source_of(p) for (p,) in rows)
    truth = sum(n * (n - 1) // 2 for n in per_source.values())
    pred = tp = 0
    for g in groups:
        if g.kind == SIMILAR_SHOT:  # shown for review, never offered for removal: not a duplicate verdict
            continue
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
            if g.kind != SIMILAR_SHOT:
                assert len({source_of(m.path) for m in g.members}) == 1
        # embeddings alone cannot tell burst frames from copies: the pixel check is what separates them
        loose = find_duplicates(ix, verify=False)
        assert _precision_recall(ix, loose)[0] < precision


def _check_kinds(groups) -> None:
    for g in groups:
        assert g.kind in ("exact", "copy", SIMILAR_SHOT)
        for m in g.members:
            if g.kind == SIMILAR_SHOT:
                assert m.kind == SIMILAR_SHOT and not m.removable
            else:  # only exact duplicates and copies, never the keeper, are offered for removal
                assert m.removable == (m.id != g.keeper_id) and m.kind in ("exact", "copy")


def test_copies_and_similar_shots_on_real_photos(tmp_path, hard_dir):
    with open_index(tmp_path / "ix", model="effnet-lite0") as ix:
        ix.add([hard_dir])
        groups = find_duplicates(ix)
    _check_kinds(groups)
    with open_index(tmp_path / "ix") as ix:
        precision, recall = _precision_recall(ix, groups)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    for g in groups:
        if g.kind != SIMILAR_SHOT:  # no similar shot is ever marked a copy: one capture per duplicate group
            assert len({source_of(m.path) for m in g.members}) == 1, [m.path for m in g.members]
    # the stereo pair and the burst frames are shown, as similar shots of each other
    shots = [{source_of(m.path) for m in g.members} for g in groups if g.kind == SIMILAR_SHOT]
    assert any({"motorcycle~left", "motorcycle~right"} <= s for s in shots), shots
    assert any({"coffee-burst~0", "coffee-burst~1", "coffee-burst~2"} <= s for s in shots), shots
    assert all(len({scene_of(x) for x in s}) == 1 for s in shots), shots


@pytest.mark.slow
@pytest.mark.parametrize("model", ["effnet-lite0", "lite0-minilm"])
def test_copies_and_similar_shots_full_set(tmp_path, model):
    """The whole set (21 captures, 223 files): the numbers in docs/duplicates.md."""
    build(tmp_path / "set")
    with open_index(tmp_path / "ix", model=model) as ix:
        ix.add([tmp_path / "set"])
        groups = find_duplicates(ix)
        precision, recall = _precision_recall(ix, groups)
    _check_kinds(groups)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert all(len({source_of(m.path) for m in g.members}) == 1 for g in groups if g.kind != SIMILAR_SHOT)
    # the keeper is the unedited original, even where a caption bar or a screenshot frame has more pixels
    assert all("__" not in g.keeper.path.rsplit("/", 1)[-1] for g in groups if g.kind != SIMILAR_SHOT)


def test_same_decoded_pixels_are_exact(tmp_path):
    from PIL import Image, PngImagePlugin

    from imagefactory import real_photos

    d = tmp_path / "photos"
    d.mkdir()
    img = Image.fromarray(real_photos()["coffee"])
    img.save(d / "coffee.png")
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "re-saved by another program")
    img.save(d / "coffee-resaved.png", pnginfo=info, compress_level=1)  # other bytes, the same pixels
    img.resize((300, 200)).save(d / "coffee-small.png")
    with open_index(tmp_path / "ix", model="effnet-lite0") as ix:
        ix.add([d])
        (g,) = find_duplicates(ix)
    kinds = {m.path.rsplit("/", 1)[-1]: m.kind for m in g.members if m.id != g.keeper_id}
    assert g.kind == "copy" and g.keeper.path.endswith(("coffee.png", "coffee-resaved.png"))
    assert kinds["coffee-small.png"] == "copy" and "exact" in kinds.values()  # the keeper's twin is exact
    # verification compares the twins once (exact), then the small copy with one of them only: the other pair
    # takes the same verdict without a second geometric check
    with open_index(tmp_path / "ix") as ix:
        ids = {m.path.rsplit("/", 1)[-1]: m.id for m in g.members}
        pairs = [(ids["coffee.png"], ids["coffee-resaved.png"]), (ids["coffee.png"], ids["coffee-small.png"]),
                 (ids["coffee-resaved.png"], ids["coffee-small.png"])]  # fmt: skip
        exact = UnionFind()
        found = verify_pairs(ix, pairs, exact, Verified())
    assert (found.compared, found.skipped) == (2, 1)
    assert exact.find(ids["coffee.png"]) == exact.find(ids["coffee-resaved.png"])
    assert {(a, b) for _, a, b in found.copies} == set(pairs[1:])
    assert found.scales[pairs[1]] == pytest.approx(0.25, rel=0.05)  # half size: a quarter of the pixels


def test_cli_shows_similar_shots_apart(capsys, tmp_path):
    import skimage.data as sd
    from PIL import Image

    d = tmp_path / "photos"
    d.mkdir()
    left, right, _ = sd.stereo_motorcycle()
    Image.fromarray(left).save(d / "left.jpg", quality=90)
    Image.fromarray(right).save(d / "right.jpg", quality=90)
    Image.fromarray(left).resize((370, 250)).save(d / "left-small.jpg", quality=60)
    ix = tmp_path / "ix"
    run_cli(capsys, "index", d, "--index", ix, "--model", "effnet-lite0", "-q")
    code, out, err = run_cli(capsys, "dupes", "--index", ix, "--json")
    assert code == 0, err
    groups = [json.loads(line) for line in out.splitlines()]
    assert [g["kind"] for g in groups] == ["copy", SIMILAR_SHOT]
    copy, shots = groups
    assert {m["path"].rsplit("/", 1)[-1]: m["removable"] for m in copy["members"]} == {
        "left.jpg": False, "left-small.jpg": True}  # fmt: skip
    assert sorted(m["path"].rsplit("/", 1)[-1] for m in shots["members"]) == ["left.jpg", "right.jpg"]
    code, out, _ = run_cli(capsys, "dupes", "--index", ix)
    assert code == 0 and "similar shots" in out and "1 groups; 1 files could go; 1 groups of similar shots" in out


def test_keeper_is_the_original_of_each_edited_set(tmp_path, dupe_dir):
    with open_index(tmp_path / "ix", model="effnet-lite0") as ix:
        ix.add([dupe_dir])
        groups = [g for g in find_duplicates(ix) if g.kind != SIMILAR_SHOT]
    assert groups
    for g in groups:  # the file without an edit in its name; a crop has fewer pixels but the same resolution
        assert "__" not in g.keeper.path.rsplit("/", 1)[-1], [m.path for m in g.members]
        assert g.members[0].id == g.keeper_id


def test_keeper_prefers_resolution_then_unchanged_copies_then_exif_then_age(tmp_path):
    """Real photos: a caption bar or a screenshot's frame adds pixels, not detail; the original stored twice beats
    an older edit; EXIF beats an older re-save without it (tests/dupeset.py build_keeper_set)."""
    from dupeset import build_keeper_set

    files = build_keeper_set(tmp_path / "photos")
    with open_index(tmp_path / "ix", model="effnet-lite0") as ix:
        ix.add([tmp_path / "photos"])
        groups = [g for g in find_duplicates(ix) if g.kind != SIMILAR_SHOT]
    by_scene = {}
    for g in groups:
        scene = next(k.split("/")[0] for k, p in files.items() if str(p.resolve()) == g.keeper.path)
        by_scene[scene] = g
    for scene in ("coffee", "rocket", "chelsea"):
        g = by_scene[scene]
        want = {str(p.resolve()) for k, p in files.items() if k.startswith(scene + "/")}
        assert {m.path for m in g.members} == want, scene  # every copy found, nothing else
        assert g.keeper.path == str(files[f"{scene}/original"].resolve()), (scene, g.keeper.path)
        assert all(m.removable == (m.id != g.keeper_id) for m in g.members)
    twin = next(m for m in by_scene["rocket"].members if m.path == str(files["rocket/twin"].resolve()))
    assert twin.kind == "exact" and by_scene["chelsea"].keeper.camera


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
    pairs = candidate_pairs(SimpleNamespace(store=store), 0.9)
    assert planted <= {(a, b) for a, b, _ in pairs}
    assert set(store.seen_ef) == {CANDIDATE_EF} and store.ef_search is None  # the pass's ef, then the default
    store.ef_search = 300  # a caller's own setting is kept
    candidate_pairs(SimpleNamespace(store=store), 0.9)
    assert store.seen_ef[-1] == 300 and store.ef_search == 300


def test_candidate_pairs_are_each_knn_pair_once_with_its_exact_cosine(tmp_path):
    vecs, _ = _planted(1500, 16, 30, seed=3)
    store = LocalVectorStore(IndexDB(tmp_path / "ix"), 16, ann="flat")
    ids = np.arange(1500) * 7 + 3  # ids that are not row numbers
    store.upsert(ids, vecs)
    got = candidate_pairs(SimpleNamespace(store=store), 0.8)
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
