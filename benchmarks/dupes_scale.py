"""Near-duplicate candidates at scale: the k-NN stage of ``visdex.dupes`` over 10^6 vectors with planted
duplicates, on CPU, through the default store (``--ann auto``: HNSW at this size).

    python benchmarks/dupes_scale.py --n 1000000             # -> benchmarks/results/dupes-1e6.json
    python benchmarks/dupes_scale.py --n 100000 --out /tmp/d.json --ef-search 64

The vectors are benchmarks/ann.py's (same generator, same cache): 1000 clusters, and 1% of the rows
overwritten by a near-copy of another row (cosine 0.94-0.995). Recall = planted (copy, original)
pairs that come out of the candidate stage at ``--threshold``. The stage under test is
``visdex.dupes._candidate_pairs``: every stored vector queries the store for its 16 neighbours, in
batches of 1024 (FAISS uses every core). The pixel verification that follows in ``visdex dupes``
needs image files and is not part of this benchmark. If ``ann.py --keep`` left the visdex-auto store
of the same n in the cache, it is reused; otherwise it is built here (and the build is timed).
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


def open_store(d: Path, out: dict) -> LocalVectorStore:
    """The visdex-auto store of this data set: reused from ann.py's cache, or built now."""
    kept = d / "work" / "visdex-auto"
    if not (kept / "vectors.faiss").exists():
        if not (d / "truth" / "index.db").exists():
            ann._write_truth(d, d / "truth")
        kept.mkdir(parents=True, exist_ok=True)
        shutil.copy(d / "truth" / "index.db", kept / "index.db")
        store = LocalVectorStore(IndexDB(kept), ann.DIM, ann="auto")
        t0 = time.perf_counter()
        store.flush()  # builds the index from SQLite and saves it
        out["index_build_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    store = LocalVectorStore(IndexDB(kept), ann.DIM)
    store.index  # noqa: B018 - loads the saved FAISS file
    out["index_load_s"] = round(time.perf_counter() - t0, 1)
    out["kind"] = store.kind
    out["params"] = store.info().get("params")
    return store


def candidate_run(store: LocalVectorStore, planted: set, n: int, threshold: float, ef: int) -> dict:
    """One pass of the candidate stage over every stored vector: wall time and recall of the planted pairs."""
    store.ef_search = ef or None
    rss0 = ann.rss_mb()[0]
    t0 = time.perf_counter()
    pairs = dupes._candidate_pairs(SimpleNamespace(store=store), threshold)  # noqa: SLF001 - the stage itself
    wall = time.perf_counter() - t0
    found = {(a, b) for a, b, _ in pairs}
    hits = len(planted & found)
    run = {
        "ef_search": ef or "store default: max(512, 4k)",
        "wall_s": round(wall, 1),
        "vectors_per_s": round(n / wall, 1),
        "candidate_pairs": len(found),
        "planted_found": hits,
        "recall_planted": round(hits / len(planted), 4),
        "other_pairs_above_threshold": len(found - planted),
        "peak_rss_delta_mb": round(ann.rss_mb()[1] - rss0, 1),
    }
    print(run, flush=True)
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--threshold", type=float, default=0.9, help="Candidate cosine (planted copies are >= 0.94).")
    ap.add_argument("--ef-search", type=int, nargs="+", default=[0],
                    help="HNSW efSearch values to run with (0: the store's default, max(512, 4k)).")  # fmt: skip
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "visdex-ann")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
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
        "threads": f"all ({os.cpu_count()}): FAISS searches each batch of {dupes.BATCH} queries in parallel",
        "machine": ann.machine(),
        "load_before": os.getloadavg(),
    }
    store = open_store(d, result)
    planted = np.load(d / "dup_pairs.npy")
    keys = {(int(min(a, b)), int(max(a, b))) for a, b in planted}
    result["planted_pairs"] = len(keys)
    result["runs"] = [candidate_run(store, keys, args.n, args.threshold, ef) for ef in args.ef_search]
    result["load_after"] = os.getloadavg()
    out_path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
