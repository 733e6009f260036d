"""The map, duplicates and clusters are computed in the background: a request answers at once (202 with
the progress, or the result), a search made while they run answers, and a new index state recomputes."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from visdex import open_index
from visdex.server import create_app

from serverhelp import index_gallery, local_client, until_ready


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, tiny_clip) -> tuple[Path, dict[str, Path]]:
    return index_gallery(tmp_path_factory.mktemp("background"), tiny_clip)


@pytest.fixture(scope="module")
def client(gallery):
    with local_client(create_app(gallery[0])) as c:
        yield c


def _hold_worker(client) -> threading.Event:
    """Keep the background worker busy (a job of the test's own, first in the queue) until the event is set."""
    served = client.app.state.served
    release, running = threading.Event(), threading.Event()

    def slow(ix, progress):
        running.set()
        release.wait(30)
        return "held"

    served.background.get(("test-hold", time.monotonic()), slow, wait=0)
    assert running.wait(30), "the worker never took the job"
    return release


def test_the_defaults_are_computed_after_start_up(client, gallery):
    deadline = time.monotonic() + 60
    while True:
        jobs = client.get("/api/analyses").json()["jobs"]
        if jobs and all(j["status"] in ("ready", "failed") for j in jobs.values()):
            break
        assert time.monotonic() < deadline, jobs
        time.sleep(0.1)
    assert {"dupes None False", "clusters None 0", "map auto 0"} <= set(jobs)
    served = client.app.state.served
    done = served.background.computed
    r = client.get("/api/duplicates", params={"wait": 0})  # the UI's first request: ready, nothing computed
    assert r.status_code == 200 and r.json()["count"] >= 1
    assert client.get("/api/map", params={"wait": 0}).json()["count"] == len(gallery[1])
    assert served.background.computed == done


def test_a_request_answers_at_once_while_computing_and_a_search_is_not_held(client, gallery):
    release = _hold_worker(client)
    try:
        t0 = time.perf_counter()
        r = client.get("/api/map", params={"method": "pca", "seed": 7, "wait": 0})
        assert r.status_code == 202 and r.json() == {"status": "computing", "progress": 0.0}
        assert client.get("/api/clusters", params={"k": 2, "wait": 0}).status_code == 202
        hits = client.get("/api/search", params={"q": "a photo", "k": 3})
        assert hits.status_code == 200 and hits.json()["count"] == 3
        assert time.perf_counter() - t0 < 10  # nothing above waited for the worker (held for 30 s)
        status = client.get("/api/analyses").json()["jobs"]
        assert status["map pca 7"]["status"] == "queued"
    finally:
        release.set()
    m = until_ready(client, "/api/map", {"method": "pca", "seed": 7})
    assert m.status_code == 200 and m.json()["count"] == len(gallery[1]) and m.json()["method"] == "pca"
    c = until_ready(client, "/api/clusters", {"k": 2})
    assert c.json()["count"] == 2


def test_errors_come_back_with_their_status(client):
    r = until_ready(client, "/api/clusters", {"k": 10_000})  # more clusters than images: the library says so
    assert r.status_code == 422 and r.json()["field"] == "k"


def test_a_new_index_state_recomputes(client, gallery, tiny_clip):
    index_dir, photos = gallery
    params = {"method": "pca", "seed": 3}
    before = until_ready(client, "/api/map", params).json()
    assert before["count"] == len(photos)
    extra = index_dir.parent / "more"
    extra.mkdir()
    shutil.copy(photos["astronaut"], extra / "astronaut-again.jpg")
    with open_index(index_dir, model=str(tiny_clip)) as ix:  # another writer, as `visdex index` would be
        ix.add([extra], workers=1)
    after = until_ready(client, "/api/map", params).json()
    assert after["count"] == len(photos) + 1
    dupes = until_ready(client, "/api/duplicates", {"exact_only": True}).json()
    assert any(m["path"].endswith("astronaut-again.jpg") for g in dupes["groups"] for m in g["members"])


@pytest.mark.browser
def test_the_ui_shows_the_progress_then_the_map(gallery, tmp_path, browser):
    """The map and duplicates views poll while the worker is busy, say so, and draw the result when it comes."""
    from serverhelp import LiveServer

    app = create_app(gallery[0])

    class Held:  # what _hold_worker needs of a TestClient
        pass

    held = Held()
    held.app = app
    release = _hold_worker(held)  # the worker's first job, before the defaults: they wait behind it
    try:
        with LiveServer(app) as server:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(30_000)
            page.goto(server.url + "/#map")
            page.wait_for_function(
                "() => /computing in the background/.test(document.getElementById('map-meta').textContent)"
            )
            page.goto(server.url + "/#dupes")
            page.wait_for_function(
                "() => /Looking for duplicates/.test(document.getElementById('dupes-meta').textContent)"
            )
            release.set()
            page.wait_for_function(
                "() => /group|No duplicates/.test(document.getElementById('dupes-meta').textContent)"
            )
            page.goto(server.url + "/#map")
            page.wait_for_function("() => /images ·/.test(document.getElementById('map-meta').textContent)")
            page.close()
    finally:
        release.set()


def test_close_ends_a_running_job_and_the_worker_closes_its_own_index(gallery):
    """Shutting the server down mid-computation: the job ends at its next progress report, and the index is
    closed by the worker after it (closing it from the shutting thread made the job read a closed database)."""
    from visdex.server.background import Background

    bg = Background(lambda: open_index(gallery[0], create=False))
    started, errors = threading.Event(), []

    def long_job(ix, progress):
        progress.start(1_000_000)
        started.set()
        for _ in range(1_000_000):  # ~17 min if never stopped
            try:
                ix.db.counts()  # reads the database between steps, as the analyses do
            except Exception as exc:  # noqa: BLE001 -- what the test looks for
                errors.append(exc)
                raise
            progress.advance()
        return "finished"

    bg.start()
    deadline = time.monotonic() + 30
    while bg.generation is None:  # the worker has opened its index (a first sync would drop a job asked before)
        assert time.monotonic() < deadline, "the worker never opened the index"
        time.sleep(0.05)
    bg.get(("long",), long_job, wait=0)
    assert started.wait(30), "the worker never took the job"
    thread = bg._thread
    t0 = time.monotonic()
    bg.close()
    assert time.monotonic() - t0 < 5, "close waited for the job instead of stopping it"
    assert thread is not None and not thread.is_alive()
    assert not errors, errors
    assert bg.status()["jobs"]["long"]["status"] != "ready"


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities are a Linux feature")
@pytest.mark.parametrize("nice", [0, 7])
def test_the_worker_runs_at_the_nice_value_asked_for(gallery, monkeypatch, nice):
    """VISDEX_ANALYSES_NICE sets the worker thread's own priority; request threads keep the process's."""
    from visdex.server.state import ServedIndex

    own = os.getpriority(os.PRIO_PROCESS, 0)
    monkeypatch.setenv("VISDEX_ANALYSES_NICE", str(nice))
    served = ServedIndex(gallery[0])
    try:
        served.warm()
        worker = served.analysis(("nice", nice), lambda ix, progress: os.getpriority(os.PRIO_PROCESS, 0), wait=30)
        assert worker == max(own, nice)  # a thread can only be made nicer than its process without privileges
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
    finally:
        served.close()


def test_a_bad_nice_value_is_a_setting_error(gallery, monkeypatch):
    from visdex.errors import BadSetting
    from visdex.server.state import ServedIndex

    monkeypatch.setenv("VISDEX_ANALYSES_NICE", "25")
    with pytest.raises(BadSetting, match="VISDEX_ANALYSES_NICE='25': must be at most 19"):
        ServedIndex(gallery[0])
