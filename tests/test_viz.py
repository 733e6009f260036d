"""Clusters, the 2D map and the similarity matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from visdex import open_index
from visdex.cluster import cluster_index
from visdex.errors import BadQuery
from visdex.viz import project_2d, similarity_matrix

from clihelp import run_cli


@pytest.fixture(scope="module")
def ix(tmp_path_factory, photos):
    d = tmp_path_factory.mktemp("viz")
    index = open_index(d / "ix", model="lite0-minilm")
    index.add([next(iter(photos.values())).parent])
    yield index
    index.close()


def test_clusters_cover_everything_once(ix):
    clusters = cluster_index(ix, k=3)
    members = [i for c in clusters for i in c.member_ids]
    assert sorted(members) == sorted(ix.store.ids().tolist())
    assert [c.size for c in clusters] == sorted((c.size for c in clusters), reverse=True)
    for c in clusters:
        assert c.central[0][0] in c.member_ids and c.central == sorted(c.central, key=lambda t: -t[2])
    with pytest.raises(BadQuery):
        cluster_index(ix, k=0)


def test_projection_in_unit_square(ix):
    proj = project_2d(ix, "pca")
    assert proj.xy.shape == (len(ix.store.ids()), 2) and proj.xy.min() >= 0 and proj.xy.max() <= 1
    assert proj.method == "pca"
    with pytest.raises(BadQuery):
        project_2d(ix, "nope")


def test_map_png_html_and_coords(capsys, ix, tmp_path):
    code, out, err = run_cli(capsys, "map", "--index", ix.path, "--out", tmp_path / "m.png", "--method", "pca",
                             "--coords", tmp_path / "c.json")  # fmt: skip
    assert code == 0, err
    img = np.asarray(Image.open(tmp_path / "m.png").convert("L"))
    assert img.shape == (2048, 2048) and img.std() > 10  # thumbnails drawn, not a blank canvas
    coords = json.loads((tmp_path / "c.json").read_text())
    assert len(coords["points"]) == len(ix.store.ids())
    assert all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in coords["points"])
    code, _, err = run_cli(capsys, "map", "--index", ix.path, "--out", tmp_path / "m.html", "--method", "pca")
    page = (tmp_path / "m.html").read_text()
    assert code == 0 and page.count("data:image/jpeg;base64") == len(ix.store.ids())
    code, _, err = run_cli(capsys, "map", "--index", ix.path, "--out", tmp_path / "m.gif")
    assert code == 2


def test_matrix_is_symmetric_with_unit_diagonal(capsys, ix, photos, tmp_path):
    paths = [str(photos[n]) for n in ("chelsea", "coffee", "rocket")]
    labels, m = similarity_matrix(ix, paths)
    assert labels == ["chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-5)
    np.testing.assert_allclose(m, m.T, atol=1e-6)
    code, out, err = run_cli(capsys, "matrix", *paths, "--index", ix.path, "--out", tmp_path / "s.png", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["labels"] == labels and len(data["matrix"]) == 3
    assert Image.open(tmp_path / "s.png").size[0] > 3 * 72
