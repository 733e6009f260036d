"""Embeddings in and out in clip-retrieval's layout, so vectors computed by clip-retrieval (``clip-retrieval
inference``, img2dataset + clip inference) can be searched with visdex, and visdex's vectors used there.

The layout (what ``clip_retrieval/clip_inference/writer.py`` writes)::

    OUT/img_emb/img_emb_0.npy          (n, d) float16 by default, L2-normalised, one row per image
    OUT/metadata/metadata_0.parquet    n rows, same order: image_path, caption, url, ...
    OUT/visdex.json                    visdex only: the model's fingerprint, so an import back knows the model

Shard numbers are zero-padded to the number of shards (``img_emb_00`` ... ``img_emb_11``), as clip-retrieval
does; they are read in numeric order. visdex adds its own columns after clip-retrieval's: ``id``, ``width``,
``height``, ``taken`` (and ``key`` for a catalog's items).

Import: each row is addressed by its ``image_path`` (a file row, status ok, with its vector; the image is not
decoded and need not exist here), or by its ``url`` when ``image_path`` is no file path (a webdataset key such
as ``000000012``, as clip-retrieval writes for webdataset input) or missing. The path (or URL) is the key, so
importing a folder twice adds nothing. Every check (dimension, declared model, row counts) runs before the
first write; then each shard is one transaction: an interrupted import keeps whole shards only, and running
it again completes it.

>>> export_clip_retrieval(open_index("~/photos-index"), "emb/").vectors          # doctest: +SKIP
12034
>>> import_clip_retrieval(open_index("ix2", model="clip-vit-b-32"), "emb/").new   # doctest: +SKIP
12034
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BadDataset, BadQuery, MissingDependency, ModelMismatch
from .files import IMAGE_EXTENSIONS
from .models.base import Fingerprint, l2_normalize

FORMAT = "clip-retrieval"
SIDECAR = "visdex.json"
DTYPES = ("float16", "float32")
DEFAULT_SHARD_SIZE = 100_000
_SHARD = re.compile(r"^img_emb_(\d+)\.npy$")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingDependency("pyarrow", "interop", "clip-retrieval export / import (parquet)") from e
    return pa, pq


# -- export -------------------------------------------------------------------------------------
@dataclass
class ExportReport:
    out: str
    vectors: int = 0
    shards: int = 0
    dtype: str = "float16"
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def export_clip_retrieval(ix, out: str | os.PathLike, *, shard_size: int = DEFAULT_SHARD_SIZE,
                          dtype: str = "float16") -> ExportReport:  # fmt: skip
    """Write the index's vectors and metadata to ``out`` in clip-retrieval's layout. ``out`` must not exist or
    be empty; the folder is written aside and renamed into place, so a failed export leaves nothing half-made."""
    t0 = time.perf_counter()
    if dtype not in DTYPES:
        raise BadQuery(f"unknown {{field}} {dtype!r}: one of {', '.join(DTYPES)}", field="dtype")
    if shard_size < 1:
        raise BadQuery("{field} must be at least 1", field="shard_size")
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadQuery(f"{out} exists and is not an empty folder; export into a new folder", path=str(out))
    ix.require_vectors()
    _, pq = _pyarrow()
    fp: Fingerprint = ix.fingerprint
    store = ix.store
    total = store.count()
    n_shards = max(1, math.ceil(total / shard_size))
    width = int(math.log10(n_shards)) + 1  # clip-retrieval's zero padding
    report = ExportReport(str(out), dtype=dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "img_emb").mkdir()
        (tmp / "metadata").mkdir()
        for n, (ids, vecs) in enumerate(_rechunk(store.iter_vectors(16384), shard_size)):
            rows = _metadata_rows(ix.db, ids)
            keep = np.array([r is not None for r in rows], bool)  # a vector whose row is gone (mid-write elsewhere)
            ids, vecs, found = ids[keep], vecs[keep], [r for r in rows if r is not None]
            name = str(n).zfill(width)
            np.save(tmp / "img_emb" / f"img_emb_{name}.npy", np.ascontiguousarray(vecs, dtype=dtype))
            pq.write_table(_metadata_table(found), tmp / "metadata" / f"metadata_{name}.parquet")
            report.vectors += len(ids)
            report.shards += 1
        sidecar = {"format": FORMAT, "fingerprint": json.loads(fp.to_json()), "kind": ix.db.kind, "dtype": dtype,
                   "vectors": report.vectors, "shards": report.shards}  # fmt: skip
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.seconds = time.perf_counter() - t0
    return report


def _rechunk(batches: Iterable[tuple[np.ndarray, np.ndarray]], size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of any size -> batches of exactly ``size`` (the last one shorter)."""
    ids_buf: list[np.ndarray] = []
    vec_buf: list[np.ndarray] = []
    held = 0
    for ids, vecs in batches:
        ids_buf.append(np.asarray(ids))
        vec_buf.append(np.asarray(vecs))
        held += len(ids)
        while held >= size:
            ids_all, vecs_all = np.concatenate(ids_buf), np.concatenate(vec_buf)
            yield ids_all[:size], vecs_all[:size]
            ids_buf, vec_buf, held = [ids_all[size:]], [vecs_all[size:]], held - size
    if held:
        yield np.concatenate(ids_buf), np.concatenate(vec_buf)


