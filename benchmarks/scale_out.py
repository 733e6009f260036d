"""Local pipeline vs Ray Data on one machine: the same folder of small generated images indexed by both,
in alternating rounds (each into a fresh index), so a noisy neighbour on a shared machine hurts both alike.

    python benchmarks/scale_out.py --images 2000 --model effnet-lite0 --rounds 2

The Ray cluster is started once (its start-up is timed apart: a real cluster is already running); each
round times ``Index.add`` end to end: scan, plan, decode, embed, write. Goal: Ray >= 0.8x the local rate.
Writes benchmarks/results/scale-out-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def make_images(folder: Path, n: int, size: int = 256) -> list[Path]:
    """Small JPEGs with some structure (gradients + shapes), so they compress and decode like photos."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(folder.glob("*.jpg"))
    if len(have) == n:
        return have
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for i in range(n):
        c = rng.integers(0, 255, (2, 3))
        t = ((xx + yy) / (2 * size))[..., None]
        arr = (c[0] * (1 - t) + c[1] * t).astype(np.uint8)
        img = Image.fromarray(arr)
        d = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = rng.integers(0, size, 2)
            d.ellipse([x, y, x + rng.integers(10, 80), y + rng.integers(10, 80)], fill=tuple(rng.integers(0, 255, 3)))
        p = folder / f"img{i:05d}.jpg"
        img.save(p, quality=88)
        out.append(p)
    return out


def run(folder: Path, model: str, where: Path, batch_size: int, engine=None) -> dict:
    from visdex.api import open_index

    shutil.rmtree(where, ignore_errors=True)
    t0 = time.perf_counter()
    with open_index(where, model=model) as ix:
        report = ix.add([folder], batch_size=batch_size, engine=engine)
    secs = time.perf_counter() - t0
    return {"seconds": round(secs, 2), "images": report.new, "img_per_s": round(report.new / secs, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--model", default="effnet-lite0", help="a model name, or 'tiny-clip' (random weights)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--work", default="/tmp/visdex-scale-out")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--tag", default="", help="appended to the result's file name")
    args = ap.parse_args()
    os.environ.setdefault("VISDEX_CPU_BACKEND", "torch")  # Ray's actors run torch: compare like with like
    os.environ.setdefault("VISDEX_QUERY_EXPORT", "off")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(args.work)
    model = args.model
    if model == "tiny-clip":
        from tinymodels import make_tiny_clip

        model = str(make_tiny_clip(work / "tiny-clip"))
    folder = work / f"images-{args.images}"
    t0 = time.perf_counter()
    make_images(folder, args.images)
    print(f"{args.images} images ready in {time.perf_counter() - t0:.1f}s", flush=True)

    import ray

    from visdex.engines.ray_data import RayEngine

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    rows: dict[str, list[dict]] = {"local": [], "ray": []}
    loads = []
    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        rows["local"].append(run(folder, model, work / "ix-local", args.batch_size))
        rows["ray"].append(run(folder, model, work / "ix-ray", args.batch_size, engine=RayEngine()))
        print(f"round {r + 1}: local {rows['local'][-1]['img_per_s']} img/s, ray {rows['ray'][-1]['img_per_s']} "
              f"img/s (load {loads[-1]:.1f})", flush=True)  # fmt: skip
    ray.shutdown()
    best = {k: max(v, key=lambda x: x["img_per_s"]) for k, v in rows.items()}
    result = {
        "images": args.images, "model": args.model, "batch_size": args.batch_size, "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "ray_version": ray.__version__,
        "ray_cluster_start_s": round(ray_start, 2), "rounds": rows, "best": best,
        "ray_over_local": round(best["ray"]["img_per_s"] / best["local"]["img_per_s"], 3),
        "load_average_1min": loads, "goal": "ray_over_local >= 0.8",
        "ray_over_local_by_round": [round(r["img_per_s"] / lo["img_per_s"], 3)
                                    for lo, r in zip(rows["local"], rows["ray"], strict=True)],
    }  # fmt: skip
    out = Path(args.out) / f"scale-out-{Path(args.model).name}{'-' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("best", "ray_over_local", "ray_cluster_start_s")}), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
