"""Product catalogs: one row per item (an id, one or more images, a title, attribute columns),
one vector per item.

An item's vector is the mean of its image vectors, re-normalised (several photos of one product
pool into one point), optionally blended with the embedding of its title text
(``text_weight``). Search results are items, not files. Re-running with a changed catalog
re-embeds only the items whose row or image files changed; items gone from the catalog leave
the index.

>>> report = ingest_catalog(ix, "items.csv", text_weight=0.2)     # doctest: +SKIP
>>> report.new, report.updated, report.removed                     # doctest: +SKIP
(1200, 0, 0)
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config
from .errors import BadQuery
from .files import FileInfo
from .models.base import l2_normalize

ID_COLUMNS = ("id", "item_id", "sku", "product_id", "key")
IMAGE_COLUMNS = ("images", "image", "image_path", "image_paths", "path", "paths", "file", "files")
TITLE_COLUMNS = ("title", "name", "description", "caption", "text")
LIST_SEPARATORS = ("|", ";")
ITEMS_PER_COMMIT = 128


@dataclass
class CatalogRow:
    key: str
    images: list[str]
    title: str | None
    attrs: dict

    def row_hash(self) -> str:
        """Hash of the row and of its image files' size and mtime: unchanged -> not re-embedded."""
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps([self.key, self.images, self.title, self.attrs], sort_keys=True).encode())
        for p in self.images:
            try:
                st = os.stat(p)
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(b"missing")
        return h.hexdigest()


@dataclass
class CatalogReport:
    new: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    images: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def embedded(self) -> int:
        return self.images

    def as_dict(self) -> dict:
        keys = ("new", "updated", "removed", "unchanged", "failed", "images", "seconds")
        return {k: getattr(self, k) for k in keys}


# -- reading ------------------------------------------------------------------------------------
def _pick(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str) -> str | None:
    lower = {c.lower(): c for c in columns}
    if wanted:
        if wanted not in columns and wanted.lower() not in lower:
            raise BadQuery(f"the catalog has no {what} column {wanted!r}; its columns: {', '.join(columns)}")
        return wanted if wanted in columns else lower[wanted.lower()]
    return next((lower[c] for c in candidates if c in lower), None)


