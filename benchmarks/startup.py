"""Start-up side by side: visdex vs rclip, cold CLI text search and unchanged-folder re-index.

Same machine, same model (a random-weight CLIP ViT-B/32 at 256 px, the architecture rclip ships,
built by ``peer_models.py``), same folders, runs alternated (the order flips each round), ratios
reported. Goals: a cold text search (process start to exit) in <= 0.5x rclip's time, and an
unchanged re-index in <= 1.0x rclip's time.

    visdex search "a dog on a beach" --index IX -n 10       |  cd FOLDER && rclip -n -t 10 "a dog on a beach"
    visdex index FOLDER --index IX -q                       |  cd FOLDER && rclip -t 1 "x"

rclip has no index-only command: ``rclip -t 1 x`` re-scans the folder and then searches, so its
re-index time includes one search (its search-only time is measured too; the JSON gives both).

visdex's first text search on an index made without the text-tower export loads torch, answers,
and starts the export in the background; that first search and the export's duration are recorded
apart (``first_search``), then the timed rounds run with the export in place, as every later search
does. (``visdex index`` exports at its end by default, so a user never sees that first search; here
the folders are indexed with ``VISDEX_QUERY_EXPORT=off`` so that it can be measured.)

    python benchmarks/startup.py                 # 200 x 6 MP and 1,000 x 0.3 MP JPEGs, 5 rounds
    python benchmarks/startup.py --quick         # 40 and 200 files, 3 rounds
    python benchmarks/startup.py --reuse         # the last run's indexes (skips the first indexing and the
                                                 # first search; those numbers are carried over, marked so)

Writes benchmarks/results/startup.json. Processes start cold; the OS page cache is warm (one
untimed run of each command first), as it is for a user's second command of the day.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_models as pm  # noqa: E402

QUERY = "a dog on a beach"
# one query per round, the same for both tools: no cache of query vectors (neither tool has one now) could
# make a repeated query look faster than a new one
QUERIES = [
    QUERY,
    "two cats sleeping on a red sofa",
    "snow covered mountains at sunset",
    "a cup of coffee",
    "a rocket launching at night",
    "a portrait of a smiling woman",
    "a plate of pasta",
    "a city at night",
]


class Tools:
    """The four commands, each with its own environment: visdex (index dir per folder) and rclip
    (data dir per folder, sharing the exported model files)."""

    def __init__(self, run_dir: Path, model: Path, rclip_template: Path, rclip_bin: str):
        self.run_dir, self.model, self.rclip_bin = run_dir, model, rclip_bin
        self.cache = run_dir / "visdex-cache"
        self.vx_env = pm.clean_env(VISDEX_CACHE_DIR=str(self.cache))
        self.template = rclip_template

    def index_dir(self, name: str) -> Path:
        return self.run_dir / f"visdex-index-{name}"

    def rclip_env(self, name: str) -> dict:
        datadir = pm.link_rclip_models(self.template, self.run_dir / f"rclip-data-{name}")
        return pm.clean_env(RCLIP_DATADIR=str(datadir))

    def visdex_search(self, name: str, folder: Path, query: str = QUERY) -> dict:
        return pm.timed([pm.visdex_bin(), "search", query, "--index", str(self.index_dir(name)), "-n", "10"],
                        self.vx_env)  # fmt: skip

    def rclip_search(self, name: str, folder: Path, query: str = QUERY) -> dict:
        return pm.timed([self.rclip_bin, "-n", "-t", "10", query], self.rclip_env(name), cwd=folder)

    def visdex_reindex(self, name: str, folder: Path, query: str = "") -> dict:
        return pm.timed([pm.visdex_bin(), "index", str(folder), "--index", str(self.index_dir(name)), "-q"],
                        self.vx_env)  # fmt: skip

    def rclip_reindex(self, name: str, folder: Path, query: str = "") -> dict:
        return pm.timed([self.rclip_bin, "-t", "1", "x"], self.rclip_env(name), cwd=folder)

    def visdex_first_index(self, name: str, folder: Path) -> dict:
        # no ONNX export of any kind yet (neither the text tower nor the CPU indexing towers): the first
        # search then shows what a search costs without one
        env = {**self.vx_env, "VISDEX_QUERY_EXPORT": "off", "VISDEX_CPU_BACKEND": "torch"}
        return pm.timed([pm.visdex_bin(), "index", str(folder), "--index", str(self.index_dir(name)),
                         "--model", str(self.model), "-q"], env)  # fmt: skip


def wait_for_export(cache: Path, limit_s: float = 1800) -> float:
    """Seconds until no background text-tower export of ours (``python -m visdex.models.textquery``) runs."""
    t0 = time.perf_counter()
    time.sleep(0.5)  # the search returned; its detached child may still be starting
    while pm.processes_with("visdex.models.textquery", str(cache)):
        if time.perf_counter() - t0 > limit_s:
            raise TimeoutError("the background text-tower export did not finish")
        time.sleep(0.5)
    return round(time.perf_counter() - t0, 1)


def first_search(tools: Tools, name: str, folder: Path) -> dict:
    """The first text search before any export (loads torch), then the background export's duration."""
    r = tools.visdex_search(name, folder)
    export_s = wait_for_export(tools.cache)
    exported = sorted((tools.cache / "onnx").glob("*/manifest.json"))
    second = tools.visdex_search(name, folder)
    return {"first_search_before_export_s": r["wall_s"], "first_search_cpu_s": r["cpu_s"],
            "first_search_peak_rss_mb": r["peak_rss_mb"],
            "background_export_s_after_first_search": export_s, "exports_in_cache": len(exported),
            "second_search_s": second["wall_s"], "second_search_peak_rss_mb": second["peak_rss_mb"]}  # fmt: skip


