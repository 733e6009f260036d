"""Re-embedding an index with another model (``visdex index --rebuild``): built aside, swapped in at the end.

While the new vectors are made the index stays whole and searchable with its old model: they go to a
side table of the same SQLite file, each stamped with the size and mtime of the file (or the hash of the
catalog row) it was made from, one transaction per batch. Once every indexed file (or item) has one, a
single transaction swaps them in: the old vectors and fingerprint go, the new ones come; files that could
not be re-embedded are recorded as failed with the reason. A rebuild killed at any moment leaves the
previous index as it was; running it again with the same model resumes (what was re-embedded is kept
unless its file changed since), with another model restarts.

>>> rebuild_index(open_index("~/photos-index"), "clip-vit-b-32").embedded      # doctest: +SKIP
1200
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from . import config
from .files import FileInfo
from .models.base import Embedder, Fingerprint, l2_normalize
from .store.base import VectorStore


@dataclass
class RebuildReport:
    embedded: int = 0  # re-embedded by this run
    resumed: int = 0  # kept from an interrupted run with the same model
    failed: int = 0  # could not be re-embedded: now recorded as failed, with the reason
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("embedded", "resumed", "failed", "seconds")}


def rebuild_index(ix, model: str, *, progress=None, workers: int | None = None,
                  batch_size: int | None = None) -> RebuildReport:  # fmt: skip
    """Re-embed every indexed file or item of ``ix`` with ``model`` and swap the new vectors in at once."""
    from .api import loadable_name
    from .ingest import Progress, default_workers
    from .models import load_embedder

    t0 = time.perf_counter()
    progress = progress or Progress()
    db = ix.db
    db.hold_writer()  # one writer: a second rebuild (or index run) stops with IndexBusy
    report = RebuildReport()
    if db.fingerprint is None:  # no vectors yet: nothing to re-embed, the next add uses the model
        db.drop_shadow()
        return report
    emb = load_embedder(loadable_name(model), device=ix.device)
    got = emb.fingerprint()
    fp = Fingerprint(loadable_name(model), got.source, got.revision, got.dim, got.preprocessing, got.modalities)
    report.resumed = db.start_shadow(fp.to_json())
    workers = default_workers() if workers is None else workers
    batch_size = batch_size or config.get("batch_size")
    if db.kind == "catalog":
        report.embedded = _shadow_items(db, emb, progress, workers, batch_size)
    else:
        report.embedded = _shadow_files(db, emb, progress, workers, batch_size)
    report.failed, store = _swap(ix, fp)
    ix.use_model(fp.name, emb, store)
    report.seconds = time.perf_counter() - t0
    return report


def _shadow_files(db, emb: Embedder, progress, workers: int, batch_size: int) -> int:
    from .stages import Loaded, decoded

    rows = db.shadow_todo_files()
    progress.start(len(rows))
    infos = [FileInfo(r.path, r.root, r.size, r.mtime) for r in rows]
    pending: list[tuple] = []  # (row, pixels or None, error)
    done = 0

    def commit() -> None:
        ok = [(r, px) for r, px, _ in pending if px is not None]
        vecs = (
            emb.embed_pixels(emb.preprocess.normalize(np.stack([px for _, px in ok])))
            if ok
            else np.zeros((0, emb.dim), np.float32)
        )
        out = [(r.id, v.astype(np.float32).tobytes(), None, r.size, r.mtime, None)
               for (r, _), v in zip(ok, vecs, strict=True)]  # fmt: skip
        out += [(r.id, None, err, r.size, r.mtime, None) for r, px, err in pending if px is None]
        db.put_shadow(out)  # one transaction a batch: a kill loses at most this batch
        progress.advance(len(pending))
        pending.clear()

    for row, result in zip(rows, decoded(infos, emb.preprocess, workers), strict=True):
        if isinstance(result, Loaded):
            pending.append((row, result.pixels, None))
            done += 1
        else:
            pending.append((row, None, f"not re-embedded by the rebuild: {result.reason}"))
            progress.failed(row.path, result.reason)
        if len(pending) >= batch_size:
            commit()
    if pending:
        commit()
    return done


def _shadow_items(db, emb: Embedder, progress, workers: int, batch_size: int) -> int:
    """A catalog item's vector, as :mod:`visdex.catalog` makes it: the mean of its images' vectors, blended with
    its title's by the text weight it was indexed with (kept at the end of its row hash)."""
    from .stages import Loaded, decoded

    items = db.shadow_todo_items()
    progress.start(sum(len(it["images"]) for it in items))
    done = 0
    for start in range(0, len(items), max(1, batch_size)):
        chunk = items[start : start + batch_size]
        infos, owner = [], []
        for i, it in enumerate(chunk):
            for p in it["images"]:
                infos.append(FileInfo(p, os.path.dirname(p), 0, 0.0))
                owner.append(i)
        sums = np.zeros((len(chunk), emb.dim), np.float32)
        counts = np.zeros(len(chunk), np.int64)
        pixels, who = [], []
        for i, result in zip(owner, decoded(infos, emb.preprocess, workers), strict=True):
            if isinstance(result, Loaded):
                pixels.append(result.pixels)
                who.append(i)
            progress.advance(1)
        if pixels:
            for i, v in zip(who, emb.embed_pixels(emb.preprocess.normalize(np.stack(pixels))), strict=True):
                sums[i] += v
                counts[i] += 1
        vecs = l2_normalize(sums)
        for i, it in enumerate(chunk):
            weight = _text_weight(it["row_hash"])
            if weight and it["title"] and counts[i]:
                vecs[i] = l2_normalize((1 - weight) * vecs[i] + weight * emb.embed_texts([it["title"]])[0])[0]
        rows = [(it["id"], vecs[i].astype(np.float32).tobytes() if counts[i] else None,
                 None if counts[i] else "not re-embedded by the rebuild: no image could be read", None, None,
                 it["row_hash"]) for i, it in enumerate(chunk)]  # fmt: skip
        db.put_shadow(rows)
        done += int((counts > 0).sum())
    return done


def _text_weight(row_hash: str | None) -> float:
    try:
        return float((row_hash or "").rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0.0


def _swap(ix, fp: Fingerprint) -> tuple[int, VectorStore]:
    """One transaction: the old vectors and fingerprint out, the rebuild's in. Returns the rows left without a
    vector (recorded as failed) and the store that holds the new vectors."""
    from .store.backends import open_store

    db, old = ix.db, ix.db.fingerprint
    spec = ix.store_spec
    with db.transaction():
        misses = db.shadow_misses()
        open_store(db, old.dim, spec=spec).clear()
        db.set_fingerprint(fp)
        new = open_store(db, fp.dim, spec=spec)
        for rows in db.shadow_ready():
            ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            new.upsert(ids, np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), fp.dim))
        db.fail_rows(misses)
        db.drop_shadow()
    new.flush()  # the derived ANN file of the new vectors (local), or the push to Milvus
    return len(misses), new
