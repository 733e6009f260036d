"""The decode and embed stages of the indexing pipeline, and the interface :mod:`visdex.ingest` runs them through.

Ingest plans (what changed), then runs two stages and writes what they give it:

* **decode**: files -> :class:`Loaded` (uint8 crops the model's size, plus what the index records of the file)
  or :class:`Failed` (the reason), in the order given;
* **embed**: a batch of those -> vectors for its :class:`Loaded` entries.

:class:`CpuStages` decodes in worker processes (JPEG draft mode, resize and crop; uint8 back to the parent) at
most :data:`PREFETCH_IMAGES` ahead, and embeds with ``embed_pixels``. On a CUDA embedder,
:func:`visdex.gpu.gpu_stages` gives the same two stages with big fp16 batches and, when faster, nvJPEG. Both
satisfy :class:`Stages`; this module imports neither ingest nor the GPU path.

>>> stages = CpuStages(load_embedder("effnet-lite0"), batch_size=32)            # doctest: +SKIP
>>> for batch in batched(stages.decoded(files, workers=2), stages.batch_size):  # doctest: +SKIP
...     vectors = stages.embed(batch)
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import config
from .errors import BadImage, VisdexError
from .files import FileInfo
from .models.base import Embedder, Preprocess
from .sources import load as load_item

# In-process decoding is faster than starting a pool for small jobs.
POOL_MIN_FILES = 48
# Files per decode task: enough to amortise the pickling round trip, few enough to keep order cheap.
CHUNK_FILES = 4
# Decoded images allowed to wait for the model: bounds memory when decoding is faster than the model.
PREFETCH_IMAGES = 256


@dataclass
class Loaded:
    """A decoded file: what the index records of it, and its pixels ready for the model."""

    info: FileInfo
    hash: str
    width: int
    height: int
    format: str | None
    taken_at: str | None
    camera: str | None
    #: (H, W, 3) uint8, resized and cropped by the model's Preprocess; a CUDA tensor on the GPU decode path;
    #: None where the vector was made elsewhere (a Ray worker)
    pixels: Any


@dataclass
class Failed:
    """A file that did not decode, and why (recorded in the index; the run goes on)."""

    info: FileInfo
    reason: str


Decoded = Loaded | Failed


class Stages(Protocol):
    """What ingest runs between planning and writing. ``batch_size``: images per :meth:`embed` call."""

    batch_size: int

    def decoded(self, files: Sequence[FileInfo], workers: int) -> Iterator[Decoded]:
        """Every file decoded, in the order given; ``workers``: how many CPU processes may decode."""
        ...

    def embed(self, batch: Sequence[Decoded]) -> np.ndarray | None:
        """Vectors for the batch's :class:`Loaded` entries, in order; None when it has none. Runs on the model
        thread."""
        ...


class CpuStages:
    """Decode in a process pool, embed with the embedder's own ``embed_pixels``."""

    def __init__(self, embedder: Embedder, batch_size: int):
        self.embedder, self.batch_size = embedder, batch_size

    def decoded(self, files: Sequence[FileInfo], workers: int) -> Iterator[Decoded]:
        return decoded(files, self.embedder.preprocess, workers)

    def embed(self, batch: Sequence[Decoded]) -> np.ndarray | None:
        return embed_batch(self.embedder, batch)


def embed_batch(embedder: Embedder, batch: Sequence[Decoded]) -> np.ndarray | None:
    """uint8 crops -> vectors on the CPU path. torch and onnxruntime release the GIL meanwhile."""
    loaded = [r for r in batch if isinstance(r, Loaded)]
    if not loaded:
        return None
    return embedder.embed_pixels(embedder.preprocess.normalize(np.stack([r.pixels for r in loaded])))


# -- decode workers ------------------------------------------------------------------------
_W: dict = {}  # this process's decode settings (set by init_worker; a pool worker's own copy)


def init_worker(preprocess: Preprocess, max_pixels: int | None, in_pool: bool = False,
                parent: int | None = None, pdeathsig: bool = True) -> None:  # fmt: skip
    """Set up this process (or a pool worker) for :func:`load`."""
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


