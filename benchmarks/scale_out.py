"""Local pipeline vs Ray Data on one machine: the same folder of small generated images indexed by both,
in alternating rounds (each into a fresh index), so a noisy neighbour on a shared machine hurts both alike.

    python benchmarks/scale_out.py --images 2000 --model effnet-lite0 --rounds 3

The Ray cluster is started once (its start-up is timed apart: a real cluster is already running), and the
driver's model is loaded once before the rounds (an in-process cache would otherwise make the first round's
first run pay it alone); each run times ``Index.add`` end to end: scan, plan, decode, embed, write, and for
Ray the model actors' start (a fresh process importing torch and loading the model, every run). The order
alternates by round (local first, then Ray first) and the 1-minute load average is recorded before each run,
so a round's ratio compares two runs that shared the machine alike. Goal: Ray >= 0.8x the local rate.
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
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open_index(where, model=model) as ix:
        report = ix.add([folder], batch_size=batch_size, engine=engine)
    secs = time.perf_counter() - t0
    return {"seconds": round(secs, 2), "images": report.new, "img_per_s": round(report.new / secs, 1),
            "load_before": round(load, 2)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--model", default="effnet-lite0", help="a model name, or 'tiny-clip' (random weights)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--work", default="/tmp/visdex-scale-out")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--tag", default="", help="appended to the result's file name")
    ap.add_argument("--one-actor", action="store_true",
                    help="also run Ray the old way (one model actor, two torch threads) in each round")  # fmt: skip
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
    from visdex.models import load_embedder

    load_embedder(model, device="cpu")  # the driver's model, once for both sides (see the docstring)
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    plan = RayEngine().plan(ray, args.images)
    engines = {"local": lambda: None, "ray": RayEngine}
    if args.one_actor:
        engines["ray_one_actor"] = lambda: RayEngine(workers=1, cpus_per_worker=1)
    rows: dict[str, list[dict]] = {side: [] for side in engines}
    for r in range(args.rounds):
        order = tuple(engines) if r % 2 == 0 else tuple(reversed(engines))
        for side in order:
            rows[side].append(run(folder, model, work / f"ix-{side}", args.batch_size, engine=engines[side]()))
        lo, ra = rows["local"][-1], rows["ray"][-1]
        print(f"round {r + 1} ({', '.join(order)}): local {lo['img_per_s']} img/s (load {lo['load_before']}), "
              f"ray {ra['img_per_s']} img/s (load {ra['load_before']}): {ra['img_per_s'] / lo['img_per_s']:.2f}x",
              flush=True)  # fmt: skip
        if args.one_actor:
            print(f"  one actor: {rows['ray_one_actor'][-1]['img_per_s']} img/s", flush=True)
    ray.shutdown()
    best = {k: max(v, key=lambda x: x["img_per_s"]) for k, v in rows.items()}
    by_round = [round(r["img_per_s"] / lo["img_per_s"], 3) for lo, r in zip(rows["local"], rows["ray"], strict=True)]
    result = {
        "images": args.images, "model": args.model, "batch_size": args.batch_size, "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "ray_version": ray.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "ray_plan": {"actors": plan.actors, "torch_threads_per_actor": plan.threads, "cpus_per_actor": plan.cpus},
        "ray_cluster_start_s": round(ray_start, 2), "rounds": rows, "best": best,
        "ray_over_local": round(best["ray"]["img_per_s"] / best["local"]["img_per_s"], 3),
        "ray_over_local_by_round": by_round, "ray_over_local_median": round(sorted(by_round)[len(by_round) // 2], 3),
        "rounds_meeting_goal": sum(x >= 0.8 for x in by_round), "goal": "ray_over_local >= 0.8 in every round",
    }  # fmt: skip
    if args.one_actor:
        result["ray_one_actor_over_local_by_round"] = [
            round(r["img_per_s"] / lo["img_per_s"], 3)
            for lo, r in zip(rows["local"], rows["ray_one_actor"], strict=True)
        ]
    out = Path(args.out) / f"scale-out-{Path(args.model).name}{'-' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    keys = ("ray_over_local_by_round", "ray_over_local", "rounds_meeting_goal", "ray_cluster_start_s")
    print(json.dumps({k: result[k] for k in keys}), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
