"""The library views in a real browser (Playwright + Debian's Chromium, as tests/test_browser.py): browsing
without a query (months, endless scrolling, facets), the URL as the page's state (reload, Back / Forward),
near-copies collapsed in results, pages of results past the first, the viewer's EXIF facts and copies.

Run only these: ``pytest -m browser tests/test_ui_library.py``; ``VISDEX_SCREENSHOTS=1`` writes the
screenshots to ``docs/screenshots/``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_browser import DOCS_SHOTS, _shot
from visdex import open_index
from visdex.server import create_app

from imagefactory import real_photos, write_photo
from serverhelp import LiveServer

pytestmark = pytest.mark.browser

CAMERAS = [("Canon", "Canon EOS R5"), ("Apple", "iPhone 12"), ("FUJIFILM", "X-T4")]
WIDE = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    if os.environ.get("VISDEX_SCREENSHOTS"):
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SHOTS
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> dict:
    """42 small photos over 6 months of 2023 (crops of the real photos), 3 cameras, 2 folders,
    plus a burst: the cat and 5 exact copies of it; indexed with the offline lite0-minilm model."""
    root = tmp_path_factory.mktemp("lib")
    photos = real_photos()
    names = sorted(n for n in photos if n != "chelsea")  # the cat is the burst alone
    n = 0
    for month in range(1, 7):
        folder = root / "photos" / ("trips" if month % 2 else "home")
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(7):
            arr = photos[names[(month + j) % len(names)]]
            h, w = arr.shape[:2]
            o = (j * 7) % 20
            small = np.asarray(Image.fromarray(arr[h * o // 100 :, w * o // 100 :]).resize((120, 90)))
            make, model = CAMERAS[(month + j) % 3]
            date = f"2023-{month:02d}-{1 + j:02d}T12:00:00"
            write_photo(folder, f"p{month:02d}-{j:02d}", small, exif_datetime=date, make=make, model=model)
            n += 1
    burst = root / "photos" / "burst"
    burst.mkdir()
    cat = write_photo(burst, "cat", photos["chelsea"], exif_datetime="2024-02-01T10:00:00", make="Canon",
                      model="Canon EOS R5")  # fmt: skip
    for i in range(5):
        shutil.copy2(cat, burst / f"cat-{i}.jpg")
    with open_index(root / "ix", model="lite0-minilm") as ix:
        ix.add([root / "photos"], workers=1)
    return {"ix": root / "ix", "total": n + 6}


@pytest.fixture(scope="module")
def server(library):
    import httpx

    with LiveServer(create_app(library["ix"])) as s:
        # one text query first: on a busy machine the first can wait for the text tower's export
        httpx.get(s.url + "/api/search", params={"q": "warm up"}, timeout=180).raise_for_status()
        yield s


@pytest.fixture
def open_page(browser, server):
    """open_page(path, viewport=..., dark=...) -> a page at server.url + path; no script errors allowed."""
    contexts, errors = [], []

    def make(path: str = "/", viewport=WIDE, dark: bool = False):
        ctx = browser.new_context(viewport=viewport, color_scheme="dark" if dark else "light")
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(20_000)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(server.url + path)
        return page

    make.expected = []  # texts of errors a test causes on purpose
    yield make
    for ctx in contexts:
        ctx.close()
    errors = [e for e in errors if not any(x in e for x in make.expected)]
    assert not errors, errors


def _tiles(page) -> int:
    return page.locator("#library .tile").count()


def _browse(open_page, page_size: int = 24, **kw):
    """The library view, paged ``page_size`` at a time (the UI's 100 would need a library of hundreds)."""
    page = open_page("/", **kw)
    page.evaluate("n => { window.visdex.browse.pageSize = n; }", page_size)
    page.click("a.tab[data-view=browse]")
    page.wait_for_selector("#library .tile")
    return page


def _thumbs_fetched(page) -> tuple[int, int]:
    """(thumbnails asked for, tiles within two screens from the top)."""
    page.wait_for_function("() => document.querySelector('#library .tile img').complete")
    loaded = page.evaluate("() => [...document.querySelectorAll('#library .tile img')].filter(i => i.src).length")
    near = page.evaluate("""() => [...document.querySelectorAll('#library .tile')]
        .filter(t => t.getBoundingClientRect().top < 2 * innerHeight).length""")
    return loaded, near


def _wait_visible_thumbs(page) -> None:
    page.wait_for_function("""() => [...document.querySelectorAll('.tile img')]
        .filter(i => { const r = i.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight && r.width; })
        .every(i => i.complete && i.naturalWidth > 0)""")


def _fits(page) -> None:
    assert page.evaluate("() => document.documentElement.scrollWidth") <= page.viewport_size["width"]


def test_library_is_newest_first_by_month_and_scrolls_endlessly(open_page, library, shots):
    page = _browse(open_page)
    heads = page.locator(".month h2").all_inner_texts()
    assert heads[:3] == ["February 2024", "June 2023", "May 2023"]
    assert f"{library['total']} images" in page.inner_text("#browse-meta")
    _wait_visible_thumbs(page)
    _shot(page, shots / "browse.png")
    for _ in range(30):  # scroll to the end: the next page comes by itself
        page.mouse.wheel(0, 3000)
        if _tiles(page) == library["total"]:
            break
        page.wait_for_timeout(150)
    assert _tiles(page) == library["total"]
    ids = page.evaluate("() => [...document.querySelectorAll('#library .tile')].map(t => t.dataset.id)")
    assert len(set(ids)) == len(ids)  # each once
    assert page.locator(".month h2").last.inner_text() == "January 2023"
    assert page.locator(".month h2", has_text="March 2023").count() == 1  # a month split by pages: one heading


def test_facets_build_the_filter_and_toggle(open_page):
    page = _browse(open_page)
    page.wait_for_selector(".facet .tag")
    fuji = page.locator(".facet", has_text="Camera").locator(".tag", has_text="FUJIFILM X-T4")
    count = int(fuji.inner_text().split(" · ")[1])
    fuji.click()
    page.wait_for_function("n => document.querySelector('#browse-meta').textContent.startsWith(n + ' im')", arg=count)
    assert page.input_value("#browse-where") == 'camera = "FUJIFILM X-T4"'
    assert "where=camera" in page.url
    page.wait_for_function("() => document.querySelectorAll('#library .tile').length > 0")
    assert _tiles(page) == count
    # a second facet adds its clause with "and"; typing a filter stays possible
    page.locator(".facet", has_text="Month").locator(".tag").first.click()
    page.wait_for_function("() => document.querySelector('#browse-where').value.includes(' and taken = ')")
    page.locator(".facet", has_text="Camera").locator(".tag", has_text="FUJIFILM X-T4").click()  # off again
    page.wait_for_function("() => !document.querySelector('#browse-where').value.includes('camera')")
    page.fill("#browse-where", "format = png")
    page.press("#browse-where", "Enter")
    page.wait_for_function("() => document.querySelector('#browse-meta').textContent.includes('Nothing matches')")
    open_page.expected.append("status of 422")  # the bad filter's answer, logged by the browser
    page.fill("#browse-where", "colour = red")
    page.press("#browse-where", "Enter")
    page.wait_for_selector("#browse-alert:not([hidden])")
    assert "colour" in page.inner_text("#browse-alert") and _tiles(page) == 0


def test_the_url_holds_the_view_and_back_forward_walk_it(open_page, server):
    page = open_page("/")
    page.fill("#q", "a cat")
    page.wait_for_selector(".card")
    page.wait_for_function("() => location.hash.includes('q=a+cat')")
    page.click("a.tab[data-view=browse]")
    page.wait_for_selector("#library .tile")
    assert page.url.endswith("#browse")
    page.locator("#library .tile").nth(2).click()
    page.wait_for_selector("#viewer[open]")
    page.wait_for_function("() => /view=\\d+/.test(location.hash)")
    name = page.inner_text("#viewer-name")
    shared = page.url
    page.reload()  # the viewer opens again on the same image
    page.wait_for_selector("#viewer[open]")
    page.wait_for_function("n => document.querySelector('#viewer-name').textContent === n", arg=name)
    page.go_back()  # Back closes it ...
    page.wait_for_selector("#viewer", state="hidden")
    page.go_back()  # ... and goes to the search, restored
    page.wait_for_function("() => !document.querySelector('#view-search').hidden")
    assert page.input_value("#q") == "a cat"
    page.wait_for_selector(".card")
    page.go_forward()
    page.wait_for_function("() => !document.querySelector('#view-browse').hidden")
    # a URL given to someone else opens the same view
    other = open_page("/" + shared.split("/", 3)[3])
    other.wait_for_selector("#viewer[open]")
    other.wait_for_function("n => document.querySelector('#viewer-name').textContent === n", arg=name)
    # more like this: the query image and its filters are in the URL; Escape leaves the viewer entry
    other.click("#viewer-similar")
    other.wait_for_function("() => /#search\\?id=\\d+/.test(location.hash)")
    other.wait_for_selector("#viewer", state="hidden")
    other.wait_for_selector(".card")
    other.click("#filters-toggle")
    other.fill("#where", 'camera = "Canon EOS R5"')
    other.press("#where", "Enter")
    other.wait_for_function("() => location.hash.includes('where=camera')")
    other.reload()
    other.wait_for_selector("#query-panel:not([hidden])")
    assert other.input_value("#where") == 'camera = "Canon EOS R5"'


def test_near_copies_collapse_into_one_tile(open_page):
    page = open_page("/#search?q=a+cat")
    page.wait_for_selector(".card .stack-badge")
    cat = page.locator(".card", has_text="cat")
    assert cat.count() == 1  # (the month photos are crops of ten photos: near copies of each other, collapsed too)
    badge = cat.locator(".stack-badge")
    assert badge.inner_text() == "+5"
    badge.click()  # the copies are shown after their tile, and hidden again
    page.wait_for_function("() => document.querySelectorAll('.card.stacked').length === 5")
    assert page.locator(".card.stacked", has_text="cat-").count() == 5
    badge.click()
    page.wait_for_function("() => !document.querySelector('.card.stacked')")
    page.uncheck("#collapse")
    page.wait_for_function("() => !document.querySelector('.stack-badge') && document.querySelectorAll('.card').length")
    page.wait_for_function("() => document.querySelectorAll('.card').length > 10")
    names = page.locator(".card .name").all_inner_texts()
    assert sum(n.startswith("cat") for n in names) == 6
    assert "collapse=0" in page.url


def test_results_go_on_past_the_first_page(open_page, library):
    page = open_page("/#search?q=a+photo&k=20&collapse=0")
    page.wait_for_function("() => document.querySelectorAll('.card').length === 20")
    page.wait_for_selector("#results-more:not([hidden])")
    page.click("#results-more")
    page.wait_for_function("() => document.querySelectorAll('.card').length >= 40")
    for _ in range(40):  # and scrolling to the end loads the rest
        page.mouse.wheel(0, 4000)
        if page.locator("#results-more").is_hidden():
            break
        page.wait_for_timeout(200)
    ids = page.evaluate("() => [...document.querySelectorAll('.card')].map(c => c.dataset.id)")
    assert len(ids) == len(set(ids)) == library["total"]  # every image, once


@pytest.mark.parametrize("screen", ["wide", "phone"])
def test_viewer_shows_exif_and_finds_copies(open_page, screen, shots):
    page = open_page("/#search?q=a+cat", viewport=WIDE if screen == "wide" else PHONE, dark=screen == "phone")
    page.wait_for_selector(".card .stack-badge")
    page.locator(".card", has_text="cat").get_by_role("button", name="View").click()
    page.wait_for_selector("#viewer[open]")
    page.wait_for_function("() => document.querySelector('#viewer-exif').textContent.includes('Canon EOS R5')")
    assert "2024:02:01 10:00:00" in page.inner_text("#viewer-exif")
    page.click("#viewer-dupes")
    page.wait_for_selector(".dupe-strip .strip-item")
    assert page.locator(".dupe-strip .strip-item").count() == 5
    assert "5 copies" in page.inner_text("#viewer-dupes-out")
    assert page.locator(".dupe-strip .kind.exact").count() == 5
    _fits(page)
    if screen == "phone":
        _shot(page, shots / "viewer-phone-dark.png")
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer", state="hidden")
    page.wait_for_function("() => !location.hash.includes('view=')")


@pytest.mark.parametrize("dark", [False, True])
def test_library_on_a_phone(open_page, library, shots, dark):
    page = _browse(open_page, 100, viewport=PHONE, dark=dark)
    page.wait_for_function("n => document.querySelectorAll('#library .tile').length === n", arg=library["total"])
    assert not page.locator("#facet-panel").evaluate("d => d.open")  # the grid first; filters folded
    _fits(page)
    # thumbnails are fetched for the screen and the one below it, not for the whole page
    loaded, near = _thumbs_fetched(page)
    assert 0 < loaded <= near < library["total"], (loaded, near)
    page.click("#facet-panel summary")
    page.locator(".facet", has_text="Year").locator(".tag", has_text="2024").click()
    page.wait_for_function("() => document.querySelectorAll('#library .tile').length === 6")
    _fits(page)
    _wait_visible_thumbs(page)
    _shot(page, shots / f"browse-phone-{'dark' if dark else 'light'}.png")  # (docs show the dark one)


# -- accessibility: axe-core on every view ----------------------------------------------------------------
AXE_VERSION = "4.14.1"


@pytest.fixture(scope="module")
def axe_source(tmp_path_factory) -> str:
    """axe-core's script, from ``VISDEX_AXE`` (a path to axe.min.js) or installed by npm into a cache dir once.
    It is put into the page by the test (no CDN, and the page's Content-Security-Policy stays as it is)."""
    given = os.environ.get("VISDEX_AXE")
    if given:
        return Path(given).read_text()
    cache = tmp_path_factory.getbasetemp().parent / f"axe-core-{AXE_VERSION}"
    script = cache / "node_modules" / "axe-core" / "axe.min.js"
    if not script.is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed (needed once for axe-core; or set VISDEX_AXE)")
        import subprocess

        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(cache),
                               f"axe-core@{AXE_VERSION}"], capture_output=True, text=True, timeout=180)  # fmt: skip
        if done.returncode != 0 or not script.is_file():
            pytest.skip(f"could not install axe-core with npm: {done.stderr[-300:]}")
    return script.read_text()


