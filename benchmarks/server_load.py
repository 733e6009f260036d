"""Load test of `visdex serve` on loopback: throughput and latency of mixed requests against a real
uvicorn, with 1, 4 and 16 concurrent clients, on an index of scikit-image's photos (plus crops).

    python benchmarks/server_load.py                         # -> benchmarks/results/server_load.json
    python benchmarks/server_load.py --model lite0-minilm --requests 480 --clients 1 4 16
    python benchmarks/server_load.py --baseline /tmp/old/src --rounds 2   # before/after, alternating

The server runs in its own process, as `visdex serve` does (clients in the server's process would
fight it for the GIL). Every text differs from every other one (a served index caches text vectors:
repeated texts would measure the cache). Every request must answer 200; the script fails otherwise.
Latencies are per request kind (p50 / p95, milliseconds, as the client sees them), with the server's
CPU seconds and the machine's load average per run. ``--baseline SRC`` also serves the same index
from another checkout's ``src`` (e.g. a ``git worktree`` of an older commit) on the plain asyncio
loop and h11 (what uvicorn used before uvloop / httptools came with the server extra); the two
alternate, so that both see the same machine. Run on an idle machine: on a shared one the absolute
numbers are noisy, the ratios between variants and client counts less so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
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


ADJECTIVES = ("red", "small", "old", "shiny", "dark", "bright", "wet", "round", "golden", "blurry", "tiny", "white")
THINGS = ("cat", "rocket", "coin", "moon", "cup of coffee", "astronaut", "galaxy", "cell", "camera", "eye", "planet",
          "spoon", "telescope", "face", "tower", "star")  # fmt: skip
SETTINGS = ("at night", "on a table", "in space", "under a microscope", "in the snow", "close up", "from above",
            "in black and white", "on the beach", "in a museum")  # fmt: skip


def texts(seed: int = 0) -> list[str]:
    """Every query text of the benchmark (4,032, all different, some with a weight or a negative term), shuffled."""
    out = []
    for a in ADJECTIVES:
        for t in THINGS:
            for s in SETTINGS:
                out += [f"{a} {t} {s}", f"2:{t} {s} - {a}", f"a photo of a {a} {t}"]
    out = list(dict.fromkeys(out))
    return [out[j] for j in np.random.default_rng(seed).permutation(len(out))]


def build_index_with(root: Path, model: str, src: Path) -> Path:
    """:func:`build_index` run by another checkout's ``src`` (same photos, same model, its own code)."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from pathlib import Path; " \
           f"from server_load import build_index; build_index(Path({str(root)!r}), {model!r})"  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return root / "ix"


def request_list(n: int, upload: bytes, ids: list[int], words: Iterator[str]) -> list[tuple[str, str, str, dict]]:
    """``n`` requests, the kinds in turn; the texts come from ``words`` (one server never sees a text twice)."""
    out = []
    for i in range(n):
        item = ids[i % len(ids)]
        kind = KINDS[i % len(KINDS)]
        if kind == "text":
            out.append((kind, "GET", "/api/search", {"params": {"q": next(words), "k": 20}}))
        elif kind == "id+text":
            out.append((kind, "GET", "/api/search", {"params": {"id": item, "q": f"+ {next(words)}", "k": 20}}))
        elif kind == "similar":
            out.append((kind, "GET", f"/api/similar/{item}", {"params": {"k": 20}}))
        elif kind == "upload":
            out.append((kind, "POST", "/api/search", {"files": {"image": ("q.jpg", upload, "image/jpeg")}}))
        elif kind == "thumb":
            out.append((kind, "GET", f"/api/files/{item}/thumb", {}))
        else:
            out.append((kind, "GET", "/api/status", {}))
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


