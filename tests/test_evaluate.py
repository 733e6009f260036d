"""Evaluation: metric math on hand-computed cases, retrieval quality of real models on a labelled set
built from real photos, captions, the `visdex eval` command, and bad inputs."""

from __future__ import annotations

import csv
import io
import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from visdex.errors import BadDataset, UnsupportedModality
from visdex.evaluate import (
    eval_captions,
    eval_labelled_folder,
    metrics_from_labels,
    metrics_from_similarity,
    metrics_from_vectors,
    per_query_metrics,
    read_captions,
    read_labelled,
)
from visdex.models import load_embedder

from clihelp import run_cli
from imagefactory import real_photos, write_bad_files, write_photo

CAPTIONS = {
    "astronaut": ["an astronaut in a space suit", "a woman astronaut with a flag"],
    "camera": ["a man with a camera on a tripod", "a photographer outdoors"],
    "chelsea": ["a cat", "a tabby cat"],
    "coffee": ["a cup of coffee", "an espresso on a saucer"],
    "coins": ["old coins", "a collection of coins"],
    "hubble_deep_field": ["galaxies in deep space", "a telescope image of the night sky"],
    "immunohistochemistry": ["a microscope image of tissue", "stained cells"],
    "moon": ["the moon", "the surface of the moon"],
    "retina": ["a scan of the retina of an eye", "an eye fundus photo"],
    "rocket": ["a rocket launch", "a space shuttle taking off"],
}


# -- metric math -----------------------------------------------------------------------------------
def test_single_query_by_hand():
    # ranking 0,1,2,3,4; relevant {1, 3}: hits at ranks 2 and 4, R = 2
    m = metrics_from_similarity(np.array([[0.9, 0.8, 0.7, 0.6, 0.5]]), [[1, 3]])
    assert m["recall@1"] == 0.0
    assert m["recall@5"] == 1.0
    assert m["map@r"] == pytest.approx((0 + 1 / 2) / 2)  # P@2 at the one hit within the first R=2
    dcg, ideal = 1 / math.log2(3) + 1 / math.log2(5), 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(dcg / ideal)
    assert m["mrr@10"] == pytest.approx(0.5)
    assert (m.queries, m.skipped) == (1, 0)


def test_map_at_r_looks_only_at_the_first_r_results():
    # hits T F T T, R = 3: (P@1 + P@3) / 3; the hit at rank 4 is past R and does not count
    m = metrics_from_similarity(np.array([[0.9, 0.8, 0.7, 0.6]]), [[0, 2, 3]])
    assert m["map@r"] == pytest.approx((1 + 2 / 3) / 3)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(5)) / ideal)


def test_recall_at_k_is_a_hit_rate_and_averages_over_queries():
    sim = np.array([[0.1, 0.9, 0.8, 0.7], [0.9, 0.1, 0.2, 0.3]])
    m = metrics_from_similarity(sim, [[0, 3], [0]], ks=(1, 3))
    # query 0: ranking 1,2,3,0 -> first hit at rank 3; query 1: ranking 0,... -> hit at rank 1
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["recall@3"] == pytest.approx(1.0)  # one relevant of two in the top 3 is a hit
    assert m["mrr@10"] == pytest.approx((1 / 3 + 1) / 2)


def test_perfect_ranking_scores_one_everywhere():
    m = metrics_from_similarity(np.eye(5) + 0.01, [[i] for i in range(5)])
    assert all(v == pytest.approx(1.0) for v in m.values.values())


def test_leave_one_out_skips_self_and_counts_singletons():
    v = np.array([[1, 0], [0.95, 0.31], [0, 1], [0.31, 0.95], [-1, 0]], dtype=np.float32)
    m = metrics_from_labels(v, ["a", "a", "b", "b", "c"])
    assert (m.queries, m.skipped) == (4, 1)  # "c" has no other member: nothing to find
    assert m["recall@1"] == 1.0  # without leaving itself out, every query would trivially find itself
    same = metrics_from_similarity(v @ v.T, np.equal.outer(list("aabbc"), list("aabbc")), exclude_diagonal=True)
    assert same.values == pytest.approx(m.values)


def test_per_query_metrics_mark_unscorable_queries_nan():
    out = per_query_metrics(np.array([[True, False], [False, False]]), np.array([1, 0]), ks=(1,))
    assert out["recall@1"][0] == 1.0 and math.isnan(out["recall@1"][1])