def load(info: FileInfo) -> Decoded:
    """Decode one file with the settings :func:`init_worker` gave this process; never raises for a bad file."""
    pre: Preprocess = _W["preprocess"]
    try:
        # draft_size: libjpeg decodes at 1/2..1/8 scale, never below what the model's resize needs
        digest, dec = load_item(info.path, max_pixels=_W["max_pixels"], draft_size=pre.draft_side)
        pixels = pre.to_uint8(dec.image)  # uint8 back to the parent: 4x less to pickle than float32
    except BadImage as e:
        return Failed(info, str(e))
    except VisdexError as e:
        return Failed(info, str(e))
    except Exception as e:  # a decoder bug must not stop the run
        return Failed(info, f"{type(e).__name__}: {e}")
    return Loaded(info, digest, dec.width, dec.height, dec.format, dec.taken_at, dec.camera, pixels)


def _load_chunk(infos: list[FileInfo]) -> list[Decoded]:
    return [load(i) for i in infos]


def decoded(
    files: Sequence[FileInfo],
    preprocess: Preprocess,
    workers: int,
    *,
    chunk: int | None = None,
    window: int | None = None,
) -> Iterator[Decoded]:
    """Decoded files, in the order given. ``workers`` > 1: in a process pool, with at most
    ``window`` chunks of ``chunk`` files in flight (default: enough for :data:`PREFETCH_IMAGES`),
    so memory stays bounded however far decoding runs ahead of the model."""
    max_pixels = config.get("max_pixels")
    if workers <= 1 or len(files) < POOL_MIN_FILES:
        return _in_process(files, preprocess, max_pixels)
    chunk = chunk or CHUNK_FILES
    window = window or max(2 * workers, -(-PREFETCH_IMAGES // chunk))
    chunks = [list(files[i : i + chunk]) for i in range(0, len(files), chunk)]
    return _pool_decoded(chunks, preprocess, max_pixels, workers, window)


def _in_process(files: Sequence[FileInfo], preprocess: Preprocess, max_pixels: int | None) -> Iterator[Decoded]:
    init_worker(preprocess, max_pixels)
    yield from map(load, files)


class _Running:
    """A pool's results, in order; the pool decodes from creation on (not from the first ``next``, so ingest can
    start it before the model loads). ``close`` stops the pool even before the first ``next``, where a
    generator's ``finally`` would not run."""

    def __init__(self, pool: ProcessPoolExecutor, results: Iterator[Decoded]):
        self._pool, self._results = pool, results

    def __iter__(self) -> _Running:
        return self

    def __next__(self) -> Decoded:
        return next(self._results)

    def close(self) -> None:
        self._results.close()  # type: ignore[attr-defined]
        self._pool.shutdown(wait=False, cancel_futures=True)


def _new_pool(workers: int, preprocess: Preprocess, max_pixels: int | None) -> ProcessPoolExecutor:
    # spawn: the parent may hold torch threads and CUDA state that fork would copy badly
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=init_worker,
                               initargs=(preprocess, max_pixels, True, os.getpid(),
                                         threading.current_thread() is threading.main_thread()))  # fmt: skip


def _pool_decoded(chunks: list[list[FileInfo]], preprocess: Preprocess, max_pixels: int | None, workers: int,
                  window: int) -> Iterator[Decoded]:  # fmt: skip
    pool = _new_pool(workers, preprocess, max_pixels)
    pending: deque = deque()
    todo = iter(chunks)
    try:
        for c in itertools.islice(todo, window):
            pending.append((c, pool.submit(_load_chunk, c)))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    return _Running(pool, _pool_results(pool, pending, todo, preprocess, max_pixels, workers))


def _pool_results(pool: ProcessPoolExecutor, pending: deque, todo: Iterator[list[FileInfo]], preprocess: Preprocess,
                  max_pixels: int | None, workers: int) -> Iterator[Decoded]:  # fmt: skip
    try:
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


def _isolate_crash(chunk: list[FileInfo], preprocess: Preprocess, max_pixels: int | None) -> list[Decoded]:
    out: list[Decoded] = []
    for info in chunk:
        with _new_pool(1, preprocess, max_pixels) as solo:
            try:
                out.append(solo.submit(load, info).result())
            except BrokenProcessPool:
                out.append(Failed(info, "the image decoder crashed on this file"))
    return out


def default_workers() -> int:
    """Decode processes when the caller did not choose: ``VISDEX_WORKERS``, else one a core up to 8."""
    w = config.get("workers")
    return w if w > 0 else max(1, min(os.cpu_count() or 1, 8))
