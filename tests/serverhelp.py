"""Helpers for the server tests: a small photo gallery with known duplicates, a TestClient that
names the server as a browser on this machine would, and a real uvicorn server on a free loopback
port, in a thread, that stops when the ``with`` block ends.

>>> with LiveServer(create_app(index_dir)) as server:                 # doctest: +SKIP
...     httpx.get(server.url + "/api/status").json()
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imagefactory import real_photos, write_photo

# The browser tests drive Debian's Chromium (Playwright's own download fails offline); see the browser fixture.
CHROMIUM = os.environ.get("VISDEX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]  # fmt: skip


def make_gallery(folder: Path) -> dict[str, Path]:
    """The real photos, plus an exact copy of one (``chelsea-copy``), a smaller re-encoded copy of
    another (``coffee-small``: a near duplicate) and an EXIF-rotated photo (``rotated``: stored
    320x200 with a red top-left corner, shown 200x320 with the red corner top-right)."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = {name: write_photo(folder, name, arr) for name, arr in real_photos().items()}
    photos["chelsea-copy"] = folder / "chelsea-copy.jpg"
    shutil.copy(photos["chelsea"], photos["chelsea-copy"])
    small = Image.open(photos["coffee"]).resize((300, 200), Image.Resampling.LANCZOS)
    photos["coffee-small"] = folder / "coffee-small.jpg"
    small.save(photos["coffee-small"], quality=70)
    arr = np.ascontiguousarray(real_photos()["astronaut"][50:250, 60:380])
    arr[:40, :40] = (255, 0, 0)
    photos["rotated"] = write_photo(folder, "rotated", arr, exif_orientation=6)
    return photos


def index_gallery(root: Path, model: Path) -> tuple[Path, dict[str, Path]]:
    """An index (``model``) of :func:`make_gallery` under ``root``: (index dir, photo name -> path)."""
    from visdex import open_index

    photos = make_gallery(root / "photos")
    with open_index(root / "ix", model=str(model)) as ix:
        ix.add([root / "photos"], workers=1)
    return root / "ix", photos


def local_client(app, **kw):
    """FastAPI's TestClient with ``Host: 127.0.0.1`` (its default, ``testserver``, fails the Host check)."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1", **kw)


def until_ready(client, url: str, params: dict | None = None, timeout: float = 60.0):
    """Poll an analysis route as the web UI does: 202 + progress until the result (or an error) comes."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(url, params={**(params or {}), "wait": 0})
        if r.status_code != 202:
            return r
        body = r.json()
        assert body["status"] == "computing" and 0 <= body["progress"] <= 1, body
        assert time.monotonic() < deadline, f"{url} still computing after {timeout} s"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a daemon thread; loopback only, stopped on exit."""

    def __init__(self, app, timeout: float = 60.0):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.timeout = timeout

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.timeout)
