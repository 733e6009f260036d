"""Text search quality on the bundled photos: top-1 and Recall@5 of the fixed queries in quality_queries.json,
with and without hubness reduction, per model; and `visdex eval captions` / `eval labelled` before/after.

    python benchmarks/quality_offline.py                       # offline models (lite0-minilm, effnet-lite0)
    python benchmarks/quality_offline.py --model tiny-clip-dir  # any model name or local directory

Writes benchmarks/results/quality-hubness.json. Cost per query is measured on the index's search path."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
QUERIES = json.loads((ROOT / "benchmarks" / "quality_queries.json").read_text())


def write_corpus(d: Path) -> dict[str, Path]:
    """The query set's images as files: name -> path."""
    import skimage.data as sd
    from PIL import Image

    out = {}
    for name, src in QUERIES["images"].items():
        if src.startswith("skimage:"):
            a = getattr(sd, src.split(":", 1)[1])()
            a = a[0] if isinstance(a, tuple) else a
            a = (a * 255).astype(np.uint8) if a.dtype == bool else a
            img = Image.fromarray(a).convert("RGB")
            out[name] = d / f"{name}.png"
            img.save(out[name])
        else:
            out[name] = ROOT / src
    return out


def query_scores(ix, names_by_path: dict[str, str], hubness: bool) -> dict:
    top1 = r5 = 0
    t0 = time.perf_counter()
    for q in QUERIES["queries"]:
        hits = ix.search(q["q"], k=5, hubness=hubness)
        got = [names_by_path[h.path] for h in hits]
        top1 += got[0] in q["relevant"]
        r5 += any(g in q["relevant"] for g in got)
    n = len(QUERIES["queries"])
    ms = 1000 * (time.perf_counter() - t0) / n
    return {"top1": round(top1 / n, 3), "recall@5": round(r5 / n, 3), "ms_per_query": round(ms, 2)}


def run(model: str, work: Path) -> dict:
    from visdex import open_index
    from visdex.evaluate import eval_captions, eval_labelled_folder
    from visdex.models import load_embedder

    corpus = write_corpus(work)
    res: dict = {"model": model}
    with open_index(work / f"ix-{abs(hash(model))}", model=model) as ix:
        ix.add([str(p) for p in corpus.values()])
        names = {str(Path(p).resolve()): n for n, p in corpus.items()}
        if ix.embedder.supports_text:
            ix.search("warm-up", k=5, hubness=True)  # the text bank is embedded once per index, then cached
            res["queries_off"] = query_scores(ix, names, False)
            res["queries_on"] = query_scores(ix, names, True)
    emb = load_embedder(model)
    if getattr(emb, "supports_text", False):
        pairs = [(str(corpus[r]), q["q"]) for q in QUERIES["queries"] for r in q["relevant"]]
        for on in (False, True):
            ev = eval_captions(emb, pairs, hubness=on)
            res[f"captions_{'on' if on else 'off'}"] = {
                k: round(v, 3) for k, v in ev.text_to_image.to_dict().items() if k in ("recall@1", "recall@5", "mrr@10")
            }
    sys.path.insert(0, str(ROOT / "tests"))
    from dupeset import build, source_of  # labelled set: each photo and its edited copies are one class

    lab = work / "labelled"
    groups = build(lab, hard=False)
    pairs = [(str(p), source_of(str(p))) for ps in groups.values() for p in ps]
    for on in (False, True):
        ev = eval_labelled_folder(emb, pairs, hubness=on)
        res[f"labelled_{'on' if on else 'off'}"] = {
            k: round(v, 3) for k, v in ev.metrics.to_dict().items() if k in ("recall@1", "recall@5", "map@r", "ndcg@10")
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality-hubness.json"))
    args = ap.parse_args()
    models = args.model or ["lite0-minilm", "effnet-lite0"]
    results = []
    with tempfile.TemporaryDirectory() as t:
        for m in models:
            results.append(run(m, Path(t)))
            print(json.dumps(results[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"load_average": os.getloadavg(), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
