"""Retrieval evaluation, separate from search: how well does a model find what it should?

Two layers, in the spirit of sentence-transformers' ``InformationRetrievalEvaluator``:

* **Metrics** (pure numpy): take query vectors, corpus vectors and what is relevant to each
  query (labels or index sets, or a ready similarity matrix) and return named metrics.
  The similarity matrix is computed in row chunks, so a few thousand items never need the
  whole ``n x n`` matrix at once.
* **Data sets**: :func:`eval_labelled_folder` (image-to-image, leave-one-out, on a folder with
  one subfolder per class or a CSV of ``path,label``) and :func:`eval_captions` (text-to-image
  and image-to-text on ``(image, caption)`` pairs). They decode with
  :func:`visdex.decode.decode_image`, skip and count bad files, embed in batches, time the
  model, and return dataclasses with ``to_dict()``.

Metric definitions (binary relevance; queries with no relevant item are left out and counted):

``recall@k``  share of queries with at least one relevant item in the top k — the "Recall@K"
              of metric-learning (CUB, SOP) and image-text retrieval (COCO, Flickr30k) papers.
``map@r``     mean average precision at R (Musgrave et al. 2020, "A Metric Learning Reality
              Check"): R = number of relevant items, ``(1/R) * sum_{i<=R} P@i * rel_i``.
``ndcg@10``   normalised discounted cumulative gain over the top 10.
``mrr@10``    mean reciprocal rank of the first relevant item within the top 10 (0 if none).

>>> import numpy as np
>>> vecs = np.eye(4, dtype=np.float32) + 0.1                      # doctest: +SKIP
>>> metrics_from_labels(vecs, ["a", "a", "b", "b"])["recall@1"]   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import config
from .decode import decode_image
from .errors import BadDataset, UnsupportedModality, VisdexError
from .files import is_image_name, scan

if TYPE_CHECKING:
    from typing_extensions import TypeIs

__all__ = [
    "DEFAULT_KS",
    "CaptionEval",
    "EmbeddedImages",
    "LabelledEval",
    "Metrics",
    "embed_image_files",
    "eval_captions",
    "eval_labelled_folder",
    "metrics_from_labels",
    "metrics_from_similarity",
    "metrics_from_vectors",
    "needs_text_model",
    "per_query_metrics",
    "read_captions",
    "read_labelled",
]

DEFAULT_KS = (1, 5, 10)
NDCG_AT = 10
MRR_AT = 10
# Similarity rows scored at once: ~32 MiB (float32 scores + int64 partition indices per cell),
# whatever the corpus size, so a few thousand images never need the whole n x n matrix.
_CHUNK_BYTES = 32 << 20
_PATH_COLUMNS = ("path", "image", "image_path", "file", "filename", "filepath")
_LABEL_COLUMNS = ("label", "class", "category", "class_name", "y")
_CAPTION_COLUMNS = ("caption", "captions", "text", "title", "sentence", "description")


# -- metrics ------------------------------------------------------------------------------------
@dataclass
class Metrics:
    """Named retrieval metrics averaged over ``queries`` (those with >= 1 relevant item).

    ``skipped`` counts queries that had nothing relevant in the corpus (e.g. a class with one image
    in leave-one-out): they cannot be scored and are left out of every mean.

    >>> m = Metrics({"recall@1": 0.5}, queries=4, skipped=0)
    >>> m["recall@1"], m.to_dict()["queries"]
    (0.5, 4)
    """

    values: dict[str, float]
    queries: int
    skipped: int = 0

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    def to_dict(self) -> dict:
        return {**{k: round(v, 6) for k, v in self.values.items()}, "queries": self.queries, "skipped": self.skipped}


def per_query_metrics(
    hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int] = DEFAULT_KS, ndcg_at: int = NDCG_AT
) -> dict[str, np.ndarray]:
    """Per-query metrics from ranked relevance: ``hits[i, j]`` is True when query i's j-th result is relevant.

    ``hits`` must reach at least ``max(ks)``, ``ndcg_at``, 10 and every query's R (fewer columns only
    when the corpus itself is smaller). Rows with ``n_relevant == 0`` give NaN.

    >>> hits = np.array([[False, True, False]])
    >>> {k: float(v[0]) for k, v in per_query_metrics(hits, np.array([1]), ks=(1, 2)).items()}["recall@2"]
    1.0
    """
    hits = np.asarray(hits, dtype=bool)
    r = np.asarray(n_relevant, dtype=np.int64)
    nq, depth = hits.shape
    valid = r > 0
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"recall@{k}"] = np.asarray(hits[:, :k].any(axis=1), dtype=np.float64)
    pos = np.arange(1, depth + 1)
    precision = np.cumsum(hits, axis=1) / pos
    within_r = pos[None, :] <= r[:, None]
    ap = (precision * hits * within_r).sum(axis=1)
    out["map@r"] = np.asarray(np.divide(ap, r, out=np.zeros(nq), where=valid))
    discounts = 1.0 / np.log2(np.arange(2, ndcg_at + 2))
    top = hits[:, :ndcg_at]
    dcg = (top * discounts[: top.shape[1]]).sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(r, ndcg_at)]
    out[f"ndcg@{ndcg_at}"] = np.divide(dcg, ideal, out=np.zeros(nq), where=ideal > 0)
    first = hits[:, :MRR_AT]
    found = first.any(axis=1)
    out[f"mrr@{MRR_AT}"] = np.where(found, 1.0 / (first.argmax(axis=1) + 1), 0.0)
    for v in out.values():
        v[~valid] = np.nan
    return out


def _summarise(per_query: dict[str, np.ndarray], n_relevant: np.ndarray) -> Metrics:
    valid = np.asarray(n_relevant) > 0
    n = int(valid.sum())
    values = {k: float(v[valid].mean()) if n else float("nan") for k, v in per_query.items()}
    return Metrics(values, queries=n, skipped=int((~valid).sum()))


def metrics_from_similarity(
    sim: np.ndarray,
    relevant: np.ndarray | Sequence[Iterable[int]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    ndcg_at: int = NDCG_AT,
    exclude_diagonal: bool = False,
) -> Metrics:
    """Metrics from a full ``(queries, corpus)`` similarity matrix (higher = more similar).

    ``relevant`` is a boolean matrix of the same shape or, per query, the corpus indices that are
    relevant. ``exclude_diagonal`` drops item i from query i's results (leave-one-out). Ties rank
    the lower corpus index first.

    >>> sim = np.array([[0.9, 0.8, 0.1], [0.2, 0.9, 0.7]])
    >>> metrics_from_similarity(sim, [[1], [2]])["recall@1"]
    0.0
    """
    sim = np.array(sim, dtype=np.float64)
    rel = _relevance_matrix(relevant, sim.shape)
    if exclude_diagonal:
        idx = np.arange(min(sim.shape))
        sim[idx, idx] = -np.inf
        rel[idx, idx] = False
    order = np.argsort(-sim, axis=1, kind="stable")
    hits = np.take_along_axis(rel, order, axis=1)
    n_rel = rel.sum(axis=1)
    return _summarise(per_query_metrics(hits, n_rel, ks, ndcg_at), n_rel)


def _relevance_matrix(relevant, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(relevant, np.ndarray) and relevant.dtype == bool:
        if relevant.shape != shape:
            raise ValueError(f"relevance matrix shape {relevant.shape} does not match similarity shape {shape}")
        return relevant.copy()
    if len(relevant) != shape[0]:
        raise ValueError(f"{len(relevant)} relevance sets for {shape[0]} queries")
    rel = np.zeros(shape, dtype=bool)
    for i, cols in enumerate(relevant):
        rel[i, list(cols)] = True
    return rel


def _chunk_rows(n_corpus: int, chunk_size: int | None) -> int:
    return chunk_size or max(1, min(1024, _CHUNK_BYTES // (12 * max(n_corpus, 1))))


def _ranked_hits(
    queries: np.ndarray,
    corpus: np.ndarray,
    n_relevant: np.ndarray,
    is_relevant: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    self_exclude: bool,
    ks: Sequence[int],
    ndcg_at: int,
    chunk_size: int | None,
    corpus_penalty: np.ndarray | None = None,
) -> Metrics:
    """The chunked engine: for each block of queries, score the corpus, keep only the top ``depth``
    (enough for every metric), and turn them into per-query metrics. Memory: one block x corpus."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    c = np.ascontiguousarray(corpus, dtype=np.float32)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"queries {q.shape} and corpus {c.shape} must be 2-d with the same dimension")
    available = c.shape[0] - (1 if self_exclude else 0)
    rows = _chunk_rows(c.shape[0], chunk_size)
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, q.shape[0], rows):
        idx = np.arange(start, min(start + rows, q.shape[0]))
        sim = q[idx] @ c.T
        if corpus_penalty is not None:  # hubness reduction: CSLS ranks by 2 cos - r(x), i.e. by cos - r(x) / 2
            sim -= corpus_penalty[None, :] / 2
        if self_exclude:
            sim[np.arange(len(idx)), idx] = -np.inf
        need = max(*ks, ndcg_at, MRR_AT, int(n_relevant[idx].max(initial=0)))
        top = _top_indices(sim, max(0, min(need, available)))
        parts.append(per_query_metrics(is_relevant(idx, top), n_relevant[idx], ks, ndcg_at))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return _summarise(merged, n_relevant)