def test_the_three_entry_points_agree_and_chunking_changes_nothing():
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((300, 16)).astype(np.float32)
    queries = rng.standard_normal((70, 16)).astype(np.float32)
    clabels, qlabels = rng.integers(0, 9, 300), rng.integers(0, 9, 70)
    by_labels = metrics_from_labels(queries, qlabels, corpus, clabels, chunk_size=8)
    relevant = [np.flatnonzero(clabels == q) for q in qlabels]
    by_sets = metrics_from_vectors(queries, corpus, relevant, chunk_size=13)
    by_matrix = metrics_from_similarity(queries @ corpus.T, relevant)
    assert by_labels.values == pytest.approx(by_sets.values)
    assert by_labels.values == pytest.approx(by_matrix.values)
    loo_small = metrics_from_labels(corpus, clabels, chunk_size=7)
    loo_big = metrics_from_labels(corpus, clabels)
    assert loo_small.values == pytest.approx(loo_big.values)
    assert 0.0 < by_labels["map@r"] < 1.0


def test_map_at_r_with_classes_larger_than_the_top_k():
    # one class of 40 tight vectors and a far one: R = 39 > 10, so the engine must rank deeper than k
    rng = np.random.default_rng(1)
    a = rng.normal([5, 0], 0.1, (40, 2))
    b = rng.normal([-5, 0], 0.1, (40, 2))
    m = metrics_from_labels(np.vstack([a, b]).astype(np.float32), [0] * 40 + [1] * 40)
    assert m["map@r"] == pytest.approx(1.0)


