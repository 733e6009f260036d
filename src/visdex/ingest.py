"""scan -> decode (process pool) -> embed (batches) -> store.

Incremental and resumable: a file whose size and mtime are unchanged is skipped, a moved
or renamed file is recognised by its content hash and keeps its vector, a deleted file
leaves the index. Every batch is one SQLite transaction (file rows + vectors), so a crash
or Ctrl-C loses at most the batch in flight; the next run picks up where this one stopped.
A bad file is recorded with its reason and never stops the run.

The three stages run at the same time: worker processes decode (JPEG draft mode, resize and
crop to the model's input, uint8 back to the parent) at most :data:`visdex.stages.PREFETCH_IMAGES`
ahead; one model thread embeds batch k while this thread collects batch k+1 and writes batch k-1.
Results keep the input order. The decode and embed stages come from :func:`stages_for`: the CPU's
(:class:`visdex.stages.CpuStages`), or on a CUDA embedder :mod:`visdex.gpu`'s, with large fp16
batches, pinned uint8 transfers and, when it measures faster, nvJPEG decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config
from .decode import hash_file
from .files import FileInfo
from .models.base import Embedder, Preprocess
from .progress import Progress
from .sources import expand_roots, scan_roots
from .stages import CpuStages, Decoded, Failed, Loaded, Stages, decoded, default_workers

__all__ = ["IngestReport", "Progress", "default_workers", "ingest", "stages_for"]


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
            cands = by_size.get(info.size, []) if info.path not in known else []
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
    engine=None,
) -> IngestReport:
    """Bring the index up to date with ``roots``. Returns counts of what changed.

    ``embedder`` may be a callable that loads the model, given how many files need embedding: it is
    called only when some do, so re-scanning an unchanged folder never loads a model. ``store`` may be
    a zero-argument callable too (a new index's store needs the model's dimension). ``engine``: what decodes
    and embeds instead of this process (:class:`visdex.engines.ray_data.RayEngine`); planning and writing stay
    here. ``roots`` may be tar shards and URLs too (:mod:`visdex.sources`)."""
    t0 = time.perf_counter()
    progress = progress or Progress()
    abs_roots = expand_roots(roots)
    seen = {info.path: info for info in scan_roots(abs_roots, include=include, exclude=exclude)}
    db.add_roots(abs_roots)
    plan = _plan(db, seen, abs_roots)
    report = IngestReport(unchanged=plan.unchanged, moved=len(plan.moves))

    with db.transaction():
        for file_id, info in plan.moves:
            db.move_file(file_id, info.path, info.root, info.mtime)
        if prune and plan.gone:
            if callable(store):  # rows of files that never got a vector (all failed) in an index without a model
                store = store()
            store.delete(plan.gone)
            db.delete_files(plan.gone)
            report.removed = len(plan.gone)

    if not plan.todo:
        progress.start(0)
        if not callable(store):
            store.flush()
        report.seconds = time.perf_counter() - t0
        return report
    workers = default_workers() if workers is None else workers
    progress.start(len(plan.todo))  # the bar shows while the model loads; decoding may start now too
    early = None
    if callable(embedder) and not isinstance(embedder, Embedder):
        hint = getattr(embedder, "preprocess_hint", None) if engine is None else None
        if hint is not None:  # the decode workers start on the model's likely preprocessing while it loads (seconds
            early = _Early(hint, decoded(plan.todo, hint, workers))  # of imports on one core; the others idle)
        try:
            embedder = embedder(len(plan.todo))
        except BaseException:
            if early is not None:
                early.close()
            raise
    store = store() if callable(store) else store
    if engine is not None:  # decode + embed elsewhere (a Ray cluster); each batch written here as it arrives
        existing = {i.path for i in plan.todo if db.file_by_path(i.path) is not None}
        for batch, vectors in engine.embedded(plan.todo, embedder, batch_size=batch_size):
            for r in batch:
                if isinstance(r, Failed):
                    progress.failed(r.info.path, r.reason)
            _commit(db, store, batch, vectors, existing, report)
            progress.advance(len(batch))
        store.flush()
        report.seconds = time.perf_counter() - t0
        return report
    stages = stages_for(embedder, batch_size)
    existing = {path for path in (i.path for i in plan.todo) if db.file_by_path(path) is not None}
    reuse = early.results(embedder.preprocess) if early is not None and isinstance(stages, CpuStages) else None
    if early is not None and reuse is None:
        early.close()
    results = reuse if reuse is not None else stages.decoded(plan.todo, workers)
    batches = _batches(results, stages.batch_size, progress)
    _embed_and_store(db, store, stages.embed, batches, existing, report, progress)
    store.flush()
    report.seconds = time.perf_counter() - t0
    return report


def stages_for(embedder: Embedder, batch_size: int | None = None) -> Stages:
    """The decode and embed stages for ``embedder``: the GPU path's for a CUDA embedder visdex knows how to
    feed, else the CPU's. ``batch_size`` (None: the ``batch_size`` setting, or the GPU path's own) wins."""
    if str(embedder.device).startswith("cuda"):
        from .gpu import gpu_stages  # the GPU path loads only for a CUDA embedder

        gpu = gpu_stages(embedder, batch_size)
        if gpu is not None:
            return gpu
    return CpuStages(embedder, batch_size or config.get("batch_size"))


class _Early:
    """Decoding started before the model loaded, on a preprocessing hint: its results are used when the loaded
    model's preprocessing is the hint, else it is dropped (the files are decoded again, correctly)."""

    def __init__(self, hint: Preprocess, results: Iterator[Decoded]):
        self.hint, self._results = hint, results  # a pool's first window of files is decoding already

    def results(self, preprocess: Preprocess) -> Iterator[Decoded] | None:
        return self._results if preprocess == self.hint else None

    def close(self) -> None:
        close = getattr(self._results, "close", None)
        if close is not None:
            close()


