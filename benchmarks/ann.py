"""ANN benchmark of the embedded store: recall@10 against exact search, QPS, build time and memory of
each ``--ann`` kind, next to hnswlib and FAISS HNSW with their defaults, on one data set in one run.

    python benchmarks/ann.py --n 100000                    # -> benchmarks/results/ann-1e5.json
    python benchmarks/ann.py --n 1000000 --queries 500     # -> benchmarks/results/ann-1e6.json
    python benchmarks/ann.py --n 20000 --configs visdex-ivfpq hnswlib --out /tmp/a.json   # a quick look

Data: 512-d L2-normalised vectors from 1000 Gaussian clusters whose spread decays over the dimensions
like a power law (real image embeddings have a low intrinsic dimension; isotropic noise in 512-d would
make every neighbour equally far), plus 1% planted near-duplicates (cosine 0.94-0.995 to an original;
benchmarks/dupes_scale.py looks for them). Queries come from the same clusters and are not in the set.
Ground truth: exact inner product with a FAISS flat index.

Each configuration runs in its own process (clean RSS numbers, and a crash or Ctrl-C loses one
configuration: finished ones are cached under ``--cache`` and reused). Builds use every core;
searches use ONE thread and ONE query per call (how visdex answers a user), swept over efSearch /
nprobe / shortlist; "QPS at recall r" is the fastest setting whose recall@10 reaches r. The visdex
kinds are built from the store's SQLite truth (the time a rebuild after a delete also takes) and
searched through ``LocalVectorStore.search`` (re-ranking included). On a shared machine absolute
numbers are noisy; the load average before and after each configuration is recorded.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DIM, CLUSTERS, ALPHA, SIGMA = 512, 1000, 0.5, 0.7
DUP_FRACTION = 0.01
EF_SWEEP = (10, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024)
NPROBE_SWEEP = (2, 4, 8, 16, 32, 64, 128, 256, 512)
SHORTLIST_SWEEP = (20, 50, 100, 200)
TARGETS = (0.90, 0.95, 0.99)
FILTERS = {"5%": 20, "50%": 2}  # allowed ids: id % m == 0
CONFIGS = {
    "visdex-flat": "exact inner product (float32), the --ann flat store",
    "visdex-auto": "the default store: --ann auto (HNSW at these sizes: from 100k vectors; hnswlib's graph "
    "when hnswlib is installed, else FAISS's)",
    "visdex-hnsw-faiss": "--ann hnsw on the FAISS engine (what it builds without hnswlib: M=32, efConstruction=80)",
    "visdex-hnsw-fp16": "--ann hnsw-fp16: HNSW over float16 vectors, shortlist 2k re-ranked",
    "visdex-hnsw-sq8": "--ann hnsw-sq8: HNSW over int8 vectors, shortlist 4k re-ranked",
    "visdex-ivfpq": "--ann ivfpq: IVF-PQ, shortlist re-ranked with float32 vectors from SQLite",
    "visdex-flat-sq8": "--ann flat-sq8: exhaustive scan of int8 vectors, shortlist re-ranked",
    "faiss-hnsw-default": "faiss.IndexHNSWFlat(d, 32, IP) with FAISS defaults (efConstruction 40)",
    "hnswlib-default": "hnswlib.Index('ip') with M=16, ef_construction=200 (hnswlib's defaults)",
}
DEFAULT_CONFIGS = [c for c in CONFIGS if c != "visdex-flat-sq8"]
KEPT = ("visdex-auto", "visdex-hnsw-faiss")  # --keep: the HNSW stores benchmarks/dupes_scale.py reuses


def unavailable(name: str) -> str | None:
    """Why a configuration cannot run here (an optional library it compares against is missing), or None."""
    if name != "hnswlib-default":
        return None
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        return "hnswlib is not installed (pip install hnswlib)"
    return None


# ---------------------------------------------------------------- data


def make_vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """``n`` clustered, L2-normalised vectors; the clusters and their shape are the same for every seed."""
    rng = np.random.default_rng(1234)
    scales = (1.0 + np.arange(dim)) ** -ALPHA
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    centres = (rng.standard_normal((CLUSTERS, dim)) * scales) @ basis.T
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.5, 1.5, CLUSTERS) * SIGMA / np.sqrt((scales**2).sum())
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        r = np.random.default_rng([seed, start])
        m = min(100_000, n - start)
        c = r.integers(0, CLUSTERS, m)
        x = centres[c] + spread[c, None] * ((r.standard_normal((m, dim)) * scales) @ basis.T)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def plant_duplicates(xb: np.ndarray, seed: int = 7) -> np.ndarray:
    """Overwrite the last 1% of rows with near-copies of random earlier rows; returns (copy, original) pairs."""
    n, dim = xb.shape
    n_dup = int(n * DUP_FRACTION)
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n - n_dup, n_dup)
    noise = rng.standard_normal((n_dup, dim)).astype(np.float32)
    noise *= (rng.uniform(0.1, 0.35, n_dup) / np.linalg.norm(noise, axis=1))[:, None]
    x = xb[src] + noise
    xb[n - n_dup :] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.stack([np.arange(n - n_dup, n), src], axis=1)


def exact_topk(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(xb.shape[1])
    for start in range(0, len(xb), 200_000):  # blocks, so the flat index never copies everything at once
        index.add(xb[start : start + 200_000])
    return index.search(xq, k)[1]


def prepare(cache: Path, n: int, nq: int) -> Path:
    """Vectors, queries, ground truth and planted pairs under ``cache/n{n}`` (made once)."""
    d = cache / f"n{n}"
    if (d / "gt.npy").exists() and np.load(d / "xq.npy", mmap_mode="r").shape[0] >= nq:
        return d
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    xb = make_vectors(n, seed=1)
    pairs = plant_duplicates(xb)
    xq = make_vectors(nq, seed=2)
    np.save(d / "xb.npy", xb)
    np.save(d / "xq.npy", xq)
    np.save(d / "dup_pairs.npy", pairs)
    gt = exact_topk(xb, xq, 100)
    ids = np.arange(n)
    for m in FILTERS.values():
        allowed = ids[ids % m == 0]
        np.save(d / f"gt_filter_{m}.npy", allowed[exact_topk(xb[allowed], xq[:100], 10)])
    stats = _data_stats(xb, xq, gt)
    stats["prepare_s"] = round(time.perf_counter() - t0, 1)
    (d / "data.json").write_text(json.dumps(stats))
    np.save(d / "gt.npy", gt)  # last: its presence marks a complete cache
    return d


def _data_stats(xb: np.ndarray, xq: np.ndarray, gt: np.ndarray) -> dict:
    """How hard the set is: cosine of each query's 1st / 10th / 100th neighbour (quantiles 10/50/90%)."""
    q = xq[:200]
    cos = np.einsum("qd,qkd->qk", q, xb[gt[:200][:, [0, 9, 99]]])
    rnd = float(np.median(q @ xb[:1000].T))
    out = {f"nn{r}_cosine_q10_50_90": np.quantile(cos[:, i], [0.1, 0.5, 0.9]).round(3).tolist()
           for i, r in enumerate((1, 10, 100))}  # fmt: skip
    out["random_pair_cosine_median"] = round(rnd, 3)
    return out


