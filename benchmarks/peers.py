"""Full-index throughput side by side: visdex (default torch path and ``onnx:``) vs rclip, same model, same folders.

The model is a random-weight CLIP ViT-B/32 at 256 px (the architecture rclip ships) built by
``peer_models.py``: visdex loads the saved folder, rclip the same weights exported to its ONNX
files. Each run indexes a folder from nothing (a new visdex index dir, a new rclip data dir), the
process timed from start to exit; the tools alternate and the order rotates each round.

    visdex index FOLDER --index NEW --model MODEL_FOLDER -q          (visdex: default, torch on the CPU)
    visdex index FOLDER --index NEW --model onnx:MODEL_FOLDER -q     (visdex-onnx: fp32 ONNX Runtime)
    cd FOLDER && RCLIP_DATADIR=NEW rclip -t 1 "x"                    (rclip: first run = full index + 1 search)

visdex runs with ``VISDEX_QUERY_EXPORT=off``: the one-time text-tower export that ``visdex index``
adds at its end by default is a start-up cost measured by ``startup.py``, not indexing throughput.
One untimed warm-up run per tool first (weights hashed, the ``onnx:`` export made, page cache warm).
Goal: visdex's default CPU path >= 1.5x rclip's img/s on both folders.

    python benchmarks/peers.py                  # 200 x 6 MP and 1,000 x 0.3 MP JPEGs, 3 rounds
    python benchmarks/peers.py --quick          # 40 and 200 files, 2 rounds
    python benchmarks/peers.py --profile        # + where visdex's time goes (cProfile, env experiments)

Writes benchmarks/results/peers.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_models as pm  # noqa: E402

GOAL = 1.5  # visdex default img/s over rclip's


class Runner:
    """One full index of ``folder`` by one tool, from nothing, in a fresh directory under ``run_dir``."""

    def __init__(self, run_dir: Path, model: Path, rclip_template: Path, rclip_bin: str):
        self.run_dir, self.model, self.template, self.rclip_bin = run_dir, model, rclip_template, rclip_bin
        self.cache = run_dir / "visdex-cache"  # shared by all visdex runs: weights hashed, onnx: exported once
        self.count = 0

    def fresh(self, kind: str) -> Path:
        self.count += 1
        path = self.run_dir / f"{kind}-{self.count}"
        shutil.rmtree(path, ignore_errors=True)
        return path

    def visdex(self, folder: Path, model: str, extra_env: dict | None = None, cmd_prefix: list[str] = ()) -> dict:
        ix = self.fresh("visdex-index")
        env = pm.clean_env(VISDEX_CACHE_DIR=str(self.cache), VISDEX_QUERY_EXPORT="off", **(extra_env or {}))
        r = pm.timed([*cmd_prefix, pm.visdex_bin(), "index", str(folder), "--index", str(ix), "--model", model,
                      "--json"], env)  # fmt: skip
        report = json.loads(r["stdout"])
        shutil.rmtree(ix, ignore_errors=True)
        return {**r, "embedded": report.get("new", 0) + report.get("updated", 0), "failed": report.get("failed"),
                "ingest_s": report.get("seconds")}  # fmt: skip

    def rclip(self, folder: Path) -> dict:
        data = pm.link_rclip_models(self.template, self.fresh("rclip-data"))
        r = pm.timed([self.rclip_bin, "-t", "1", "x"], pm.clean_env(RCLIP_DATADIR=str(data)), cwd=folder)
        shutil.rmtree(data, ignore_errors=True)
        return r

    def tools(self, torch: bool = False) -> dict:
        """visdex's default CPU path, its explicit ONNX Runtime backends, rclip (and torch itself if asked)."""
        model = str(self.model)
        out = {"visdex": lambda f: self.visdex(f, model),
               "visdex-onnx": lambda f: self.visdex(f, f"onnx:{model}"),
               "visdex-onnx-int8": lambda f: self.visdex(f, f"onnx-int8:{model}"),
               "rclip": self.rclip}  # fmt: skip
        if torch:
            out["visdex-torch"] = lambda f: self.visdex(f, model, {"VISDEX_CPU_BACKEND": "torch"})
        return out

    def first_use(self, warm: Path, tools: dict) -> dict:
        """First runs on a small folder, outside the rounds: the one-time exports each visdex path makes (the
        default path's, forced here as a >= 200-image folder would make it; onnx:'s), bytecode and page cache."""
        first = {"visdex": lambda f: self.visdex(f, str(self.model), {"VISDEX_CPU_BACKEND": "onnx"})}
        return {name: first.get(name, fn)(warm)["wall_s"] for name, fn in tools.items()}