def _metadata_rows(db, ids: np.ndarray) -> list[dict | None]:
    if db.kind == "catalog":
        items = db.items_by_ids(ids)
        return [None if (it := items.get(int(i))) is None else
                {"image_path": it["images"][0] if it["images"] else None, "caption": it["title"], "url": None,
                 "id": int(i), "width": None, "height": None, "taken": None, "key": it["key"]}
                for i in ids]  # fmt: skip
    rows = db.files_by_ids(ids)
    attrs = db.file_attrs([int(i) for i in ids])  # a WebDataset sample's caption and url (visdex.sources)
    return [None if (r := rows.get(int(i))) is None else
            {"image_path": r.path, "caption": attrs.get(int(i), {}).get("caption"),
             "url": attrs.get(int(i), {}).get("url") or (r.path if _is_url(r.path) else None), "id": int(i),
             "width": r.width, "height": r.height, "taken": r.taken_at}
            for i in ids]  # fmt: skip


def _metadata_table(rows: list[dict]):
    pa, _ = _pyarrow()
    columns = {
        "image_path": pa.string(), "caption": pa.string(), "url": pa.string(), "id": pa.int64(),
        "width": pa.int32(), "height": pa.int32(), "taken": pa.string(),
    }  # fmt: skip
    if rows and "key" in rows[0]:
        columns["key"] = pa.string()
    for r in rows:  # a URL-addressed row has no local path
        if r["url"] is not None and r["image_path"] == r["url"]:
            r["image_path"] = None
    return pa.table({c: pa.array([r[c] for r in rows], type=t) for c, t in columns.items()})


# -- import -------------------------------------------------------------------------------------
@dataclass
class Shard:
    """One img_emb / metadata pair of a clip-retrieval folder."""

    number: int
    vectors: Path
    metadata: Path
    rows: int
    dim: int