def _top_indices(sim: np.ndarray, depth: int) -> np.ndarray:
    """Column indices of the ``depth`` highest scores per row, best first (ties: lower index first).
    Partitioning in place of a full sort keeps the work and the extra memory at one int64 per cell."""
    n = sim.shape[1]
    if depth <= 0:
        return np.zeros((sim.shape[0], 0), dtype=np.int64)
    if depth >= n:
        return np.argsort(-sim, axis=1, kind="stable")
    part = np.argpartition(sim, n - depth, axis=1)[:, n - depth :]
    part.sort(axis=1)  # index order first, so the stable sort below breaks ties by index
    order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def metrics_from_labels(
    queries: np.ndarray,
    query_labels: Sequence | np.ndarray,
    corpus: np.ndarray | None = None,
    corpus_labels: Sequence | np.ndarray | None = None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    ndcg_at: int = NDCG_AT,
    chunk_size: int | None = None,
    corpus_penalty: np.ndarray | None = None,
) -> Metrics:
    """Metrics where a corpus item is relevant to a query when their labels are equal. ``corpus_penalty``: the
    hubness term r(x) of each corpus item (:func:`visdex.hubness.penalties`), ranked by CSLS when given.

    Without ``corpus``, the queries are the corpus and each query leaves itself out
    (leave-one-out retrieval on a labelled set). Vectors should be L2-normalised (cosine = dot).

    >>> v = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    >>> metrics_from_labels(v, ["cat", "cat", "dog", "dog"])["recall@1"]
    1.0
    """
    loo = corpus is None
    if corpus is None:  # leave-one-out: the queries are the corpus
        corpus, corpus_labels = queries, query_labels
    if corpus_labels is None:
        raise ValueError("corpus_labels are needed with a corpus")
    if len(query_labels) != len(queries) or len(corpus_labels) != len(corpus):
        raise ValueError("one label per query and per corpus item is needed")
    _, codes = np.unique(np.asarray([*map(str, query_labels), *map(str, corpus_labels)]), return_inverse=True)
    qcodes, ccodes = codes[: len(query_labels)], codes[len(query_labels) :]
    counts = np.bincount(ccodes, minlength=int(codes.max(initial=0)) + 1)
    n_rel = counts[qcodes] - (1 if loo else 0)
    return _ranked_hits(queries, corpus, n_rel, lambda rows, top: ccodes[top] == qcodes[rows][:, None],
                        self_exclude=loo, ks=ks, ndcg_at=ndcg_at, chunk_size=chunk_size,
                        corpus_penalty=corpus_penalty)  # fmt: skip


