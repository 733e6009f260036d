"""The web UI's Library view on a big library: first paint and scrolling, in Debian's Chromium (Playwright).

    python benchmarks/ui_scale.py                      # 2,000 images -> benchmarks/results/ui_scale.json
    python benchmarks/ui_scale.py --n 2000 20000       # both sizes (20,000 takes a while to index)
    python benchmarks/ui_scale.py --analyses-only      # only search latency while the map / duplicates compute
    python benchmarks/ui_scale.py --analyses           # both

The library is made of small images derived from scikit-image's photos (crops, shifts, tints), each with
an EXIF date spread over five years and one of three cameras, indexed with the tiny random-weight CLIP of
the tests (browsing needs no embedding; this keeps indexing quick). The server runs in this process
(uvicorn in a thread), the browser in its own. Measured, per size:

- ``browse_api_ms``: ``GET /api/browse?limit=100`` (first page, and one page deep by cursor),
  ``GET /api/facets`` and ``GET /api/folders`` (the folder tree), median of 5, as a client sees them;
- ``first_paint_ms``: from navigation to ``#browse`` until the first row of thumbnails has loaded;
- ``thumbs_at_first_paint``: how many thumbnails the page asked for by then (it should be about two screens);
- scrolling: the page is scrolled one screen at a time (``--screens``), waiting for what that brings; at
  each step the thumbnails asked for whose tile lies more than two screens below the view are counted
  (``max_thumbs_beyond_two_screens``: 0 means the page never fetches further ahead), with the time for
  each step's new thumbnails to load (p50 / max).

- ``analyses`` (with ``--analyses`` or ``--analyses-only``): search latency (``GET /api/search``, a new
  text each time, one client, 0.2 s between searches) in three phases of one run, side by side: while the
  server computes its default map, duplicates and clusters in the background right after start-up
  (``background``, with ``background_ready_s``: until all are ready); with nothing else running (``idle``);
  and while the same three are computed the way the server did before (``foreground``: in a thread of the
  server process at normal priority, on its own connection, as a request thread did), with ``foreground_s``.

The machine's load average is recorded with the numbers: on a shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]
CHROMIUM = os.environ.get("VISDEX_CHROMIUM", "/usr/bin/chromium")


def make_library(folder: Path, n: int) -> None:
    from imagefactory import real_photos, write_photo

    photos = list(real_photos().values())
    rng = np.random.default_rng(0)
    cams = [("Canon", "Canon EOS R5"), ("Apple", "iPhone 12"), ("FUJIFILM", "X-T4")]
    for i in range(n):
        arr = photos[i % len(photos)]
        h, w = arr.shape[:2]
        y, x = rng.integers(0, h // 3), rng.integers(0, w // 3)
        small = np.asarray(Image.fromarray(arr[y : y + h // 2, x : x + w // 2]).resize((96, 72)))
        small = np.clip(small.astype(np.int16) + rng.integers(-30, 30, 3), 0, 255).astype(np.uint8)
        day = int(rng.integers(0, 5 * 365))
        date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_500_000_000 + day * 86400))
        make, model = cams[i % 3]
        sub = folder / f"{date[:4]}"
        sub.mkdir(parents=True, exist_ok=True)
        write_photo(sub, f"img{i:06d}", small, quality=80, exif_datetime=date, make=make, model=model)


def build_index(work: Path, n: int) -> Path:
    from visdex import open_index

    from tinymodels import make_tiny_clip

    model = make_tiny_clip(work / "tiny-clip")
    make_library(work / "photos", n)
    t0 = time.perf_counter()
    with open_index(work / "ix", model=str(model)) as ix:
        ix.add([work / "photos"], workers=2)
    print(f"  indexed {n} images in {time.perf_counter() - t0:.0f} s", flush=True)
    return work / "ix"


def api_times(url: str) -> dict:
    import httpx

    def median_ms(path: str) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            r = httpx.get(url + path, timeout=60)
            r.raise_for_status()
            times.append((time.perf_counter() - t0) * 1000)
        return round(statistics.median(times), 1)

    first = httpx.get(url + "/api/browse?limit=100", timeout=60).json()
    return {
        "browse_first_page": median_ms("/api/browse?limit=100"),
        "browse_next_page_by_cursor": median_ms(f"/api/browse?limit=100&cursor={first['next_cursor']}"),
        "browse_page_at_offset_1000": median_ms("/api/browse?limit=100&offset=1000"),
        "facets": median_ms("/api/facets"),
        "folders": median_ms("/api/folders"),
        "browse_with_filter": median_ms("/api/browse?limit=100&where=camera%20%3D%20%22Canon%20EOS%20R5%22"),
    }


BEYOND = """() => { const lim = scrollY + 3 * innerHeight;   // the view and two screens below it
    return [...document.querySelectorAll('#library .tile img')].filter(i => i.getAttribute('src') &&
        i.getBoundingClientRect().top + scrollY > lim).length; }"""
ASKED = "() => [...document.querySelectorAll('#library .tile img')].filter(i => i.getAttribute('src')).length"
PENDING = "() => [...document.querySelectorAll('#library .tile img')].filter(i => i.src && !i.complete).length"


def measure_browser(url: str, screens: int, viewport: dict) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = b.new_context(viewport=viewport).new_page()
        page.set_default_timeout(120_000)
        page.goto(url + "/#search")
        page.wait_for_load_state("load")
        t0 = time.perf_counter()
        page.click("a.tab[data-view=browse]")
        page.wait_for_function("""() => { const imgs = [...document.querySelectorAll('#library .tile img')].slice(0, 6);
            return imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0); }""")
        first_paint = (time.perf_counter() - t0) * 1000
        asked_first = page.evaluate(ASKED)
        steps, beyond = [], 0
        for _ in range(screens):
            t1 = time.perf_counter()
            page.mouse.wheel(0, viewport["height"])
            page.wait_for_timeout(50)
            beyond = max(beyond, page.evaluate(BEYOND))
            page.wait_for_function(f"() => ({PENDING})() === 0", polling=20)
            steps.append((time.perf_counter() - t1) * 1000)
            beyond = max(beyond, page.evaluate(BEYOND))
        tiles = page.locator("#library .tile").count()
        asked = page.evaluate(ASKED)
        b.close()
    return {
        "viewport": viewport,
        "first_paint_ms": round(first_paint, 1),
        "thumbs_at_first_paint": asked_first,
        "screens_scrolled": screens,
        "tiles_loaded_after_scrolling": tiles,
        "thumbs_asked_after_scrolling": asked,
        "max_thumbs_beyond_two_screens": beyond,
        "scroll_step_ms_p50": round(statistics.median(steps), 1),
        "scroll_step_ms_max": round(max(steps), 1),
    }


PAUSE_S = 0.2  # between one client's searches: a person refining a query, not a load test


def search_latency(url: str, until, at_least: int = 20, at_most: int = 100_000) -> dict:
    """One client searching (a new text each time: no cached vector) until ``until()`` and ``at_least`` are met."""
    import httpx

    times = []
    with httpx.Client(timeout=120) as client:
        while len(times) < at_most and (len(times) < at_least or not until()):
            t0 = time.perf_counter()
            client.get(url + "/api/search", params={"q": f"a photo number {len(times)} {time.time()}", "k": 20})
            times.append((time.perf_counter() - t0) * 1000)
            time.sleep(PAUSE_S)
    times.sort()
    return {"searches": len(times), "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1), "max_ms": round(times[-1], 1)}  # fmt: skip


def measure_analyses(url: str, ix_dir: Path) -> dict:
    """Search latency while the background computes the analyses, idle, and while computed as before."""
    import threading

    import httpx

    from visdex import open_index
    from visdex.cluster import cluster_index
    from visdex.dupes import find_duplicates
    from visdex.viz import project_2d

    def ready() -> bool:
        jobs = httpx.get(url + "/api/analyses", timeout=60).json()["jobs"]
        return bool(jobs) and all(j["status"] in ("ready", "failed") for j in jobs.values())

    t0 = time.perf_counter()
    out = {"background": search_latency(url, ready)}
    out["background_ready_s"] = round(time.perf_counter() - t0, 1)
    out["background_jobs"] = httpx.get(url + "/api/analyses", timeout=60).json()["jobs"]
    out["idle"] = search_latency(url, lambda: True, at_least=50)
    done = threading.Event()

    def before() -> None:  # what a request thread did before: compute at once, normal priority, no pauses
        t1 = time.perf_counter()
        with open_index(ix_dir, create=False) as ix:
            find_duplicates(ix)
            cluster_index(ix)
            project_2d(ix)
        out["foreground_s"] = round(time.perf_counter() - t1, 1)
        done.set()

    threading.Thread(target=before, daemon=True).start()
    out["foreground"] = search_latency(url, done.is_set)
    return out


def run(n: int, screens: int, analyses: bool = False, browser: bool = True) -> dict:
    from visdex.server import create_app

    from serverhelp import LiveServer

    with tempfile.TemporaryDirectory(prefix="visdex-ui-scale-") as tmp:
        ix = build_index(Path(tmp), n)
        with LiveServer(create_app(ix)) as server:
            out = {"n": n}
            if analyses:  # first: the server has just started its background work
                out["analyses"] = measure_analyses(server.url, ix)
            if not browser:
                return out
            out["api_ms"] = api_times(server.url)
            out["wide"] = measure_browser(server.url, screens, {"width": 1440, "height": 900})
            out["phone"] = measure_browser(server.url, screens, {"width": 390, "height": 844})
            screens_ = (out["wide"], out["phone"])  # the two targets, as measured
            out["first_paint_under_1s"] = all(m["first_paint_ms"] < 1000 for m in screens_)
            out["never_beyond_two_screens"] = all(m["max_thumbs_beyond_two_screens"] == 0 for m in screens_)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[2000], help="library sizes")
    ap.add_argument("--screens", type=int, default=20, help="screens to scroll down")
    ap.add_argument("--out", type=Path, default=None, help="default: results/ui_scale.json (or ui_analyses.json)")
    ap.add_argument("--analyses", action="store_true", help="also search latency while the analyses compute")
    ap.add_argument("--analyses-only", action="store_true", help="only that (no browser)")
    args = ap.parse_args()
    load_before, runs = os.getloadavg(), []
    args.out = args.out or RESULTS / ("ui_analyses.json" if args.analyses_only else "ui_scale.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for n in args.n:
        print(f"library of {n} images", flush=True)
        runs.append(run(n, args.screens, args.analyses or args.analyses_only, browser=not args.analyses_only))
        runs[-1]["loadavg_after"] = os.getloadavg()
        print(json.dumps(runs[-1], indent=1), flush=True)
        report = {
            "benchmark": "ui_scale",
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": load_before},
            "runs": runs,
        }
        args.out.write_text(json.dumps(report, indent=1) + "\n")  # after each size: a long run keeps what it has
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