def _split_images(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if text.startswith("["):
        try:
            return _split_images(json.loads(text))
        except ValueError:
            pass
    for sep in LIST_SEPARATORS:
        if sep in text:
            return [p.strip() for p in text.split(sep) if p.strip()]
    return [text] if text else []


def read_catalog(
    path: str | os.PathLike,
    *,
    id_column: str | None = None,
    image_column: str | None = None,
    title_column: str | None = None,
) -> list[CatalogRow]:
    """Rows of a CSV or JSONL catalog. Image paths are resolved against the catalog's folder; a
    list of images is a JSON list, or paths separated by ``|`` or ``;``, or several ``image*`` columns."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BadQuery(f"no such catalog file: {path}")
    records = _read_records(path)
    if not records:
        raise BadQuery(f"the catalog {path} has no rows")
    columns = list(dict.fromkeys(c for r in records for c in r))
    idc = _pick(columns, id_column, ID_COLUMNS, "id")
    imgc = _pick(columns, image_column, IMAGE_COLUMNS, "image")
    extra_img = [c for c in columns if c.lower().startswith("image") and c != imgc]
    titlec = _pick(columns, title_column, TITLE_COLUMNS, "title")
    if idc is None:
        raise BadQuery(f"the catalog needs an id column (one of {', '.join(ID_COLUMNS)}, or {{field}})",
                       field="id_column")  # fmt: skip
    if imgc is None and not extra_img:
        raise BadQuery(f"the catalog needs an image column (one of {', '.join(IMAGE_COLUMNS)}, or {{field}})",
                       field="image_column")  # fmt: skip
    base = path.parent
    rows, seen = [], set()
    for n, rec in enumerate(records, 1):
        key = str(rec.get(idc, "") or "").strip()
        if not key:
            raise BadQuery(f"row {n} of {path.name} has an empty {idc!r}")
        if key in seen:
            raise BadQuery(f"row {n} of {path.name}: duplicate id {key!r}")
        seen.add(key)
        images = _split_images(rec.get(imgc)) if imgc else []
        for c in extra_img:
            images += _split_images(rec.get(c))
        images = [str((base / p).resolve()) if not Path(p).is_absolute() else p for p in images]
        used = {idc, imgc, titlec, *extra_img}
        attrs = {k: v for k, v in rec.items() if k not in used and v not in (None, "")}
        title = str(rec[titlec]).strip() if titlec and rec.get(titlec) not in (None, "") else None
        rows.append(CatalogRow(key, images, title, attrs))
    return rows


def _read_records(path: Path) -> list[dict]:
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise BadQuery(f"line {n} of {path.name} is not valid JSON: {e}") from e
            if not isinstance(rec, dict):
                raise BadQuery(f"line {n} of {path.name} is not a JSON object")
            out.append(rec)
        return out
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [dict(r) for r in csv.DictReader(f)]


# -- ingest -------------------------------------------------------------------------------------
def ingest_catalog(
    ix,
    path: str | os.PathLike,
    *,
    text_weight: float = 0.0,
    id_column: str | None = None,
    image_column: str | None = None,
    title_column: str | None = None,
    progress=None,
    workers: int | None = None,
    prune: bool = True,
) -> CatalogReport:
    """Index (or update) a catalog in ``ix``: one pooled vector per item. See the module docstring."""
    from .ingest import Progress, default_workers

    if not 0.0 <= text_weight < 1.0:
        raise BadQuery("{field} must be in [0, 1)", field="text_weight")
    t0 = time.perf_counter()
    progress = progress or Progress()
    rows = read_catalog(path, id_column=id_column, image_column=image_column, title_column=title_column)
    ix.ensure_kind("catalog")
    emb = ix.embedder
    ix.ensure_fingerprint()
    if text_weight and not emb.supports_text:
        raise BadQuery(f"{{field}} needs a text-and-image model; {ix.model_name!r} embeds images only",
                       field="text_weight")  # fmt: skip
    db, store = ix.db, ix.store
    known = db.item_keys()
    report = CatalogReport()
    todo = []
    for row in rows:
        h = row.row_hash() + f":{text_weight}"
        if row.key in known and known[row.key][1] == h:
            report.unchanged += 1
        else:
            todo.append((row, h))
    if prune:
        gone = [known[k][0] for k in set(known) - {r.key for r in rows}]
        if gone:
            with db.transaction():  # the vectors and the rows go together
                store.delete(gone)
                db.delete_items(gone)
            report.removed = len(gone)
    progress.start(sum(len(r.images) for r, _ in todo))
    workers = default_workers() if workers is None else workers
    for start in range(0, len(todo), ITEMS_PER_COMMIT):
        chunk = todo[start : start + ITEMS_PER_COMMIT]
        _embed_and_commit(ix, chunk, known, text_weight, workers, progress, report)
    store.flush()
    report.seconds = time.perf_counter() - t0
    return report


def _embed_and_commit(ix, chunk, known, text_weight, workers, progress, report) -> None:
    from .stages import Loaded as _Loaded
    from .stages import decoded as _decoded

    emb, db, store = ix.embedder, ix.db, ix.store
    batch_size = config.get("batch_size")
    infos, owner = [], []
    for i, (row, _) in enumerate(chunk):
        for p in row.images:
            infos.append(FileInfo(p, os.path.dirname(p), 0, 0.0))
            owner.append(i)
    sums = np.zeros((len(chunk), emb.dim), np.float32)
    counts = np.zeros(len(chunk), np.int64)
    errors: dict[int, list[str]] = {}
    batch: list[tuple[int, np.ndarray]] = []

    def flush_batch() -> None:
        if batch:
            vecs = emb.embed_pixels(emb.preprocess.normalize(np.stack([px for _, px in batch])))
            for (i, _), v in zip(batch, vecs, strict=True):
                sums[i] += v
                counts[i] += 1
            batch.clear()

    for i, result in zip(owner, _decoded(infos, emb.preprocess, workers), strict=True):
        if isinstance(result, _Loaded):
            batch.append((i, result.pixels))
            if len(batch) >= batch_size:
                flush_batch()
            report.images += 1
        else:
            errors.setdefault(i, []).append(f"{os.path.basename(result.info.path)}: {result.reason}")
            progress.failed(result.info.path, result.reason)
        progress.advance(1)
    flush_batch()
    vectors = l2_normalize(sums)  # mean pooling: the direction of the sum is the direction of the mean
    if text_weight:
        titled = [i for i, (row, _) in enumerate(chunk) if row.title]
        if titled:
            tv = emb.embed_texts([chunk[i][0].title for i in titled])
            vectors[titled] = l2_normalize((1 - text_weight) * vectors[titled] + text_weight * tv)
    _commit_items(db, store, chunk, known, vectors, counts, errors, report)


def _commit_items(db, store, chunk, known, vectors, counts, errors, report) -> None:
    now = time.time()
    with db.transaction():
        ok_ids, ok_vecs, failed_ids = [], [], []
        for i, (row, h) in enumerate(chunk):
            status = "ok" if counts[i] else "failed"
            error = "; ".join(errors.get(i, [])) or None
            if not row.images:
                error = "the row lists no images"
            item_id = db.upsert_item(row.key, row.title, row.attrs, row.images, h, status, error, now)
            if status == "ok":
                ok_ids.append(item_id)
                ok_vecs.append(vectors[i])
                report.updated += row.key in known
                report.new += row.key not in known
            else:
                failed_ids.append(item_id)
                report.failed += 1
                report.failures.append((row.key, error or "no image could be read"))
        if ok_ids:
            store.upsert(ok_ids, np.stack(ok_vecs))
        if failed_ids:
            store.delete(failed_ids)