@dataclass
class ImportReport:
    source: str
    shards: int = 0
    rows: int = 0
    new: int = 0
    updated: int = 0
    skipped: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def read_layout(folder: str | os.PathLike) -> tuple[list[Shard], dict | None]:
    """The shards of a clip-retrieval folder in numeric order (headers only: nothing is loaded) and its visdex
    sidecar (None when there is none). A missing metadata file or a row-count mismatch is :class:`BadDataset`."""
    _, pq = _pyarrow()
    folder = Path(folder).expanduser()
    emb = folder / "img_emb"
    if not emb.is_dir():
        raise BadDataset(f"{folder} is no clip-retrieval output: it has no img_emb folder", path=str(folder))
    found = sorted((int(m.group(1)), p) for p in emb.iterdir() if (m := _SHARD.match(p.name)))
    if not found:
        raise BadDataset(f"{emb} holds no img_emb_N.npy file", path=str(emb))
    shards = []
    for number, npy in found:
        meta = folder / "metadata" / f"metadata_{npy.stem[len('img_emb_') :]}.parquet"
        if not meta.is_file():
            raise BadDataset(f"{npy.name} has no metadata file {meta}", path=str(meta))
        try:
            arr = np.load(npy, mmap_mode="r")
            n_meta = pq.ParquetFile(meta).metadata.num_rows
        except (OSError, ValueError) as e:
            raise BadDataset(f"cannot read shard {npy.name}: {e}", path=str(npy)) from e
        if arr.ndim != 2:
            raise BadDataset(f"{npy} holds an array of shape {arr.shape}, not (rows, dim)", path=str(npy))
        if arr.shape[0] != n_meta:
            raise BadDataset(f"{npy.name} has {arr.shape[0]} vectors but {meta.name} {n_meta} rows", path=str(meta))
        shards.append(Shard(number, npy, meta, int(arr.shape[0]), int(arr.shape[1])))
    sidecar = None
    if (folder / SIDECAR).is_file():
        try:
            sidecar = json.loads((folder / SIDECAR).read_text())
        except (OSError, ValueError) as e:
            raise BadDataset(f"cannot read {folder / SIDECAR}: {e}", path=str(folder / SIDECAR)) from e
    return shards, sidecar


def load_shard(shard: Shard) -> tuple[np.ndarray, list[dict]]:
    """A shard's vectors (float32, as stored) and its metadata rows."""
    _, pq = _pyarrow()
    vecs = np.load(shard.vectors).astype(np.float32)
    return vecs, pq.read_table(shard.metadata).to_pylist()


def import_clip_retrieval(ix, folder: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                          progress: Callable[[int, int], None] | None = None,
                          shards: Iterable[tuple[np.ndarray, list[dict]]] | None = None) -> ImportReport:  # fmt: skip
    """Add the vectors of a clip-retrieval folder to the open index ``ix`` (a files index made with the model the
    vectors came from). Relative image paths are taken relative to ``image_root`` (default: the current
    directory, as clip-retrieval wrote them). ``progress(rows_done, rows_total)`` after each shard. ``shards``
    replaces the folder's loaded shards (tests inject an interruption with it); the folder is still checked."""
    t0 = time.perf_counter()
    layout, sidecar = read_layout(folder)
    report = ImportReport(str(Path(folder).expanduser()), notes=[])
    _check_model(ix, layout, sidecar)
    ix.db.hold_writer()  # one writer at a time
    ix.ensure_kind("files")
    ix.ensure_fingerprint()
    store, db = ix.store, ix.db
    base = Path(image_root or os.getcwd()).expanduser().absolute()
    total = sum(s.rows for s in layout)
    # Milvus: the shards' vectors reach the collection together at the end, as one import job where the server can
    bulk = getattr(store, "bulk_load", None)
    with bulk(total) if bulk is not None else contextlib.nullcontext():
        for vecs, rows in shards if shards is not None else (load_shard(s) for s in layout):
            _commit_shard(db, store, vecs, rows, base, report)
            report.shards += 1
            report.rows += len(rows)
            if progress:
                progress(report.rows, total)
    store.flush()
    report.seconds = time.perf_counter() - t0
    return report


