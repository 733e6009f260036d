"""Load test of `visdex serve` on loopback: throughput and latency of mixed requests against a real
uvicorn, with 1, 4 and 16 concurrent clients, on an index of scikit-image's photos (plus crops).

    python benchmarks/server_load.py                         # -> benchmarks/results/server_load.json
    python benchmarks/server_load.py --model lite0-minilm --requests 480 --clients 1 4 16

Every request must answer 200; the script fails otherwise. Latencies are per request kind
(p50 / p95, milliseconds, as the client sees them). Run on an idle machine: on a shared one the
absolute numbers are noisy, the ratios between client counts less so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("text", "id+text", "similar", "upload", "thumb", "status")


def build_index(root: Path, model: str) -> tuple[Path, bytes]:
    import skimage.data

    from visdex import open_index

    photos = root / "photos"
    photos.mkdir(parents=True)
    for name in ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field", "immunohistochemistry",
                 "moon", "retina", "rocket"):  # fmt: skip
        arr = getattr(skimage.data, name)()
        arr = np.stack([arr] * 3, -1) if arr.ndim == 2 else arr[..., :3]
        h, w = arr.shape[:2]
        for i, (y, x) in enumerate([(0, 0), (0, w // 3), (h // 3, 0), (h // 3, w // 3)]):
            Image.fromarray(np.ascontiguousarray(arr[y : y + h * 2 // 3, x : x + w * 2 // 3])).save(
                photos / f"{name}-{i}.jpg", quality=90
            )
    with open_index(root / "ix", model=model) as ix:
        ix.add([photos], workers=1)
    return root / "ix", (photos / "coffee-0.jpg").read_bytes()


def request_list(n: int, upload: bytes, ids: list[int]) -> list[tuple[str, str, str, dict]]:
    texts = ["a cat", "a rocket at night", "2:coins - gold", "the moon", "a cup of coffee"]
    out = []
    for i in range(n):
        item = ids[i % len(ids)]
        out.append([
            ("text", "GET", "/api/search", {"params": {"q": texts[i % len(texts)], "k": 20}}),
            ("id+text", "GET", "/api/search", {"params": {"id": item, "q": "+ at night", "k": 20}}),
            ("similar", "GET", f"/api/similar/{item}", {"params": {"k": 20}}),
            ("upload", "POST", "/api/search", {"files": {"image": ("q.jpg", upload, "image/jpeg")}}),
            ("thumb", "GET", f"/api/files/{item}/thumb", {}),
            ("status", "GET", "/api/status", {}),
        ][i % len(KINDS)])  # fmt: skip
    return out


def run_clients(url: str, reqs: list, clients: int) -> dict:
    lat: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    lock = threading.Lock()

    def worker(chunk):
        with httpx.Client(base_url=url, timeout=120) as http:
            for kind, method, path, kw in chunk:
                t0 = time.perf_counter()
                r = http.request(method, path, **kw)
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    lat[kind].append(ms)
                    if r.status_code != 200:
                        errors.append(f"{method} {path}: {r.status_code} {r.text[:120]}")

    threads = [threading.Thread(target=worker, args=(reqs[i::clients],)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, e.g. {errors[:3]}")

    def pct(xs, q):
        return round(float(np.percentile(xs, q)), 2)

    return {
        "clients": clients,
        "requests": len(reqs),
        "seconds": round(wall, 3),
        "requests_per_s": round(len(reqs) / wall, 1),
        "latency_ms": {
            k: {"p50": pct(v, 50), "p95": pct(v, 95), "mean": round(statistics.fmean(v), 2)}
            for k, v in sorted(lat.items())
        },  # fmt: skip
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite0-minilm")
    ap.add_argument("--requests", type=int, default=480)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--out", type=Path, default=RESULTS / "server_load.json")
    args = ap.parse_args()

    import uvicorn

    from visdex.server import create_app

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index_dir, upload = build_index(Path(tmp), args.model)
        index_s = time.perf_counter() - t0
        app = create_app(index_dir)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        t0 = time.perf_counter()
        thread.start()
        while not server.started:
            time.sleep(0.01)
        startup_s = time.perf_counter() - t0
        url = f"http://127.0.0.1:{port}"
        ids = [h["id"] for h in httpx.get(url + "/api/search", params={"q": "a photo", "k": 1000}).json()["results"]]
        reqs = request_list(args.requests, upload, ids)
        run_clients(url, reqs[: len(KINDS) * 4], 4)  # warm-up: thumbnails cached, code paths touched
        runs = [run_clients(url, reqs, c) for c in args.clients]
        server.should_exit = True
        thread.join()
    result = {
        "model": args.model,
        "images": len(ids),
        "index_seconds": round(index_s, 2),
        "startup_seconds_incl_model_load": round(startup_s, 2),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        lat = ", ".join(f"{k} {v['p50']:.0f}/{v['p95']:.0f}" for k, v in r["latency_ms"].items())
        print(f"{r['clients']:>2} clients: {r['requests_per_s']:>6.1f} req/s; p50/p95 ms: {lat}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
