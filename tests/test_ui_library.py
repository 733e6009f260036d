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
TAGS = ["kitten", "rocket", "coffee", "person", "coins"]  # (no "cat": tests find the cat by its name)
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
        from visdex.tags import tag_index

        tag_index(ix, TAGS, top=1)  # every image its best tag: the map colours by it
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

    def make(path: str = "/", viewport=WIDE, dark: bool = False, **context):
        ctx = browser.new_context(viewport=viewport, color_scheme="dark" if dark else "light", **context)
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


def _scroll_to_top(page) -> None:
    """Back to the top once a smooth scroll (to a selection under the map) is over."""
    last = None
    for _ in range(50):
        now = page.evaluate("() => scrollY")
        if now == last:
            break
        last = now
        page.wait_for_timeout(150)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_function("() => scrollY === 0")


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


def test_map_box_selection_shows_those_images_and_rings_results(open_page, library):
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
    _scroll_to_top(page)  # (the grid under the map was scrolled into view)
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


# -- the folder tree ---------------------------------------------------------------------------------------
def test_folder_tree_filters_the_library(open_page, library):
    page = _browse(open_page, 100)
    page.wait_for_selector("#folder-tree:not([hidden]) .tree-folder")
    names = page.locator("#folder-list .tree-name").all_inner_texts()
    counts = page.locator("#folder-list .tree-count").all_inner_texts()
    assert dict(zip(names, counts, strict=True)) == {"photos": str(library["total"]), "burst": "6", "home": "21",
                                                     "trips": "21"}  # fmt: skip
    page.locator(".tree-folder", has_text="home").click()
    page.wait_for_function("() => document.querySelector('#browse-meta').textContent.startsWith('21 im')")
    page.wait_for_function("() => document.querySelectorAll('#library .tile').length === 21")
    where = page.input_value("#browse-where")
    assert where.startswith('folder = "') and where.endswith('/home"') and "where=folder" in page.url
    assert page.locator(".tree-folder", has_text="home").get_attribute("aria-pressed") == "true"
    # the tree stays whole under its own filter: another folder takes the place of the first
    page.locator(".tree-folder", has_text="burst").click()
    page.wait_for_function("() => document.querySelectorAll('#library .tile').length === 6")
    assert "home" not in page.input_value("#browse-where")
    toggle = page.locator("#folder-list > li > .tree-row .tree-toggle")  # collapsible
    assert toggle.get_attribute("aria-expanded") == "true"
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "false"
    assert page.locator(".tree-folder", has_text="home").is_hidden()
    toggle.press("Enter")  # by keyboard too
    assert page.locator(".tree-folder", has_text="home").is_visible()
    page.locator(".tree-folder", has_text="burst").click()  # a second click: the filter goes
    page.wait_for_function("n => document.querySelector('#browse-meta').textContent.startsWith(n + ' im')",
                           arg=library["total"])  # fmt: skip
    assert page.input_value("#browse-where") == ""


# -- the map: lasso, colours, the keyboard, search results -------------------------------------------------
def _map_ready(page, total: int) -> None:
    page.wait_for_function("n => window.visdex.map.points && window.visdex.map.points.length === n", arg=total)


def _on_map(page, i: int) -> tuple[float, float]:
    """Where image ``i`` of the map is on the page."""
    box = page.locator("#map").bounding_box()
    x, y = page.evaluate(
        """i => { const m = window.visdex.map, p = m.points[i];
        return [m.tx + p.x * m.Sx * m.scale, m.ty + p.y * m.Sy * m.scale]; }""",
        i,
    )
    return box["x"] + x, box["y"] + y


def _draw(page, points: list[tuple[float, float]]) -> None:
    page.mouse.move(*points[0])
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*p, steps=4)
    page.mouse.up()