PROFILE = r"""
import cProfile, importlib, pstats, resource, sys, time
module, func = sys.argv[1].split(":")
sys.argv = sys.argv[2:]
pr = cProfile.Profile(time.process_time)  # CPU time of the whole process (ONNX Runtime's threads included)
pr.enable()
try:
    getattr(importlib.import_module(module), func)()
except SystemExit:
    pass
pr.disable()
st = pstats.Stats(pr)
rows = sorted(((v[3], f"{k[0].split('site-packages/')[-1].split('/src/')[-1]}:{k[2]}") for k, v in st.stats.items()),
              reverse=True)
r = resource.getrusage(resource.RUSAGE_SELF)
print("\nPROFILE", {"cpu_s": round(r.ru_utime + r.ru_stime, 3), "top": [(n, round(t, 3)) for t, n in rows[:200]]})
"""

# what each tool's cold search spends CPU on (cumulative CPU seconds, profiler on)
PROFILE_KEYS = {
    "visdex": {
        "imports (visdex.cli)": "visdex/cli.py:<module>",
        "cli_parse (typer)": "typer/core.py:parse_args",
        "cli_parse (quick)": "visdex/quickcli.py:quick_call",
        "open_index (imports visdex.api)": "visdex/cli.py:_open",
        "text_tower_session": "onnxruntime_inference_collection.py:__init__",
        "tokenizer_load": "from_file",
        "ann_search": "visdex/search.py:search_vectors",
        "command_total": "visdex/cli.py:main",
    },
    "rclip": {
        "imports (rclip.main)": "rclip/main.py:<module>",
        "text_tower_session": "onnxruntime_inference_collection.py:__init__",
        "tokenizer_load": "rclip/utils/tokenizer.py:__init__",
        "search": "rclip/main.py:search",
        "command_total": "rclip/main.py:main",
    },
}


def profile_search(tools: Tools, name: str, folder: Path, repeats: int = 3) -> dict:
    """One cold text search per tool under cProfile (CPU time): where start-up goes. Profiling adds overhead;
    compare the parts, not the totals with the timed rounds."""
    import ast

    out = {}
    runs = {"visdex": ([sys.executable, "-c", PROFILE, "visdex.cli:main", "visdex", "search", QUERY, "--index",
                        str(tools.index_dir(name)), "-n", "10"], tools.vx_env, None),
            "rclip": ([str(Path(tools.rclip_bin).parent / "python"), "-c", PROFILE, "rclip.main:main", "rclip", "-n",
                       "-t", "10", QUERY], tools.rclip_env(name), folder)}  # fmt: skip
    samples: dict = {tool: [] for tool in runs}
    for _ in range(repeats):  # alternated; the median of each part
        for tool, (cmd, env, cwd) in runs.items():
            r = pm.timed(cmd, env, cwd=cwd)
            samples[tool].append(ast.literal_eval(r["stdout"].rsplit("PROFILE ", 1)[1].strip()))
    for tool, profs in samples.items():
        parts = {}
        for label, key in PROFILE_KEYS[tool].items():
            found = [next((t for n, t in p["top"] if key in n), None) for p in profs]
            parts[label] = round(statistics.median(found), 3) if None not in found else None
        out[tool] = {"cpu_s": round(statistics.median(p["cpu_s"] for p in profs), 3), "cumulative_cpu_s": parts,
                     "top_cumulative_last_run": profs[-1]["top"][:25]}  # fmt: skip
    out["note"] = f"median of {repeats} profiled runs each, alternated; cProfile on, CPU time"
    return out


