"""CPU indexing throughput: decode-only, model-only, end-to-end ingest and the naive tutorial loop,
side by side in alternating rounds on one folder of camera-sized JPEGs (best round of each kept,
so a noisy neighbour on a shared machine hurts every measurement alike).

    python benchmarks/ingest_cpu.py --model effnet-lite0 --images 128 --rounds 3
    python benchmarks/ingest_cpu.py --model onnx-int8:effnet-lite0 --threads-grid   # torch/ORT threads x workers

Writes benchmarks/results/ingest-cpu-<model>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _best(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: r["img_per_s"])


def main() -> None:
    from visdex import bench
    from visdex.models import load_embedder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="effnet-lite0")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--megapixels", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--naive-rounds", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads-grid", action="store_true", help="also time ingest for workers x model threads")
    ap.add_argument("--folder", default="/tmp/visdex-bench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    folder = Path(args.folder) / f"{args.megapixels:g}mp-{args.images}"
    t0 = time.perf_counter()
    files = bench.make_photo_set(folder, args.images, megapixels=args.megapixels)
    print(f"photo set ready in {time.perf_counter() - t0:.1f}s: {folder}", flush=True)
    emb = load_embedder(args.model, device="cpu", batch_size=args.batch_size)
    rows: dict[str, list[dict]] = {"decode": [], "model": [], "ingest": [], "naive": []}
    for r in range(args.rounds):
        rows["decode"].append(bench.bench_decode(files, emb.preprocess, args.workers))
        rows["model"].append(bench.bench_model(emb, args.images, args.batch_size, files))
        rows["ingest"].append(bench.bench_ingest(folder, args.model, args.workers, args.batch_size))
        if r < args.naive_rounds:
            rows["naive"].append(bench.bench_naive(files, args.model, args.batch_size))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]['img_per_s']}" for k, v in rows.items() if v), flush=True)
    results = {k: _best(v) for k, v in rows.items() if v}
    for k, v in rows.items():
        if v:
            results[k]["rounds_img_per_s"] = [x["img_per_s"] for x in v]
    out = {"machine": bench.machine_info(), "model": args.model, "megapixels": args.megapixels,
           "images": args.images, "workers": args.workers, "batch_size": args.batch_size, "results": results,
           "ratios": bench._ratios(results), "load_average_end": os.getloadavg()}  # fmt: skip
    if args.threads_grid:
        out["threads_grid"] = _threads_grid(folder, args)
    name = "ingest-cpu-" + args.model.replace(":", "-").replace("/", "_") + f"-{args.megapixels:g}mp"
    print(bench.write_result(out, args.out, name))
    print(out["ratios"])


def _threads_grid(folder: Path, args) -> list[dict]:
    """End-to-end rate for each (decode workers, model threads) pair, alternating, best of 2."""
    import torch

    from visdex import bench

    grid = []
    for workers in (1, 2):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            best = max((bench.bench_ingest(folder, args.model, workers, args.batch_size) for _ in range(2)),
                       key=lambda r: r["img_per_s"])  # fmt: skip
            grid.append({"workers": workers, "model_threads": threads, "img_per_s": best["img_per_s"]})
            print(grid[-1], flush=True)
    return grid


if __name__ == "__main__":
    main()