def _axe(page, axe_source: str, where: str) -> list[str]:
    """The serious and critical axe violations on the page as it is (one line each)."""
    if not page.evaluate("() => !!window.axe"):
        page.evaluate(axe_source)  # through the DevTools protocol: no <script> the CSP would refuse
    found = page.evaluate("""() => axe.run(document, {resultTypes: ['violations']}).then(r => r.violations
        .filter(v => v.impact === 'serious' || v.impact === 'critical')
        .map(v => v.id + ' (' + v.impact + '): ' + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', ')))""")
    return [f"{where}: {v}" for v in found]


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_every_view_passes_axe(open_page, axe_source, dark):
    page = open_page("/#search?q=a+cat", dark=dark)
    page.wait_for_selector(".card .stack-badge")
    page.click("#filters-toggle")
    page.wait_for_timeout(300)  # the cards' pop-in animation is over (contrast is measured on what is shown)
    bad = _axe(page, axe_source, "search")
    page.locator(".card", has_text="cat").get_by_role("button", name="View").click()
    page.wait_for_function("() => document.querySelector('#viewer-exif').textContent.includes('Canon')")
    page.click("#viewer-dupes")
    page.wait_for_selector(".dupe-strip")
    bad += _axe(page, axe_source, "viewer")
    page.keyboard.press("Escape")
    for view, ready in (("browse", ".facet .tag"), ("dupes", ".dupe-group"), ("map", "#map-meta:not(:empty)")):
        page.click(f"a.tab[data-view={view}]")
        page.wait_for_selector(ready)
        page.wait_for_timeout(300)
        bad += _axe(page, axe_source, view)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("screen", ["wide", "phone"])
