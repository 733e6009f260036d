"""``visdex finetune pca``: fewer dimensions without labels, as a model directory that indexes and
searches (images and text) like any model, fitted on a folder or on an index's own vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from visdex.api import open_index
from visdex.errors import ModelMismatch
from visdex.models import load_embedder
from visdex.models.base import l2_normalize
from visdex.models.head import HeadEmbedder
from visdex.train.common import TrainSetupError
from visdex.train.pca import fit_pca, neighbour_recall

from clihelp import run_cli
from imagefactory import real_photos


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """150 images: random crops of the scikit-image photos, so they share structure like a real folder."""
    folder = tmp_path_factory.mktemp("pca-photos")
    rng = np.random.default_rng(0)
    photos = [p if p.ndim == 3 else np.stack([p] * 3, -1) for p in real_photos().values()]
    for i in range(150):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        s = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        Image.fromarray(p[y : y + s, x : x + s, :3]).convert("RGB").resize((48, 48)).save(folder / f"c{i:03d}.jpg")
    return folder


def test_pca_model_projects_images_and_texts(tmp_path, crops, tiny_clip):
    out = tmp_path / "pca4"
    r = fit_pca(str(tiny_clip), crops, out, dim=4, seed=0)
    assert (r.in_dim, r.dim, r.fitted_on + r.heldout) == (16, 4, 150) and 0 < r.variance_kept < 1
    assert 0 <= r.neighbour_recall_at_10 <= 1
    emb, base = load_embedder(str(out)), load_embedder(str(tiny_clip))
    assert isinstance(emb, HeadEmbedder) and emb.dim == 4 and emb.supports_text
    images = [Image.open(p).convert("RGB") for p in sorted(crops.glob("*.jpg"))[:5]]
    want = l2_normalize(base.embed_images(images) @ emb.proj.T + emb.bias)
    np.testing.assert_allclose(emb.embed_images(images), want, atol=1e-5)
    texts = emb.embed_texts(["a cat", "space at night"])
    assert texts.shape == (2, 4) and np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    # the bias centres the data: the fitted images' mean projects to ~0
    mean_proj = base.embed_images(images).mean(0) @ emb.proj.T + emb.bias
    assert np.linalg.norm(mean_proj) < np.linalg.norm(base.embed_images(images).mean(0) @ emb.proj.T)
    assert emb.fingerprint().revision != base.fingerprint().revision and emb.fingerprint().dim == 4
    # an index built with it searches by text and by image, and refuses the base model
    with open_index(tmp_path / "ix", model=str(out)) as ix:
        ix.add([crops])
        assert len(ix) == 150 and len(ix.search("a cat", k=3)) == 3
    with pytest.raises(ModelMismatch, match="--rebuild"):
        open_index(tmp_path / "ix", model=str(tiny_clip))


def test_more_dimensions_keep_more(tmp_path, crops, tiny_clip):
    small = fit_pca(str(tiny_clip), crops, tmp_path / "p2", dim=2)
    large = fit_pca(str(tiny_clip), crops, tmp_path / "p12", dim=12)
    assert small.variance_kept < large.variance_kept
    assert small.neighbour_recall_at_10 < large.neighbour_recall_at_10


def test_fit_on_an_index_reads_its_vectors(tmp_path, crops, tiny_clip, tiny_dinov2):
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([crops])
    r = fit_pca(str(tiny_clip), tmp_path / "ix", tmp_path / "p", dim=4)
    assert r.fitted_on + r.heldout == 150 and r.failed == 0
    with pytest.raises(ModelMismatch, match="fit on a folder"):
        fit_pca(str(tiny_dinov2), tmp_path / "ix", tmp_path / "q", dim=4)


def test_bad_settings(tmp_path, crops, tiny_clip, photos):
    with pytest.raises(TrainSetupError, match="^dim must be"):
        fit_pca(str(tiny_clip), crops, tmp_path / "a", dim=16)
    few = tmp_path / "few"
    few.mkdir()
    for name, p in list(photos.items())[:3]:
        (few / f"{name}.jpg").write_bytes(p.read_bytes())
    with pytest.raises(TrainSetupError, match="too few"):
        fit_pca(str(tiny_clip), few, tmp_path / "b", dim=4)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("taken")
    with pytest.raises(TrainSetupError, match="not empty"):
        fit_pca(str(tiny_clip), crops, tmp_path / "full", dim=4)


def test_neighbour_recall_counts_shared_neighbours():
    x = l2_normalize(np.random.default_rng(1).normal(size=(300, 32)).astype(np.float32))
    assert neighbour_recall(x, x, np.arange(30)) == 1.0
    noise = l2_normalize(np.random.default_rng(2).normal(size=(300, 32)).astype(np.float32))
    assert neighbour_recall(x, noise, np.arange(30)) < 0.2


def test_cli(capsys, tmp_path, crops, tiny_clip):
    code, out, err = run_cli(capsys, "finetune", "pca", crops, "-m", tiny_clip, "-o", tmp_path / "p", "--dim", "4",
                             "-q")  # fmt: skip
    assert code == 0, err
    assert "variance kept" in out and "neighbours kept" in out and "visdex index PHOTOS --model" in out
    code, out, err = run_cli(capsys, "finetune", "pca", crops, "-m", tiny_clip, "-o", tmp_path / "j", "--dim", "4",
                             "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["dim"] == 4
    code, _, err = run_cli(capsys, "finetune", "pca", crops, "-m", tiny_clip, "-o", tmp_path / "k", "--loss", "ms")
    assert code == 2 and "--loss" in err
