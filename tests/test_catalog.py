"""Catalogs: items with several images, pooled vectors, results are items, incremental updates."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from visdex import open_index
from visdex.catalog import read_catalog
from visdex.errors import BadQuery
from visdex.models.base import l2_normalize

from clihelp import run_cli
from imagefactory import real_photos, write_bad_files, write_photo

PRODUCTS = {"cat": "chelsea", "mug": "coffee", "launch": "rocket", "suit": "astronaut"}
TITLES = {"cat": "tabby kitten plush", "mug": "espresso cup", "launch": "rocket poster", "suit": "space suit"}
COLORS = {"cat": "orange", "mug": "red", "launch": "blue", "suit": "white"}


def _variants(arr: np.ndarray, n: int = 3) -> list[np.ndarray]:
    h, w = arr.shape[:2]
    return [arr, np.ascontiguousarray(arr[h // 10 :, : w - w // 8]), np.ascontiguousarray(arr[::2, ::2])][:n]


@pytest.fixture
def shop(tmp_path):
    d = tmp_path / "shop"
    (d / "img").mkdir(parents=True)
    photos = real_photos()
    rows = []
    for key, photo in PRODUCTS.items():
        paths = [write_photo(d / "img", f"{key}-{i}", a) for i, a in enumerate(_variants(photos[photo]))]
        rows.append({"sku": key, "images": "|".join(f"img/{p.name}" for p in paths), "title": TITLES[key],
                     "color": COLORS[key]})  # fmt: skip
    with open(d / "items.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["sku", "images", "title", "color"])
        w.writeheader()
        w.writerows(rows)
    return d


def test_items_are_found_by_text_and_image(tmp_path, shop):
    with open_index(tmp_path / "ix", model="lite0-minilm") as ix:
        report = ix.add_catalog(shop / "items.csv")
        assert (report.new, report.failed, report.images) == (4, 0, 12)
        hits = ix.search("kitten", k=2)
        assert hits[0].key == "cat" and hits[0].title == "tabby kitten plush"
        assert hits[0].attrs == {"color": "orange"} and len(hits[0].images) == 3
        query = write_photo(tmp_path, "q", np.ascontiguousarray(real_photos()["coffee"][50:350, 100:500]), quality=50)
        assert ix.search(str(query), k=1)[0].key == "mug"
        assert ix.status().items_ok == 4


def test_item_vector_is_the_normalised_mean_of_its_images(tmp_path, shop):
    with open_index(tmp_path / "ix", model="effnet-lite0") as ix:
        ix.add_catalog(shop / "items.csv")
        item_id = ix.db.conn.execute("SELECT id FROM items WHERE key = 'mug'").fetchone()[0]
        stored = ix.store.get([item_id])[0]
        row = next(r for r in read_catalog(shop / "items.csv") if r.key == "mug")
        singles = np.stack([ix.query_vector(p) for p in row.images])
    np.testing.assert_allclose(stored, l2_normalize(singles.mean(0))[0], atol=2e-3)


def test_text_weight_blends_the_title(tmp_path, shop):
    with open_index(tmp_path / "a", model="lite0-minilm") as a, open_index(tmp_path / "b", model="lite0-minilm") as b:
        a.add_catalog(shop / "items.csv")
        b.add_catalog(shop / "items.csv", text_weight=0.5)
        ida = a.db.conn.execute("SELECT id FROM items WHERE key = 'launch'").fetchone()[0]
        idb = b.db.conn.execute("SELECT id FROM items WHERE key = 'launch'").fetchone()[0]
        img, blended = a.store.get([ida])[0], b.store.get([idb])[0]
        text = b.embedder.embed_texts(["rocket poster"])[0]
    np.testing.assert_allclose(blended, l2_normalize(0.5 * img + 0.5 * text)[0], atol=1e-4)


def test_rerun_updates_only_changed_items(tmp_path, shop):
    with open_index(tmp_path / "ix", model="effnet-lite0") as ix:
        ix.add_catalog(shop / "items.csv")
    with open(shop / "items.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows = [r for r in rows if r["sku"] != "suit"]  # removed
    rows[0]["title"] = "new title"  # changed row
    write_photo(shop / "img", "mug-0", real_photos()["camera"])  # changed image file
    with open(shop / "items.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["sku", "images", "title", "color"])
        w.writeheader()
        w.writerows(rows)
    with open_index(tmp_path / "ix") as ix:
        r = ix.add_catalog(shop / "items.csv")
        assert (r.new, r.updated, r.removed, r.unchanged) == (0, 2, 1, 1)
        assert r.images == 6  # only the two changed items' images were embedded
        assert ix.store.count() == 3
        again = ix.add_catalog(shop / "items.csv")
    assert (again.updated, again.unchanged, again.images) == (0, 3, 0)


def test_jsonl_list_column_and_bad_images(tmp_path):
    d = tmp_path / "cat"
    d.mkdir()
    bad = write_bad_files(d)
    good = write_photo(d, "ok", real_photos()["coffee"])
    lines = [
        {"id": "a", "images": [good.name, bad["truncated_jpeg"].name], "title": "cup", "brand": "acme"},
        {"id": "b", "images": [bad["empty"].name], "title": "nothing readable"},
    ]
    (d / "items.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    with open_index(tmp_path / "ix", model="effnet-lite0") as ix:
        r = ix.add_catalog(d / "items.jsonl")
        assert (r.new, r.failed) == (1, 1)
        assert r.failures[0][0] == "b" and "empty" in r.failures[0][1]
        assert ix.store.count() == 1
        hit = ix.search(str(good), k=5)[0]
        assert hit.key == "a" and hit.attrs == {"brand": "acme"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("name,images\nx,a.jpg\n", "id column"),
        ("id,title\nx,hello\n", "image column"),
        ("id,image\nx,a.jpg\nx,b.jpg\n", "duplicate id"),
        ("id,image\n,a.jpg\n", "empty"),
    ],
)
def test_bad_catalogs_are_clear_errors(tmp_path, content, message):
    p = tmp_path / "c.csv"
    p.write_text(content)
    with pytest.raises(BadQuery, match=message):
        read_catalog(p)


def test_folder_and_catalog_do_not_mix(tmp_path, shop, tiny_clip):
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add_catalog(shop / "items.csv")
        with pytest.raises(BadQuery, match="catalog"):
            ix.add([shop / "img"])


def test_cli_catalog(capsys, tmp_path, shop):
    code, out, err = run_cli(capsys, "index", "--catalog", shop / "items.csv", "--index", tmp_path / "ix",
                             "--model", "lite0-minilm", "--text-weight", "0.2", "-q")  # fmt: skip
    assert code == 0, err
    assert "4 new" in out
    code, out, err = run_cli(capsys, "search", "kitten", "--index", tmp_path / "ix", "-n", "1", "--json")
    row = json.loads(out)
    assert code == 0 and row["key"] == "cat" and row["title"] == "tabby kitten plush"
