"""The web UI in a real browser: Playwright driving Debian's Chromium (``apt-get install chromium``;
Playwright's own browser download is not used). One server, one index (the offline
``lite0-minilm`` model, so results are real) and one browser for the whole module.

Run only these: ``pytest -m browser tests/test_browser.py``. With ``VISDEX_SCREENSHOTS=1`` the
screenshots of each view are written to ``docs/screenshots/`` (otherwise to a temp dir).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pytest

from visdex import open_index
from visdex.server import create_app

from imagefactory import real_photos, write_photo
from serverhelp import LiveServer, make_gallery

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("VISDEX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]  # fmt: skip
DOCS_SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
TOKEN = "ui-token"
LABELS = ["cat", "rocket", "coffee", "moon", "person", "coins", "stars", "microscope"]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    if os.environ.get("VISDEX_SCREENSHOTS"):
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SHOTS
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """The real photos with known duplicates, plus two crops of each (a library worth a map), tagged."""
    root = tmp_path_factory.mktemp("ui")
    photos = make_gallery(root / "photos")
    for name, arr in real_photos().items():
        h, w = arr.shape[:2]
        photos[f"{name}-a"] = write_photo(root / "photos", f"{name}-detail-a", arr[: h * 3 // 5, : w * 3 // 5])
        photos[f"{name}-b"] = write_photo(root / "photos", f"{name}-detail-b", arr[h * 2 // 5 :, w * 2 // 5 :])
    with open_index(root / "ix", model="lite0-minilm") as ix:
        ix.add([root / "photos"], workers=1)
        from visdex.tags import tag_index

        tag_index(ix, LABELS, top=1)
    return root / "ix", photos


@pytest.fixture(scope="module")
def server(gallery):
    with LiveServer(create_app(gallery[0])) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set VISDEX_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _page(browser, errors: list, **context):
    ctx = browser.new_context(**({"viewport": {"width": 1280, "height": 860}} | context))
    page = ctx.new_page()
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return page


@pytest.fixture
def page(browser, server):
    errors: list[str] = []
    page = _page(browser, errors)
    page.goto(server.url + "/")
    yield page
    page.context.close()
    assert not errors, errors  # no script errors, no failed requests logged by the page


def _shot(page, path: Path, **kw) -> None:
    """Save a screenshot, and check it shows something (not a blank page)."""
    from PIL import Image

    page.screenshot(path=path, animations="disabled", **kw)
    assert np.asarray(Image.open(path).convert("L"), dtype=np.float32).std() > 20, path


def _names(page) -> list[str]:
    return page.locator(".card .name").all_inner_texts()


def _search(page, text: str) -> None:
    page.fill("#q", text)
    page.wait_for_function("t => document.querySelector('#results-meta')?.textContent.includes('result')", arg=text)


def test_type_a_query_and_see_results(page, gallery, shots):
    with page.expect_response(lambda r: "/api/search?" in r.url and "q=a+cat" in r.url):
        page.fill("#q", "a cat")
    page.wait_for_selector(".card")
    assert _names(page)[0] in ("chelsea.jpg", "chelsea-copy.jpg")
    assert page.locator(".card").count() == len(gallery[1])  # every image (k=40 by default), ranked
    assert page.locator("#welcome").is_hidden()
    first = page.locator(".card").first
    assert first.locator(".score").inner_text().startswith("0.")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card img')].slice(0, 6).every(i => i.naturalWidth > 0)"
    )
    _shot(page, shots / "search.png")
    page.emulate_media(color_scheme="dark")
    _shot(page, shots / "search-dark.png")


def test_upload_an_image_then_add_text_modifiers(page, gallery):
    with page.expect_response(lambda r: r.url.endswith("/api/search") and r.request.method == "POST"):
        page.set_input_files("#file", str(gallery[1]["rocket"]))
    page.wait_for_selector(".card")
    assert _names(page)[0] == "rocket.jpg" and page.locator(".card .score").first.inner_text() == "1.000"
    assert page.locator("#query-chip").is_visible() and page.locator("#query-panel").is_visible()
    page.fill("#mod-text", "coffee")
    with page.expect_response(lambda r: r.url.endswith("/api/search") and r.request.method == "POST"):
        page.click("#mod-plus")
    assert page.evaluate("() => window.visdex.state.mods") == [{"sign": 1, "text": "coffee"}]
    assert page.locator(".mod.plus").inner_text().startswith("+ coffee")
    page.wait_for_function("() => document.querySelector('.card .score')?.textContent !== '1.000'")
    page.click(".mod.plus button")  # remove it again
    page.wait_for_function("() => !document.querySelector('.mod')")


def test_draw_a_crop_box(page, gallery, shots):
    page.set_input_files("#file", str(gallery[1]["astronaut"]))
    page.wait_for_selector(".card")
    whole = page.locator(".card .score").first.inner_text()
    box = page.locator("#query-img").bounding_box()
    with page.expect_response(lambda r: r.url.endswith("/api/search") and r.request.method == "POST"):
        page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.05)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.98, box["y"] + box["height"] * 0.6, steps=8)
        page.mouse.up()
    crop = page.evaluate("() => window.visdex.state.crop")
    assert crop["x"] == pytest.approx(0.55, abs=0.02) and crop["w"] == pytest.approx(0.43, abs=0.02)
    assert page.locator("#crop-box").is_visible() and page.locator("#crop-clear").is_enabled()
    page.wait_for_function("w => document.querySelector('.card .score')?.textContent !== w", arg=whole)
    _shot(page, shots / "crop.png")
    with page.expect_response(lambda r: r.url.endswith("/api/search")):
        page.click("#crop-clear")
    assert page.locator("#crop-box").is_hidden()


def test_click_a_result_for_more_like_this(page, gallery):
    _search(page, "coffee")
    target = page.locator(".card", has_text="coffee.jpg").first
    item_id = int(target.get_attribute("data-id"))
    with page.expect_response(lambda r: f"id={item_id}" in r.url):
        target.locator(".thumb").click()
    page.wait_for_function("() => document.querySelector('#query-name')?.textContent.startsWith('More like')")
    names = _names(page)
    assert "coffee.jpg" not in names  # itself left out; its near copy and its crops first
    assert set(names[:3]) == {"coffee-small.jpg", "coffee-detail-a.jpg", "coffee-detail-b.jpg"}
    href = page.locator(".card .actions a").first.get_attribute("href")
    assert href.startswith("api/files/") and href.endswith("/original")
    original = page.request.get(page.locator(".card .actions a").first.evaluate("a => a.href"))
    assert original.ok and original.headers["content-type"].startswith("image/")  # "Open" leads to the original


def test_drop_a_file_and_view_an_image(page, gallery):
    data = base64.b64encode(gallery[1]["moon"].read_bytes()).decode()
    with page.expect_response(lambda r: r.url.endswith("/api/search") and r.request.method == "POST"):
        page.evaluate(
            """b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "moon.jpg", {type: "image/jpeg"}));
            window.dispatchEvent(new DragEvent("dragenter", {dataTransfer: dt}));
            window.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, cancelable: true}));
        }""",
            data,
        )
    page.wait_for_function("() => document.querySelector('.card .name')?.textContent === 'moon.jpg'")
    assert page.locator("#drop-overlay").is_hidden()
    page.locator(".card .actions button").first.click()
    page.wait_for_selector("#viewer[open]")
    page.wait_for_function("() => document.querySelector('#viewer-meta')?.textContent.includes('×')")
    assert page.locator("#viewer-name").inner_text() == "moon.jpg"
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer", state="hidden")


def test_filters_narrow_the_results(page, gallery):
    page.click("#filters-toggle")
    chip = page.locator(".tag").first  # the most common label
    label, count = chip.inner_text().split(" · ")
    chip.click()
    assert page.input_value("#where") == f'tag = "{label}"'
    _search(page, "a photo")
    assert page.locator(".card").count() == int(count) < len(gallery[1])
    assert all(label in t.split() for t in page.locator(".card .tags").all_inner_texts())
    assert page.locator("#filter-count").inner_text() == "1"


def test_duplicates_view(page, server, shots):
    page.click("a.tab[data-view=dupes]")
    page.wait_for_selector(".dupe-group")
    exact = page.locator(".dupe-group", has_text="exact copies")
    assert sorted(exact.locator(".info b").all_inner_texts()) == ["chelsea-copy.jpg", "chelsea.jpg"]
    assert exact.locator(".member.keeper").count() == 1 and exact.locator(".keep-badge").count() == 1
    near = page.locator(".dupe-group", has_text="coffee-small.jpg")
    assert near.locator(".member.keeper .info b").inner_text() == "coffee.jpg"  # the larger one is kept
    page.wait_for_function("() => [...document.querySelectorAll('.member img')].every(i => i.naturalWidth > 0)")
    _shot(page, shots / "duplicates.png", full_page=True)


def _canvas_ink(page) -> int:
    return page.evaluate("""() => { const c = document.querySelector('#map');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 16) if (d[i] > 0) n++; return n; }""")


def test_map_view_zoom_pan_and_open(page, gallery, shots):
    n = len(gallery[1])
    page.goto(page.url.split("#")[0] + "#map")
    page.wait_for_function("n => window.visdex.map.points && window.visdex.map.points.length === n", arg=n)
    page.wait_for_function("n => [...window.visdex.map.thumbs.values()].filter(t => t.ready).length >= n", arg=n)
    assert _canvas_ink(page) > 1000
    _shot(page, shots / "map.png")
    canvas = page.locator("#map").bounding_box()
    cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, -600)
    page.wait_for_function("() => window.visdex.map.scale > 1.5")
    tx = page.evaluate("() => window.visdex.map.tx")
    page.mouse.down()
    page.mouse.move(cx + 120, cy + 40, steps=6)
    page.mouse.up()
    assert page.evaluate("() => window.visdex.map.tx") == pytest.approx(tx + 120, abs=2)
    page.click("#map-reset")
    x, y, name = page.evaluate("""() => { const m = window.visdex.map, p = m.points[m.points.length - 1];
        return [m.tx + p.x * m.Sx * m.scale, m.ty + p.y * m.Sy * m.scale, p.name]; }""")
    page.mouse.click(canvas["x"] + x, canvas["y"] + y)
    page.wait_for_selector("#viewer[open]")
    assert page.locator("#viewer-name").inner_text() == name


def test_phone_sized_screen(browser, server, gallery, shots):
    n = len(gallery[1])
    errors: list[str] = []
    page = _page(
        browser, errors, viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    try:
        page.goto(server.url + "/")
        _search(page, "a cat")
        boxes = [page.locator(".card").nth(i).bounding_box() for i in range(3)]
        assert abs(boxes[0]["y"] - boxes[1]["y"]) < 4 and boxes[2]["y"] > boxes[0]["y"] + 50  # two columns
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # nothing sticks out
        assert page.locator(".tab").first.is_visible() and page.locator("#index-status").is_hidden()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.card img')].slice(0, 4).every(i => i.naturalWidth)"
        )
        _shot(page, shots / "phone-search.png")
        page.locator(".card .thumb").first.tap()
        page.wait_for_selector("#query-panel:not([hidden])")
        page.goto(server.url + "/#map")
        page.wait_for_function("n => window.visdex.map.points && window.visdex.map.points.length === n", arg=n)
        page.wait_for_function("n => [...window.visdex.map.thumbs.values()].filter(t => t.ready).length >= n", arg=n)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        _shot(page, shots / "phone-map.png")
    finally:
        page.context.close()
    assert not errors, errors


def test_token_is_asked_once_and_kept(browser, gallery):
    errors: list[str] = []
    with LiveServer(create_app(gallery[0], token=TOKEN)) as locked:
        page = _page(browser, errors)
        try:
            page.goto(locked.url + "/")
            page.wait_for_selector("#token-dialog[open]")
            page.fill("#token-input", "wrong")
            page.click("#token-form button")
            page.wait_for_selector("#token-error:not([hidden])")  # asked again, with a reason
            page.fill("#token-input", TOKEN)
            page.click("#token-form button")
            page.wait_for_selector("#token-dialog", state="hidden")
            _search(page, "a cat")
            page.wait_for_function("() => document.querySelector('.card img')?.naturalWidth > 0")  # ?token= on <img>
            assert page.evaluate("() => localStorage.getItem('visdex-token')") == TOKEN
            page.reload()
            _search(page, "rocket")  # no second prompt
            assert page.locator("#token-dialog").is_hidden()
        finally:
            page.context.close()
    assert [e for e in errors if "401" not in e] == []  # the refused first requests are expected
