"""scan -> decode (process pool) -> embed (batches) -> store.

Incremental and resumable: a file whose size and mtime are unchanged is skipped, a moved
or renamed file is recognised by its content hash and keeps its vector, a deleted file
leaves the index. Every batch is one SQLite transaction (file rows + vectors), so a crash
or Ctrl-C loses at most the batch in flight; the next run picks up where this one stopped.
A bad file is recorded with its reason and never stops the run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config
from .decode import hash_file, read_and_decode
from .errors import BadImage, VisdexError
from .files import FileInfo, scan
from .models.base import Preprocess

# In-process decoding is faster than starting a pool for small jobs.
POOL_MIN_FILES = 48


class Progress:
    """Receives ingest progress; the CLI draws a bar from it. The base class ignores everything."""

    def start(self, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def failed(self, path: str, reason: str) -> None: ...


@dataclass
class IngestReport:
    new: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    unchanged: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def embedded(self) -> int:
        return self.new + self.updated

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("new", "updated", "moved", "removed", "failed", "unchanged", "seconds")}


@dataclass
class _Loaded:
    info: FileInfo
    hash: str
    width: int
    height: int
    format: str
    taken_at: str | None
    camera: str | None
    pixels: np.ndarray  # (H, W, 3) uint8, already resized/cropped by the model's Preprocess


@dataclass
class _Failed:
    info: FileInfo
    reason: str


# -- decode workers ------------------------------------------------------------------------
_W: dict = {}


def _init_worker(preprocess: Preprocess, max_pixels: int | None) -> None:
    _W["preprocess"], _W["max_pixels"] = preprocess, max_pixels


def _load(info: FileInfo) -> _Loaded | _Failed:
    pre: Preprocess = _W["preprocess"]
    try:
        digest, dec = read_and_decode(info.path, max_pixels=_W["max_pixels"], draft_size=pre.resize_to)
        pixels = pre.to_uint8(dec.image)
    except BadImage as e:
        return _Failed(info, str(e))
    except VisdexError as e:
        return _Failed(info, str(e))
    except Exception as e:  # a decoder bug must not stop the run
        return _Failed(info, f"{type(e).__name__}: {e}")
    return _Loaded(info, digest, dec.width, dec.height, dec.format, dec.taken_at, dec.camera, pixels)


def _decoded(files: Sequence[FileInfo], preprocess: Preprocess, workers: int) -> Iterator[_Loaded | _Failed]:
    max_pixels = config.get("max_pixels")
    if workers <= 1 or len(files) < POOL_MIN_FILES:
        _init_worker(preprocess, max_pixels)
        yield from map(_load, files)
        return
    # spawn: the parent may hold torch threads and CUDA state that fork would copy badly
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(preprocess, max_pixels)) as pool:
        yield from pool.imap(_load, files, chunksize=4)


def default_workers() -> int:
    w = config.get("workers")
    return w if w > 0 else max(1, min(os.cpu_count() or 1, 8))


# -- planning -------------------------------------------------------------------------------
@dataclass
class _Plan:
    todo: list[FileInfo]
    moves: list[tuple[int, FileInfo]]
    gone: list[int]
    unchanged: int


def _plan(db, seen: dict[str, FileInfo], roots: Sequence[str]) -> _Plan:
    known = {row.path: row for row in db.files_under(roots)}
    todo, unchanged = [], 0
    for path, info in seen.items():
        row = known.get(path)
        if row is None:
            todo.append(info)
        elif row.size == info.size and abs(row.mtime - info.mtime) < 1e-6:
            unchanged += 1
        else:
            todo.append(info)
    gone_rows = [row for path, row in known.items() if path not in seen]
    moves: list[tuple[int, FileInfo]] = []
    if gone_rows:
        # A moved file has the same size and content hash as a vanished one; size first, hash
        # only for candidates, so nothing is read needlessly.
        by_size: dict[int, list] = {}
        for row in gone_rows:
            if row.status == "ok" and row.hash:
                by_size.setdefault(row.size, []).append(row)
        remaining = []
        for info in todo:
            cands = by_size.get(info.size) if info.path not in known else None
            match = None
            if cands:
                try:
                    digest = hash_file(info.path)
                except OSError:
                    digest = None
                match = next((r for r in cands if r.hash == digest), None)
            if match is not None:
                cands.remove(match)
                moves.append((match.id, info))
            else:
                remaining.append(info)
        todo = remaining
    moved_ids = {fid for fid, _ in moves}
    gone = [row.id for row in gone_rows if row.id not in moved_ids]
    return _Plan(todo, moves, gone, unchanged)


# -- the run ------------------------------------------------------------------------------
def ingest(
    db,
    store,
    embedder,
    roots: Sequence[str | Path],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    batch_size: int | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    prune: bool = True,
) -> IngestReport:
    """Bring the index up to date with ``roots``. Returns counts of what changed."""
    t0 = time.perf_counter()
    progress = progress or Progress()
    batch_size = batch_size or config.get("batch_size")
    workers = default_workers() if workers is None else workers
    abs_roots = [str(Path(r).expanduser().resolve()) for r in roots]
    seen = {info.path: info for info in scan(abs_roots, include=include, exclude=exclude)}
    db.add_roots(abs_roots)
    plan = _plan(db, seen, abs_roots)
    report = IngestReport(unchanged=plan.unchanged, moved=len(plan.moves))

    with db.transaction():
        for file_id, info in plan.moves:
            db.move_file(file_id, info.path, info.root, info.mtime)
        if prune and plan.gone:
            store.delete(plan.gone)
            db.delete_files(plan.gone)
            report.removed = len(plan.gone)

    existing = {path for path in (i.path for i in plan.todo) if db.file_by_path(path) is not None}
    progress.start(len(plan.todo))
    pending: list[_Loaded | _Failed] = []
    for result in _decoded(plan.todo, embedder.preprocess, workers):
        pending.append(result)
        if isinstance(result, _Failed):
            progress.failed(result.info.path, result.reason)
        if sum(isinstance(r, _Loaded) for r in pending) >= batch_size or len(pending) >= 4 * batch_size:
            _commit(db, store, embedder, pending, existing, report)
            progress.advance(len(pending))
            pending = []
    if pending:
        _commit(db, store, embedder, pending, existing, report)
        progress.advance(len(pending))
    store.flush()
    report.seconds = time.perf_counter() - t0
    return report


def _commit(db, store, embedder, batch: list, existing: set[str], report: IngestReport) -> None:
    loaded = [r for r in batch if isinstance(r, _Loaded)]
    failed = [r for r in batch if isinstance(r, _Failed)]
    vectors = None
    if loaded:
        vectors = embedder.embed_pixels(embedder.preprocess.normalize(np.stack([r.pixels for r in loaded])))
    now = time.time()
    with db.transaction():
        ids = []
        for r in loaded:
            ids.append(db.upsert_file(_record(r.info, now, status="ok", hash=r.hash, width=r.width, height=r.height,
                                              format=r.format, taken_at=r.taken_at, camera=r.camera)))
        if loaded:
            store.upsert(ids, vectors)
        stale = []
        for r in failed:
            fid = db.upsert_file(_record(r.info, now, status="failed", error=r.reason))
            stale.append(fid)
        if stale:
            store.delete(stale)  # a file that used to decode and no longer does loses its old vector
    for r in loaded:
        if r.info.path in existing:
            report.updated += 1
        else:
            report.new += 1
    report.failed += len(failed)
    report.failures.extend((r.info.path, r.reason) for r in failed)


def _record(info: FileInfo, now: float, **fields) -> dict:
    return {"path": info.path, "root": info.root, "size": info.size, "mtime": info.mtime, "indexed_at": now, **fields}
