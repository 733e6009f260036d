"""visdex's default CPU path against rclip alone: full index of each folder, rounds alternating (a reduced peers.py).

For a short quiet window on a shared machine, where the full ``peers.py`` (four tools, stage costs) does not fit.
Uses peers.py's runner and peer_models.py's model (run ``python benchmarks/peer_models.py`` once first).

    python benchmarks/peers_pair.py /tmp/visdex-peers/photos-6mp-200 /tmp/visdex-peers/photos-0.3mp-200 --rounds 2

Writes benchmarks/results/peers-idle-quick.json (or --out): per folder, the runs, img/s from the slower round of
each tool, wall and CPU ratios, paired wall ratios, and the load average.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_models as pm  # noqa: E402
import peers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", type=Path, nargs="+")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/visdex-peers"))
    ap.add_argument("--rclip", default="/tmp/rclip-venv/bin/rclip")
    ap.add_argument("--out", type=Path, default=pm.ROOT / "benchmarks" / "results" / "peers-idle-quick.json")
    args = ap.parse_args()
    pm.use_bytecode_cache(args.work / "pycache")
    model = args.work / "models" / "clip-b32-256"
    runner = peers.Runner(args.work / "pair-run", model, args.work / "rclip-template", args.rclip)
    tools = {"visdex": lambda f: runner.visdex(f, str(model)), "rclip": runner.rclip}
    warm = args.work / "photos-warmup-16"  # first use: the ONNX export, page cache, .pyc files
    print("first use", runner.visdex(warm, str(model), {"VISDEX_CPU_BACKEND": "onnx"})["wall_s"],
          runner.rclip(warm)["wall_s"], flush=True)  # fmt: skip
    result = {"what": __doc__.splitlines()[0], "load_average_start": pm.loadavg(), "git": pm.git_state(), "folders": {}}
    for folder in args.folders:
        runs: dict[str, list] = {t: [] for t in tools}
        for i in range(args.rounds):
            for t in list(tools) if i % 2 == 0 else list(tools)[::-1]:
                r = tools[t](folder)
                runs[t].append({"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "load": pm.loadavg()[0]})
                print(folder.name, i, t, runs[t][-1], flush=True)
        n = len(list(folder.glob("*.jpg")))
        v, rc = runs["visdex"], runs["rclip"]
        slow = {t: {k: max(x[k] for x in rs) for k in ("wall_s", "cpu_s")} for t, rs in runs.items()}
        result["folders"][folder.name] = {
            "images": n, "runs": runs,
            "visdex_img_per_s": round(n / slow["visdex"]["wall_s"], 2),
            "rclip_img_per_s": round(n / slow["rclip"]["wall_s"], 2),
            "speedup_wall": round(slow["rclip"]["wall_s"] / slow["visdex"]["wall_s"], 3),
            "speedup_cpu": round(slow["rclip"]["cpu_s"] / slow["visdex"]["cpu_s"], 3),
            "paired_wall_ratios": [round(b["wall_s"] / a["wall_s"], 3) for a, b in zip(v, rc, strict=True)],
        }  # fmt: skip
        print(folder.name, {k: x for k, x in result["folders"][folder.name].items() if k != "runs"}, flush=True)
    result["load_average_end"] = pm.loadavg()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("->", args.out)


if __name__ == "__main__":
    main()