def test_map_lasso_selects_and_colours_by_cluster_or_tag(open_page, library, shots):
    total = library["total"]
    page = open_page("/#map")
    _map_ready(page, total)
    page.click("#map-lasso")
    assert page.get_attribute("#map-lasso", "aria-pressed") == "true"
    b = page.locator("#map").bounding_box()
    x0, y0, x1, y1 = b["x"] + 2, b["y"] + 2, b["x"] + b["width"] - 2, b["y"] + b["height"] - 2
    _draw(page, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])  # a loop around everything
    page.wait_for_selector("#map-selection:not([hidden])")
    assert page.locator("#map-selection-grid .tile").count() == total
    page.click("#map-selection-clear")
    _scroll_to_top(page)
    x, y = _on_map(page, 0)
    _draw(page, [(x, y - 7), (x + 7, y + 6), (x - 7, y + 6)])  # a small triangle around one image
    page.wait_for_function("() => window.visdex.map.selected.length >= 1")
    picked = page.evaluate("() => window.visdex.map.selected.map(p => p.id)")
    assert page.evaluate("() => window.visdex.map.points[0].id") in picked and len(picked) < total / 2
    assert page.locator("#map-selection-grid .tile").count() == len(picked)
    page.click("#map-selection-clear")
    _scroll_to_top(page)
    # colours: by cluster (a legend with each cluster's size), by best tag
    page.select_option("#map-colour", "cluster")
    page.wait_for_function("n => window.visdex.map.colourOf && window.visdex.map.colourOf.size === n", arg=total)
    legend = page.locator("#map-legend li").all_inner_texts()
    assert len(legend) >= 2 and legend[0].startswith("Cluster 1 · ")
    assert sum(int(t.split(" · ")[1]) for t in legend) == total
    _draw(page, [(x0, y0), ((x0 + x1) / 2, y0), ((x0 + x1) / 2, y1), (x0, (y0 + y1) / 2)])  # the left part
    page.wait_for_selector("#map-selection:not([hidden])")
    page.evaluate("() => window.scrollTo(0, 300)")  # the map's lower half and the selection under it
    _wait_visible_thumbs(page)
    _shot(page, shots / "map-selection.png")
    page.select_option("#map-colour", "tag")
    page.wait_for_function("n => window.visdex.map.colourOf && window.visdex.map.colourOf.size === n", arg=total)
    labels = [t.split(" · ")[0] for t in page.locator("#map-legend li").all_inner_texts()]
    assert labels and set(labels) <= set(TAGS)
    page.select_option("#map-colour", "")
    page.wait_for_selector("#map-legend", state="hidden")
    assert page.evaluate("() => window.visdex.map.colourOf") is None


def test_map_keyboard_opens_the_focused_image_and_marks_search_results(open_page, library):
    page = open_page("/#map")
    _map_ready(page, library["total"])
    page.focus("#map")
    page.wait_for_function("() => window.visdex.map.focus")
    first = page.evaluate("() => window.visdex.map.focus.id")
    assert page.text_content("#map-focus").endswith("Enter opens it.")
    for key in ("ArrowRight", "ArrowLeft", "ArrowDown", "ArrowUp"):  # to the nearest image that way
        page.keyboard.press(key)
        if page.evaluate("() => window.visdex.map.focus.id") != first:
            break
    name = page.evaluate("() => window.visdex.map.focus.name")
    assert page.evaluate("() => window.visdex.map.focus.id") != first and name in page.text_content("#map-focus")
    page.keyboard.press("Enter")
    page.wait_for_selector("#viewer[open]")
    assert page.inner_text("#viewer-name") == name
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer", state="hidden")
    # a search made after the map was drawn: its results are marked when the map is shown again
    page.click("a.tab[data-view=search]")
    page.fill("#q", "a cat")
    page.wait_for_selector(".card")
    hits = page.evaluate("() => window.visdex.state.hits.length")
    page.click("a.tab[data-view=map]")
    page.wait_for_function("() => window.visdex.map.highlighted.size > 0")
    assert page.evaluate("() => window.visdex.map.highlighted.size") == hits
    assert f"{hits} search result{'s' if hits > 1 else ''} ringed" in page.inner_text("#map-meta")


