"""Query latency: warm p50/p99 in one process, and a cold ``visdex search`` process to its first result,
for the same photos indexed with the torch model and with its ONNX int8 export.

    python benchmarks/query_latency.py --model lite0-minilm --images 200

Writes benchmarks/results/query-latency-<model>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

QUERIES = ["a dog on a beach", "a cup of coffee", "a rocket at night", "an astronaut", "a cat", "coins",
           "the moon", "a brick wall", "grass", "a camera"]  # fmt: skip


def main() -> None:
    from visdex import bench
    from visdex.api import open_index

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lite0-minilm")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--work", default="/tmp/visdex-bench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    folder = Path(args.work) / f"0.5mp-{args.images}"
    bench.make_photo_set(folder, args.images, megapixels=0.5, seed=5)
    tmp = Path(tempfile.mkdtemp(prefix="visdex-qbench-"))
    out = {"model": args.model, "images": args.images, "queries": len(QUERIES), "repeats": args.repeats,
           "backends": {}}  # fmt: skip
    try:
        for backend in ("torch", "onnx-int8"):
            model = args.model if backend == "torch" else f"{backend}:{args.model}"
            path = tmp / backend
            with open_index(path, model=model) as ix:
                ix.add([folder])
            warm = bench.bench_query(path, QUERIES, repeats=args.repeats)
            colds = [bench.cold_start(path, QUERIES[i % len(QUERIES)]) for i in range(args.cold_runs)]
            warm["cold_start_s"] = round(statistics.median(colds), 3)
            warm["cold_start_runs_s"] = colds
            out["backends"][backend] = warm
            print(backend, warm, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["machine"] = bench.machine_info()
    out["load_average_end"] = os.getloadavg()
    print(bench.write_result(out, args.out, f"query-latency-{args.model}"))


if __name__ == "__main__":
    main()
