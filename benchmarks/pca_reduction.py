"""What ``visdex finetune pca`` costs in retrieval quality: a real model's vectors reduced to fewer dimensions.

Builds tests/variantset.py (regions of 14 scikit-image photos, each a class, re-shot 8 times), indexes
it with a real-weight model, fits a PCA from the index's own vectors (``visdex finetune pca INDEX``)
at several dimensions, and measures on the same labelled images, at each dimension: leave-one-out
Recall@1/10 and mAP@R (``visdex eval``'s metrics), the variance kept, and the share of each image's
10 nearest neighbours at full dimension still found (on held-out images). The PCA is fitted without
the labels, as a user without labels would.

    python benchmarks/pca_reduction.py --model effnet-lite0      # ~2 min -> results/pca-effnet-lite0.json
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
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str] | None = None) -> int:
    from variantset import SPLITS, build
    from visdex.api import open_index
    from visdex.bench import machine_info
    from visdex.evaluate import metrics_from_labels
    from visdex.models import load_embedder
    from visdex.models.base import l2_normalize
    from visdex.train.pca import fit_pca

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="effnet-lite0")
    ap.add_argument("--dims", type=int, nargs="*", default=[32, 64, 128, 256])
    ap.add_argument("--variants", type=int, default=8)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="visdex-pca-") as tmp:
        root = build(Path(tmp) / "set", [s for names in SPLITS.values() for s in names], variants=args.variants)
        with open_index(Path(tmp) / "ix", model=args.model) as ix:
            ix.add([root])
            ids = ix.store.ids()
            full = ix.store.get(ids)
            paths = dict(ix.db.conn.execute("SELECT id, path FROM files").fetchall())
        labels = [Path(paths[int(i)]).parent.name for i in ids]

        def quality(vectors: np.ndarray) -> dict:
            m = metrics_from_labels(vectors, labels).to_dict()
            return {k: round(float(m[k]), 4) for k in ("recall@1", "recall@10", "map@r")}

        rows = [{"dim": int(full.shape[1]), "bytes_fp32": 4 * int(full.shape[1]), **quality(full)}]
        print(rows[-1], flush=True)
        for dim in args.dims:
            if dim >= full.shape[1]:
                continue
            r = fit_pca(args.model, Path(tmp) / "ix", Path(tmp) / f"pca{dim}", dim=dim)
            head = load_embedder(str(Path(tmp) / f"pca{dim}"))
            reduced = l2_normalize(full @ head.proj.T + head.bias)
            rows.append({"dim": dim, "bytes_fp32": 4 * dim, **quality(reduced), "variance_kept": r.variance_kept,
                         "neighbour_recall_at_10": r.neighbour_recall_at_10})  # fmt: skip
            print(rows[-1], flush=True)
    report = {"benchmark": "pca_reduction", "model": args.model, "images": len(labels),
              "classes": len(set(labels)), "what": "tests/variantset.py, all 14 sources, leave-one-out retrieval "
              "metrics on every image; PCA fitted on the index's vectors without labels (visdex finetune pca)",
              "rows": rows, "seconds": round(time.perf_counter() - t0, 1), "machine": machine_info()}  # fmt: skip
    out = ROOT / "benchmarks" / "results" / f"pca-{args.model}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