def _default_path_note() -> str:
    from visdex.models.families.base import cpu_has_amx_bf16

    if cpu_has_amx_bf16():
        return (
            "visdex's default CPU path (VISDEX_CPU_BACKEND=auto) on this CPU (AMX): torch with bfloat16 autocast "
            "(fp32 accumulation; vectors within a cosine of 1e-3 of fp32); visdex-onnx is the fp32 ONNX "
            "Runtime path that auto picks on CPUs without AMX; VISDEX_CPU_BACKEND=torch (fp32) with --torch"
        )
    return (
        "visdex's default CPU path (VISDEX_CPU_BACKEND=auto) ran the fp32 ONNX towers its first run exported "
        "(same vectors as torch); VISDEX_CPU_BACKEND=torch is timed with --torch"
    )


def run_rounds(runner: Runner, folders: dict[str, Path], n: int, warm: Path, torch: bool) -> tuple[dict, dict]:
    tools = runner.tools(torch)
    warmup = runner.first_use(warm, tools)
    print("first use", warmup, flush=True)
    runs: dict = {f: {t: [] for t in tools} for f in folders}
    names = list(tools)
    for i in range(n):
        order = names[i % len(names) :] + names[: i % len(names)]
        for fname, folder in folders.items():
            for t in order:
                r = tools[t](folder)
                keep = {k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")}
                keep["cpu_utilisation"] = round(r["cpu_s"] / r["wall_s"], 2)
                if "ingest_s" in r:
                    keep["ingest_s"] = r["ingest_s"]
                keep["load_1min"] = pm.loadavg()[0]
                runs[fname][t].append(keep)
                print(f"round {i + 1}/{n} {fname} {t}: {keep}", flush=True)
    return runs, warmup


def summarise(runs: dict, folders: dict[str, Path]) -> dict:
    out = {}
    for fname, tools in runs.items():
        n = len(list(folders[fname].glob("*.jpg")))
        res = {}
        for t, rs in tools.items():
            walls = [r["wall_s"] for r in rs]
            med = statistics.median(walls)
            cpu = statistics.median(r["cpu_s"] for r in rs)
            res[t] = {"images": n, "wall_s": pm.summary(walls), "img_per_s": round(n / med, 2),
                      "cpu_s_median": round(cpu, 1), "img_per_cpu_s": round(n / cpu, 3),
                      "cpu_utilisation": round(statistics.median(r["cpu_s"] / r["wall_s"] for r in rs), 2),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)}  # fmt: skip
            if "ingest_s" in rs[0]:  # visdex's own count: scan -> stored, without process start and model load
                ing = statistics.median(r["ingest_s"] for r in rs)
                res[t]["ingest_img_per_s"] = round(n / ing, 2)
                res[t]["outside_ingest_s"] = round(med - ing, 2)
        rc, rc_cpu = res["rclip"]["img_per_s"], res["rclip"]["img_per_cpu_s"]
        for t in res:
            if t != "rclip":
                paired = [b["wall_s"] / a["wall_s"] for a, b in zip(tools[t], tools["rclip"], strict=True)]
                res[t]["speedup_vs_rclip"] = round(res[t]["img_per_s"] / rc, 3)
                res[t]["paired_speedup_median"] = round(statistics.median(paired), 3)
                # CPU seconds per image: the steadier measure on a CPU other jobs share
                res[t]["cpu_speedup_vs_rclip"] = round(res[t]["img_per_cpu_s"] / rc_cpu, 3)
        res["visdex"]["goal_speedup_at_least"] = GOAL
        res["visdex"]["goal_met"] = res["visdex"]["speedup_vs_rclip"] >= GOAL
        out[fname] = res
    return out


STAGE_PROBE = r"""
import json, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
args = json.loads(sys.stdin.read())
from rclip.utils import helpers
from rclip.utils.preprocess import preprocess
helpers._ensure_image_loading_configured()
c0 = cpu()
for p in args["files"]:
    helpers.compute_file_hash(p); preprocess(helpers.read_image(p))
print(json.dumps({"cpu_s": cpu() - c0}))
"""


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _model_cpu_per_image(path: Path, batch: int, images: int = 64) -> float:
    """CPU ms per image of one ONNX image tower on random 256 px batches (one session, default threads)."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, 3, 256, 256)).astype(np.float32)
    sess.run(None, {name: x})  # first run: allocations, kernel selection
    c0 = _cpu()
    for _ in range(max(1, images // batch)):
        sess.run(None, {name: x})
    return round(1000 * (_cpu() - c0) / (max(1, images // batch) * batch), 1)


def stage_costs(runner: Runner, folders: dict[str, Path], prep: dict, n_files: int = 24) -> dict:
    """Where the CPU goes, per image, measured stage by stage in one process each (CPU time, so other jobs on
    the machine matter little): decode + resize as each tool does it, and each image tower's forward pass."""
    import json
    import subprocess

    from visdex.decode import read_and_decode
    from visdex.models.base import Preprocess

    pre = Preprocess(size=256, resize_to=256)
    out: dict = {"decode_cpu_ms_per_image": {}, "model_cpu_ms_per_image": {}}
    for fname, folder in folders.items():
        files = sorted(folder.glob("*.jpg"))[:n_files]
        c0 = _cpu()
        for p in files:  # what a visdex decode worker does per file: read + hash, draft decode, resize + crop
            _, dec = read_and_decode(p, draft_size=pre.resize_to)
            pre.to_uint8(dec.image)
        ours = 1000 * (_cpu() - c0) / len(files)
        payload = json.dumps({"files": [str(p) for p in files]})
        done = subprocess.run([prep["rclip_python"], "-c", STAGE_PROBE], input=payload, capture_output=True, text=True,
                              check=True, env=pm.clean_env())  # fmt: skip
        theirs = 1000 * json.loads(done.stdout)["cpu_s"] / len(files)
        out["decode_cpu_ms_per_image"][fname] = {"visdex": round(ours, 1), "rclip": round(theirs, 1)}
    exports = sorted((runner.cache / "onnx").glob("*/manifest.json"))
    towers = {"rclip visual.onnx": Path(prep["rclip_template"]) / pm.RCLIP_MODEL_SUBDIR / "visual.onnx"}
    for m in exports:
        files = json.loads(m.read_text())["towers"]["image"]["files"]
        for backend in ("onnx", "onnx-int8"):
            if backend in files:
                towers.setdefault(f"visdex {backend} ({m.parent.name[:6]})", m.parent / files[backend])
    for name, path in towers.items():
        out["model_cpu_ms_per_image"][name] = {f"batch_{b}": _model_cpu_per_image(path, b) for b in (8, 32)}
    out["note"] = (
        f"{n_files} files per folder, one process, CPU time; the model runs on random pixels. "
        "A tool's CPU per image in the rounds ~ decode + model + its share of start-up and model load"
    )
    return out


