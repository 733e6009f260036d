"""Sizing the vector store: how many bytes a catalog's vectors take in each encoding and index,
and how long one search takes — the numbers behind ``visdex recommend``.

Memory is computed (``n x bytes per code`` + ids + the index's own structures); latency is scaled
from a reference measurement (``ANN_REFERENCE``) by simple cost laws, or from benchmark JSON files
(:func:`load_benchmarks`) when present.

>>> plan = plan_store(10_000_000, 384, memory_bytes=2 * 1024**3)
>>> plan.index, plan.codec, plan.fits_memory
('ivfpq', 'PQ48', True)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ANN_REFERENCE",
    "Benchmarks",
    "Codec",
    "StorePlan",
    "codec_ladder",
    "format_bytes",
    "load_benchmarks",
    "parse_bytes",
    "parse_count",
    "plan_store",
]

EXACT_MAX = 100_000  # up to here exact (flat) search is fast enough and needs no tuning
MILVUS_MIN = 100_000_000  # beyond one machine's comfort: shard over a Milvus cluster
MILVUS_OVERHEAD_MS = 3.0  # network + proxy per query (estimate)
MILVUS_NODE_BYTES = 64 * 1024**3  # a typical query node's RAM, to say how many nodes an index needs
HNSW_M = 32
HNSW_EF_SEARCH = 128
ID_BYTES = 8
REDUCED_DIM = 128


_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_count(text: str | int) -> int:
    """``"250k"``, ``"10M"``, ``"1e8"``, ``"2_000_000"`` -> an int (``ValueError`` otherwise).

    >>> parse_count("10M"), parse_count("1e8"), parse_count("250k")
    (10000000, 100000000, 250000)
    """
    s = str(text).strip().lower().replace("_", "").replace(",", "")
    unit = s[-1] if s and s[-1] in "kmbg" else ""
    try:
        value = float(s[: len(s) - len(unit)]) * _SUFFIX[unit]
    except ValueError:
        raise ValueError(f"not a count: {text!r} (e.g. 50000, 250k, 10M, 1e8)") from None
    if value < 1 or not math.isfinite(value):
        raise ValueError(f"not a positive count: {text!r}")
    return int(value)


def parse_bytes(text: str | float) -> float:
    """``"2GB"``, ``"512MB"``, ``"1.5TB"``, or a bare number of GB -> GB (``ValueError`` otherwise).

    >>> parse_bytes("512MB"), parse_bytes("2GB"), parse_bytes(4)
    (0.5, 2.0, 4.0)
    """
    s = str(text).strip().lower().replace(" ", "").removesuffix("ib").removesuffix("b")
    scale = {"k": 1 / 1024**2, "m": 1 / 1024, "g": 1.0, "t": 1024.0}
    unit = s[-1] if s and s[-1] in scale else "g"
    try:
        value = float(s[:-1] if s and s[-1] in scale else s) * scale[unit]
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (e.g. 512MB, 4GB, 1TB)") from None
    if value <= 0 or not math.isfinite(value):
        raise ValueError(f"not a positive memory size: {text!r}")
    return value


def format_bytes(n: float) -> str:
    """Bytes as a short human unit.

    >>> format_bytes(3 * 1024**3)
    '3.0 GB'
    """
    for unit, size in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


# -- encodings and indexes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Codec:
    """A vector encoding: its name, the dimension it keeps, bytes per vector, and estimated recall loss."""

    name: str
    dim: int
    bytes: int
    loss: float
    kind: str  # "fp32" | "fp16" | "int8" | "pq"


def codec_ladder(dim: int) -> list[Codec]:
    """Compressions for a ``dim``-d vector, least lossy first. Losses are rough recall@10 drops
    (scalar quantisation ~lossless; PQ at 4 / 8 dims per byte ~3 / 6 points; reducing the dimension
    by PCA or a trained projection loses more the more it removes)."""
    out = [Codec("fp32", dim, 4 * dim, 0.0, "fp32"), Codec("fp16", dim, 2 * dim, 0.001, "fp16"),
           Codec("int8", dim, dim, 0.005, "int8")]  # fmt: skip
    reduce_loss = 0.01 * math.log2(dim / REDUCED_DIM) if dim > REDUCED_DIM else 0.0
    if dim > REDUCED_DIM:
        out.append(Codec(f"{REDUCED_DIM}-d int8", REDUCED_DIM, REDUCED_DIM, reduce_loss + 0.005, "int8"))
    out += [Codec(f"PQ{dim // 4}", dim, dim // 4, 0.03, "pq"), Codec(f"PQ{dim // 8}", dim, dim // 8, 0.06, "pq")]
    if dim > REDUCED_DIM:
        out += [Codec(f"{REDUCED_DIM}-d PQ32", REDUCED_DIM, 32, reduce_loss + 0.03, "pq"),
                Codec(f"{REDUCED_DIM}-d PQ16", REDUCED_DIM, 16, reduce_loss + 0.06, "pq")]  # fmt: skip
    return sorted(out, key=lambda c: c.loss)


# One query, one thread, faiss-cpu, expressed at n=1e5 clustered 512-d vectors: benchmarks/ann.py's 1e6 run
# (2-core EPYC, 2026-11-24) re-based by the cost laws below (flat 67 ms, HNSW 0.48 ms and IVF-PQ 0.94 ms at
# recall@10 0.95 at 1e6; the int8 flat scan measured 1.4x slower than float32 at 1e5, float16 assumed alike).
# A checkout's benchmarks/results/*.json replace these when present (load_benchmarks).
ANN_REFERENCE = {
    "n": 100_000,
    "dim": 512,
    "flat": {"fp32": 6.7, "fp16": 9.2, "int8": 9.2, "pq": 1.8},
    "hnsw": 0.40,  # M=32, efConstruction=80, efSearch at recall@10 0.95
    "ivfpq": 0.21,  # 64-byte codes, nprobe and shortlist at recall@10 0.95 (+ the coarse scan, see _search_ms)
    "source": "estimate from visdex's own benchmarks (benchmarks/results/ann-1e6.json: faiss-cpu, 1 thread, "
    "2-core EPYC)",
}


# Which encodings each index takes: HNSW over PQ codes loses too much recall to be worth it here.
INDEX_CODECS = {"flat": ("fp32", "fp16", "int8", "pq"), "hnsw": ("fp32", "fp16", "int8"), "ivfpq": ("pq",)}


@dataclass
class StorePlan:
    """Where and how the vectors live, what that costs in memory, and how fast a search is."""

    backend: str
    index: str
    codec: str
    dim: int
    params: dict
    memory_bytes: float
    search_ms: float
    fits_memory: bool
    why: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def memory(self) -> str:
        return format_bytes(self.memory_bytes)


def _nlist(n: int) -> int:
    return int(2 ** round(math.log2(max(16.0, 4 * math.sqrt(n)))))  # faiss guideline: 4..16 x sqrt(n)


def _index_memory(index: str, n: int, codec: Codec, source_dim: int) -> float:
    """Bytes in RAM: codes + ids + the index's own structures (+ the projection matrix if reduced)."""
    per_vector: float = codec.bytes + ID_BYTES
    fixed = source_dim * codec.dim * 4 if codec.dim != source_dim else 0
    if index == "hnsw":
        per_vector += 2 * HNSW_M * 4 * 1.05  # level-0 links (2M neighbours x int32) + upper levels
    elif index == "ivfpq":
        fixed += _nlist(n) * codec.dim * 4 + 256 * codec.dim * 4  # coarse centroids + PQ codebooks
    return n * per_vector + fixed


