"""The HTTP API through FastAPI's TestClient (real index, real model, real files), its security
cases (auth, traversal, upload limits), and a loopback load test against a real uvicorn."""

from __future__ import annotations

import io
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from visdex import open_index
from visdex.errors import MissingDependency
from visdex.server import create_app

from clihelp import run_cli
from imagefactory import write_bad_files
from serverhelp import LiveServer, index_gallery, local_client, until_ready

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, tiny_clip) -> tuple[Path, dict[str, Path]]:
    """An index (tiny CLIP) of the gallery: real photos, an exact copy, a near copy, a rotated photo."""
    return index_gallery(tmp_path_factory.mktemp("served"), tiny_clip)


@pytest.fixture(scope="module")
def client(gallery):
    with local_client(create_app(gallery[0])) as c:
        yield c


@pytest.fixture(scope="module")
def ids(client) -> dict[str, int]:
    """photo name -> indexed id."""
    hits = client.get("/api/search", params={"q": "a photo", "k": 100}).json()["results"]
    return {Path(h["path"]).stem: h["id"] for h in hits}


def _jpeg(path: Path) -> bytes:
    return path.read_bytes()


def _error(r, status: int, field: str | None = None) -> str:
    """Every error has the one shape {"error": message, "status": code, "field": name or null}; a bad value of a
    request field is a 422 that names the field."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "status", "field"} and body["status"] == status and body["error"]
    if field is not None:
        assert body["field"] == field, body
    return body["error"]


# -- search -------------------------------------------------------------------------------
def test_text_search_returns_ranked_hits_with_file_links(client, gallery):
    r = client.get("/api/search", params={"q": "a cat", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 5 and len(body["results"]) == 5 and body["took_ms"] >= 0
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    h = body["results"][0]
    assert h["thumb"] == f"api/files/{h['id']}/thumb" and h["original"] == f"api/files/{h['id']}/original"
    assert Path(h["path"]).parent == gallery[1]["chelsea"].parent and h["name"] == Path(h["path"]).name
    with open_index(gallery[0]) as ix:  # the server adds nothing of its own: the library's ranking
        assert [x["id"] for x in body["results"]] == [x.id for x in ix.search("a cat", k=5)]


def test_upload_search_finds_the_same_photo(client, gallery):
    data = _jpeg(gallery[1]["rocket"])
    r = client.post("/api/search", files={"image": ("query.jpg", data, "image/jpeg")}, data={"k": "3"})
    top = r.json()["results"][0]
    assert r.status_code == 200 and Path(top["path"]).name == "rocket.jpg" and top["score"] > 0.999


def test_indexed_id_search_is_more_like_this(client, ids):
    chelsea = ids["chelsea"]
    by_id = client.get("/api/search", params={"id": chelsea, "k": 4}).json()["results"]
    similar = client.get(f"/api/similar/{chelsea}", params={"k": 4}).json()["results"]
    assert [h["id"] for h in by_id] == [h["id"] for h in similar]
    assert chelsea not in [h["id"] for h in by_id]
    assert by_id[0]["id"] == ids["chelsea-copy"] and by_id[0]["score"] > 0.999  # its exact copy


def test_composed_query_with_weights_and_negatives_matches_the_library(client, gallery, ids):
    path = gallery[1]["coffee"]
    q = "+ 2:red - dog"
    api = client.get("/api/search", params={"id": ids["coffee"], "q": q, "k": 5}).json()["results"]
    plain = client.get("/api/search", params={"id": ids["coffee"], "k": 5}).json()["results"]
    with open_index(gallery[0]) as ix:
        lib = [h for h in ix.search(f"{path} {q}", k=6) if h.id != ids["coffee"]][:5]
    assert [h["id"] for h in api] == [h.id for h in lib]
    assert [round(h["score"], 4) for h in api] == [round(h.score, 4) for h in lib]
    assert [h["score"] for h in api] != [h["score"] for h in plain]  # the text terms did something
    upload = client.post(
        "/api/search", files={"image": ("q.jpg", _jpeg(path), "image/jpeg")}, data={"q": q, "k": "6"}
    ).json()["results"]
    # the upload is embedded afresh (the index embedded a draft-decoded copy): the same ranking, scores within 0.01
    got = [h for h in upload if h["id"] != ids["coffee"]][:5]
    assert [h["id"] for h in got] == [h.id for h in lib]
    assert np.allclose([h["score"] for h in got], [h.score for h in lib], atol=0.01)


def test_text_only_composed_query(client, gallery):
    r = client.get("/api/search", params={"q": '"2:a cat" - dog', "k": 3})
    with open_index(gallery[0]) as ix:
        assert [h["id"] for h in r.json()["results"]] == [h.id for h in ix.search('"2:a cat" - dog', k=3)]


def test_crop_region_changes_the_query(client, gallery, ids):
    whole = client.get("/api/search", params={"id": ids["astronaut"], "k": 3}).json()["results"]
    crop = client.get("/api/search", params={"id": ids["astronaut"], "crop": "0,0,0.5,0.5", "k": 3}).json()["results"]
    with open_index(gallery[0]) as ix:
        lib = [h for h in ix.search(str(gallery[1]["astronaut"]), k=4, crop="0,0,0.5,0.5") if h.id != ids["astronaut"]]
    assert [h["score"] for h in crop] != [h["score"] for h in whole]
    assert [round(h["score"], 4) for h in crop] == [round(h.score, 4) for h in lib[:3]]
    data = _jpeg(gallery[1]["astronaut"])
    up = client.post("/api/search", files={"image": ("a.jpg", data, "image/jpeg")}, data={"crop": "0,0,0.5,0.5"})
    with open_index(gallery[0]) as ix:
        lib = ix.search(str(gallery[1]["astronaut"]), k=3, crop="0,0,0.5,0.5")
    assert [(h["id"], round(h["score"], 4)) for h in up.json()["results"][:3]] == [
        (h.id, round(h.score, 4)) for h in lib
    ]
    whole_up = client.post("/api/search", files={"image": ("a.jpg", data, "image/jpeg")}).json()["results"]
    assert whole_up[0]["score"] > 0.999 > lib[0].score  # the region, not the whole photo
    outside = _error(client.get("/api/search", params={"id": ids["astronaut"], "crop": "900,900,50,50"}), 422, "crop")
    assert "outside" in outside and "Crop(" not in outside
    assert "needs an image" in _error(client.get("/api/search", params={"q": "cat", "crop": "0,0,.5,.5"}), 422, "crop")


def test_filters_k_and_cutoffs(client):
    r = client.get("/api/search", params={"q": "a photo", "where": "name ~ 'c*'", "k": 50}).json()["results"]
    assert r and all(h["name"].startswith("c") for h in r)
    assert client.get("/api/search", params={"q": "a photo", "k": 2}).json()["count"] == 2
    top = client.get("/api/search", params={"q": "a photo", "k": 50, "within": 0}).json()["results"]
    assert all(h["score"] == top[0]["score"] for h in top)
    best = top[0]["score"]
    high = client.get("/api/search", params={"q": "a photo", "min_score": best + 1e-3}).json()
    assert high["count"] == 0
    where = _error(client.get("/api/search", params={"q": "x", "where": "colour = red"}), 422, "where")
    assert "colour" in where
    _error(client.get("/api/search", params={"q": "x", "k": 0}), 422, "k")
    _error(client.get("/api/search", params={"q": "x", "within": -1}), 422, "within")
    assert "empty query" in _error(client.get("/api/search"), 422, "q")
    assert "not both" in _error(
        client.post("/api/search", files={"image": ("a.jpg", b"x", "image/jpeg")}, data={"id": "1"}), 422, "id"
    )


# -- analyses and tags --------------------------------------------------------------------
def test_duplicates_groups_mark_the_keeper(client, ids):
    r = client.get("/api/duplicates", params={"exact_only": True})
    groups = r.json()["groups"]
    assert r.status_code == 200 and len(groups) == 1
    g = groups[0]
    assert g["kind"] == "exact" and {m["id"] for m in g["members"]} == {ids["chelsea"], ids["chelsea-copy"]}
    assert g["keeper_id"] in {m["id"] for m in g["members"]}
    assert all(m["thumb"] == f"api/files/{m['id']}/thumb" for m in g["members"])
    assert client.get("/api/duplicates").status_code == 200


def test_clusters_and_map(client, gallery):
    n = len(gallery[1])
    clusters = client.get("/api/clusters", params={"k": 3}).json()
    assert clusters["count"] == 3 and sum(c["size"] for c in clusters["clusters"]) == n
    m = client.get("/api/map", params={"method": "pca"}).json()
    assert m["count"] == n and m["method"] == "pca"
    xy = np.array([[p["x"], p["y"]] for p in m["points"]])
    assert (
        xy.min() >= 0
        and xy.max() <= 1
        and {p["thumb"] for p in m["points"]} >= {f"api/files/{m['points'][0]['id']}/thumb"}
    )
    _error(client.get("/api/map", params={"method": "magic"}), 422, "method")
    too_many = _error(client.get("/api/clusters", params={"k": 10_000}), 422, "k")
    assert "-k" not in too_many


def test_zero_shot_tags_then_filter_by_tag(client, ids):
    r = client.post("/api/tags", json={"labels": ["cat", "rocket", "coffee"], "top": 1})
    assert r.status_code == 200 and r.json()["images"] == len(ids)
    counts = {t["label"]: t["count"] for t in client.get("/api/tags").json()["tags"]}
    assert sum(counts.values()) == len(ids)
    label = max(counts, key=counts.get)
    hits = client.get("/api/search", params={"q": "a photo", "where": f"tag = {label}", "k": 50}).json()["results"]
    assert len(hits) == counts[label] and all(label in h["tags"] for h in hits)
    item = client.get(f"/api/items/{hits[0]['id']}").json()
    assert item["tags"][0]["label"] == label and item["width"] > 0
    assert "two different labels" in _error(client.post("/api/tags", json={"labels": ["cat", " cat"]}), 422, "labels")
    _error(client.post("/api/tags", json={"labels": "cat"}), 422, "labels")


def test_status(client, gallery):
    st = client.get("/api/status").json()
    assert st["files_ok"] == len(gallery[1]) and st["vectors"] == len(gallery[1]) and st["server"]["auth"] is False


# -- files --------------------------------------------------------------------------------
def test_thumbnails_are_cached_rotated_and_sized(client, gallery, ids):
    r = client.get(f"/api/files/{ids['rotated']}/thumb", params={"size": 128})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content)).convert("RGB")
    assert img.size == (80, 128)  # stored 320x200, EXIF orientation 6: shown portrait
    red = np.asarray(img)[:10, -10:].mean(axis=(0, 1))
    assert red[0] > 180 and red[1] < 90  # the red corner is top-right once rotated
    cached = list((gallery[0] / "thumbs" / "128").glob("*.jpg"))
    assert len(cached) == 1
    assert client.get(f"/api/files/{ids['rotated']}/thumb", params={"size": 128}).content == cached[0].read_bytes()
    webp = client.get(f"/api/files/{ids['coffee']}/thumb", params={"format": "webp"})
    assert webp.headers["content-type"] == "image/webp" and max(Image.open(io.BytesIO(webp.content)).size) == 256
    assert "size" in _error(client.get(f"/api/files/{ids['coffee']}/thumb", params={"size": 100}), 422, "size")


def test_originals_are_the_indexed_files(client, gallery, ids):
    r = client.get(f"/api/files/{ids['coffee']}/original")
    assert r.status_code == 200 and r.content == gallery[1]["coffee"].read_bytes()
    assert r.headers["content-type"] == "image/jpeg" and r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "url",
    [
        "/api/similar/99999",
        "/api/items/99999",
        "/api/files/99999/thumb",
        "/api/files/99999/original",
        "/api/search?id=99999",
        "/api/search?id=99999&q=red",
    ],
)
def test_unknown_ids_are_404(client, url):
    assert "99999" in _error(client.get(url), 404)


@pytest.mark.parametrize(
    "url",
    [
        "/api/files/..%2F..%2F..%2Fetc%2Fpasswd/original",
        "/api/files/../../../etc/passwd",
        "/api/files/1/../../../../etc/passwd",
        "/api/files/-1/original",
        "/api/files/1%2F..%2F2/thumb",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/similar/..%2F..%2Fetc%2Fpasswd",
    ],
)
def test_traversal_attempts_never_leave_the_index(client, url):
    r = client.get(url)
    assert r.status_code in (404, 422, 400) and b"root:" not in r.content
    _error(r, r.status_code)


def test_paths_in_queries_are_refused_whether_or_not_they_exist(client, gallery):
    real = str(gallery[1]["coffee"])  # exists on the server
    answers = set()
    for q in (real, "/etc/passwd.jpg", "../../../etc/shadow.png", f"a cat + {real}", f"2:{real}"):
        answers.add(_error(client.get("/api/search", params={"q": q}), 422, "q"))
    answers.add(_error(client.get("/api/search", params={"id": 1, "q": f"+ {real}"}), 422, "q"))
    assert len(answers) == 1 and "not accepted over HTTP" in answers.pop()  # one answer: no existence oracle
    ok = client.get(f"/api/files/1/original?path=../../../etc/passwd&file={real}")
    assert ok.status_code == 200 and b"root:" not in ok.content  # extra params are ignored: ids only


# -- uploads ------------------------------------------------------------------------------
def test_non_images_and_broken_uploads_are_422(client, tmp_path):
    bad = write_bad_files(tmp_path)
    for kind in ("empty", "truncated_jpeg", "random_bytes", "text_as_jpg", "corrupt_png"):
        r = client.post("/api/search", files={"image": (bad[kind].name, bad[kind].read_bytes(), "image/jpeg")})
        _error(r, 422, "image")
    r = client.post("/api/search", files={"image": ("x.pdf", b"%PDF-1.4 not an image", "application/pdf")})
    assert "not an image" in _error(r, 422, "image")
    ok = client.post("/api/search", files={"image": ("m.jpg", bad["mislabelled_png"].read_bytes(), "image/jpeg")})
    assert ok.status_code == 200  # recognised by content, not by name


def test_upload_limits_are_413(gallery, tmp_path):
    data = gallery[1]["coffee"].read_bytes()  # ~70 kB, 600x400
    with local_client(create_app(gallery[0], max_upload_bytes=20_000, max_upload_pixels=100_000)) as c:
        assert "MiB" in _error(c.post("/api/search", files={"image": ("c.jpg", data, "image/jpeg")}), 413)

        def chunks():  # no Content-Length: the body is counted as it arrives
            for i in range(0, len(data), 4096):
                yield data[i : i + 4096]

        _error(
            c.post("/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}), 413
        )
        small = gallery[1]["coffee-small"].read_bytes()  # 12 kB but 300x200 = 60,000 px: fits both
        assert c.post("/api/search", files={"image": ("s.jpg", small, "image/jpeg")}).status_code == 200
        big = io.BytesIO()
        Image.new("RGB", (1000, 1000), (200, 30, 30)).save(big, "PNG")  # ~4 kB, 1e6 pixels
        msg = _error(c.post("/api/search", files={"image": ("big.png", big.getvalue(), "image/png")}), 413, "image")
        assert "1000x1000" in msg and "100,000" in msg
    bomb = write_bad_files(tmp_path)["bomb"].read_bytes()  # 110 kB declaring 900 megapixels
    with local_client(create_app(gallery[0])) as c:
        _error(c.post("/api/search", files={"image": ("bomb.png", bomb, "image/png")}), 413)


# -- errors, auth, start-up ---------------------------------------------------------------
def test_every_error_has_one_shape(client):
    _error(client.get("/api/nowhere"), 404)
    _error(client.delete("/api/search"), 405)
    _error(client.get("/api/similar/abc"), 422)
    _error(client.post("/api/tags", content=b"{not json", headers={"content-type": "application/json"}), 422)


def test_token_auth_on_every_endpoint(gallery, ids):
    with local_client(create_app(gallery[0], token=TOKEN)) as c:
        urls = [
            "/api/status",
            "/api/search?q=cat",
            "/api/similar/1",
            "/api/items/1",
            "/api/duplicates",
            "/api/clusters",
            "/api/map?method=pca",
            "/api/tags",
            "/api/files/1/thumb",
            "/api/files/1/original",
        ]
        for url in urls:
            r = c.get(url)
            assert "token" in _error(r, 401) and r.headers["www-authenticate"] == "Bearer"
            _error(c.get(url, headers={"Authorization": "Bearer wrong"}), 401)
            _error(c.get(url, headers={"Authorization": "Basic " + TOKEN}), 401)
            assert c.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, url
        _error(c.post("/api/search", files={"image": ("a.jpg", b"x", "image/jpeg")}), 401)
        _error(c.post("/api/tags", json={"labels": ["a", "b"]}), 401)
        # <img> tags cannot send headers: files accept ?token=, nothing else does
        assert c.get("/api/files/1/thumb", params={"token": TOKEN}).status_code == 200
        assert c.get("/api/files/1/original", params={"token": TOKEN}).status_code == 200
        _error(c.get("/api/files/1/thumb", params={"token": "wrong"}), 401)
        _error(c.get("/api/search", params={"q": "cat", "token": TOKEN}), 401)
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200  # the UI asks for it
        assert c.get("/openapi.json").json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert c.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).json()["server"]["auth"] is True


def test_model_is_loaded_at_start_up_and_docs_are_served(gallery):
    app = create_app(gallery[0])
    assert app.state.served.ix._embedder is None
    with local_client(app) as c:
        assert app.state.served.ix._embedder is not None  # before any request: no cold first query
        assert c.get("/docs").status_code == 200
        paths = c.get("/openapi.json").json()["paths"]
        for p in (
            "/api/search",
            "/api/similar/{item_id}",
            "/api/duplicates",
            "/api/clusters",
            "/api/map",
            "/api/tags",
            "/api/status",
            "/api/files/{item_id}/thumb",
            "/api/files/{item_id}/original",
        ):
            assert p in paths
        ui = c.get("/")
        assert (
            "text/html" in ui.headers["content-type"] and "default-src 'self'" in ui.headers["content-security-policy"]
        )


def test_missing_index_fails_at_creation(tmp_path):
    from visdex.errors import IndexNotFound

    with pytest.raises(IndexNotFound):
        create_app(tmp_path / "nothing-here")


def test_changes_by_another_process_are_picked_up(tmp_path, tiny_clip, photos):
    folder = tmp_path / "p"
    folder.mkdir()
    shutil.copy(photos["coffee"], folder)
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder], workers=1)
    with local_client(create_app(tmp_path / "ix")) as c:
        assert c.get("/api/status").json()["files_ok"] == 1
        shutil.copy(photos["rocket"], folder)
        with open_index(tmp_path / "ix") as other:  # e.g. `visdex index` running while serving
            other.add([folder], workers=1)
        hits = c.get("/api/search", params={"q": "a photo", "k": 10}).json()["results"]
        assert {Path(h["path"]).name for h in hits} == {"coffee.jpg", "rocket.jpg"}


def test_an_empty_index_is_served_until_it_gets_its_first_images(tmp_path, tiny_clip, photos):
    open_index(tmp_path / "ix", model=str(tiny_clip)).close()  # created, nothing indexed yet
    with local_client(create_app(tmp_path / "ix")) as c:
        assert c.get("/api/status").json()["files_ok"] == 0
        assert c.get("/api/search", params={"q": "a photo"}).json()["count"] == 0  # no model loaded for nothing
        with open_index(tmp_path / "ix", model=str(tiny_clip)) as other:
            other.add([photos["moon"]], workers=1)
        hits = c.get("/api/search", params={"q": "a photo"}).json()["results"]
        assert [Path(h["path"]).name for h in hits] == ["moon.jpg"]


def test_a_catalog_index_serves_items(tmp_path, tiny_clip, photos):
    (tmp_path / "img").mkdir()
    rows = ["sku,images,title,color"]
    for sku, photo in (("mug", "coffee"), ("poster", "rocket")):
        shutil.copy(photos[photo], tmp_path / "img" / f"{sku}.jpg")
        rows.append(f"{sku},img/{sku}.jpg,{photo} item,red")
    (tmp_path / "items.csv").write_text("\n".join(rows) + "\n")
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add_catalog(tmp_path / "items.csv")
    with local_client(create_app(tmp_path / "ix")) as c:
        hits = c.get("/api/search", params={"q": "a photo", "where": "color = red"}).json()["results"]
        assert {h["key"]: h["name"] for h in hits} == {"mug": "coffee item", "poster": "rocket item"}
        mug = next(h for h in hits if h["key"] == "mug")
        assert c.get("/" + mug["original"]).content == photos["coffee"].read_bytes()
        assert c.get("/" + mug["thumb"]).headers["content-type"] == "image/jpeg"
        assert c.get(f"/api/items/{mug['id']}").json()["key"] == "mug"
        assert c.get(f"/api/similar/{mug['id']}").json()["results"][0]["key"] == "poster"
        assert "catalog" in _error(c.get("/api/duplicates"), 400)  # a fine request this index cannot answer


def test_missing_server_extra_names_it(monkeypatch):
    from visdex.server import require_fastapi

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if `pip install visdex` without [server]
    with pytest.raises(MissingDependency, match=r"visdex\[server\]"):
        require_fastapi()


def test_serve_warns_without_token_on_a_public_address(capsys, tmp_path, monkeypatch):
    from visdex.commands.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    # a missing index stops it before anything is bound; the warning comes first
    code, _, err = run_cli(capsys, "serve", "--index", tmp_path / "none", "--host", "0.0.0.0")
    assert code == 2 and "without a token" in err and "no index at" in err
    code, _, err = run_cli(capsys, "serve", "--index", tmp_path / "none", "--host", "0.0.0.0", "--token", "t")
    assert code == 2 and "without a token" not in err
    monkeypatch.setenv("VISDEX_TOKEN", "from-env")
    code, _, err = run_cli(capsys, "serve", "--index", tmp_path / "none", "--host", "0.0.0.0")
    assert code == 2 and "without a token" not in err


# -- load ---------------------------------------------------------------------------------
ANALYSES = ("/api/map?method=pca", "/api/duplicates", "/api/clusters?k=2")


def test_load_16_concurrent_clients_zero_errors(gallery, ids):
    """At least 200 mixed requests from 16 threads against a real uvicorn on 127.0.0.1; bounded, no retries.
    Searches, file lookups and analyses each use their own connection: this is where they meet. An analysis
    may answer 202 "computing" (its documented answer while the low-priority worker is busy: on a loaded
    machine it can take minutes); each must then be ready, 200, once the load is over."""
    upload = gallery[1]["coffee-small"].read_bytes()
    id_list = sorted(ids.values())
    requests = []
    for i in range(240):
        kind = i % 9
        item = id_list[i % len(id_list)]
        requests.append(
            [("GET", "/api/search", {"params": {"q": ["a cat", "red", "2:sunset - dog"][i % 3], "k": 10}}),
             ("GET", "/api/search", {"params": {"id": item, "q": "+ night", "k": 5}}),
             ("GET", f"/api/similar/{item}", {"params": {"where": "width > 100"}}),
             ("POST", "/api/search", {"files": {"image": ("q.jpg", upload, "image/jpeg")}, "data": {"k": "5"}}),
             ("GET", f"/api/files/{item}/thumb", {"params": {"size": 64}}),
             ("GET", f"/api/files/{item}/original", {}),
             ("GET", f"/api/items/{item}", {}),
             ("GET", ANALYSES[i % 3], {}),
             ("GET", "/api/status", {})][kind])  # fmt: skip
    statuses: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()

    def worker(chunk):
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for method, url, kw in chunk:
                try:
                    r = http.request(method, url, **kw)
                    with lock:
                        statuses.append(r.status_code)
                        if r.status_code == 202 and url in ANALYSES and r.json()["status"] == "computing":
                            continue
                        if r.status_code != 200:
                            failures.append(f"{method} {url}: {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    with lock:
                        failures.append(f"{method} {url}: {e!r}")

    with LiveServer(create_app(gallery[0])) as server:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(requests[i::16],)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        elapsed = time.perf_counter() - t0
        with httpx.Client(base_url=server.url, timeout=60) as http:
            ready = {url: until_ready(http, url, timeout=600).status_code for url in ANALYSES}
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures[:5]
    assert len(statuses) == 240 and set(statuses) <= {200, 202}
    assert ready == dict.fromkeys(ANALYSES, 200), ready
    print(f"\n240 mixed requests, 16 clients: {elapsed:.2f}s, {240 / elapsed:.0f} req/s")