def test_few_thousand_items_never_build_the_full_matrix():
    n = 5000
    rng = np.random.default_rng(2)
    v = rng.standard_normal((n, 32)).astype(np.float32)
    labels = rng.integers(0, 50, n)
    tracemalloc.start()
    m = metrics_from_labels(v, labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert m.queries == n
    assert peak < n * n * 4 / 2, f"peak {peak / 2**20:.0f} MiB: as much as half the full float32 matrix"


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        metrics_from_labels(np.zeros((3, 4), np.float32), ["a", "b"])
    with pytest.raises(ValueError):
        metrics_from_labels(np.zeros((2, 4), np.float32), [0, 1], np.zeros((2, 5), np.float32), [0, 1])


# -- data sets -------------------------------------------------------------------------------------
def _variants(arr: np.ndarray) -> dict[str, Image.Image]:
    """Ten edits of one photo: crops, flips, zoom, colour changes, a tiny re-encoded copy, a rotation."""
    img = Image.fromarray(arr)
    w, h = img.size

    def box(x0, y0, x1, y1):
        return img.crop((int(w * x0), int(h * y0), int(w * x1), int(h * y1)))

    buf = io.BytesIO()
    img.resize((max(24, w // 4), max(24, h // 4))).save(buf, "JPEG", quality=25)
    jitter = ImageEnhance.Color(img).enhance(1.8)
    return {
        "orig": img,
        "flip": ImageOps.mirror(img),
        "crop_tl": box(0.0, 0.0, 0.6, 0.6),
        "crop_br": box(0.4, 0.4, 1.0, 1.0),
        "zoom": box(0.25, 0.25, 0.75, 0.75).resize((w, h), Image.Resampling.BICUBIC),
        "swap": Image.fromarray(arr[..., ::-1].copy()),  # red <-> blue
        "grey": ImageOps.grayscale(img).convert("RGB"),
        "jitter": ImageEnhance.Contrast(ImageEnhance.Brightness(jitter).enhance(0.6)).enhance(1.4),
        "tiny": Image.open(buf).convert("RGB"),
        "rot": img.rotate(20, resample=Image.Resampling.BICUBIC).crop((w // 8, h // 8, w - w // 8, h - h // 8)),
    }


@pytest.fixture(scope="session")
def labelled_dir(tmp_path_factory) -> Path:
    """10 classes (one per real photo) x 10 edited copies = 100 JPEGs."""
    root = tmp_path_factory.mktemp("labelled")
    for name, arr in real_photos().items():
        (root / name).mkdir()
        for kind, img in _variants(arr).items():
            img.convert("RGB").save(root / name / f"{kind}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def captions_csv(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("captioned")
    with open(d / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for name, arr in real_photos().items():
            write_photo(d / "", name, arr)
            for cap in CAPTIONS[name]:
                w.writerow([f"{name}.jpg", cap])
    return d / "captions.csv"


@pytest.fixture(scope="session")
def effnet():
    return load_embedder("effnet-lite0", device="cpu")


@pytest.fixture(scope="session")
def minilm():
    return load_embedder("lite0-minilm", device="cpu")


@pytest.fixture(scope="session")
def effnet_result(effnet, labelled_dir):
    return eval_labelled_folder(effnet, labelled_dir)


@pytest.fixture(scope="session")
def random_result(tiny_dinov2, labelled_dir):
    return eval_labelled_folder(load_embedder(str(tiny_dinov2), device="cpu"), labelled_dir)


def test_real_model_finds_edited_copies(effnet_result):
    r = effnet_result
    assert (r.images, r.classes, r.failed, r.dim) == (100, 10, 0, 1280)
    # measured: R@1 1.00, mAP@R 0.98, nDCG@10 0.99
    assert r.metrics["recall@1"] >= 0.95
    assert r.metrics["map@r"] >= 0.9
    assert r.metrics["ndcg@10"] >= 0.9
    assert r.images_per_second > 0
    d = r.to_dict()
    assert d["model"] == "effnet-lite0" and d["metrics"]["queries"] == 100 and d["device"] == "cpu"
    json.dumps(d)


def test_random_weights_score_clearly_lower(effnet_result, random_result):
    # measured with the tiny random DINOv2: R@1 0.68, mAP@R 0.47 (colour statistics alone get that far)
    assert random_result.metrics["map@r"] <= 0.65
    assert effnet_result.metrics["map@r"] - random_result.metrics["map@r"] >= 0.3
    assert effnet_result.metrics["recall@1"] > random_result.metrics["recall@1"] + 0.15


def test_csv_and_pairs_give_the_same_result_as_the_folder(tmp_path, labelled_dir, tiny_dinov2, random_result):
    items = read_labelled(labelled_dir)
    assert len(items) == 100 and items[0][1] == "astronaut"
    with open(tmp_path / "set.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(items)
    headerless = tmp_path / "bare.csv"
    headerless.write_text("".join(f"{p},{lab}\n" for p, lab in items))
    assert read_labelled(tmp_path / "set.csv") == items
    assert read_labelled(headerless) == items
    emb = load_embedder(str(tiny_dinov2), device="cpu")
    from_pairs = eval_labelled_folder(emb, items[:40])
    assert from_pairs.images == 40 and from_pairs.classes == 4
    from_csv = eval_labelled_folder(emb, tmp_path / "set.csv")
    assert from_csv.metrics.values == pytest.approx(random_result.metrics.values)


def test_unreadable_files_are_skipped_and_counted(tmp_path, photos, tiny_dinov2):
    for cls in ("cats", "cups"):
        (tmp_path / cls).mkdir()
    write_photo(tmp_path / "cats", "a", real_photos()["chelsea"])
    write_photo(tmp_path / "cats", "b", real_photos()["chelsea"][::-1])
    write_photo(tmp_path / "cups", "a", real_photos()["coffee"])
    write_photo(tmp_path / "cups", "b", real_photos()["coffee"][:, ::-1])
    bad = write_bad_files(tmp_path / "cups")  # 7 undecodable + 3 decodable oddities
    seen = []

    class Observer:
        def start(self, total):
            seen.append(("start", total))

        def advance(self, n=1):
            seen.append(("advance", n))

        def failed(self, path, reason):
            seen.append(("failed", Path(path).name))

    r = eval_labelled_folder(load_embedder(str(tiny_dinov2), device="cpu"), tmp_path, progress=Observer())
    assert r.failed == 7
    assert {Path(p).name for p, _ in r.failures} == {bad[k].name for k in
        ("empty", "truncated_jpeg", "truncated_png", "random_bytes", "text_as_jpg", "corrupt_png", "bomb")}  # fmt: skip
    assert r.images == 4 + 3
    assert seen[0] == ("start", 14)
    assert sum(n for kind, n in seen if kind == "advance") == 14
    assert sum(1 for kind, _ in seen if kind == "failed") == 7


def test_labelled_set_errors(tmp_path, photos, effnet):
    with pytest.raises(BadDataset, match="no such"):
        read_labelled(tmp_path / "missing")
    flat = tmp_path / "flat"
    flat.mkdir()
    write_photo(flat, "a", real_photos()["moon"])
    with pytest.raises(BadDataset, match="subfolder"):
        read_labelled(flat)
    nolabel = tmp_path / "x.csv"
    nolabel.write_text("path,colour\na.jpg,red\n")
    with pytest.raises(BadDataset, match="label column"):
        read_labelled(nolabel)
    singletons = [(str(photos["moon"]), "moon"), (str(photos["coins"]), "coins")]
    with pytest.raises(BadDataset, match="2 or more"):
        eval_labelled_folder(effnet, singletons)


# -- captions ----------------------------------------------------------------------------------------
def test_captions_text_to_image_and_back(minilm, captions_csv, tiny_clip):
    r = eval_captions(minilm, captions_csv)
    assert (r.images, r.captions, r.failed) == (10, 20, 0)
    # measured: T->I R@1 0.55, R@5 0.90; I->T R@1 0.60 (chance: 0.10)
    assert r.text_to_image["recall@1"] >= 0.4
    assert r.text_to_image["recall@5"] >= 0.7
    assert r.image_to_text["recall@1"] >= 0.4
    assert r.text_to_image.queries == 20 and r.image_to_text.queries == 10
    rand = eval_captions(load_embedder(str(tiny_clip), device="cpu"), captions_csv)
    assert rand.text_to_image["recall@1"] < r.text_to_image["recall@1"] - 0.2
    assert json.loads(json.dumps(r.to_dict()))["text_to_image"]["queries"] == 20


def test_captions_jsonl_lists_and_broken_images(tmp_path, captions_csv, tiny_clip):
    pairs = read_captions(captions_csv)
    by_image: dict[str, list[str]] = {}
    for p, c in pairs:
        by_image.setdefault(p, []).append(c)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    lines = [json.dumps({"image": p, "captions": caps}) for p, caps in by_image.items()]
    lines.append(json.dumps({"image": "broken.jpg", "captions": ["a broken file", "nothing"]}))
    (tmp_path / "set.jsonl").write_text("\n".join(lines) + "\n")
    assert len(read_captions(tmp_path / "set.jsonl")) == 22
    r = eval_captions(load_embedder(str(tiny_clip), device="cpu"), tmp_path / "set.jsonl")
    assert (r.images, r.captions, r.failed) == (10, 20, 1)  # the broken image's captions leave with it


def test_captions_need_a_text_model_and_good_files(effnet, tmp_path, minilm):
    with pytest.raises(UnsupportedModality, match="text-and-image"):
        eval_captions(effnet, [("a.jpg", "a cat"), ("b.jpg", "a dog")])
    (tmp_path / "c.csv").write_text("image,colour\na.jpg,red\n")
    with pytest.raises(BadDataset, match="caption column"):
        read_captions(tmp_path / "c.csv")
    with pytest.raises(BadDataset, match="no such"):
        read_captions(tmp_path / "none.csv")
    with pytest.raises(BadDataset, match="at least 2 images"):
        eval_captions(minilm, [("a.jpg", "a cat")])


# -- the command -----------------------------------------------------------------------------------------
def test_cli_compares_models_as_json(capsys, labelled_dir, tiny_dinov2, tiny_clip):
    code, out, err = run_cli(capsys, "eval", "labelled", labelled_dir, "-m", tiny_dinov2, "-m", tiny_clip, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["task"] == "labelled"
    assert [r["model"] for r in data["results"]] == [str(tiny_dinov2), str(tiny_clip)]
    for r in data["results"]:
        assert r["images"] == 100 and 0 <= r["metrics"]["recall@1"] <= 1 and r["images_per_second"] > 0


def test_cli_table(capsys, captions_csv, tiny_clip, tiny_siglip):
    code, out, err = run_cli(capsys, "eval", "captions", captions_csv, "-m", tiny_clip, "-m", tiny_siglip)
    assert code == 0, err
    for text in ("T→I R@1", "I→T R@10", "img/s", "10 images, 20 captions"):
        assert text in out
    assert out.count("tiny-") >= 2


def test_cli_errors(capsys, captions_csv, labelled_dir, tmp_path):
    code, _, err = run_cli(capsys, "eval", "labelled", labelled_dir, "-m", "no-such-model")
    assert code == 2 and "unknown model 'no-such-model'" in err
    code, _, err = run_cli(capsys, "eval", "captions", captions_csv, "-m", "effnet-lite0")
    assert code == 2 and "embeds images only" in err
    code, _, err = run_cli(capsys, "eval", "labelled", tmp_path / "nothing", "-m", "effnet-lite0")
    assert code == 2 and "no such folder or file" in err
    code, _, err = run_cli(capsys, "eval", "sideways", labelled_dir)
    assert code == 2