def _batches(results: Iterator[Decoded], batch_size: int, progress: Progress) -> Iterator[list[Decoded]]:
    """Group decode results into model batches of ``batch_size`` images (failures ride along)."""
    pending: list[Decoded] = []
    loaded = 0
    for result in results:
        pending.append(result)
        if isinstance(result, Failed):
            progress.failed(result.info.path, result.reason)
        else:
            loaded += 1
        if loaded >= batch_size or len(pending) >= 4 * batch_size:
            yield pending
            pending, loaded = [], 0
    if pending:
        yield pending


def _embed_and_store(db, store, embed: Callable[[list[Decoded]], np.ndarray | None], batches: Iterator[list[Decoded]],
                     existing: set[str], report: IngestReport, progress: Progress) -> None:  # fmt: skip
    """Decode, embed and write at the same time: while the model thread embeds batch k, this thread
    collects batch k+1 from the decoders and then writes batch k (one transaction)."""
    model = ThreadPoolExecutor(1, thread_name_prefix="visdex-model")
    in_flight: tuple[list[Decoded], Future] | None = None
    try:
        for batch in batches:
            fut = model.submit(embed, batch)  # queued behind the batch being embedded now
            if in_flight is not None:
                _store(db, store, *in_flight, existing, report, progress)
            in_flight = (batch, fut)
        if in_flight is not None:
            _store(db, store, *in_flight, existing, report, progress)
    finally:
        model.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C: finish the batch on the model, drop the rest


def _store(db, store, batch: list, fut: Future, existing: set[str], report: IngestReport,
           progress: Progress) -> None:  # fmt: skip
    _commit(db, store, batch, fut.result(), existing, report)
    progress.advance(len(batch))


def _commit(db, store, batch: list, vectors: np.ndarray | None, existing: set[str], report: IngestReport) -> None:
    loaded = [r for r in batch if isinstance(r, Loaded)]
    failed = [r for r in batch if isinstance(r, Failed)]
    now = time.time()
    with db.transaction():
        ids = []
        for r in loaded:
            ids.append(
                db.upsert_file(
                    _record(
                        r.info,
                        now,
                        status="ok",
                        hash=r.hash,
                        width=r.width,
                        height=r.height,
                        format=r.format,
                        taken_at=r.taken_at,
                        camera=r.camera,
                    )
                )
            )
        if loaded:
            store.upsert(ids, vectors)
            attrs = [(fid, a) for fid, r in zip(ids, loaded, strict=True) if (a := getattr(r.info, "attrs", None))]
            if attrs:  # a shard sample's caption, url, json (visdex.sources)
                db.set_file_attrs(attrs)
        stale = []
        for f in failed:
            fid = db.upsert_file(_record(f.info, now, status="failed", error=f.reason))
            stale.append(fid)
        if stale:
            store.delete(stale)  # a file that used to decode and no longer does loses its old vector
    for r in loaded:
        if r.info.path in existing:
            report.updated += 1
        else:
            report.new += 1
    report.failed += len(failed)
    report.failures.extend((f.info.path, f.reason) for f in failed)


def _record(info: FileInfo, now: float, **fields) -> dict:
    return {"path": info.path, "root": info.root, "size": info.size, "mtime": info.mtime, "indexed_at": now, **fields}