def _search_ms(index: str, n: int, codec: Codec, ref: dict) -> float:
    """Scale the reference latency: flat ~ n x code bytes, HNSW ~ dim x log n, IVF-PQ ~ code bytes x sqrt n
    (nlist grows with sqrt n, so each probed list does too) + the coarse quantiser scan."""
    if index == "flat":
        ref_bytes = {"fp32": 4 * ref["dim"], "fp16": 2 * ref["dim"], "int8": ref["dim"], "pq": 64}[codec.kind]
        return ref["flat"][codec.kind] * (n / ref["n"]) * (codec.bytes / ref_bytes)
    if index == "hnsw":
        return ref["hnsw"] * (codec.dim / ref["dim"]) * math.log2(max(n, 2)) / math.log2(ref["n"])
    coarse = ref["flat"]["fp32"] * (_nlist(n) * codec.dim) / (ref["n"] * ref["dim"])
    return ref["ivfpq"] * (codec.bytes / 64) * math.sqrt(n / ref["n"]) + coarse


def plan_store(n: int, dim: int, memory_bytes: float | None = None, search_budget_ms: float | None = None,
               reference: dict | None = None) -> StorePlan:  # fmt: skip
    """The vector store for ``n`` vectors of ``dim``: backend, index, codec, memory and search latency.

    Exact (flat) while small and fast enough; HNSW above; IVF-PQ when HNSW's memory does not fit;
    Milvus beyond ``MILVUS_MIN`` vectors or when nothing fits one machine. Within an index the
    least lossy codec that fits ``memory_bytes`` wins.

    >>> plan_store(1_000, 512).index, plan_store(10**9, 512).backend
    ('flat', 'milvus')
    """
    ref = reference or ANN_REFERENCE
    budget = memory_bytes if memory_bytes is not None else math.inf
    milvus = n > MILVUS_MIN
    why = []
    ladder = codec_ladder(dim)
    flat_fast = _search_ms("flat", n, ladder[0], ref) <= (search_budget_ms or math.inf) * 0.25
    if n <= EXACT_MAX and flat_fast and not milvus:
        kinds = ["flat", "hnsw", "ivfpq"]
        why.append(f"{n:,} vectors: exact search scans them all in {_search_ms('flat', n, ladder[0], ref):.1f} ms "
                   "and needs no tuning")  # fmt: skip
    else:
        kinds = ["hnsw", "ivfpq"]
        why.append(
            f"{n:,} vectors: an approximate index (HNSW, or IVF-PQ when memory is short) answers in about a "
            "millisecond where exact search would take " + f"{_search_ms('flat', n, ladder[0], ref):.0f} ms"
        )
    for index in kinds:
        for codec in (c for c in ladder if c.kind in INDEX_CODECS[index]):
            if index == "ivfpq" and not milvus and codec.bytes != _store_pq_bytes(codec.dim):
                continue  # the embedded store's --ann ivfpq builds one code size: plan that one
            mem = _index_memory(index, n, codec, dim)
            if mem <= budget:
                return _finish_plan(index, codec, n, dim, mem, ref, milvus, True, why, budget)
    codec = ladder[-1]  # nothing fits: the smallest codec, spread over a cluster
    mem = _index_memory("ivfpq", n, codec, dim)
    why.append(f"even {codec.name} codes need {format_bytes(mem)}, over the {format_bytes(budget)} budget: shard the "
               "index over a Milvus cluster (or add memory / use DiskANN, which keeps vectors on SSD)")  # fmt: skip
    return _finish_plan("ivfpq", codec, n, dim, mem, ref, True, False, why, budget)