def test_clusters_view_and_one_cluster_in_full(open_page, screen, shots):
    page = open_page("/#clusters", viewport=WIDE if screen == "wide" else PHONE)
    page.wait_for_selector(".cluster .tile img")
    n = page.locator(".cluster").count()
    assert n >= 2
    sizes = [int(t.split()[0].replace(",", "")) for t in page.locator(".cluster header .hint").all_inner_texts()]
    assert sizes == sorted(sizes, reverse=True)
    _fits(page)
    if screen == "wide":
        _wait_visible_thumbs(page)
        _shot(page, shots / "clusters.png")
    page.locator(".cluster").nth(1).get_by_role("button", name="Browse all").click()
    page.wait_for_function("n => document.querySelectorAll('#cluster-grid .tile').length === n", arg=sizes[1])
    assert "#clusters?id=1" in page.url
    page.reload()  # the URL brings the same cluster back
    page.wait_for_function("n => document.querySelectorAll('#cluster-grid .tile').length === n", arg=sizes[1])
    page.locator("#cluster-grid .tile").first.click()
    page.wait_for_selector("#viewer[open]")
    page.keyboard.press("Escape")
    page.go_back()  # the viewer's entry, then the list of clusters
    page.go_back()
    page.wait_for_selector("#clusters:not([hidden]) .cluster")