# ---------------------------------------------------------------- one configuration (a child process)


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, after handing freed heap back to the OS (glibc)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS then also counts freed but kept heap
        pass
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            vals[line.split(":")[0]] = int(line.split()[1]) / 1024
    return vals.get("VmRSS", 0.0), vals.get("VmHWM", 0.0)


def recall_at_10(found: np.ndarray, gt: np.ndarray) -> float:
    hits = [len(set(a[:10].tolist()) & set(b[:10].tolist())) for a, b in zip(found, gt, strict=True)]
    return float(np.mean(hits)) / 10


def timed_queries(search, xq: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Ids of one search per query (one at a time), the queries per second, and the queries per CPU second
    of this thread (every search here runs on the calling thread; on a shared machine the CPU time is what
    other processes' load does not stretch much)."""
    out = np.empty((len(xq), 10), np.int64)
    t0, c0 = time.perf_counter(), time.thread_time()
    for i, q in enumerate(xq):
        out[i] = search(q[None])[0]
    return out, len(xq) / (time.perf_counter() - t0), len(xq) / max(time.thread_time() - c0, 1e-9)


def run_config(name: str, d: Path, nq: int, workdir: Path) -> dict:
    import faiss

    xq, gt = np.load(d / "xq.npy")[:nq], np.load(d / "gt.npy")[:nq]
    n = np.load(d / "xb.npy", mmap_mode="r").shape[0]
    gc.collect()
    rss0, _ = rss_mb()
    out = {"config": name, "what": CONFIGS[name], "n": n, "dim": DIM, "queries": nq, "load_before": os.getloadavg()}
    if name.startswith("visdex-"):
        handle = _build_visdex(name, d, workdir, out)
    elif name == "faiss-hnsw-default":
        xb = np.load(d / "xb.npy")
        rss0, _ = rss_mb()
        t0 = time.perf_counter()
        handle = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        handle.add(xb)
        out["build_s"] = round(time.perf_counter() - t0, 1)
        out["_rss1"] = rss_mb()  # while the data is still loaded, as it was at rss0
        del xb
        out["params"] = {"M": 32, "efConstruction": handle.hnsw.efConstruction}
        path = workdir / f"{name}.faiss"
        faiss.write_index(handle, str(path))
        out["index_bytes"] = path.stat().st_size
        path.unlink()
    else:
        handle = _build_hnswlib(d, workdir, out)
        rss0 = out.pop("_rss0")
    gc.collect()
    rss1, peak = out.pop("_rss1", None) or rss_mb()
    out["rss_delta_mb"] = round(rss1 - rss0, 1)
    out["peak_rss_delta_mb"] = round(peak - rss0, 1)
    out["bytes_per_vector"] = round(out["index_bytes"] / n, 1)
    out["index_gb_per_million"] = round(out["index_bytes"] / n * 1e6 / 1e9, 3)
    if not name.startswith("visdex-"):
        faiss.omp_set_num_threads(1)  # the libraries as a user would tune them; the store picks its threads per call
    out["sweep"] = _sweep(name, handle, xq, gt, n)
    out["default"] = _default_point(name, handle, xq, gt)
    if name.startswith("visdex-"):
        out["filtered"] = _filtered(handle, d, xq)
    out["at_recall"] = at_recall(out["sweep"])
    out["at_recall_cpu"] = at_recall(out["sweep"], "qps_cpu")
    out["load_after"] = os.getloadavg()
    return out


def _build_visdex(name: str, d: Path, workdir: Path, out: dict):
    """Copy the SQLite truth (vectors written once per n), then build the kind's FAISS index from it."""
    from visdex.store.db import IndexDB
    from visdex.store.local import LocalVectorStore

    truth = d / "truth"
    if not (truth / "index.db").exists():
        _write_truth(d, truth)
    out["sqlite_write_s"] = json.loads((truth / "write.json").read_text())["seconds"]
    target = workdir / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy(truth / "index.db", target / "index.db")
    out["sqlite_bytes"] = (target / "index.db").stat().st_size
    ann = name.removeprefix("visdex-").removesuffix("-faiss")
    store = LocalVectorStore(IndexDB(target), DIM, ann=ann)
    store.hnsw_engine = "faiss" if name.endswith("-faiss") else None
    getattr(store.db, "hold_writer", lambda: None)()  # only the index's writer saves the file (flush below)
    gc.collect()
    t0 = time.perf_counter()
    store.index  # noqa: B018 - builds the FAISS index from SQLite (training included)
    out["build_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    store.flush()
    out["save_s"] = round(time.perf_counter() - t0, 1)
    out["index_bytes"] = store.faiss_path.stat().st_size
    out["kind"] = store.kind
    out["params"] = store.info().get("params")
    return store


def _write_truth(d: Path, truth: Path) -> None:
    from visdex.store.db import IndexDB
    from visdex.store.local import LocalVectorStore

    tmp = truth.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    xb = np.load(d / "xb.npy", mmap_mode="r")
    db = IndexDB(tmp)
    store = LocalVectorStore(db, DIM, ann="flat")
    store._stale = True  # noqa: SLF001 - write the truth only; no index is needed for it
    t0 = time.perf_counter()
    for start in range(0, len(xb), 50_000):
        store.upsert(np.arange(start, min(start + 50_000, len(xb))), np.asarray(xb[start : start + 50_000]))
    seconds = time.perf_counter() - t0
    db.close()
    (tmp / "write.json").write_text(json.dumps({"seconds": round(seconds, 1)}))
    for extra in ("vectors.faiss", "vectors.faiss.json"):
        (tmp / extra).unlink(missing_ok=True)
    tmp.rename(truth)


def _build_hnswlib(d: Path, workdir: Path, out: dict):
    import hnswlib

    xb = np.load(d / "xb.npy")
    out["_rss0"] = rss_mb()[0]
    index = hnswlib.Index(space="ip", dim=DIM)
    t0 = time.perf_counter()
    index.init_index(max_elements=len(xb), M=16, ef_construction=200)
    index.add_items(xb, np.arange(len(xb)), num_threads=os.cpu_count())
    out["build_s"] = round(time.perf_counter() - t0, 1)
    out["_rss1"] = rss_mb()
    del xb
    out["params"] = {"M": 16, "ef_construction": 200}
    path = workdir / "hnswlib.bin"
    index.save_index(str(path))
    out["index_bytes"] = path.stat().st_size
    path.unlink()
    index.set_num_threads(1)
    return index


def _searcher(name: str, handle, **kw):
    """A one-query search function for one sweep setting."""
    if name == "hnswlib-default":
        handle.set_ef(max(kw["ef"], 10))
        return lambda q: handle.knn_query(q, k=10)[0]
    if name == "faiss-hnsw-default":
        handle.hnsw.efSearch = kw["ef"]
        return lambda q: handle.search(q, 10)[1]
    handle.ef_search, handle.nprobe, handle.shortlist = kw.get("ef"), kw.get("nprobe"), kw.get("shortlist")
    return lambda q: handle.search(q, 10)[1]


def _settings(name: str, handle) -> list[dict]:
    if name in ("visdex-flat", "visdex-flat-sq8"):
        return [{}]
    if name == "visdex-ivfpq":
        nlist = handle.info()["params"]["nlist"]
        return [{"nprobe": p, "shortlist": s} for p in NPROBE_SWEEP if p <= nlist for s in SHORTLIST_SWEEP]
    return [{"ef": ef} for ef in EF_SWEEP]


def _sweep(name: str, handle, xq: np.ndarray, gt: np.ndarray, n: int) -> list[dict]:
    rows = []
    slow = name in ("visdex-flat", "visdex-flat-sq8") and n > 200_000
    qs, g = (xq[:100], gt[:100]) if slow else (xq, gt)  # an exhaustive scan of 1e6 takes ~0.1 s a query
    for kw in _settings(name, handle):
        found, qps, qps_cpu = timed_queries(_searcher(name, handle, **kw), qs)
        rows.append({**kw, "recall_at_10": round(recall_at_10(found, g), 4), "qps": round(qps, 1),
                     "qps_cpu": round(qps_cpu, 1), "ms_per_query_1thread": round(1000 / qps, 3),
                     "queries": len(qs)})  # fmt: skip
        print(name, rows[-1], flush=True)
    return rows


def _default_point(name: str, handle, xq: np.ndarray, gt: np.ndarray) -> dict | None:
    """Recall and speed at the settings a user gets (visdex's defaults; the libraries' own)."""
    if name == "hnswlib-default":
        kw = {"ef": 10}
    elif name == "faiss-hnsw-default":
        kw = {"ef": 16}
    else:
        kw = {}
    qs, g = (xq[:100], gt[:100]) if name in ("visdex-flat", "visdex-flat-sq8") else (xq, gt)
    found, qps, qps_cpu = timed_queries(_searcher(name, handle, **kw), qs)
    return {**kw, "recall_at_10": round(recall_at_10(found, g), 4), "qps": round(qps, 1), "qps_cpu": round(qps_cpu, 1)}


def _filtered(store, d: Path, xq: np.ndarray) -> dict:
    """Filtered search at default settings: recall@10 against the exact top 10 among allowed ids, and
    whether every query got 10 results (allowed sets this large go through the ANN index, not exactly)."""
    store.ef_search = store.nprobe = store.shortlist = None
    ids = store.ids()
    out = {}
    for name, m in FILTERS.items():
        allowed = ids[ids % m == 0]
        gt = np.load(d / f"gt_filter_{m}.npy")
        t0 = time.perf_counter()
        found = np.stack([store.search(q[None], 10, allowed=allowed)[1][0] for q in xq[:100]])
        ms = (time.perf_counter() - t0) * 10
        out[name] = {
            "allowed": len(allowed),
            "recall_at_10": round(recall_at_10(found, gt), 4),
            "all_rows_have_10": bool((found >= 0).sum(axis=1).min() == 10),
            "only_allowed": bool(np.isin(found[found >= 0], allowed).all()),
            "ms_per_query_1thread": round(ms, 2),
        }
    return out


def at_recall(sweep: list[dict], key: str = "qps") -> dict:
    """For each target recall, the fastest sweep setting that reaches it (None if none does), by ``key``."""
    out = {}
    for r in TARGETS:
        ok = [row for row in sweep if row["recall_at_10"] >= r and key in row]
        best = max(ok, key=lambda row: row[key]) if ok else None
        out[f"{r:.2f}"] = best
    return out


def vs_baseline(report: dict, base: str = "hnswlib-default") -> dict:
    """Each configuration's QPS at each target recall over the baseline's, by wall clock and by CPU time."""
    ref = report["configs"].get(base, {})
    out = {}
    for name, r in report["configs"].items():
        row = {}
        for t in TARGETS:
            for key, field in (("qps", "at_recall"), ("qps_cpu", "at_recall_cpu")):
                mine, theirs = (r.get(field) or {}).get(f"{t:.2f}"), (ref.get(field) or {}).get(f"{t:.2f}")
                if mine and theirs and key in mine and key in theirs:
                    row[f"{key}_ratio_at_{t:.2f}"] = round(mine[key] / theirs[key], 3)
        if row:
            out[name] = row
    return out


def table(report: dict) -> str:
    """The results as a markdown table (``--table FILE`` prints it for a README)."""
    head = ("| index | build s | bytes / vector | RSS delta MB | default: recall@10, QPS | "
            + " | ".join(f"QPS at recall {t:.2f}" for t in TARGETS) + " | at 0.95 vs hnswlib: wall, CPU |")  # fmt: skip
    rows = [head, "|" + "---|" * (6 + len(TARGETS))]
    ratios = vs_baseline(report)
    for name, r in report["configs"].items():
        if "error" in r or "skipped" in r:
            why = f"failed: {r['error']}" if "error" in r else f"skipped: {r['skipped']}"
            rows.append(f"| {name} | {why} |" + " |" * (5 + len(TARGETS)))
            continue
        d = r["default"]
        label = name + (f" ({r['kind']})" if r.get("kind") and r["kind"] not in name else "")
        cells = [label, f"{r['build_s']:g}", f"{r['bytes_per_vector']:g}", f"{r['rss_delta_mb']:g}",
                 f"{d['recall_at_10']:.3f}, {d['qps']:g}"]  # fmt: skip
        for t in TARGETS:
            b = r["at_recall"][f"{t:.2f}"]
            setting = ", ".join(f"{k} {b[k]}" for k in ("ef", "nprobe", "shortlist") if b and b.get(k))
            cells.append("not reached" if b is None else f"{b['qps']:g}" + (f" ({setting})" if setting else ""))
        ratio = ratios.get(name, {})
        wall, cpu = ratio.get("qps_ratio_at_0.95"), ratio.get("qps_cpu_ratio_at_0.95")
        cells.append(", ".join(f"{x:g}x" for x in (wall, cpu) if x is not None) or "-")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


# ---------------------------------------------------------------- the driver


def machine() -> dict:
    try:
        from visdex.bench import machine_info

        info = machine_info()
    except ImportError:  # an older checkout without visdex.bench
        import platform

        info = {"platform": platform.platform(), "logical_cores": os.cpu_count()}
    import faiss

    info["faiss_version"] = faiss.__version__
    try:
        from importlib.metadata import version

        info["hnswlib_version"] = version("hnswlib")
    except Exception:  # hnswlib not installed: its configuration is skipped
        info["hnswlib_version"] = None
    info["note"] = "shared machine, contention possible (other engineers' test runs on the same 2 cores)"
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "visdex-ann")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--force", action="store_true", help="Re-run configurations cached from an earlier run.")
    ap.add_argument("--keep", action="store_true",
                    help=f"Keep the stores that dupes_scale.py reuses ({', '.join(KEPT)}).")  # fmt: skip
    ap.add_argument("--table", type=Path, help="Print a results JSON as a markdown table and exit.")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    d = args.cache / f"n{args.n}"
    if args.worker:
        result = run_config(args.worker, d, args.queries, d / "work")
        (d / "results" / f"{args.worker}.json").write_text(json.dumps(result, indent=1))
        return 0
    out = args.out or RESULTS / f"ann-1e{round(np.log10(args.n))}.json"
    t0 = time.perf_counter()
    skipped = {name: why for name in args.configs if (why := unavailable(name)) is not None}
    for name, why in skipped.items():  # said first: a missing library should not cost a long run to find out
        print(f"skipping {name}: {why}", flush=True)
    measuring = len(skipped) < len(args.configs)
    if measuring:
        prepare(args.cache, args.n, args.queries)
        print(f"data ready in {time.perf_counter() - t0:.0f} s: {d}", flush=True)
        (d / "results").mkdir(exist_ok=True)
    data = json.loads((d / "data.json").read_text()) if measuring else {}
    report = {
        "benchmark": "ann",
        "n": args.n,
        "dim": DIM,
        "queries": args.queries,
        "data": {
            "kind": f"{CLUSTERS} Gaussian clusters, power-law spread (alpha {ALPHA}), L2-normalised, "
            f"{DUP_FRACTION:.0%} planted near-duplicates",
            **data,
        },
        "method": "builds: all cores; searches: 1 thread, 1 query per call; recall@10 vs exact (FAISS flat); "
        "QPS at recall r: the fastest swept setting reaching r",
        "machine": machine() if measuring else {},  # nothing measured: no numbers for it to describe
        "configs": {name: {"skipped": why} for name, why in skipped.items()},
    }
    for name in args.configs:
        if name in skipped:
            continue
        path = d / "results" / f"{name}.json"
        if args.force or not path.exists():
            t1 = time.perf_counter()
            cmd = [sys.executable, __file__, "--n", str(args.n), "--queries", str(args.queries),
                   "--cache", str(args.cache), "--worker", name]  # fmt: skip
            rc = subprocess.call(cmd)
            if rc != 0 or not path.exists():
                report["configs"][name] = {"error": f"exit status {rc}"}
                continue
            print(f"{name}: {time.perf_counter() - t1:.0f} s", flush=True)
        report["configs"][name] = json.loads(path.read_text())
        out.write_text(json.dumps(report, indent=1))  # after each configuration: partial results survive
        if not (args.keep and name in KEPT):
            shutil.rmtree(d / "work" / name, ignore_errors=True)
    report["vs_hnswlib_default"] = vs_baseline(report)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
