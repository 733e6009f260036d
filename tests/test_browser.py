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
    page.goto(server.url + "/#search?collapse=0")  # every result its own card (these tests count them)
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
    # (the byte copy's group may hold the photo's crops too, where the library calls them copies of it)
    exact = page.locator(".dupe-group", has=page.locator(".info b", has_text="chelsea-copy.jpg"))
    assert {"chelsea-copy.jpg", "chelsea.jpg"} <= set(exact.locator(".info b").all_inner_texts())
    assert exact.locator(".member.keeper").count() == 1 and exact.locator(".keep-badge").count() == 1
    near = page.locator(".dupe-group", has_text="coffee-small.jpg")
    assert near.locator(".member.keeper .info b").inner_text() == "coffee.jpg"  # the larger one is kept
    page.wait_for_function("""() => [...document.querySelectorAll('.member img')]
        .filter(i => i.getBoundingClientRect().top < innerHeight).every(i => i.naturalWidth > 0)""")  # lazy below
    _shot(page, shots / "duplicates.png")


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
        page.goto(server.url + "/#search?collapse=0")
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
            page.wait_for_function("() => document.querySelector('.card img')?.naturalWidth > 0")  # by the cookie
            # the token is in an HttpOnly, SameSite=Strict cookie: not in storage, URLs or scripts' reach
            (cookie,) = page.context.cookies()
            assert (cookie["value"], cookie["httpOnly"], cookie["sameSite"]) == (TOKEN, True, "Strict")
            assert page.evaluate("() => localStorage.length + document.cookie.length") == 0
            urls = page.evaluate("() => [...document.querySelectorAll('img[src], a[href]')].map(e => e.src || e.href)")
            assert urls and not [u for u in urls if "token" in u]
            page.reload()
            _search(page, "rocket")  # no second prompt
            assert page.locator("#token-dialog").is_hidden()
            page.click("#sign-out")  # signed out: asked again
            page.wait_for_selector("#token-dialog[open]")
            assert page.context.cookies() == []
        finally:
            page.context.close()
    assert [e for e in errors if "401" not in e] == []  # the refused first requests are expected


# -- fixed bugs: each of these failed before its fix ------------------------------------------------
WIDE = {"width": 1440, "height": 900}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


@pytest.fixture
def wide(browser, server):
    """A 1440 x 900 page whose expected HTTP errors (4xx of a bad query) are not script errors."""
    errors: list[str] = []
    page = _page(browser, errors, viewport=WIDE)
    page.goto(server.url + "/#search?collapse=0")
    yield page
    page.context.close()
    assert [e for e in errors if "status of 4" not in e] == [], errors


def test_enter_after_typing_searches_once(wide):
    searches: list[str] = []
    wide.on("request", lambda r: searches.append(r.url) if "/api/search" in r.url else None)
    wide.evaluate("""() => { window.redraws = 0; new MutationObserver(rs => window.redraws += rs.length)
        .observe(document.querySelector('#results'), {childList: true}); }""")
    wide.click("#q")
    wide.keyboard.type("a cat")
    wide.keyboard.press("Enter")
    wide.wait_for_selector(".card")
    wide.wait_for_timeout(700)  # well past the 250 ms debounce that used to run it a second time
    assert len(searches) == 1, searches
    assert wide.evaluate("() => window.redraws") == 1  # one redraw: the grid never empties under "40 results"
    wide.keyboard.press("Enter")  # the same search again: nothing new to ask
    wide.wait_for_timeout(400)
    assert len(searches) == 1, searches


def _fits(page) -> None:
    width = page.evaluate("() => window.innerWidth")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    rights = page.evaluate(
        "() => [...document.querySelectorAll('.dupe-group, .member')].map(e => e.getBoundingClientRect().right)"
    )
    assert rights and max(rights) <= width


@pytest.fixture(scope="module")
def many_copies(tmp_path_factory):
    """A server over a library with a group of 12 copies of one photo (the page was 2,600 px wide)."""
    root = tmp_path_factory.mktemp("copies")
    (root / "photos").mkdir()
    arr = real_photos()["coffee"]
    for i in range(12):
        write_photo(root / "photos", f"coffee-{i:02d}-with-a-long-file-name", arr)
    write_photo(root / "photos", "rocket", real_photos()["rocket"])
    with open_index(root / "ix", model="lite0-minilm") as ix:
        ix.add([root / "photos"], workers=1)
    with LiveServer(create_app(root / "ix")) as s:
        yield s


