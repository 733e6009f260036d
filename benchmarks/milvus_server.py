"""Against a running Milvus server: `visdex import` of random clip-retrieval rows, then a re-size of the collection's
IVF_SQ8 index (built aside, the alias moved) while another reader searches without pause.

    milvus-server --data /tmp/milvus --proxy-port 19530 &      # pip install 'visdex[milvus-server]'
    python benchmarks/milvus_server.py --store milvus://127.0.0.1:19530 --rows 20000

Prints and writes JSON (benchmarks/results/milvus-server.json): import rows/s, the re-size's seconds, searches
answered during it (and their slowest latency), searches that failed; with ``--stage file:///dir`` also the rows/s of
the same import by the server's bulk insert (until searches see the rows).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True, help="milvus://host:port of a running server")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--model", default="lite0-minilm", help="a catalog model (its dimension; nothing is loaded)")
    ap.add_argument("--stage", help="also time a bulk import staged here (file:///dir for a server on this machine)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "milvus-server.json"))
    args = ap.parse_args()

    import numpy as np
    from milvus_import import make_folder

    from visdex import open_index
    from visdex.interop import import_clip_retrieval
    from visdex.store import milvus

    work = Path(tempfile.mkdtemp(prefix="visdex-milvus-server-"))
    make_folder(work / "small", 100, 384)
    make_folder(work / "emb", args.rows, 384)
    os.environ["VISDEX_STORE"] = args.store
    with open_index(work / "ix", model=args.model, ann="ivf-sq8") as ix:
        import_clip_retrieval(ix, work / "small")  # the collection and its IVF index are made for 100 rows
        ix.store.flush()
        growth, milvus.RESIZE_GROWTH = milvus.RESIZE_GROWTH, float("inf")  # hold the re-size for the timed run
        t = time.perf_counter()
        import_clip_retrieval(ix, work / "emb")  # batched writes: what a 2.3 server gets (no import-jobs API)
        ix.store.flush()
        import_s = time.perf_counter() - t
        milvus.RESIZE_GROWTH = growth
        q = np.asarray(ix.store.get(ix.store.ids()[:4]))
        reader = milvus.MilvusVectorStore(ix.db, 384)
        base = []
        for _ in range(20):  # the same searches before the re-size, for comparison
            t0 = time.perf_counter()
            reader.search(q, 10)
            base.append(time.perf_counter() - t0)
        lat, failed, done = [], [], threading.Event()

        def resize():
            t0 = time.perf_counter()
            ix.store.fit_index()
            lat.append(("resize", time.perf_counter() - t0))
            done.set()

        th = threading.Thread(target=resize)
        th.start()
        while not done.is_set():
            t0 = time.perf_counter()
            try:
                reader.search(q, 10)
                lat.append(("search", time.perf_counter() - t0))
            except Exception as e:  # noqa: BLE001 - counted: what the re-size must not cause
                failed.append(repr(e)[:200])
        th.join()
        searches = [s for k, s in lat if k == "search"]
        out = {"store": args.store, "rows": args.rows, "import_rows_per_s": round(args.rows / import_s),
               "resize_s": round(next(s for k, s in lat if k == "resize"), 2), "searches_during": len(searches),
               "search_ms_p50": round(1000 * float(np.median(searches)), 1) if searches else None,
               "search_ms_max": round(1000 * max(searches), 1) if searches else None, "failed": len(failed),
               "search_ms_p50_before": round(1000 * float(np.median(base)), 1),
               "index_after": ix.store.info()["index_params"], "load_avg": os.getloadavg()}  # fmt: skip
        ix.store.drop_collection()
    if args.stage:  # the same rows into a new index by the server's bulk insert (2.3: gRPC, 2.4+: REST jobs)
        os.environ["VISDEX_MILVUS_BULK_STAGE"] = args.stage
        with open_index(work / "bulk-ix", model=args.model, ann="ivf-sq8") as ix:
            t = time.perf_counter()
            import_clip_retrieval(ix, work / "emb")
            ix.store.flush()
            out["bulk_import_rows_per_s"] = round(args.rows / (time.perf_counter() - t))
            out["bulk_api"] = ix.store.bulk.api
            ix.store.drop_collection()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
