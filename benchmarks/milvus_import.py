"""`visdex import` of clip-retrieval shards into the embedded store and into milvus-lite, side by side (alternating
rounds, each into a fresh index), plus an import into an IVF_SQ8 collection (``--ann hnsw-sq8``: IVF_SQ8 on
Milvus) sized for the rows.

    python benchmarks/milvus_import.py --rows 20000 --rounds 2

milvus-lite runs no import jobs, so its rows go by batched upserts (the fallback a server without a bulk stage
gets too); a Milvus server's bulk import is not measured here. Writes benchmarks/results/milvus-import.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_folder(path: Path, rows: int, dim: int, shard: int = 10_000) -> None:
    """A clip-retrieval folder of ``rows`` random unit vectors (float16) with image paths that need not exist."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(path, ignore_errors=True)
    (path / "img_emb").mkdir(parents=True)
    (path / "metadata").mkdir()
    rng = np.random.default_rng(0)
    for n, start in enumerate(range(0, rows, shard)):
        k = min(shard, rows - start)
        v = rng.normal(size=(k, dim)).astype(np.float32)
        np.save(path / "img_emb" / f"img_emb_{n}.npy", (v / np.linalg.norm(v, axis=1, keepdims=True)).astype("f2"))
        names = [f"/data/bench/{i:08d}.jpg" for i in range(start, start + k)]
        pq.write_table(pa.table({"image_path": names, "caption": [None] * k, "url": [None] * k}),
                       path / "metadata" / f"metadata_{n}.parquet")  # fmt: skip


def run(folder: Path, where: Path, model: str, store: str | None, ann: str | None = None) -> dict:
    from visdex.api import open_index
    from visdex.interop import import_clip_retrieval

    shutil.rmtree(where, ignore_errors=True)
    t0 = time.perf_counter()
    with open_index(where, model=model, store=store, ann=ann) as ix:
        report = import_clip_retrieval(ix, folder)
        out = {"rows": report.new, "seconds": round(time.perf_counter() - t0, 2)}
        if store:
            out["index"] = ix.store.info()["index_params"]
    out["rows_per_s"] = round(out["rows"] / out["seconds"], 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--model", default="lite0-minilm", help="a catalog model (its dimension; nothing is loaded)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default="/tmp/visdex-milvus-import")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "milvus-import.json"))
    args = ap.parse_args()
    from visdex.models import get_spec

    work = Path(args.work)
    dim = get_spec(args.model).dim
    make_folder(work / "emb", args.rows, dim)
    lite = f"milvus:{work / 'vectors.db'}"
    rounds, loads = [], []
    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        row = {"local": run(work / "emb", work / "ix-local", args.model, None),
               "milvus-lite": run(work / "emb", work / "ix-milvus", args.model, lite),
               "milvus-lite ivf-sq8": run(work / "emb", work / "ix-ivf", args.model, lite, "hnsw-sq8")}  # fmt: skip
        rounds.append(row)
        print(f"round {r + 1} (load {loads[-1]:.1f}): " + ", ".join(f"{k} {v['rows_per_s']} rows/s" for k, v in
                                                                      row.items()), flush=True)  # fmt: skip
    result = {"rows": args.rows, "dim": dim, "model": args.model, "cpus": os.cpu_count(), "rounds": rounds,
              "load_average_1min": loads, "milvus_lite_over_local": [round(
                  r["milvus-lite"]["rows_per_s"] / r["local"]["rows_per_s"], 3) for r in rounds]}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