@pytest.mark.parametrize("screen", ["wide", "phone"])
def test_duplicates_page_fits_the_screen(browser, many_copies, screen):
    errors: list[str] = []
    page = _page(browser, errors, **({"viewport": WIDE} if screen == "wide" else PHONE))
    try:
        page.goto(many_copies.url + "/#dupes")
        page.wait_for_function("() => document.querySelectorAll('.member').length === 12")
        _fits(page)
    finally:
        page.context.close()
    assert not errors, errors


def _broken_images(page) -> int:
    return page.evaluate("""() => [...document.images].filter(i => i.getClientRects().length && i.getAttribute('src')
        && i.complete && i.naturalWidth === 0).length""")


def test_an_error_replaces_the_results(wide):
    wide.click("#filters-toggle")
    _search(wide, "a cat")
    wide.fill("#where", "width >>> 3")  # not a filter: the server answers 4xx
    with wide.expect_response(lambda r: "/api/search?" in r.url and r.status >= 400):
        wide.press("#where", "Enter")
    wide.wait_for_selector("#search-alert:not([hidden])")
    assert wide.locator(".card").count() == 0 and wide.locator("#results-meta").inner_text() == ""
    wide.fill("#where", "")
    _search(wide, "a rocket")
    assert wide.locator(".card").count() > 0 and wide.locator("#search-alert").is_hidden()
    with wide.expect_response(lambda r: r.url.endswith("/api/search") and r.status >= 400):
        wide.evaluate("""() => { const dt = new DataTransfer();  // a file of no known type: only the server can tell
            dt.items.add(new File(["just some text"], "notes", {type: ""}));
            window.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, cancelable: true})); }""")
    wide.wait_for_selector("#search-alert:not([hidden])")
    wide.wait_for_timeout(200)
    assert wide.locator(".card").count() == 0 and _broken_images(wide) == 0
    assert wide.locator("#query-panel").is_hidden() and wide.locator("#query-chip").is_hidden()


def test_a_tag_chip_is_a_toggle(wide):
    wide.click("#filters-toggle")
    chip = wide.locator(".tag").first
    clause = f'tag = "{chip.inner_text().split(" · ")[0]}"'
    chip.click()
    assert wide.input_value("#where") == clause and chip.get_attribute("aria-pressed") == "true"
    chip.click()  # used to give tag = "cat" and tag = "cat"
    assert wide.input_value("#where") == "" and chip.get_attribute("aria-pressed") == "false"
    wide.fill("#where", "width > 10")
    chip.click()
    chip.click()
    chip.click()
    assert wide.input_value("#where") == f"width > 10 and {clause}"
    chip.click()
    assert wide.input_value("#where") == "width > 10"


# The ring of the focused element (or, for a text box inside a pill, of its pill): an outline or a
# box-shadow that differs from the unfocused one, at least 2 px, and not cut off by a box that clips.
_RING = """([before]) => {
    const el = document.activeElement;
    if (!el || el === document.body) return {tag: 'body'};
    const key = e => { const s = getComputedStyle(e); return [s.outlineStyle, s.outlineWidth, s.boxShadow].join('|'); };
    const clipped = (e, pad) => {
        const r = e.getBoundingClientRect();
        for (let a = e.parentElement; a; a = a.parentElement) {
            const s = getComputedStyle(a);
            if (s.overflowX === 'visible' && s.overflowY === 'visible') continue;
            const b = a.getBoundingClientRect();
            if (r.left - pad < b.left - 0.5 || r.top - pad < b.top - 0.5 || r.right + pad > b.right + 0.5
                || r.bottom + pad > b.bottom + 0.5) return a.id || a.className;
        }
        return null;
    };
    const tag = el.outerHTML.slice(0, 80);
    for (const e of [el, el.parentElement]) {
        const s = getComputedStyle(e), r = e.getBoundingClientRect();
        if (r.width < 4 || r.height < 4) continue;
        const w = parseFloat(s.outlineWidth), off = parseFloat(s.outlineOffset);
        if (s.outlineStyle !== 'none' && w >= 2) return {ok: true, clip: clipped(e, Math.max(0, w + off)), tag};
        const was = before.get(e);
        if (s.boxShadow !== 'none' && was !== undefined && was !== key(e)) return {ok: true, clip: clipped(e, 3), tag};
    }
    return {ok: false, tag};
}"""