def _store_pq_bytes(dim: int) -> int:
    """Bytes of PQ code a vector that the embedded store's ``--ann ivfpq`` builds for ``dim``-d vectors."""
    from .store.local import ivfpq_params

    return ivfpq_params(1_000_000, dim).m


def _finish_plan(index, codec, n, dim, mem, ref, milvus, fits, why, budget) -> StorePlan:
    params = {"flat": {}, "hnsw": {"M": HNSW_M, "efSearch": HNSW_EF_SEARCH},
              "ivfpq": {"nlist": _nlist(n), "nprobe": 32, "m": codec.bytes}}[index]  # fmt: skip
    if codec.dim != dim:
        params["reduce"] = (
            f"{dim} -> {codec.dim} (visdex finetune pca, or a {codec.dim}-d head from visdex finetune labelled)"
        )
    search = _search_ms(index, n, codec, ref) + (MILVUS_OVERHEAD_MS if milvus else 0.0)
    if codec.name != "fp32":
        room = "no limit" if budget == math.inf else f"the {format_bytes(budget)} budget"
        why.append(f"{codec.name} codes ({codec.bytes} B/vector, est. recall loss ~{codec.loss * 100:.1f} points) are "
                   f"the least lossy encoding whose index fits {room}")  # fmt: skip
        if index == "ivfpq" and not milvus:
            why.append("visdex re-ranks IVF-PQ's shortlist with the float32 vectors kept in SQLite, which wins most "
                       "of that loss back (recall@10 0.96-0.99 at 1e6 in benchmarks/ann.py) at the cost of disk "
                       "reads")  # fmt: skip
    if milvus:
        backend = "milvus"
        nodes = max(1, math.ceil(mem / (MILVUS_NODE_BYTES * 0.7)))  # keep ~30% headroom per node
        params["query_nodes"] = nodes
        why.append(f"{n:,} vectors is past one machine's comfort (> {MILVUS_MIN:.0e}): a Milvus cluster shards them "
                   f"over ~{nodes} query node(s) of {format_bytes(MILVUS_NODE_BYTES)} and keeps serving while you add "
                   "more")  # fmt: skip
    else:
        backend = "embedded"
        why.append("the embedded store (SQLite for the truth + a FAISS index in RAM) is enough on one machine; "
                   "Milvus standalone only if several services must share the index")  # fmt: skip
    return StorePlan(backend, index, codec.name, codec.dim, params, mem, search, fits, why, ref.get("source", ""))


