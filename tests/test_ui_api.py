"""The HTTP routes behind the library views: browse (newest first, pages by offset and cursor), facets,
search pages past the first and collapsed near-copies, one image's EXIF facts and duplicates."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from visdex import open_index
from visdex.server import create_app

from imagefactory import real_photos, write_photo
from serverhelp import local_client

# name -> (photo, subfolder, EXIF date or None, camera or None)
SHOTS = {
    "cat-2023": ("chelsea", "trip", "2023-05-20T10:00:00", ("Canon", "Canon EOS R5")),
    "rocket-2024": ("rocket", "trip", "2024-01-02T09:00:00", ("Canon", "Canon EOS R5")),
    "coffee-2022": ("coffee", "home", "2022-12-24T18:00:00", ("Apple", "iPhone 12")),
    "moon-old": ("moon", "home", None, None),
    "coins": ("coins", "home", None, None),
}


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("library")
    photos = real_photos()
    paths = {}
    for name, (photo, sub, date, cam) in SHOTS.items():
        (root / "photos" / sub).mkdir(parents=True, exist_ok=True)
        make, model = cam or (None, None)
        paths[name] = write_photo(root / "photos" / sub, name, photos[photo], exif_datetime=date, make=make,
                                  model=model)  # fmt: skip
    os.utime(paths["moon-old"], (1_500_000_000, 1_500_000_000))  # 2017: oldest
    os.utime(paths["coins"], (1_800_000_000, 1_800_000_000))  # 2027: newest of all by mtime
    for i in range(3):  # a burst: three exact copies of the cat
        paths[f"cat-copy{i}"] = root / "photos" / "trip" / f"cat-copy{i}.jpg"
        shutil.copy2(paths["cat-2023"], paths[f"cat-copy{i}"])
    with open_index(root / "ix", model="lite0-minilm") as ix:  # real vectors: distinct photos are not copies
        ix.add([root / "photos"], workers=1)
    return root / "ix", paths


@pytest.fixture(scope="module")
def client(library):
    with local_client(create_app(library[0])) as c:
        yield c


def _names(rows) -> list[str]:
    return [r["name"] for r in rows]


def test_browse_is_newest_first_by_taken_else_mtime(client):
    res = client.get("/api/browse", params={"limit": 100}).json()
    assert res["total"] == 8 and res["next_cursor"] is None and res["next_offset"] is None
    names = _names(res["items"])
    assert names[0] == "coins.jpg"  # mtime 2027, no EXIF date
    assert names.index("rocket-2024.jpg") < names.index("cat-2023.jpg") < names.index("coffee-2022.jpg")
    assert names[-1] == "moon-old.jpg"
    by_name = {r["name"]: r for r in res["items"]}
    assert by_name["cat-2023.jpg"]["date_source"] == "taken" and by_name["coins.jpg"]["date_source"] == "modified"
    assert by_name["coins.jpg"]["thumb"].endswith("/thumb")


def test_browse_pages_by_cursor_and_offset_cover_everything_once(client):
    everything = _names(client.get("/api/browse").json()["items"])
    seen, cursor = [], None
    while True:
        res = client.get("/api/browse", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        assert res["total"] == 8
        seen += _names(res["items"])
        cursor = res["next_cursor"]
        if cursor is None:
            break
    assert seen == everything
    page2 = client.get("/api/browse", params={"limit": 3, "offset": 3}).json()
    assert _names(page2["items"]) == everything[3:6] and page2["next_offset"] == 6
    assert client.get("/api/browse", params={"cursor": "nonsense"}).status_code == 422


def test_browse_and_facets_follow_the_filter(client):
    f = client.get("/api/facets").json()
    assert f["total"] == 8
    cams = {v["value"]: v for v in f["camera"]}
    assert cams["Canon EOS R5"]["count"] == 5 and cams["Apple iPhone 12"]["count"] == 1  # the cat's copies too
    assert [v["value"] for v in f["year"]] == ["2024", "2023", "2022"]
    assert {v["value"] for v in f["month"]} == {"2024-01", "2023-05", "2022-12"}
    assert {Path(v["value"]).name for v in f["folder"]} == {"trip", "home"}
    # a facet's clause is a filter the API takes as it is
    clause = cams["Apple iPhone 12"]["where"]
    assert _names(client.get("/api/browse", params={"where": clause}).json()["items"]) == ["coffee-2022.jpg"]
    home = next(v for v in f["folder"] if v["value"].endswith("home"))["where"]
    narrowed = client.get("/api/facets", params={"where": home}).json()
    assert narrowed["total"] == 3 and [v["value"] for v in narrowed["year"]] == ["2022"]
    bad = client.get("/api/browse", params={"where": "colour = red"})
    assert bad.status_code == 422 and bad.json()["field"] == "where"


def test_search_pages_past_the_first(client):
    everything = client.get("/api/search", params={"q": "a photo", "k": 100}).json()["results"]
    first = client.get("/api/search", params={"q": "a photo", "k": 3, "offset": 0, "collapse": False}).json()
    page = client.get("/api/search", params={"q": "a photo", "k": 3, "offset": 3}).json()
    assert page["offset"] == 3 and page["next_offset"] == 6 and page["total"] is None
    # (compared by score: the cat's exact copies tie, and ties may come in any order)
    assert [r["score"] for r in page["results"]] == [r["score"] for r in everything[3:6]]
    last = client.get("/api/search", params={"q": "a photo", "k": 3, "offset": 6}).json()
    assert last["count"] == 2 and last["next_offset"] is None and last["total"] == 8
    assert first["results"][0]["score"] == everything[0]["score"]


def test_collapse_shows_a_burst_of_copies_as_one_tile(client, library):
    res = client.get("/api/search", params={"q": "a cat", "k": 20, "collapse": True}).json()
    assert res["count"] == 5 and res["total"] == 5  # 8 files, the cat and its 3 copies in one tile
    cat = next(r for r in res["results"] if r["name"].startswith("cat"))
    assert len(cat["collapsed"]) == 3
    assert {m["name"] for m in cat["collapsed"]} | {cat["name"]} == {"cat-2023.jpg"} | {
        f"cat-copy{i}.jpg" for i in range(3)
    }
    assert all(not r["collapsed"] for r in res["results"] if r is not cat)
    assert res["collapse_threshold"] >= 0.9
    paged = client.get("/api/search", params={"q": "a cat", "k": 2, "collapse": True, "offset": 2}).json()
    assert [r["score"] for r in paged["results"]] == [r["score"] for r in res["results"][2:4]]


def test_exif_facts_of_one_image(client):
    rows = client.get("/api/browse").json()["items"]
    cat = next(r for r in rows if r["name"] == "cat-2023.jpg")
    facts = client.get(f"/api/items/{cat['id']}/exif").json()["facts"]
    assert facts["model"] == "Canon EOS R5" and facts["make"] == "Canon"
    assert facts["taken"] == "2023:05:20 10:00:00"
    coins = next(r for r in rows if r["name"] == "coins.jpg")
    assert client.get(f"/api/items/{coins['id']}/exif").json()["facts"] == {}
    assert client.get("/api/items/999999/exif").status_code == 404


def test_duplicates_of_one_image(client):
    rows = client.get("/api/browse").json()["items"]
    cat = next(r for r in rows if r["name"] == "cat-2023.jpg")
    res = client.get(f"/api/items/{cat['id']}/duplicates").json()
    assert sorted(_names(res["duplicates"])) == [f"cat-copy{i}.jpg" for i in range(3)]
    assert {d["kind"] for d in res["duplicates"]} == {"exact"}
    rocket = next(r for r in rows if r["name"] == "rocket-2024.jpg")
    assert client.get(f"/api/items/{rocket['id']}/duplicates").json()["count"] == 0


def test_folders_are_a_tree_whose_counts_are_what_a_click_shows(client, library):
    tree = client.get("/api/folders").json()
    root = tree["root"]
    assert tree["total"] == root["count"] == 8 and root["files"] == 0
    assert root["path"] == str(library[1]["coins"].parent.parent) and root["name"] == "photos"
    assert [(c["name"], c["count"], c["files"]) for c in root["children"]] == [("home", 3, 3), ("trip", 5, 5)]
    for node in [root, *root["children"]]:  # a node's clause selects it and what is below it: its count
        assert client.get("/api/browse", params={"where": node["where"]}).json()["total"] == node["count"]
    canon = client.get("/api/folders", params={"where": 'camera = "Canon EOS R5"'}).json()["root"]
    assert (canon["name"], canon["count"], canon["children"]) == ("trip", 5, [])  # the filter's folders only
    assert client.get("/api/folders", params={"where": "format = png"}).json() == {"total": 0, "root": None}
    bad = client.get("/api/folders", params={"where": "colour = red"})
    assert bad.status_code == 422 and bad.json()["field"] == "where"


def test_folder_tree_of_nested_and_odd_folders():
    from visdex.foldertree import build_tree

    root = build_tree([("/p/a", 2), ("/p/a/b/c", 3), ("/p/Z", 1), ("/p", 1)])
    assert (root.path, root.count, root.files) == ("/p", 7, 1)
    assert [c.name for c in root.children] == ["a", "Z"]  # by name, case-blind
    a = root.children[0]
    assert (a.count, a.files, a.children[0].name, a.children[0].count) == (5, 2, "b", 3)  # b: no files of its own
    assert build_tree([]) is None and build_tree([("/only", 4)]).to_dict()["where"] == 'folder = "/only"'
    assert build_tree([('/x/say "hi"', 1)]).where == 'folder = "/x/say \\"hi\\""'


def test_best_tags_give_each_tagged_image_one_colour(client, library):
    rows = {r["name"]: r["id"] for r in client.get("/api/browse").json()["items"]}
    assert client.get("/api/tags/best").json() == {"labels": [], "items": []}
    with open_index(library[0], create=False) as ix:
        ix.db.put_tags(rows["cat-2023.jpg"], [("cat", 0.9), ("pet", 0.5)])
        ix.db.put_tags(rows["coffee-2022.jpg"], [("cup", 0.7), ("pet", 0.1)])
        ix.db.put_tags(rows["cat-copy0.jpg"], [("cat", 0.8)])
    try:
        res = client.get("/api/tags/best").json()
        assert res["labels"] == [{"label": "cat", "count": 2}, {"label": "cup", "count": 1}]
        assert sorted(res["items"]) == sorted(
            [[rows["cat-2023.jpg"], 0], [rows["cat-copy0.jpg"], 0], [rows["coffee-2022.jpg"], 1]]
        )
    finally:
        with open_index(library[0], create=False) as ix:
            ix.db.delete_tags(["cat", "pet", "cup"])


def test_new_routes_are_in_openapi_with_response_schemas(client):
    spec = client.get("/openapi.json").json()
    paths = ("/api/browse", "/api/facets", "/api/items/{item_id}/exif", "/api/items/{item_id}/duplicates",
             "/api/folders", "/api/tags/best")  # fmt: skip
    for path in paths:
        ok = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert "$ref" in ok, path
    params = {p["name"] for p in spec["paths"]["/api/search"]["get"]["parameters"]}
    assert {"offset", "collapse"} <= params


def test_one_cluster_is_browsed_a_page_at_a_time(client):
    found = client.get("/api/clusters", params={"k": 2}).json()["clusters"]
    seen = []
    for c in found:
        res = client.get(f"/api/clusters/{c['id']}", params={"k": 2, "limit": 2}).json()
        assert res["total"] == c["size"]
        ids, cursor = [r["id"] for r in res["items"]], res["next_cursor"]
        while cursor:
            res = client.get(f"/api/clusters/{c['id']}", params={"k": 2, "limit": 2, "cursor": cursor}).json()
            ids += [r["id"] for r in res["items"]]
            cursor = res["next_cursor"]
        assert sorted(ids) == sorted(c["member_ids"])
        seen += ids
    assert len(seen) == len(set(seen)) == 8
    assert client.get("/api/clusters/7", params={"k": 2}).status_code == 404


def test_login_sets_an_httponly_strict_cookie_that_signs_requests_in(library):
    with local_client(create_app(library[0], token="s3cret")) as c:
        assert c.get("/api/status").status_code == 401
        assert c.post("/api/login", data={"token": "wrong"}).status_code == 401
        res = c.post("/api/login", data={"token": "s3cret"})
        assert res.status_code == 200 and res.json() == {"auth": True, "signed_in": True}
        set_cookie = res.headers["set-cookie"].lower()
        assert "visdex_token=s3cret" in set_cookie and "httponly" in set_cookie and "samesite=strict" in set_cookie
        assert c.get("/api/status").status_code == 200  # the cookie, no header
        first = c.get("/api/browse").json()["items"][0]
        assert c.get(f"/api/files/{first['id']}/thumb").status_code == 200  # no ?token= in image URLs
        assert c.post("/api/logout").json()["signed_in"] is False
        assert c.get("/api/status").status_code == 401


# -- no request to the new routes is a 500 ------------------------------------------------------------------
NEW_ROUTES = {
    "/api/browse": ["where", "offset", "cursor", "limit"],
    "/api/facets": ["where", "limit"],
    "/api/folders": ["where"],
    "/api/items/{id}/exif": [],
    "/api/items/{id}/duplicates": ["threshold"],
    "/api/clusters/{id}": ["k", "seed", "cursor", "limit"],
    "/api/search": ["q", "offset", "collapse", "k", "where"],
}


@pytest.mark.slow  # ~25 s: hypothesis, 25 requests a route
@pytest.mark.parametrize("route", sorted(NEW_ROUTES))
def test_fuzz_new_routes_never_500(client, route):
    from urllib.parse import quote

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from test_server_hardening import HUGE_IDS, NASTY, _error, _never_500

    names = NEW_ROUTES[route]

    @settings(max_examples=25, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(data=st.data())
    def check(data):
        params = data.draw(st.dictionaries(st.sampled_from(names), NASTY, max_size=len(names))) if names else {}
        url = route.format(id=quote(data.draw(NASTY), safe="")) if "{id}" in route else route
        _never_500(client.get(url, params=params))

    check()
    if "{id}" in route and "clusters" not in route:
        for big in HUGE_IDS:
            assert big in _error(client.get(route.format(id=big)), 404)
