"""Text search quality on the bundled photos: top-1 and Recall@5 of fixed text queries, with and without hubness
reduction, per model; `visdex eval captions` / `eval labelled` with and without it; what hubness costs per query.

Two query sets: ``fixed`` (quality_queries.json, 35 queries, 21 photos: lite0-minilm's prompts and lite2-minilm were
tuned on it) and ``heldout`` (quality_queries_heldout.json, 42 queries, 26 photos, written before any measurement on
it: it decides whether hubness is on by default for a model, see visdex.hubness.DEFAULT_ON).

    python benchmarks/quality_offline.py                                   # lite0-minilm, lite2-minilm, tiny-clip
    python benchmarks/quality_offline.py --model lite0-minilm --queries heldout
    python benchmarks/quality_offline.py --model tiny-clip                 # random weights: plumbing only

``tiny-clip`` is the tests' tiny random-weight CLIP (tests/tinymodels.py), built in a temp dir. Writes
benchmarks/results/quality-hubness-heldout.json."""

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
SETS = {"fixed": "quality_queries.json", "heldout": "quality_queries_heldout.json"}
sys.path.insert(0, str(ROOT / "tests"))


def load_queries(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / SETS.get(name, name)).read_text())


QUERIES = load_queries("fixed")  # quality_conse.py reads the fixed set from here


def _image(src: str) -> np.ndarray:
    """``skimage:<function>`` or ``sklearn:<sample image>`` as a uint8 array."""
    kind, name = src.split(":", 1)
    if kind == "sklearn":
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    import skimage.data as sd

    a = getattr(sd, name)()
    a = a[0] if isinstance(a, tuple) else a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype.kind == "f":  # e.g. the Shepp-Logan phantom, in [0, 1]
        return (np.clip(a, 0, 1) * 255).astype(np.uint8)
    return a


def write_corpus(d: Path, queries: dict | None = None) -> dict[str, Path]:
    """The query set's images as files: name -> path."""
    from PIL import Image

    out = {}
    d.mkdir(parents=True, exist_ok=True)
    for name, src in (queries or QUERIES)["images"].items():
        if src.startswith(("skimage:", "sklearn:")):
            out[name] = d / f"{name}.png"
            Image.fromarray(_image(src)).convert("RGB").save(out[name])
        else:
            out[name] = ROOT / src
    return out


def query_scores(ix, names_by_path: dict[str, str], hubness: bool, queries: dict | None = None) -> dict:
    top1 = r5 = 0
    qs = (queries or QUERIES)["queries"]
    t0 = time.perf_counter()
    for q in qs:
        hits = ix.search(q["q"], k=5, hubness=hubness)
        got = [names_by_path[h.path] for h in hits]
        top1 += got[0] in q["relevant"]
        r5 += any(g in q["relevant"] for g in got)
    n = len(qs)
    ms = 1000 * (time.perf_counter() - t0) / n
    return {"top1": round(top1 / n, 3), "recall@5": round(r5 / n, 3), "ms_per_query": round(ms, 2)}


def hubness_cost(ix, text: str = "a cat on a sofa", repeat: int = 20) -> dict:
    """What hubness adds to a query: the text bank's embedding (once per model, cached) and the re-scoring of a
    shortlist (every query), measured apart from the text embedding both paths share."""
    from visdex.hubness import HubnessReducer, shortlist_size, text_bank, text_bank_texts

    t0 = time.perf_counter()
    text_bank(ix.text_embedder, ix.db.fingerprint, cache=False)  # the cold cost: no file, nothing in memory
    bank_s = time.perf_counter() - t0
    reducer = HubnessReducer(ix)
    vec = ix.text_embedder.embed_texts([text])[0]
    scores, ids = ix.store.search(vec[None], min(shortlist_size(10), ix.store.count()))
    t0 = time.perf_counter()
    reducer.rescore("text", ids[0], scores[0])  # cold r(x) of the shortlist
    cold_ms = 1000 * (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(repeat):
        reducer.rescore("text", ids[0], scores[0])
    warm_ms = 1000 * (time.perf_counter() - t0) / repeat
    return {"bank_texts": len(text_bank_texts()), "bank_seconds": round(bank_s, 2),
            "rescore_cold_ms": round(cold_ms, 3), "rescore_warm_ms": round(warm_ms, 3)}  # fmt: skip


def run_set(model: str, work: Path, set_name: str) -> dict:
    from visdex import open_index
    from visdex.evaluate import eval_captions
    from visdex.models import load_embedder

    queries = load_queries(set_name)
    corpus = write_corpus(work / f"corpus-{set_name}", queries)
    res: dict = {"queries": len(queries["queries"]), "images": len(corpus)}
    with open_index(work / f"ix-{set_name}-{abs(hash(model))}", model=model) as ix:
        ix.add([str(p) for p in corpus.values()])
        if not ix.embedder.supports_text:
            return res
        names = {str(Path(p).resolve()): n for n, p in corpus.items()}
        ix.search("warm-up", k=5, hubness=True)  # the text bank is embedded once per model, then cached
        res["search_off"] = query_scores(ix, names, False, queries)
        res["search_on"] = query_scores(ix, names, True, queries)
        res["cost"] = hubness_cost(ix)
    emb = load_embedder(model)
    pairs = [(str(corpus[r]), q["q"]) for q in queries["queries"] for r in q["relevant"]]
    for on in (False, True):
        ev = eval_captions(emb, pairs, hubness=on)
        res[f"captions_{'on' if on else 'off'}"] = {
            k: round(v, 3) for k, v in ev.text_to_image.to_dict().items() if k in ("recall@1", "recall@5", "mrr@10")
        }
    return res


def run_labelled(model: str, work: Path) -> dict:
    from dupeset import build, source_of  # labelled set: each photo and its edited copies are one class
    from visdex.evaluate import eval_labelled_folder
    from visdex.models import load_embedder

    emb = load_embedder(model)
    lab = work / "labelled"
    groups = build(lab, hard=False)
    pairs = [(str(p), source_of(str(p))) for ps in groups.values() for p in ps]
    res = {}
    for on in (False, True):
        ev = eval_labelled_folder(emb, pairs, hubness=on)
        res[f"labelled_{'on' if on else 'off'}"] = {
            k: round(v, 3) for k, v in ev.metrics.to_dict().items() if k in ("recall@1", "recall@5", "map@r", "ndcg@10")
        }
    return res


def resolve(model: str, work: Path) -> str:
    if model != "tiny-clip":
        return model
    from tinymodels import make_tiny_clip

    return str(make_tiny_clip(work / "tiny-clip"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--queries", action="append", default=[], choices=sorted(SETS))
    ap.add_argument("--no-labelled", action="store_true", help="Skip eval labelled (the dupeset images).")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality-hubness-heldout.json"))
    args = ap.parse_args()
    models = args.model or ["lite0-minilm", "lite2-minilm", "tiny-clip"]
    sets = args.queries or ["fixed", "heldout"]
    results = []
    with tempfile.TemporaryDirectory() as t:
        for m in models:
            work = Path(t) / m
            res: dict = {"model": m}
            name = resolve(m, work)
            for s in sets:
                res[s] = run_set(name, work, s)
                print(m, s, json.dumps(res[s]), flush=True)
            if not args.no_labelled:
                res.update(run_labelled(name, work))
            results.append(res)
            print(json.dumps(res), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = {"load_average": os.getloadavg(), "results": results}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
