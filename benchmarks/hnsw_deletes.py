"""Deletes in an HNSW store: what a delete costs before the next search, and what dead nodes do to recall.

A FAISS HNSW graph cannot remove a node. visdex relabels a deleted (or replaced) vector's node as dead:
it keeps routing searches and is never returned, and the graph is rebuilt from SQLite only when a
quarter of it is dead. This measures, on clustered 512-d vectors (the data of ``ann.py``):

- ``build_s``: building the graph from SQLite (what every delete used to cost before the next search);
- per step, deleting a batch of random ids: the delete itself plus the first search after it
  (``delete_then_search_ms``), and recall@10 against exact search over the live vectors at the
  default efSearch, with 0 -> 20% of the graph dead (then one step past 25%, which rebuilds).

    python benchmarks/hnsw_deletes.py --n 100000     # ~2 min on 2 cores -> results/hnsw-deletes-1e5.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ann import exact_topk, machine, make_vectors, recall_at_10  # noqa: E402

from visdex.store.db import IndexDB  # noqa: E402
from visdex.store.local import LocalVectorStore  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--steps", type=float, nargs="*", default=[0.0001, 0.001, 0.01, 0.05, 0.10, 0.20, 0.26],
                    help="fractions of the store deleted so far, cumulative")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    n = args.n
    xb, xq = make_vectors(n, seed=1), make_vectors(args.queries, seed=2)
    rng = np.random.default_rng(0)
    order = rng.permutation(n)  # ids deleted in this order
    with tempfile.TemporaryDirectory(prefix="visdex-hnsw-del-") as tmp:
        store = LocalVectorStore(IndexDB(Path(tmp) / "ix"), xb.shape[1], ann="hnsw")
        for start in range(0, n, 50_000):
            store.upsert(np.arange(start, min(n, start + 50_000)), xb[start : start + 50_000])
        store._index, store._stale = None, False  # measure a build from SQLite, as a reopen or an old delete did
        t = time.perf_counter()
        store.search(xq[:1], 10)
        build_s = time.perf_counter() - t
        steps, deleted = [], 0
        for frac in [0.0, *args.steps]:
            target = int(round(frac * n))
            batch = order[deleted:target]
            t = time.perf_counter()
            if len(batch):
                store.delete(batch)
            store.search(xq[:1], 10)
            ms = (time.perf_counter() - t) * 1000
            deleted = target
            live = np.sort(order[deleted:])
            gt = live[exact_topk(xb[live], xq, 10)]
            t = time.perf_counter()
            _, found = store.search(xq, 10)
            q_ms = (time.perf_counter() - t) * 1000 / len(xq)
            info = store.info()
            steps.append({"deleted_fraction": frac, "deleted_now": int(len(batch)),
                          "dead_nodes": info.get("dead_nodes"),
                          "graph_nodes": int(store.index.ntotal), "delete_then_search_ms": round(ms, 1),
                          "recall_at_10": round(recall_at_10(found, gt), 4), "ms_per_query": round(q_ms, 3),
                          "returned_deleted": int(np.isin(found, order[:deleted]).sum())})  # fmt: skip
            print(steps[-1], flush=True)
    report = {"benchmark": "hnsw_deletes", "n": n, "dim": int(xb.shape[1]), "queries": len(xq),
              "method": "ann.py's clustered vectors; random ids deleted in cumulative steps; the delete and the "
                        "first search after it timed together; recall@10 vs exact search over the live vectors, "
                        "default efSearch (max(512, 4k)), batch search on all cores",
              "build_s": round(build_s, 1), "steps": steps, "machine": machine()}  # fmt: skip
    out = args.out or RESULTS / f"hnsw-deletes-{n:.0e}".replace("+0", "").replace("+", "")
    out = out.with_suffix(".json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