def test_map_box_selection_shows_those_images_and_rings_results(open_page, library, shots):
    page = open_page("/#search?q=a+cat")
    page.wait_for_selector(".card")
    page.click("a.tab[data-view=map]")
    page.wait_for_function("() => window.visdex.map.points && window.visdex.map.points.length")
    assert "search results ringed" in page.inner_text("#map-meta")
    box = page.locator("#map").bounding_box()
    page.keyboard.down("Shift")  # Shift+drag: a box, not a pan
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2, steps=5)
    page.mouse.up()
    page.keyboard.up("Shift")
    page.wait_for_selector("#map-selection:not([hidden])")
    assert page.locator("#map-selection-grid .tile").count() == library["total"]
    assert page.inner_text("#map-selection-title") == f"{library['total']} images selected"
    page.evaluate("() => window.scrollTo(0, 300)")  # the map's lower half and the selection under it
    _wait_visible_thumbs(page)
    _shot(page, shots / "map-selection.png")
    page.evaluate("() => window.scrollTo(0, 0)")
    # the select button does the same without Shift (touch screens); a box around one image selects it
    page.click("#map-select")
    x, y = page.evaluate("""() => { const m = window.visdex.map, p = m.points[0];
        return [m.tx + p.x * m.Sx * m.scale, m.ty + p.y * m.Sy * m.scale]; }""")
    page.mouse.move(box["x"] + x - 3, box["y"] + y - 3)
    page.mouse.down()
    page.mouse.move(box["x"] + x + 3, box["y"] + y + 3, steps=3)
    page.mouse.up()
    page.wait_for_function("() => window.visdex.map.selected.length >= 1 && window.visdex.map.selected.length < 10")
    n = page.evaluate("() => window.visdex.map.selected.length")
    assert page.locator("#map-selection-grid .tile").count() == n
    page.locator("#map-selection-grid .tile").first.click()
    page.wait_for_selector("#viewer[open]")
    page.keyboard.press("Escape")
    page.click("#map-selection-clear")
    page.wait_for_selector("#map-selection", state="hidden")


