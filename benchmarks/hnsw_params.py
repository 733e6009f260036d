"""Why visdex builds HNSW with M=32, efConstruction=80: FAISS HNSW at other settings on the same data.

Builds ``faiss.IndexHNSWFlat`` (inner product) over ann.py's clustered 512-d vectors with several
(M, efConstruction) pairs, including FAISS's defaults (32, 40) and hnswlib's (16, 200), and sweeps
efSearch: single-thread QPS at recall@10 >= 0.95 / 0.99 against the build time (both cores).

    python benchmarks/hnsw_params.py --n 100000     # ~5 min on 2 cores -> results/hnsw-params-1e5.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ann import exact_topk, machine, make_vectors, recall_at_10  # noqa: E402

SETTINGS = [(32, 80, "visdex"), (32, 40, "FAISS default"), (16, 200, "hnswlib default"), (24, 120, "between")]
EF = (16, 24, 32, 48, 64, 96, 128, 256)


def main(argv: list[str] | None = None) -> int:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args(argv)
    xb, xq = make_vectors(args.n, seed=1), make_vectors(args.queries, seed=2)
    gt = exact_topk(xb, xq, 10)
    rows = []
    for m, efc, what in SETTINGS:
        faiss.omp_set_num_threads(2)
        index = faiss.IndexHNSWFlat(xb.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = efc
        t = time.perf_counter()
        index.add(xb)
        build = time.perf_counter() - t
        faiss.omp_set_num_threads(1)
        sweep = []
        for ef in EF:
            index.hnsw.efSearch = ef
            t = time.perf_counter()
            found = np.vstack([index.search(q[None], 10)[1] for q in xq])
            sweep.append({"ef": ef, "recall_at_10": round(recall_at_10(found, gt), 4),
                          "qps": round(len(xq) / (time.perf_counter() - t), 1)})  # fmt: skip
        best = {f"{r:.2f}": max((s["qps"] for s in sweep if s["recall_at_10"] >= r), default=None)
                for r in (0.95, 0.99)}  # fmt: skip
        rows.append({"M": m, "efConstruction": efc, "what": what, "build_s": round(build, 1), "qps_at_recall": best,
                     "sweep": sweep})  # fmt: skip
        print(m, efc, what, round(build, 1), best, flush=True)
    out = ROOT / "benchmarks" / "results" / f"hnsw-params-{args.n:.0e}".replace("+0", "").replace("+", "")
    report = {"benchmark": "hnsw_params", "n": args.n, "dim": int(xb.shape[1]), "queries": args.queries,
              "method": "faiss.IndexHNSWFlat (IP); build on all cores; one query per call on one thread; "
                        "QPS at recall r: the fastest efSearch reaching it",
              "settings": rows, "machine": machine()}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(out.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