def _tab_through(page, steps: int) -> list[str]:
    """Tab ``steps`` times from the top; every element reached must show an unclipped focus ring."""
    page.evaluate("() => { document.activeElement?.blur(); window.scrollTo(0, 0); }")
    before = page.evaluate_handle("""() => { const m = new Map();
        for (const e of document.querySelectorAll('*')) { const s = getComputedStyle(e);
            m.set(e, [s.outlineStyle, s.outlineWidth, s.boxShadow].join('|')); } return m; }""")
    seen, bad = [], []
    for _ in range(steps):
        page.keyboard.press("Tab")
        ring = page.evaluate(_RING, [before])
        seen.append(ring["tag"])
        if ring["tag"] != "body" and (not ring["ok"] or ring["clip"]):
            bad.append(ring)
    assert not bad, bad
    return seen


def test_every_focusable_element_shows_its_focus(wide, gallery):
    wide.click("#filters-toggle")
    _search(wide, "a cat")
    wide.select_option("#k", "20")
    wide.wait_for_function("() => document.querySelectorAll('.card').length === 20")
    wide.wait_for_timeout(400)  # the cards' pop-in animation is over
    wide.focus(".brand")  # Tab starts from the top of the page (the next page of results comes on scrolling)
    seen = _tab_through(wide, 110)
    for needed in ('id="mod-text"', 'class="thumb"', 'class="tag"', 'id="where"', 'class="tab"'):
        assert any(needed in t for t in seen), needed
    wide.locator(".card .actions button").first.click()
    wide.wait_for_selector("#viewer[open]")
    _tab_through(wide, 6)
    wide.keyboard.press("Escape")
    wide.goto(wide.url.split("#")[0] + "#dupes")
    wide.wait_for_selector(".member")
    assert any("View " in t for t in _tab_through(wide, 14))
    wide.goto(wide.url.split("#")[0] + "#map")
    wide.wait_for_function("() => window.visdex.map.points")
    seen = _tab_through(wide, 16)  # (a #map link focuses the map: Tab starts after it, with the map's tools)
    assert any('id="map"' in t for t in seen), seen


def test_viewer_steps_with_arrow_keys_and_closes(wide):
    _search(wide, "a cat")
    names = _names(wide)
    wide.locator(".card .actions button").nth(1).click()
    wide.wait_for_selector("#viewer[open]")
    assert wide.locator("#viewer-name").inner_text() == names[1]
    wide.keyboard.press("ArrowRight")
    assert wide.locator("#viewer-name").inner_text() == names[2]
    wide.keyboard.press("ArrowLeft")
    wide.keyboard.press("ArrowLeft")
    assert wide.locator("#viewer-name").inner_text() == names[0]
    wide.keyboard.press("ArrowLeft")  # the first: stays
    assert wide.locator("#viewer-name").inner_text() == names[0] and wide.locator("#viewer-prev").is_disabled()
    wide.click("#viewer-next")
    assert wide.locator("#viewer-name").inner_text() == names[1]
    wide.wait_for_function("() => document.querySelector('#viewer-meta')?.textContent.includes('×')")
    wide.keyboard.press("Escape")
    wide.wait_for_selector("#viewer", state="hidden")
    wide.locator(".card .actions button").first.click()
    wide.wait_for_selector("#viewer[open]")
    wide.mouse.click(5, 450)  # on the backdrop, outside the dialog
    wide.wait_for_selector("#viewer", state="hidden")


def test_api_docs_work_offline(browser, server):
    """/docs and /redoc render with every request off this server refused (they loaded from a CDN)."""
    errors: list[str] = []
    page = _page(browser, errors, viewport=WIDE)
    outside: list[str] = []

    def local_only(route):
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    try:
        page.route("**/*", local_only)
        page.goto(server.url + "/docs")
        page.wait_for_selector(".swagger-ui .opblock", timeout=10_000)
        assert page.locator(".opblock", has_text="/api/search").count() >= 1
        page.goto(server.url + "/redoc")
        page.wait_for_selector("[role=menuitem]", timeout=10_000)
        assert page.locator("h1", has_text="visdex").count() == 1
    finally:
        page.context.close()
    # Redoc's "powered by" footer logo is the one thing it still asks for; the page works without it
    assert [u for u in outside if not u.endswith("/logo-mini.svg")] == [], outside
    assert [e for e in errors if "ERR_FAILED" not in e] == [], errors