def main() -> None:
    from visdex import bench

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pm.add_common_args(ap, rounds=3, quick_rounds=2)
    ap.add_argument("--torch", action="store_true", help="also time VISDEX_CPU_BACKEND=torch (slow)")
    ap.add_argument("--no-profile", action="store_true", help="skip the per-stage CPU cost breakdown")
    args = ap.parse_args()
    n_rounds = args.rounds or (2 if args.quick else 3)

    start = pm.machine_state()
    work = Path(args.work)
    prep = pm.prepare(work, args.rclip)
    folders = pm.photo_folders(work, args.quick)
    warm = work / "photos-warmup-16"
    bench.make_photo_set(warm, 16, megapixels=2.0, seed=7)
    run_dir = work / "peers-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    runner = Runner(run_dir, prep["model_folder"], prep["rclip_template"], args.rclip)
    runs, warmup = run_rounds(runner, folders, n_rounds, warm, args.torch)
    stages = None if args.no_profile else stage_costs(runner, folders, prep)
    result = {
        "what": "full index from nothing, img/s, visdex (default CPU path, onnx:) vs rclip 3.3.0, same model and files",
        "model": "random-weight CLIP ViT-B/32 at 256 px (rclip's architecture), real CLIP BPE tokenizer; visdex "
                 "loads the saved folder (torch, or its own fp32 ONNX export with onnx:), rclip the same weights "
                 "exported to its visual.onnx / textual.onnx (onnxruntime)",
        "commands": {"visdex": "VISDEX_QUERY_EXPORT=off visdex index FOLDER --index NEW --model MODEL --json",
                     "visdex-onnx": "VISDEX_QUERY_EXPORT=off visdex index FOLDER --index NEW --model onnx:MODEL --json",
                     "visdex-onnx-int8": "... --model onnx-int8:MODEL (int8 MatMul weights; vectors differ slightly)",
                     "visdex-torch": "VISDEX_CPU_BACKEND=torch ... (only with --torch)",
                     "rclip": 'cd FOLDER && RCLIP_DATADIR=NEW rclip -t 1 "x"  (full index, then one search)'},
        "method": f"{n_rounds} rounds, tool order rotated each round, after one untimed first run per tool on a "
                  "16-file folder (its seconds below: first-use costs such as the ONNX exports; .pyc files and page "
                  "cache warm for both tools); img/s = files / median wall time, process start to exit (model load "
                  "and start-up included); img_per_cpu_s = files / median CPU seconds (user + sys, decode "
                  "workers included)",
        "folders": {name: len(list(f.glob("*.jpg"))) for name, f in folders.items()},
        "default_path_note": _default_path_note(),
        "first_run_wall_s_16_files": warmup,
        "stage_costs": stages,
        "results": summarise(runs, folders),
        "runs": runs,
        "clip_retrieval": "skipped: it loads models only by OpenAI-CLIP / open_clip pretrained names, downloaded "
                          "from the hub (unreachable here), not from a local folder, so it cannot run this model",
        **pm.shared_result_fields(prep, sorted(next(iter(folders.values())).glob("*.jpg"))[:4], start),
    }  # fmt: skip
    print(bench.write_result(result, args.out, "peers"))
    for fname, res in result["results"].items():
        print(fname, {t: (r["img_per_s"], r.get("speedup_vs_rclip"), r.get("cpu_speedup_vs_rclip"))
                      for t, r in res.items()})  # fmt: skip


if __name__ == "__main__":
    main()