def test_duplicates_move_to_trash_and_undo(browser, tmp_path, tiny_clip):
    """Keep the marked one, move the copies (a confirmation names files and bytes), then undo: every byte back."""
    photos = real_photos()
    folder = tmp_path / "photos"
    folder.mkdir()
    keep = write_photo(folder, "coffee", photos["coffee"])
    copies = [folder / f"coffee-{i}.jpg" for i in range(2)]
    for c in copies:
        shutil.copy2(keep, c)
    write_photo(folder, "rocket", photos["rocket"])
    original = keep.read_bytes()
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder], workers=1)
    errors: list[str] = []
    with LiveServer(create_app(tmp_path / "ix")) as s:
        ctx = browser.new_context(viewport=WIDE)
        page = ctx.new_page()
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda e: errors.append(str(e)))
        asked: list[str] = []
        page.on("dialog", lambda d: (asked.append(d.message), d.accept()))
        page.goto(s.url + "/#dupes?exact=1")
        group = page.locator(".dupe-group", has_text="coffee")
        group.get_by_role("button", name="move 2 to trash").click()
        page.wait_for_function("() => document.querySelector('#trash-status').textContent.startsWith('Moved 2 files')")
        assert "Move 2 files" in asked[0] and "KB" in asked[0]
        assert not any(c.exists() for c in copies) and keep.exists()
        assert sorted(p.name for p in (folder / ".visdex-trash").rglob("*.jpg")) == ["coffee-0.jpg", "coffee-1.jpg"]
        page.wait_for_function("() => !document.querySelector('.dupe-group')")  # nothing left to review
        page.click("#dupes-undo")
        page.wait_for_function("() => document.querySelector('#trash-status').textContent.startsWith('Put back 2')")
        assert all(c.read_bytes() == original for c in copies)
        page.wait_for_selector(".dupe-group")
        ctx.close()
    assert not errors, errors