# -- crop by keyboard, swipe in the viewer -----------------------------------------------------------------
def test_crop_by_keyboard(open_page):
    page = open_page("/#search?q=a+cat")
    page.wait_for_selector(".card")
    page.locator(".card .thumb").first.click()  # more like this: the query image, to crop
    page.wait_for_selector("#query-panel:not([hidden])")
    page.focus("#crop-stage")
    page.keyboard.press("ArrowRight")  # a centred half appears, moved right ...
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowDown")  # ... and made taller
    assert page.is_visible("#crop-box") and "Enter searches it" in page.text_content("#crop-status")
    wanted = "crop=0.3500%2C0.2500%2C0.5000%2C0.5500"
    with page.expect_request(lambda r: "/api/search?" in r.url and wanted in r.url):
        page.keyboard.press("Enter")
    page.wait_for_function("w => location.hash.includes(w)", arg=wanted)
    with page.expect_request(lambda r: "/api/search?" in r.url and "crop=" not in r.url):
        page.keyboard.press("Escape")  # the whole image again
    assert page.is_hidden("#crop-box")


def _swipe(page, x0: float, x1: float, y: float) -> None:
    """A one-finger horizontal swipe, as a touch screen sends it (the DevTools protocol's touch input)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x0, "y": y}]})
    for i in range(1, 6):
        x = x0 + (x1 - x0) * i / 5
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def test_swipe_steps_through_the_viewer_on_a_phone(open_page):
    page = open_page("/#search?q=a+photo&collapse=0", viewport=PHONE, has_touch=True, is_mobile=True)
    page.wait_for_function("() => document.querySelectorAll('.card').length > 3")
    n = page.locator(".card").count()
    page.locator(".card").first.get_by_role("button", name="View").tap()
    page.wait_for_selector("#viewer[open]")
    assert page.inner_text("#viewer-pos") == f"1 / {n}"
    box = page.locator("#viewer").bounding_box()
    y = box["y"] + 120
    _swipe(page, 320, 70, y)  # to the left: the next image
    page.wait_for_function("n => document.querySelector('#viewer-pos').textContent === '2 / ' + n", arg=n)
    _swipe(page, 70, 320, y)  # to the right: back
    page.wait_for_function("n => document.querySelector('#viewer-pos').textContent === '1 / ' + n", arg=n)
    _swipe(page, 200, 190, y)  # too short: no step
    page.wait_for_timeout(200)
    assert page.inner_text("#viewer-pos") == f"1 / {n}"


# -- a phone: the tab bar fits on every view ------------------------------------------------------------------
@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_the_tab_bar_fits_a_phone_on_every_view(open_page, dark):
    page = open_page("/#search", viewport=PHONE, dark=dark)
    ready = {"search": "#welcome", "browse": "#library .tile", "dupes": "#dupes-meta:not(:empty)",
             "clusters": ".cluster", "map": "#map-meta:not(:empty)"}  # fmt: skip
    for view, selector in ready.items():
        page.click(f"a.tab[data-view={view}]")
        page.wait_for_selector(selector)
        fit = page.evaluate("""() => { const tabs = document.querySelector('.tabs');
            return {page: document.scrollingElement.scrollWidth, tabs: tabs.scrollWidth - tabs.clientWidth,
                out: [...document.querySelectorAll('.tab')].filter(t => { const r = t.getBoundingClientRect();
                    return !r.width || r.left < 0 || r.right > innerWidth; }).length,
                cut: [...document.querySelectorAll('.tab span')].filter(s => s.scrollWidth > s.clientWidth).length};
            }""")
        assert fit["page"] <= PHONE["width"] and (fit["tabs"], fit["out"], fit["cut"]) == (0, 0, 0), (view, fit)