# -- benchmark numbers ---------------------------------------------------------------------------------
@dataclass
class Benchmarks:
    """Speeds read from benchmark JSON files, each with the file it came from."""

    model_ms: dict[tuple[str, str, str], tuple[float, str]] = field(default_factory=dict)  # (model, hw, tower)
    img_per_s: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)  # (model, hw)
    ann: dict | None = None

    def sources(self) -> list[str]:
        found = {src for _, src in [*self.model_ms.values(), *self.img_per_s.values()]}
        return sorted(found | ({self.ann["source"]} if self.ann else set()))


_LATENCY_KEYS = ("batch1_ms", "p50_ms", "latency_ms", "ms_per_query", "search_ms")
_RATE_KEYS = ("images_per_second", "img_per_s", "throughput")


def _hw(record: dict, default: str) -> str:
    """ "gpu" or "cpu" from a record's own ``hardware``/``device`` string; else what the enclosing record said."""
    text = " ".join(v for k in ("hardware", "device") if isinstance(v := record.get(k), str)).lower()
    if not text.strip():
        return default
    return "gpu" if any(w in text for w in ("cuda", "gpu", "nvidia", "h100", "h200", "a100")) else "cpu"


def _walk(node, hw: str, src: str, out: Benchmarks) -> None:
    """Collect every record that names a model (with a latency or a rate) or an ANN index (with a latency)."""
    if isinstance(node, list):
        for item in node:
            _walk(item, hw, src, out)
        return
    if not isinstance(node, dict):
        return
    hw = _hw(node, hw)
    if node.get("benchmark") == "ann" and isinstance(node.get("configs"), dict):
        _ann_benchmark(node, src, out)
        return
    latency = next((float(node[k]) for k in _LATENCY_KEYS if isinstance(node.get(k), (int, float))), None)
    rate = next((float(node[k]) for k in _RATE_KEYS if isinstance(node.get(k), (int, float))), None)
    model = node.get("model")
    # Only a tower's own latency counts as query-embedding time (an end-to-end query latency would not),
    # and only model-only throughput (not decode-bound ingest rates) as indexing speed.
    if isinstance(model, str) and model and node.get("tower") in ("image", "text"):
        if latency is not None:
            out.model_ms[(model, hw, node["tower"])] = (latency, src)
        if rate is not None and node["tower"] == "image":
            out.img_per_s[(model, hw)] = (rate, src)
    index = str(node.get("index", node.get("ann", ""))).lower()
    if latency is not None and index in ("flat", "hnsw", "ivfpq") and node.get("n") and node.get("dim"):
        _ann_record(out, index, node, latency, src)
    for value in node.values():
        if isinstance(value, (dict, list)):
            _walk(value, hw, src, out)


# benchmarks/ann.py configs that measure one of the plan's indexes at full precision (fp32; PQ for ivfpq)
_ANN_KINDS = {"flat": ("flat", "fp32"), "hnsw": ("hnsw", "fp32"), "ivfpq": ("ivfpq", "pq")}


