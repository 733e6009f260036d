"""scan -> decode (process pool) -> embed (batches) -> store.

Incremental and resumable: a file whose size and mtime are unchanged is skipped, a moved
or renamed file is recognised by its content hash and keeps its vector, a deleted file
leaves the index. Every batch is one SQLite transaction (file rows + vectors), so a crash
or Ctrl-C loses at most the batch in flight; the next run picks up where this one stopped.
A bad file is recorded with its reason and never stops the run.

The three stages run at the same time: worker processes decode (JPEG draft mode, resize and
crop to the model's input, uint8 back to the parent) at most :data:`PREFETCH_IMAGES` ahead;
one model thread embeds batch k while this thread collects batch k+1 and writes batch k-1.
Results keep the input order. On a CUDA embedder, :mod:`visdex.gpu` swaps in large fp16
batches with pinned uint8 transfers and, when it measures faster, nvJPEG decoding.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config
from .decode import hash_file
from .errors import BadImage, VisdexError
from .files import FileInfo
from .models.base import Embedder, Preprocess
from .sources import expand_roots, scan_roots
from .sources import load as load_item

# In-process decoding is faster than starting a pool for small jobs.
POOL_MIN_FILES = 48
# Files per decode task: enough to amortise the pickling round trip, few enough to keep order cheap.
CHUNK_FILES = 4
# Decoded images allowed to wait for the model: bounds memory when decoding is faster than the model.
PREFETCH_IMAGES = 256


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


def _init_worker(preprocess: Preprocess, max_pixels: int | None, in_pool: bool = False,
                 parent: int | None = None, pdeathsig: bool = True) -> None:  # fmt: skip
    _W["preprocess"], _W["max_pixels"] = preprocess, max_pixels
    if in_pool:
        # Ctrl-C goes to the whole process group; only the parent handles it (it stops the run cleanly).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is not None:
        _die_with_parent(parent, pdeathsig)


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int, pdeathsig: bool = True) -> None:
    """A decode worker must not outlive the run that started it: a parent killed with SIGKILL runs no clean-up,
    and the pool's workers would wait on their task queue forever. Linux: the kernel sends SIGKILL when the
    parent dies (prctl PR_SET_PDEATHSIG; only for a pool made on the main thread: the signal comes when the
    *thread* that started the worker ends). Everywhere: a thread that checks every second that the parent is
    still the one that started this process, and exits at once when it is not."""
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="visdex-parent-watch", daemon=True).start()


def _load(info: FileInfo) -> _Loaded | _Failed:
    pre: Preprocess = _W["preprocess"]
    try:
        # draft_size: libjpeg decodes at 1/2..1/8 scale, never below what the model's resize needs
        digest, dec = load_item(info.path, max_pixels=_W["max_pixels"], draft_size=pre.draft_side)
        pixels = pre.to_uint8(dec.image)  # uint8 back to the parent: 4x less to pickle than float32
    except BadImage as e:
        return _Failed(info, str(e))
    except VisdexError as e:
        return _Failed(info, str(e))
    except Exception as e:  # a decoder bug must not stop the run
        return _Failed(info, f"{type(e).__name__}: {e}")
    return _Loaded(info, digest, dec.width, dec.height, dec.format, dec.taken_at, dec.camera, pixels)


def _load_chunk(infos: list[FileInfo]) -> list[_Loaded | _Failed]:
    return [_load(i) for i in infos]


def _decoded(
    files: Sequence[FileInfo],
    preprocess: Preprocess,
    workers: int,
    *,
    chunk: int = CHUNK_FILES,
    window: int | None = None,
) -> Iterator[_Loaded | _Failed]:
    """Decoded files, in the order given. ``workers`` > 1: in a process pool, with at most
    ``window`` chunks of ``chunk`` files in flight (default: enough for :data:`PREFETCH_IMAGES`),
    so memory stays bounded however far decoding runs ahead of the model."""
    max_pixels = config.get("max_pixels")
    if workers <= 1 or len(files) < POOL_MIN_FILES:
        _init_worker(preprocess, max_pixels)
        yield from map(_load, files)
        return
    window = window or max(2 * workers, -(-PREFETCH_IMAGES // chunk))
    chunks = [list(files[i : i + chunk]) for i in range(0, len(files), chunk)]
    yield from _pool_decoded(chunks, preprocess, max_pixels, workers, window)


def _new_pool(workers: int, preprocess: Preprocess, max_pixels: int | None) -> ProcessPoolExecutor:
    # spawn: the parent may hold torch threads and CUDA state that fork would copy badly
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(preprocess, max_pixels, True, os.getpid(),
                                         threading.current_thread() is threading.main_thread()))  # fmt: skip


def _pool_decoded(chunks: list[list[FileInfo]], preprocess: Preprocess, max_pixels: int | None, workers: int,
                  window: int) -> Iterator[_Loaded | _Failed]:  # fmt: skip
    pool = _new_pool(workers, preprocess, max_pixels)
    pending: deque = deque()
    todo = iter(chunks)
    try:
        for c in itertools.islice(todo, window):
            pending.append((c, pool.submit(_load_chunk, c)))
        while pending:
            c, fut = pending.popleft()
            try:
                results = fut.result()
            except BrokenProcessPool:
                # A worker died (a decoder crash, the OOM killer): find the culprit file by file in a
                # fresh pool, record it, and carry on with the rest.
                pool.shutdown(wait=False, cancel_futures=True)
                pool = _new_pool(workers, preprocess, max_pixels)
                results = _isolate_crash(c, preprocess, max_pixels)
                pending = deque((pc, pool.submit(_load_chunk, pc)) for pc, _ in pending)
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_load_chunk, nxt)))
            yield from results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _isolate_crash(chunk: list[FileInfo], preprocess: Preprocess, max_pixels: int | None) -> list:
    out = []
    for info in chunk:
        with _new_pool(1, preprocess, max_pixels) as solo:
            try:
                out.append(solo.submit(_load, info).result())
            except BrokenProcessPool:
                out.append(_Failed(info, "the image decoder crashed on this file"))
    return out


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
    if callable(embedder) and not isinstance(embedder, Embedder):
        embedder = embedder(len(plan.todo))
    store = store() if callable(store) else store
    if engine is not None:  # decode + embed elsewhere (a Ray cluster); each batch written here as it arrives
        existing = {i.path for i in plan.todo if db.file_by_path(i.path) is not None}
        progress.start(len(plan.todo))
        for batch, vectors in engine.embedded(plan.todo, embedder, batch_size=batch_size):
            for r in batch:
                if isinstance(r, _Failed):
                    progress.failed(r.info.path, r.reason)
            _commit(db, store, batch, vectors, existing, report)
            progress.advance(len(batch))
        store.flush()
        report.seconds = time.perf_counter() - t0
        return report
    gpu = _gpu_stages(embedder, batch_size)
    batch_size = batch_size or (gpu.batcher.staging.shape[0] if gpu else config.get("batch_size"))
    workers = default_workers() if workers is None else workers
    existing = {path for path in (i.path for i in plan.todo) if db.file_by_path(path) is not None}
    progress.start(len(plan.todo))
    if gpu is not None:
        decoded, embed = gpu.decoded(plan.todo, embedder.preprocess, workers), gpu.embed
    else:
        decoded, embed = _decoded(plan.todo, embedder.preprocess, workers), functools.partial(_embed, embedder)
    _embed_and_store(db, store, embed, _batches(decoded, batch_size, progress), existing, report, progress)
    store.flush()
    report.seconds = time.perf_counter() - t0
    return report


def _batches(results: Iterator[_Loaded | _Failed], batch_size: int, progress: Progress) -> Iterator[list]:
    """Group decode results into model batches of ``batch_size`` images (failures ride along)."""
    pending: list[_Loaded | _Failed] = []
    loaded = 0
    for result in results:
        pending.append(result)
        if isinstance(result, _Failed):
            progress.failed(result.info.path, result.reason)
        else:
            loaded += 1
        if loaded >= batch_size or len(pending) >= 4 * batch_size:
            yield pending
            pending, loaded = [], 0
    if pending:
        yield pending


def _embed(embedder, batch: list) -> np.ndarray | None:
    """Runs on the model thread: uint8 crops -> vectors. torch and onnxruntime release the GIL meanwhile."""
    loaded = [r for r in batch if isinstance(r, _Loaded)]
    if not loaded:
        return None
    return embedder.embed_pixels(embedder.preprocess.normalize(np.stack([r.pixels for r in loaded])))


def _gpu_stages(embedder, batch_size: int | None):
    """The GPU decode/embed stages for a CUDA embedder visdex knows how to feed; None on the CPU."""
    if not str(getattr(embedder, "device", "cpu")).startswith("cuda"):
        return None
    from .gpu import GPU_BATCH, GpuIngest, image_forward

    if image_forward(embedder) is None:
        return None
    # An explicit --batch-size or VISDEX_BATCH_SIZE wins; else the large batches a GPU wants.
    chosen = batch_size or (config.get("batch_size") if os.environ.get("VISDEX_BATCH_SIZE") else GPU_BATCH)
    return GpuIngest(embedder, chosen, decode=config.get("gpu_decode"), compile=config.get("compile"))


def _embed_and_store(db, store, embed, batches: Iterator[list], existing: set[str], report: IngestReport,
                     progress: Progress) -> None:  # fmt: skip
    """Decode, embed and write at the same time: while the model thread embeds batch k, this thread
    collects batch k+1 from the decoders and then writes batch k (one transaction)."""
    model = ThreadPoolExecutor(1, thread_name_prefix="visdex-model")
    in_flight: tuple[list, Future] | None = None
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
    loaded = [r for r in batch if isinstance(r, _Loaded)]
    failed = [r for r in batch if isinstance(r, _Failed)]
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
            attrs = [(fid, r.info.attrs) for fid, r in zip(ids, loaded, strict=True) if getattr(r.info, "attrs", None)]
            if attrs:  # a shard sample's caption, url, json (visdex.sources)
                db.set_file_attrs(attrs)
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