def _check_model(ix, layout: list[Shard], sidecar: dict | None) -> None:
    """Refuse, before anything is written, vectors that another model made or that have another dimension."""
    from .api import model_source

    dims = {s.dim for s in layout}
    if len(dims) > 1:
        raise BadDataset(f"the shards have different dimensions: {sorted(dims)}")
    dim = dims.pop()
    declared = (sidecar or {}).get("fingerprint")
    if declared:
        fp = Fingerprint(**declared)
        if fp.source != model_source(ix.model_name):
            raise ModelMismatch(f"these vectors were made by {fp.short()}, not {ix.model_name!r}; vectors of "
                                f"different models cannot be compared. Import them with {{field}}={fp.name}",
                                field="model")  # fmt: skip
    want = _model_dim(ix)
    if dim != want:
        raise ModelMismatch(f"the vectors are {dim}-d but {ix.model_name!r} makes {want}-d vectors: they come from "
                            "another model; import them with the model that made them")  # fmt: skip


def _model_dim(ix) -> int:
    """The model's dimension: the index's, else the catalog's (no load), else the loaded model's."""
    from .models import get_spec
    from .models.onnx import split_backend

    if ix.fingerprint is not None:
        return ix.fingerprint.dim
    try:
        return get_spec(split_backend(ix.model_name)[1]).dim
    except Exception:  # hf:<repo> or a local directory: only the model knows
        return ix.embedder.dim


def _commit_shard(db, store, vecs: np.ndarray, rows: list[dict], base: Path, report: ImportReport) -> None:
    """One shard, one transaction: file rows (by path) and their vectors."""
    if len(vecs) != len(rows):
        raise BadDataset(f"a shard has {len(vecs)} vectors but {len(rows)} metadata rows")
    vecs = np.asarray(vecs, np.float32)
    norms = np.linalg.norm(vecs, axis=1)
    ok = np.isfinite(vecs).all(axis=1) & (norms > 0)
    # clip-retrieval normalises, then rounds to float16: re-normalise; a float32 unit vector stays bit for bit
    off = np.abs(norms - 1) > 1e-6
    vecs = vecs.copy()
    vecs[off] = l2_normalize(vecs[off])
    by_path: dict[str, tuple[dict, np.ndarray]] = {}
    for row, vec, good in zip(rows, vecs, ok, strict=True):
        path = _address(row, base)
        if path is None or not good:
            report.skipped += 1
            continue
        by_path[path] = (row, vec)  # a path twice in one shard: the last row wins
    now = time.time()
    with db.transaction():
        ids, new = [], 0
        for path, (row, _) in by_path.items():
            new += db.file_by_path(path) is None
            ids.append(db.upsert_file(_file_record(path, row, now)))
        if ids:
            store.upsert(ids, np.stack([v for _, v in by_path.values()]))
    report.new += new
    report.updated += len(by_path) - new


def _is_url(value: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value))


def _address(row: dict, base: Path) -> str | None:
    """What a row is found by: its image file's absolute path, or its URL when ``image_path`` is no file path."""
    path, url = row.get("image_path"), row.get("url")
    path = path if isinstance(path, str) and path else None
    url = url if isinstance(url, str) and url else None
    if path is not None and _is_url(path):
        return path
    looks_like_file = path is not None and (os.path.isabs(path) or os.path.splitext(path)[1].lower() in
                                             IMAGE_EXTENSIONS)  # fmt: skip
    if path is not None and (looks_like_file or url is None):
        return os.path.normpath(base / path)
    return url


def _file_record(path: str, row: dict, now: float) -> dict:
    if _is_url(path):
        scheme = re.match(r"^[^:]+://[^/]*", path)
        root, size, mtime = (scheme.group(0) if scheme else path), 0, 0.0
    else:
        root = os.path.dirname(path)
        try:  # a file that is here: its size and mtime, so a later `visdex index` of its folder keeps this vector
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime
        except OSError:
            size, mtime = 0, 0.0
    return {"path": path, "root": root, "size": size, "mtime": mtime, "hash": None, "width": _int(row.get("width")),
            "height": _int(row.get("height")), "format": None, "taken_at": row.get("taken") or None,
            "camera": None, "status": "ok", "error": None, "indexed_at": now}  # fmt: skip


def _int(value) -> int | None:
    try:
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)
    except (TypeError, ValueError):
        return None