def rounds(tools: Tools, folders: dict[str, Path], n: int) -> dict:
    """``n`` rounds; in each, for each folder and metric, both tools back to back, the order flipped each round."""
    runs: dict = {name: {m: {"visdex": [], "rclip": []} for m in ("search", "reindex")} for name in folders}
    cmds = {("search", "visdex"): tools.visdex_search, ("search", "rclip"): tools.rclip_search,
            ("reindex", "visdex"): tools.visdex_reindex, ("reindex", "rclip"): tools.rclip_reindex}  # fmt: skip
    for name, folder in folders.items():  # warm the page and bytecode caches: one untimed run of each command
        for fn in cmds.values():
            fn(name, folder, "a photo")
    for i in range(n):
        order = ("visdex", "rclip") if i % 2 == 0 else ("rclip", "visdex")
        query = QUERIES[i % len(QUERIES)]
        for name, folder in folders.items():
            for metric in ("search", "reindex"):
                for tool in order:
                    r = cmds[(metric, tool)](name, folder, query)
                    runs[name][metric][tool].append({k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")})
        print(f"round {i + 1}/{n}", {nm: {m: {t: v[-1]["wall_s"] for t, v in d.items()} for m, d in x.items()}
                                     for nm, x in runs.items()}, "load", pm.loadavg(), flush=True)  # fmt: skip
    return runs


def summarise(runs: dict) -> dict:
    """Per folder and metric: median / p90 of each tool, the ratio of medians and the median of paired ratios."""
    goals = {"search": 0.5, "reindex": 1.0}
    out = {}
    for name, metrics in runs.items():
        out[name] = {}
        for metric, tools in metrics.items():
            vx = [r["wall_s"] for r in tools["visdex"]]
            rc = [r["wall_s"] for r in tools["rclip"]]
            ratio = statistics.median(vx) / statistics.median(rc)
            vx_cpu = statistics.median(r["cpu_s"] for r in tools["visdex"])
            rc_cpu = statistics.median(r["cpu_s"] for r in tools["rclip"])
            out[name][metric] = {
                "visdex_s": pm.summary(vx), "rclip_s": pm.summary(rc),
                "visdex_peak_rss_mb": max(r["peak_rss_mb"] for r in tools["visdex"]),
                "rclip_peak_rss_mb": max(r["peak_rss_mb"] for r in tools["rclip"]),
                "visdex_cpu_s_median": round(vx_cpu, 2), "rclip_cpu_s_median": round(rc_cpu, 2),
                "ratio_visdex_over_rclip": round(ratio, 3),
                # on a CPU shared with other jobs, CPU seconds vary far less than wall seconds
                "cpu_ratio_visdex_over_rclip": round(vx_cpu / rc_cpu, 3),
                "paired_ratio_median": round(statistics.median(a / b for a, b in zip(vx, rc, strict=True)), 3),
                "goal_ratio_at_most": goals[metric], "goal_met": ratio <= goals[metric],
            }  # fmt: skip
        # rclip's re-index command also searches: its re-scan alone is about the difference
        rs, rr = out[name]["search"]["rclip_s"]["median"], out[name]["reindex"]["rclip_s"]["median"]
        out[name]["reindex"]["rclip_rescan_only_estimate_s"] = round(rr - rs, 3)
    return out


def main() -> None:
    from visdex import bench

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pm.add_common_args(ap, rounds=5, quick_rounds=3)
    ap.add_argument("--reuse", action="store_true", help="reuse the last run's indexes (no first index / search)")
    ap.add_argument(
        "--profile-only",
        action="store_true",
        help="only add the search profile to an existing startup.json (uses the last run's indexes)",
    )
    args = ap.parse_args()
    n_rounds = args.rounds or (3 if args.quick else 5)

    start = pm.machine_state()
    work = Path(args.work)
    prep = pm.prepare(work, args.rclip)
    folders = pm.photo_folders(work, args.quick)
    run_dir = work / "startup-run"
    if args.profile_only:
        import json

        path = Path(args.out) / "startup.json"
        result = json.loads(path.read_text())
        tools = Tools(run_dir, prep["model_folder"], prep["rclip_template"], args.rclip)
        name = next(iter(folders))
        result["search_profile"] = {**profile_search(tools, name, folders[name]), "folder": name}
        print(bench.write_result(result, args.out, "startup"), result["search_profile"])
        return
    tools = Tools(run_dir, prep["model_folder"], prep["rclip_template"], args.rclip)
    first_name = next(iter(folders))
    if args.reuse:  # informational parts carried over from the run that made the indexes
        import json

        last = json.loads((Path(args.out) / "startup.json").read_text())
        when = f"carried over from the run of {last['machine']['date']} at {last['git']['commit']} (--reuse)"
        initial = {**last["initial_index_s"], "note": last["initial_index_s"].get("note", when)}  # the first run's
        first = {**last["first_search"], "note": last["first_search"]["note"] if "carried" in
                 last["first_search"].get("note", "") else when}  # fmt: skip
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        initial = {}
        for name, folder in folders.items():  # informational: first full index of each tool (peers.py measures it)
            initial[name] = {"visdex_s": tools.visdex_first_index(name, folder)["wall_s"],
                             "rclip_s": tools.rclip_reindex(name, folder)["wall_s"]}  # fmt: skip
            print("indexed", name, initial[name], flush=True)
        first = first_search(tools, first_name, folders[first_name])
        print("first search", first, flush=True)
    runs = rounds(tools, folders, n_rounds)
    profile = {**profile_search(tools, first_name, folders[first_name]), "folder": first_name}
    result = {
        "what": "cold CLI text search and unchanged re-index, visdex vs rclip 3.3.0, same model and folders",
        "model": "random-weight CLIP ViT-B/32 at 256 px (rclip's architecture), real CLIP BPE tokenizer; "
                 "visdex: the saved folder (torch to index, its cached ONNX text tower to search); "
                 "rclip: the same weights exported to its visual.onnx / textual.onnx",
        "commands": {"visdex_search": 'visdex search "QUERY" --index IX -n 10',
                     "rclip_search": 'cd FOLDER && rclip -n -t 10 "QUERY"',
                     "queries": QUERIES[:n_rounds],
                     "visdex_reindex": "visdex index FOLDER --index IX -q",
                     "rclip_reindex": 'cd FOLDER && rclip -t 1 "x"  (re-scans, then searches: no index-only command)'},
        "method": f"{n_rounds} rounds, order flipped each round, a new query each round (the same for both), after "
                  "one untimed warm-up run of each command (process cold; page cache and .pyc files warm, for both "
                  "tools); wall and CPU time (user + sys, children included) of the process, start to exit; "
                  "p90 = nearest rank",
        "folders": {name: len(list(f.glob("*.jpg"))) for name, f in folders.items()},
        "initial_index_s": initial,
        "first_search": {"folder": first_name,
                         "note": "index made with VISDEX_QUERY_EXPORT=off VISDEX_CPU_BACKEND=torch (no export yet); "
                                 "by default `visdex index` exports the text tower at its end, so users start with "
                                 "the fast path", **first},
        "results": summarise(runs),
        "search_profile": profile,
        "runs": runs,
        **pm.shared_result_fields(prep, sorted(folders[first_name].glob("*.jpg"))[:4], start),
    }  # fmt: skip
    print(bench.write_result(result, args.out, "startup"))
    for name, metrics in result["results"].items():
        for metric, r in metrics.items():
            print(
                f"{name:12s} {metric:8s} visdex {r['visdex_s']['median']:7.3f}s  rclip {r['rclip_s']['median']:7.3f}s"
                f"  ratio {r['ratio_visdex_over_rclip']:.2f} (goal <= {r['goal_ratio_at_most']})"
            )


if __name__ == "__main__":
    main()