def metrics_from_vectors(
    queries: np.ndarray,
    corpus: np.ndarray,
    relevant: Sequence[Iterable[int]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    ndcg_at: int = NDCG_AT,
    chunk_size: int | None = None,
) -> Metrics:
    """Metrics for arbitrary relevance: ``relevant[i]`` holds the corpus indices relevant to query i.

    >>> q = np.array([[1.0, 0.0]], dtype=np.float32); c = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    >>> metrics_from_vectors(q, c, [[1]])["mrr@10"]
    1.0
    """
    sets = [np.fromiter(set(r), dtype=np.int64) for r in relevant]
    if len(sets) != len(queries):
        raise ValueError(f"{len(sets)} relevance sets for {len(queries)} queries")
    n_rel = np.array([len(s) for s in sets], dtype=np.int64)

    def is_relevant(rows: np.ndarray, top: np.ndarray) -> np.ndarray:
        return np.stack([np.isin(top[j], sets[i]) for j, i in enumerate(rows)]) if len(rows) else top.astype(bool)

    return _ranked_hits(queries, corpus, n_rel, is_relevant, self_exclude=False, ks=ks, ndcg_at=ndcg_at,
                        chunk_size=chunk_size)  # fmt: skip


# -- reading data sets ----------------------------------------------------------------------------
def _pick_column(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def _records(path: Path) -> list[dict]:
    """Rows of a CSV (with a header) or JSONL file as dicts."""
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    raise BadDataset(f"line {n} of {path.name} is not valid JSON: {e}") from e
                if not isinstance(rec, dict):
                    raise BadDataset(f"line {n} of {path.name} is not a JSON object")
                rows.append(rec)
        return rows
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [dict(r) for r in csv.DictReader(f)]


def _resolve(base: Path, p: str) -> str:
    q = Path(p.strip()).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def read_labelled(source: str | os.PathLike) -> list[tuple[str, str]]:
    """``(path, label)`` pairs of a labelled set: a folder with one subfolder per class (images found
    recursively inside each; images lying loose in the root have no class and are ignored), or a
    CSV/JSONL with a path and a label column (paths relative to the file's folder).

    >>> read_labelled("pets/")[:2]                       # doctest: +SKIP
    [('/data/pets/cat/1.jpg', 'cat'), ('/data/pets/cat/2.jpg', 'cat')]
    """
    src = Path(source).expanduser()
    if src.is_dir():
        classes = sorted(d for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
        items = [(f.path, d.name) for d in classes for f in sorted(scan([d]), key=lambda f: f.path)]
        if not items:
            raise BadDataset(f"no images in class subfolders of {src}: put each class in its own subfolder "
                             "(root/cat/*.jpg, root/dog/*.jpg) or give a CSV of path,label")  # fmt: skip
        return items
    if not src.is_file():
        raise BadDataset(f"no such folder or file: {source}")
    rows = _records(src)
    if rows and not _pick_column(list(rows[0]), _PATH_COLUMNS) and is_image_name(next(iter(rows[0]), "")):
        with open(src, newline="", encoding="utf-8-sig") as f:  # no header: the columns are path,label
            rows = [{"path": r[0], "label": r[1]} for r in csv.reader(f) if len(r) >= 2]
    columns = list(dict.fromkeys(c for r in rows for c in r))
    pc, lc = _pick_column(columns, _PATH_COLUMNS), _pick_column(columns, _LABEL_COLUMNS)
    if not rows or pc is None or lc is None:
        raise BadDataset(f"{src.name} needs a path column and a label column (e.g. a CSV header 'path,label'); "
                         f"found: {', '.join(columns) or 'no rows'}")  # fmt: skip
    return [(_resolve(src.parent, str(r[pc])), str(r[lc]).strip()) for r in rows if r.get(pc) and r.get(lc)]


def read_captions(source: str | os.PathLike) -> list[tuple[str, str]]:
    """``(image path, caption)`` pairs from a CSV or JSONL file. An image may appear on several rows,
    or (JSONL) carry a list of captions. Paths are relative to the file's folder.

    >>> read_captions("captions.csv")[:1]                # doctest: +SKIP
    [('/data/img/cat.jpg', 'a cat asleep on a sofa')]
    """
    src = Path(source).expanduser()
    if not src.is_file():
        raise BadDataset(f"no such captions file: {source} (a CSV or JSONL with image and caption columns)")
    rows = _records(src)
    columns = list(dict.fromkeys(c for r in rows for c in r))
    ic, cc = _pick_column(columns, _PATH_COLUMNS), _pick_column(columns, _CAPTION_COLUMNS)
    if not rows or ic is None or cc is None:
        raise BadDataset(f"{src.name} needs an image column and a caption column (e.g. a CSV header "
                         f"'image,caption'); found: {', '.join(columns) or 'no rows'}")  # fmt: skip
    pairs = []
    for r in rows:
        caps = r.get(cc)
        for cap in caps if isinstance(caps, list) else [caps]:
            if r.get(ic) and cap is not None and str(cap).strip():
                pairs.append((_resolve(src.parent, str(r[ic])), str(cap).strip()))
    return pairs


# -- embedding files --------------------------------------------------------------------------------
class _NoProgress:
    def start(self, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def failed(self, path: str, reason: str) -> None: ...


@dataclass
class EmbeddedImages:
    """Vectors of the files that decoded (``kept`` = their positions in the input list) and the rest."""

    vectors: np.ndarray
    kept: list[int]
    failures: list[tuple[str, str]]
    decode_seconds: float
    embed_seconds: float

    @property
    def images_per_second(self) -> float:
        """Model throughput (preprocessing + forward pass), decoding excluded: the model's cost."""
        return len(self.kept) / self.embed_seconds if self.embed_seconds > 0 else 0.0


def _decode_one(path: str, draft: int, max_pixels: int | None):
    try:
        return decode_image(path, max_pixels=max_pixels, draft_size=draft).image
    except VisdexError as e:
        return str(e)
    except Exception as e:  # a decoder bug must not stop an evaluation
        return f"{type(e).__name__}: {e}"


def embed_image_files(
    embedder,
    paths: Sequence[str],
    *,
    batch_size: int | None = None,
    progress=None,
    workers: int | None = None,
) -> EmbeddedImages:
    """Decode and embed image files in batches; undecodable files are skipped, reported to
    ``progress.failed(path, reason)`` and listed in ``failures``. Decoding of the next batch runs
    in threads while the model embeds the current one.

    >>> res = embed_image_files(load_embedder("effnet-lite0"), ["a.jpg", "b.jpg"])   # doctest: +SKIP
    >>> res.vectors.shape, res.images_per_second                                     # doctest: +SKIP
    ((2, 1280), 41.7)
    """
    progress = progress or _NoProgress()
    bs = batch_size or config.get("batch_size")
    draft, max_pixels = embedder.preprocess.draft_side, config.get("max_pixels")
    batches = [list(range(i, min(i + bs, len(paths)))) for i in range(0, len(paths), bs)]
    vectors: list[np.ndarray] = []
    kept: list[int] = []
    failures: list[tuple[str, str]] = []
    t_decode = t_embed = 0.0
    progress.start(len(paths))
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        submit = lambda b: [pool.submit(_decode_one, paths[i], draft, max_pixels) for i in b]  # noqa: E731
        pending = submit(batches[0]) if batches else []
        for n, batch in enumerate(batches):
            t0 = time.perf_counter()
            decoded = [f.result() for f in pending]
            t_decode += time.perf_counter() - t0
            pending = submit(batches[n + 1]) if n + 1 < len(batches) else []
            images, ok = [], []
            for i, img in zip(batch, decoded, strict=True):
                if isinstance(img, str):
                    failures.append((paths[i], img))
                    progress.failed(paths[i], img)
                else:
                    images.append(img)
                    ok.append(i)
            if images and not vectors:
                embedder.embed_images(images[:1])  # warm-up (lazy init, kernel selection) kept out of img/s
            t0 = time.perf_counter()
            if images:
                vectors.append(embedder.embed_images(images))
            t_embed += time.perf_counter() - t0
            kept += ok
            progress.advance(len(batch))
    vecs = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), np.float32)
    return EmbeddedImages(vecs, kept, failures, t_decode, t_embed)


# -- evaluations ------------------------------------------------------------------------------------
def _model_name(embedder) -> str:
    return getattr(embedder, "name", None) or type(embedder).__name__


def _device(embedder) -> str:
    return str(getattr(embedder, "device", "") or "")


@dataclass
class LabelledEval:
    """Image-to-image, leave-one-out retrieval on a labelled set: each image queries all the others."""

    model: str
    dim: int
    images: int
    classes: int
    metrics: Metrics
    images_per_second: float
    seconds: float
    failures: list[tuple[str, str]] = field(default_factory=list)
    device: str = ""

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_dict(self) -> dict:
        return {"model": self.model, "dim": self.dim, "images": self.images, "classes": self.classes,
                "failed": self.failed, "metrics": self.metrics.to_dict(),
                "images_per_second": round(self.images_per_second, 2), "seconds": round(self.seconds, 3),
                "device": self.device, "failures": [{"path": p, "reason": r} for p, r in self.failures]}  # fmt: skip


def eval_labelled_folder(
    embedder,
    root_or_csv: str | os.PathLike | Sequence[tuple[str, str]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int | None = None,
    progress=None,
    workers: int | None = None,
    hubness: bool = False,
) -> LabelledEval:
    """Leave-one-out image retrieval on a labelled set: Recall@k, mAP@R, nDCG@10, MRR@10 and img/s.

    ``root_or_csv``: a folder with one subfolder per class, a CSV/JSONL of ``path,label``, or the
    ``(path, label)`` pairs themselves (e.g. a held-out split). Images of the same label are the
    relevant results; a label with a single image only serves as a distractor.

    >>> res = eval_labelled_folder(load_embedder("effnet-lite0"), "pets/")   # doctest: +SKIP
    >>> res.metrics["recall@1"], res.images_per_second                      # doctest: +SKIP
    (0.93, 48.2)
    """
    t0 = time.perf_counter()
    items = list(root_or_csv) if _is_pairs(root_or_csv) else read_labelled(root_or_csv)
    if not items:
        raise BadDataset("the labelled set is empty")
    emb = embed_image_files(embedder, [p for p, _ in items], batch_size=batch_size, progress=progress, workers=workers)
    labels = [items[i][1] for i in emb.kept]
    if len(set(labels)) == len(labels):
        raise BadDataset(f"no label has two readable images ({len(labels)} images, {len(emb.failures)} unreadable): "
                         "leave-one-out retrieval needs at least one class with 2 or more images")  # fmt: skip
    penalty = None
    if hubness:  # the image bank: a sample of the set's own vectors, as an index uses its own
        from .hubness import IMAGE_BANK, penalties

        v = emb.vectors
        bank = v[np.random.default_rng(0).choice(len(v), IMAGE_BANK, replace=False)] if len(v) > IMAGE_BANK else v
        penalty = penalties(v, bank, skip_self=True)
    metrics = metrics_from_labels(emb.vectors, labels, ks=ks, corpus_penalty=penalty)
    return LabelledEval(_model_name(embedder), int(embedder.dim), len(labels), len(set(labels)), metrics,
                        emb.images_per_second, time.perf_counter() - t0, emb.failures, _device(embedder))  # fmt: skip


def needs_text_model(name: str) -> UnsupportedModality:
    """The error for an image-only model asked to evaluate captions (the CLI raises it before loading)."""
    return UnsupportedModality(f"model {name!r} embeds images only; a captions evaluation needs a text-and-image "
                               "model such as clip-vit-b-32, siglip2-base or lite0-minilm")  # fmt: skip


def _is_pairs(x: object) -> TypeIs[Sequence[tuple[str, str]]]:
    return isinstance(x, (list, tuple)) and (not x or isinstance(x[0], (list, tuple)))


@dataclass
class CaptionEval:
    """Text-to-image (each caption finds its image) and image-to-text (each image finds any of its captions)."""

    model: str
    dim: int
    images: int
    captions: int
    text_to_image: Metrics
    image_to_text: Metrics
    images_per_second: float
    texts_per_second: float
    seconds: float
    failures: list[tuple[str, str]] = field(default_factory=list)
    device: str = ""

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_dict(self) -> dict:
        return {"model": self.model, "dim": self.dim, "images": self.images, "captions": self.captions,
                "failed": self.failed, "text_to_image": self.text_to_image.to_dict(),
                "image_to_text": self.image_to_text.to_dict(),
                "images_per_second": round(self.images_per_second, 2),
                "texts_per_second": round(self.texts_per_second, 2), "seconds": round(self.seconds, 3),
                "device": self.device, "failures": [{"path": p, "reason": r} for p, r in self.failures]}  # fmt: skip


def eval_captions(
    embedder,
    csv_or_jsonl: str | os.PathLike | Sequence[tuple[str, str]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int | None = None,
    progress=None,
    workers: int | None = None,
    hubness: bool = False,
) -> CaptionEval:
    """Text-to-image and image-to-text Recall@k on ``(image, caption)`` pairs (several captions per
    image allowed). Needs a text-and-image model (:class:`~visdex.errors.UnsupportedModality` otherwise).

    >>> res = eval_captions(load_embedder("lite0-minilm"), "captions.csv")   # doctest: +SKIP
    >>> res.text_to_image["recall@5"], res.image_to_text["recall@1"]        # doctest: +SKIP
    (0.8, 0.6)
    """
    if not getattr(embedder, "supports_text", False):
        raise needs_text_model(_model_name(embedder))
    t0 = time.perf_counter()
    pairs = list(csv_or_jsonl) if _is_pairs(csv_or_jsonl) else read_captions(csv_or_jsonl)
    images = list(dict.fromkeys(p for p, _ in pairs))
    if len(images) < 2:
        raise BadDataset(f"a captions evaluation needs at least 2 images with captions; found {len(images)}")
    emb = embed_image_files(embedder, images, batch_size=batch_size, progress=progress, workers=workers)
    position = {images[i]: n for n, i in enumerate(emb.kept)}
    kept_pairs = [(position[p], c) for p, c in pairs if p in position]
    if len(position) < 2:
        raise BadDataset(f"fewer than 2 of the {len(images)} captioned images could be read")
    texts = [c for _, c in kept_pairs]
    owner = np.array([i for i, _ in kept_pairs])
    bs = batch_size or config.get("batch_size")
    t1 = time.perf_counter()
    text_vecs = np.concatenate([embedder.embed_texts(texts[i : i + bs]) for i in range(0, len(texts), bs)])
    text_seconds = time.perf_counter() - t1
    image_ids = np.arange(len(position))
    penalty = None
    if hubness:  # text->image with the text bank (the model's embeddings of visdex.hubness.text_bank_texts)
        from .hubness import penalties, text_bank_texts

        bank_texts = list(text_bank_texts())
        bank = np.concatenate([embedder.embed_texts(bank_texts[i : i + bs]) for i in range(0, len(bank_texts), bs)])
        penalty = penalties(emb.vectors, bank)
    t2i = metrics_from_labels(text_vecs, owner, emb.vectors, image_ids, ks=ks, corpus_penalty=penalty)
    i2t = metrics_from_labels(emb.vectors, image_ids, text_vecs, owner, ks=ks)
    return CaptionEval(_model_name(embedder), int(embedder.dim), len(position), len(texts), t2i, i2t,
                       emb.images_per_second, len(texts) / text_seconds if text_seconds > 0 else 0.0,
                       time.perf_counter() - t0, emb.failures, _device(embedder))  # fmt: skip
