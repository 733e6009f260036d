"""How the priority of `visdex serve`'s background thread (``VISDEX_ANALYSES_NICE``) trades search latency
against how long the duplicates, clusters and map take, with and without other programs using the CPU.

    python benchmarks/analyses_nice.py                       # -> benchmarks/results/analyses_nice.json
    python benchmarks/analyses_nice.py --n 300 --nice 19 10 0 --busy 0 2

One library (``--n`` small images derived from scikit-image's photos, the tests' tiny random-weight CLIP,
built as ``ui_scale.py`` builds it) is served once per setting, side by side in one run. For each
``nice`` and each ``busy`` (that many other processes each spinning on a core, as ``visdex index`` or a
build would on a 2-core machine), measured from the server's start:

- ``ready_s``: until the server's default analyses (duplicates, clusters, the map) are all ready, or
  ``null`` when they were not within ``--limit`` seconds;
- ``search``: latency of one client searching (a new text each time, 0.2 s apart) meanwhile: p50 / p95 / max.

The order of the settings alternates between rounds (``--rounds``); the machine's load is recorded with
each phase: on a shared machine the numbers are noisy, compare within a round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src"), str(ROOT / "benchmarks")]

SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass"


def phase(ix: Path, nice: int, busy: int, limit: float) -> dict:
    import httpx
    from ui_scale import search_latency

    from visdex.server import create_app

    from serverhelp import LiveServer

    spinners = [subprocess.Popen([sys.executable, "-c", SPIN.format(s=limit + 60)]) for _ in range(busy)]
    os.environ["VISDEX_ANALYSES_NICE"] = str(nice)
    load = os.getloadavg()[0]
    try:
        t0 = time.perf_counter()
        with LiveServer(create_app(ix)) as server:

            def ready() -> bool:
                jobs = httpx.get(server.url + "/api/analyses", timeout=120).json()["jobs"]
                done = bool(jobs) and all(j["status"] in ("ready", "failed") for j in jobs.values())
                return done or time.perf_counter() - t0 > limit

            search = search_latency(server.url, ready, at_least=10)
            took = time.perf_counter() - t0
            jobs = httpx.get(server.url + "/api/analyses", timeout=120).json()["jobs"]
    finally:
        for p in spinners:
            p.kill()
            p.wait()
        os.environ.pop("VISDEX_ANALYSES_NICE", None)
    all_ready = all(j["status"] == "ready" for j in jobs.values())
    statuses = {k: j["status"] for k, j in jobs.items()}
    return {"nice": nice, "busy": busy, "ready_s": round(took, 1) if all_ready else None, "jobs": statuses,
            "search": search, "load_before": round(load, 2)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="images in the library")
    ap.add_argument("--nice", type=int, nargs="+", default=[19, 10, 0])
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="other processes spinning meanwhile")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--limit", type=float, default=300.0, help="seconds to wait for the analyses per phase")
    ap.add_argument("--out", type=Path, default=RESULTS / "analyses_nice.json")
    args = ap.parse_args()
    from ui_scale import build_index

    settings = [(nice, busy) for busy in args.busy for nice in args.nice]
    runs = []
    with tempfile.TemporaryDirectory(prefix="visdex-nice-") as tmp:
        ix = build_index(Path(tmp), args.n)
        for r in range(args.rounds):
            for nice, busy in settings if r % 2 == 0 else settings[::-1]:
                runs.append({"round": r + 1, **phase(ix, nice, busy, args.limit)})
                print(json.dumps(runs[-1]), flush=True)
                machine = {"cpus": os.cpu_count(), "platform": platform.platform()}
                report = {"benchmark": "analyses_nice", "n": args.n, "limit_s": args.limit, "machine": machine,
                          "runs": runs}  # fmt: skip
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
