"""The map's background computation reports its steps (reading the vectors, the 2D layout, naming the points):
the library names them, a 202 answer carries them, and the web UI lists them while it waits."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from visdex import open_index
from visdex.server import create_app
from visdex.server.background import Progress
from visdex.viz import project_2d

from serverhelp import LiveServer, index_gallery, local_client

MAP_KEY = ("map", "auto", 0)  # the web UI's map: a default of the background worker


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, tiny_clip) -> tuple[Path, dict[str, Path]]:
    return index_gallery(tmp_path_factory.mktemp("mapsteps"), tiny_clip)


class StepGate:
    """The app's default map, computed by the real project_2d, held when step ``at`` begins until ``release``."""

    def __init__(self, app, at: int = 1):
        self.at, self.reached, self.release = at, threading.Event(), threading.Event()
        app.state.served.background.defaults[MAP_KEY] = self.job  # before the worker starts: it queues this one

    def job(self, ix, progress: Progress):
        gate = self

        class Held:  # the worker's own progress, told every step
            def step(self, index: int, names: list[str]) -> None:
                progress.step(index, names)
                if index == gate.at:
                    gate.reached.set()
                    gate.release.wait(60)

        return project_2d(ix, "auto", seed=0, progress=Held())


def test_project_2d_names_its_steps_in_order(gallery):
    seen = []

    class Recording(Progress):
        def step(self, index, names):
            super().step(index, names)
            seen.append((index, names[index], self.fraction))

    with open_index(gallery[0], create=False) as ix:
        proj = project_2d(ix, "pca", progress=Recording())
    assert len(proj.ids) == len(gallery[1])
    assert [i for i, _, _ in seen] == [0, 1, 2]
    assert seen[0][1] == f"Reading {len(gallery[1])} vectors" and seen[1][1] == "Laying them out in 2D (PCA)"
    assert [f for _, _, f in seen] == sorted(f for _, _, f in seen) and seen[-1][2] < 1


def test_a_202_says_which_step_runs(gallery):
    app = create_app(gallery[0])
    gate = StepGate(app)
    try:
        with local_client(app) as client:
            client.get("/api/map", params={"wait": 0})  # asked for: computed first
            assert gate.reached.wait(60)
            r = client.get("/api/map", params={"wait": 0})
            body = r.json()
            assert r.status_code == 202 and body["step"] == 1, body
            assert body["steps"][1].startswith("Laying them out in 2D (") and len(body["steps"]) == 3
            assert 0.3 <= body["progress"] < 0.67
            gate.release.set()
            done = client.get("/api/map", params={"wait": 30})
            assert done.status_code == 200 and done.json()["count"] == len(gallery[1])
            jobs = client.get("/api/analyses").json()["jobs"]
            assert jobs["map auto 0"]["status"] == "ready"
    finally:
        gate.release.set()


@pytest.mark.browser
def test_the_map_view_lists_the_steps_while_it_waits(gallery, browser):
    app = create_app(gallery[0])
    gate = StepGate(app)
    try:
        with LiveServer(app) as server:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(30_000)
            page.goto(server.url + "/#map")
            page.wait_for_selector("#map-steps li.current")
            assert "Laying them out in 2D" in page.inner_text("#map-steps li.current")
            assert page.locator("#map-steps li.done").inner_text().startswith("✓")
            assert "Reading" in page.inner_text("#map-steps li.done")
            assert page.locator("#map-steps li.todo").count() == 1
            assert "Step 2 of 3" in page.inner_text("#map-steps")
            assert "step 2 of 3" in page.inner_text("#map-meta")
            gate.release.set()
            page.wait_for_function("n => window.visdex.map.points && window.visdex.map.points.length === n",
                                   arg=len(gallery[1]))  # fmt: skip
            page.wait_for_selector("#map-steps", state="hidden")
            page.close()
    finally:
        gate.release.set()
