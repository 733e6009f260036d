"""Near-duplicate candidates at scale: the k-NN stage of ``visdex.dupes`` over 10^6 vectors with planted
duplicates, on CPU, through the embedded store, before and after side by side in one run.

    python benchmarks/dupes_scale.py --n 1000000             # -> benchmarks/results/dupes-1e6.json
    python benchmarks/dupes_scale.py --n 100000 --out /tmp/d.json --runs auto:0 auto:32

The vectors are benchmarks/ann.py's (same generator, same cache): 1000 clusters, and 1% of the rows
overwritten by a near-copy of another row (cosine 0.94-0.995). Recall = planted (copy, original)
pairs that come out of the candidate stage at ``--threshold``. The stage under test is
``visdex.dupes._candidate_pairs``: every stored vector queries the store for its 16 neighbours, in
batches (the engine uses every core). The pixel verification that follows in ``visdex dupes`` needs
image files and is not part of this benchmark.

A run is ``STORE:EF``: STORE ``hnsw-faiss`` (``--ann hnsw`` on the FAISS engine, what visdex built
before hnswlib, and still builds without it) or ``auto`` (the default store: hnswlib's graph when
installed); EF the HNSW efSearch of the pass, 0 for the dupes default (``visdex.dupes.CANDIDATE_EF``).
The default runs: ``hnsw-faiss:512`` (before: the store's efSearch max(512, 4k) that the pass used),
``hnsw-faiss:0`` and ``auto:0`` (after). A store that ``ann.py --keep`` left in the cache for the
same n is reused; otherwise it is built here (and the build is timed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ann  # noqa: E402 - the shared data generator and cache

from visdex import dupes  # noqa: E402
from visdex.store.db import IndexDB  # noqa: E402
from visdex.store.local import LocalVectorStore  # noqa: E402

STORES = {"hnsw-faiss": ("hnsw", "faiss"), "auto": ("auto", None)}  # name -> (--ann, HNSW engine)
DEFAULT_RUNS = ["hnsw-faiss:512", "hnsw-faiss:0", "auto:0"]


def open_store(d: Path, name: str, out: dict) -> LocalVectorStore:
    """The ``visdex-<name>`` store of this data set: reused from ann.py's cache, or built now."""
    ann_kind, engine = STORES[name]
    kept = d / "work" / f"visdex-{name}"
    store = None
    if not (kept / "vectors.faiss").exists():
        if not (d / "truth" / "index.db").exists():
            ann._write_truth(d, d / "truth")
        kept.mkdir(parents=True, exist_ok=True)
        shutil.copy(d / "truth" / "index.db", kept / "index.db")
        store = LocalVectorStore(IndexDB(kept), ann.DIM, ann=ann_kind)
        store.hnsw_engine = engine
        getattr(store.db, "hold_writer", lambda: None)()  # only the index's writer saves the file
        t0 = time.perf_counter()
        store.flush()  # builds the index from SQLite and saves it
        out["index_build_s"] = round(time.perf_counter() - t0, 1)
        store.db.close()
    t0 = time.perf_counter()
    store = LocalVectorStore(IndexDB(kept), ann.DIM)
    store.hnsw_engine = engine
    store.index  # noqa: B018 - loads the saved index
    out["index_load_s"] = round(time.perf_counter() - t0, 1)
    out["kind"] = store.kind
    out["params"] = store.info().get("params")
    return store


def candidate_run(store: LocalVectorStore, planted: set, n: int, threshold: float, ef: int) -> dict:
    """One pass of the candidate stage over every stored vector: wall time and recall of the planted pairs."""
    store.ef_search = ef or None  # None: the pass picks dupes.CANDIDATE_EF
    rss0 = ann.rss_mb()[0]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    pairs = dupes._candidate_pairs(SimpleNamespace(store=store), threshold)  # noqa: SLF001 - the stage itself
    wall = time.perf_counter() - t0
    found = {(a, b) for a, b, _ in pairs}
    hits = len(planted & found)
    return {
        "ef_search": ef or dupes.CANDIDATE_EF,
        "ef_from": "this run" if ef else "visdex.dupes.CANDIDATE_EF (the default)",
        "wall_s": round(wall, 1),
        "vectors_per_s": round(n / wall, 1),
        "candidate_pairs": len(found),
        "planted_found": hits,
        "recall_planted": round(hits / len(planted), 4),
        "other_pairs_above_threshold": len(found - planted),
        "peak_rss_delta_mb": round(ann.rss_mb()[1] - rss0, 1),
        "load_before": load0,
        "load_after": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--threshold", type=float, default=0.9, help="Candidate cosine (planted copies are >= 0.94).")
    ap.add_argument("--runs", nargs="+", default=DEFAULT_RUNS,
                    help=f"STORE:EF pairs, STORE one of {', '.join(STORES)}; EF 0: the dupes default.")  # fmt: skip
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "visdex-ann")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    runs = [(r.split(":")[0], int(r.split(":")[1])) for r in args.runs]
    if unknown := {s for s, _ in runs} - set(STORES):
        ap.error(f"unknown store(s) {sorted(unknown)}: one of {', '.join(STORES)}")
    out_path = args.out or ann.RESULTS / f"dupes-1e{round(np.log10(args.n))}.json"
    d = ann.prepare(args.cache, args.n, 1000)
    result = {
        "benchmark": "dupes candidate stage (visdex.dupes._candidate_pairs)",
        "n": args.n,
        "dim": ann.DIM,
        "neighbours": dupes.NEIGHBOURS,
        "batch": dupes.BATCH,
        "threshold": args.threshold,
        "data": "benchmarks/ann.py's set: 1000 clusters, 1% planted near-copies (cosine 0.94-0.995)",
        "threads": f"all ({os.cpu_count()}): each batch of {dupes.BATCH} queries is searched in parallel",
        "machine": ann.machine(),
        "stores": {},
        "runs": [],
    }
    planted = np.load(d / "dup_pairs.npy")
    keys = {(int(min(a, b)), int(max(a, b))) for a, b in planted}
    result["planted_pairs"] = len(keys)
    stores: dict[str, LocalVectorStore] = {}
    for name, ef in runs:
        if name not in stores:
            if stores:  # one graph in memory at a time (each is ~2.5 GB at 10^6)
                stores.popitem()[1].db.close()
            result["stores"][name] = {}
            stores[name] = open_store(d, name, result["stores"][name])
            print(name, result["stores"][name], flush=True)
        run = {"store": name, "engine": result["stores"][name]["params"]["engine"],
               **candidate_run(stores[name], keys, args.n, args.threshold, ef)}  # fmt: skip
        result["runs"].append(run)
        print(run, flush=True)
        out_path.write_text(json.dumps(result, indent=1))  # after each run: partial results survive
    first = result["runs"][0]["wall_s"]
    for run in result["runs"]:
        run["speedup_vs_first_run"] = round(first / run["wall_s"], 2)
    out_path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