SERVE = """
import sys, uvicorn
from visdex.server import create_app
index, port, loop, http = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
app = create_app(index)
app.state.served.warm()  # as visdex serve does before it listens
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", loop=loop, http=http)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index_dir: Path, src: Path | None, accel: bool) -> tuple[subprocess.Popen, str, float]:
    """The server in a process of its own; ``src``: another checkout's package (``None``: this one)."""
    port = free_port()
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    loop, http = ("auto", "auto") if accel else ("asyncio", "h11")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(index_dir), str(port), loop, http], env=env)
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/api/status", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    return proc, url, time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(proc: subprocess.Popen, url: str, reqs: list, clients: int) -> dict:
    load0, cpu0 = os.getloadavg()[0], cpu_seconds(proc.pid)
    run = run_clients(url, reqs, clients)
    run["server_cpu_seconds"] = round(cpu_seconds(proc.pid) - cpu0, 2)
    run["load_average_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]  # before, after
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite0-minilm")
    ap.add_argument("--requests", type=int, default=480)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--baseline", type=Path, help="another checkout's src folder, served side by side")
    ap.add_argument("--rounds", type=int, default=1, help="alternations of the variants (each a fresh server)")
    ap.add_argument("--out", type=Path, default=RESULTS / "server_load.json")
    args = ap.parse_args()

    variants = [("current", None, True)] + ([("baseline", args.baseline.resolve(), False)] if args.baseline else [])
    runs: dict[str, list] = defaultdict(list)
    startup: dict[str, list] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index_dir, upload = build_index(Path(tmp), args.model)
        index_s = time.perf_counter() - t0
        index_dirs = {"current": index_dir}
        if args.baseline:  # its own index, by its own code (a model's fingerprint may differ between versions)
            index_dirs["baseline"] = build_index_with(Path(tmp) / "baseline", args.model, args.baseline.resolve())
        for rnd in range(args.rounds):
            for name, src, accel in variants if rnd % 2 == 0 else variants[::-1]:
                proc, url, up_s = start_server(index_dirs[name], src, accel)
                try:
                    startup[name].append(round(up_s, 2))
                    ids = [
                        h["id"]
                        for h in httpx.get(url + "/api/search", params={"q": "a photo", "k": 1000}, timeout=120).json()[
                            "results"
                        ]
                    ]
                    words = iter(texts(rnd))  # the same requests for every variant in a round
                    run_clients(url, request_list(len(KINDS) * 4, upload, ids, words), 4)  # warm-up
                    for c in args.clients:
                        reqs = request_list(args.requests, upload, ids, words)
                        runs[name].append({"round": rnd, **measure(proc, url, reqs, c)})
                        print(f"{name:>8} {c:>2} clients: {summary(runs[name][-1])}", flush=True)
                finally:
                    proc.terminate()
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
    result = {
        "model": args.model,
        "images": len(ids),
        "index_seconds": round(index_s, 2),
        "server": "own process (uvicorn.run(create_app(index)) after warm(), as visdex serve does)",
        "texts": "no text asked twice of one server (no text-vector cache hits)",
        "startup_seconds_incl_model_load": startup,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "variants": {
            name: {"src": str(src) if src else "this checkout", "loop_http": "auto" if accel else "asyncio/h11"}
            for name, src, accel in variants
        },  # fmt: skip
        "runs": dict(runs),
    }
    if args.baseline:
        result["ratios_current_vs_baseline"] = ratios(runs["current"], runs["baseline"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for line in result.get("ratios_current_vs_baseline", []):
        print(line)
    print(f"-> {args.out}")


def summary(r: dict) -> str:
    lat = ", ".join(f"{k} {v['p50']:.0f}/{v['p95']:.0f}" for k, v in r["latency_ms"].items())
    return (f"{r['requests_per_s']:>6.1f} req/s, server CPU {r['server_cpu_seconds']:.1f} s, "
            f"load {r['load_average_1min'][0]:.1f}; p50/p95 ms: {lat}")  # fmt: skip


def ratios(current: list[dict], baseline: list[dict]) -> list[str]:
    """Per client count: medians over rounds of req/s and text p50 / p95, current against baseline."""
    out = []
    for c in sorted({r["clients"] for r in current}):

        def med(runs, f, c=c):
            return float(np.median([f(r) for r in runs if r["clients"] == c]))

        got = {name: (med(rs, lambda r: r["requests_per_s"]), med(rs, lambda r: r["latency_ms"]["text"]["p50"]),
                      med(rs, lambda r: r["latency_ms"]["text"]["p95"]))
               for name, rs in (("current", current), ("baseline", baseline))}  # fmt: skip
        (a_rps, a50, a95), (b_rps, b50, b95) = got["current"], got["baseline"]
        out.append(f"{c:>2} clients: req/s {b_rps:.1f} -> {a_rps:.1f} ({a_rps / b_rps:.2f}x); text p50 {b50:.0f} -> "
                   f"{a50:.0f} ms ({a50 / b50:.2f}x), p95 {b95:.0f} -> {a95:.0f} ms")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