def _ann_benchmark(node: dict, src: str, out: Benchmarks) -> None:
    """A ``benchmarks/ann.py`` result: each visdex index's single-thread latency at recall@10 >= 0.95
    (exact search: its only setting) re-bases the reference table. Larger runs are read last, so at equal
    index the biggest measured ``n`` wins."""
    configs = [c for c in node["configs"].values() if isinstance(c, dict)]  # flat first: IVF-PQ's coarse scan uses it
    configs.sort(key=lambda c: (int(c.get("n") or node.get("n") or 0), c.get("kind") != "flat"))
    for cfg in configs:
        if not str(cfg.get("config", "")).startswith("visdex-"):
            continue
        index, kind = _ANN_KINDS.get(str(cfg.get("kind")), (None, None))
        point = (cfg.get("at_recall") or {}).get("0.95") or {}
        if index == "flat" and cfg.get("sweep"):
            point = cfg["sweep"][0]
        ms = point.get("ms_per_query_1thread")
        if index is None or not isinstance(ms, (int, float)):
            continue
        record = {"n": cfg.get("n") or node.get("n"), "dim": cfg.get("dim") or node.get("dim"), "codec": kind}
        if kind == "pq":
            record["code_bytes"] = (cfg.get("params") or {}).get("m")
        _ann_record(out, index, record, float(ms), src)


def _ann_record(out: Benchmarks, index: str, node: dict, latency: float, src: str) -> None:
    """Re-base the reference table on a measured point, scaled back to the reference size."""
    ref = out.ann or json.loads(json.dumps(ANN_REFERENCE))
    n, dim = int(node["n"]), int(node["dim"])
    kind = str(node.get("codec", "fp32")).lower()
    code_bytes = node.get("code_bytes")
    codec = next((c for c in codec_ladder(dim) if c.kind == kind and c.dim == dim
                  and (code_bytes is None or c.bytes == code_bytes)), None)  # fmt: skip
    if codec is None:  # a PQ size not on the ladder: the same kind with the measured code size
        base = next((c for c in codec_ladder(dim) if c.kind == kind), codec_ladder(dim)[0])
        codec = Codec(base.name, dim, int(code_bytes or base.bytes), base.loss, base.kind)
    if index == "flat":  # one factor for every flat encoding (their ratios stay the reference's)
        factor = latency / max(_search_ms("flat", n, codec, ref), 1e-12)
        ref["flat"] = {k: v * factor for k, v in ref["flat"].items()}
    else:  # the cost law is linear in ref[index] (IVF-PQ adds its coarse scan): solve for it
        fixed = _search_ms(index, n, codec, {**ref, index: 0.0})
        unit = _search_ms(index, n, codec, {**ref, index: 1.0}) - fixed
        ref[index] = max(latency - fixed, 0.05 * latency) / unit
    ref["source"] = src
    out.ann = ref


def default_benchmarks_dir() -> Path | None:
    """``$VISDEX_BENCHMARKS``, else ``benchmarks/results`` of a source checkout; None when neither exists."""
    from . import config

    env = config.get("benchmarks")
    for cand in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[2] / "benchmarks" / "results"]:
        if cand.is_dir():
            return cand
    return None


def load_benchmarks(directory: str | os.PathLike | None = None) -> Benchmarks:
    """Speeds from every ``*.json`` under ``directory``: records (at any depth) with a ``model`` name, a
    ``tower`` (image|text) and ``batch1_ms``/``p50_ms``/``latency_ms`` and/or ``images_per_second``, and
    ANN records with ``index`` (flat|hnsw|ivfpq), ``n``, ``dim``, optional ``codec`` and a latency. A
    ``hardware`` or ``device`` string (on the record or above it) naming cuda/gpu marks GPU numbers.
    Unreadable files are ignored. ``benchmarks/model_profiles.py`` writes this format.

    >>> load_benchmarks("benchmarks/results").sources()          # doctest: +SKIP
    ['benchmarks/results/model_profiles-cpu.json']
    """
    out = Benchmarks()
    d = Path(directory) if directory else default_benchmarks_dir()
    if d is None or not d.is_dir():
        return out
    for path in sorted(d.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        _walk(data, "cpu", str(path), out)
    return out
