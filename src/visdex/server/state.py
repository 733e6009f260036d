"""The index a server serves, shared by every request thread.

Why one lock around library calls (and not a connection per thread): an :class:`~visdex.api.Index`
holds one SQLite connection, one in-memory FAISS index and one model. Python's ``sqlite3`` shares
a statement cache per connection that is not safe to use from two threads at once, the Hugging
Face fast tokenizers raise "Already borrowed" when called concurrently, and on a CPU one forward
pass already uses every core. A connection per thread would also mean a FAISS copy per thread.
So library calls (embed + search + hydrate: milliseconds) run one at a time, in the thread pool,
never on the event loop; everything else (reading uploads, decoding and checking them, making and
sending thumbnails and originals, JSON) runs in parallel.

Slow analyses (duplicates, clusters, the map) run in the background (:mod:`.background`): one
low-priority worker thread with its own read-only :class:`Index` and connection, so a map being
computed never stalls a search. It computes the web UI's defaults after start-up and again whenever
the index changes (its generation counter moves); requests only look results up. File lookups for
thumbnails and originals use a third connection, so they never wait behind a search either.

Text queries are embedded outside that lock, by one :class:`TextBatcher` thread: the texts of
every request that arrives while a batch is being embedded go into the next batch, so sixteen
concurrent clients cost about one forward pass of sixteen texts, not sixteen passes one after
another; a small LRU answers a text asked again (the web UI pages, re-filters, re-sorts) without
one. The text tower is the exported ONNX one when there is one (see
:mod:`visdex.models.textquery`; ``serve`` exports it once at start-up). Uploaded images are
embedded outside that lock too, batched the same way by an :class:`ImageBatcher`, so a 40 ms image
forward pass never holds up the millisecond searches queued behind it; only the vector search runs
locked.

When another process (``visdex index``) changes the index while it is served, the next request
notices the new generation and reloads the vectors, so new photos show up without a restart.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from .. import config
from ..api import Index, open_index
from ..store.db import IndexDB
from .background import Background, Pending, default_jobs

log = logging.getLogger(__name__)
T = TypeVar("T")


class TextBatcher:
    """Embeds texts for many threads at once: callers block in :meth:`embed`; one worker thread takes
    everything queued (up to ``max_batch`` texts) and embeds it in one call.

    >>> batcher = TextBatcher(lambda: index.text_embedder)                  # doctest: +SKIP
    >>> batcher.embed(["a cat"]).shape                                       # doctest: +SKIP
    (1, 512)
    """

    thread_name = "visdex-text-batcher"

    def __init__(self, embedder: Callable[[], Any], max_batch: int = 64, cache_size: int = 1024):
        self._embedder = embedder  # called on the worker thread each batch: follows a re-opened index
        self.max_batch = max_batch
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> vector, most recent last
        self._cache_lock = threading.Lock()
        self._cache_owner: Any = None  # the embedder the cached vectors came from
        self._queue: queue.Queue[tuple[list, Future] | None] = queue.Queue()  # texts (or images: ImageBatcher)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0  # how many forward passes ran (the tests check that concurrent texts share them)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), np.float32)
        texts = list(texts)
        with self._cache_lock:
            known = {t: v for t in texts if (v := self._cache.get(t)) is not None}
            for t in known:
                self._cache.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            self._ensure_thread()
            fut: Future = Future()
            self._queue.put((missing, fut))
            known.update(zip(missing, fut.result(), strict=True))
        return np.stack([known[t] for t in texts])

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, n = [first], len(first[0])
            while n < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(nxt)
                n += len(nxt[0])
            self._embed_jobs(jobs)

    def _embed_jobs(self, jobs: list[tuple[list[str], Future]]) -> None:
        texts = list(dict.fromkeys(t for job_texts, _ in jobs for t in job_texts))  # a text asked twice: embedded once
        try:
            embedder = self._embedder()
            by_text = dict(zip(texts, embedder.embed_texts(texts), strict=True))
        except BaseException as exc:  # every waiting request gets the error, none hangs
            for _, fut in jobs:
                fut.set_exception(exc)
            return
        self.batches += 1
        self._remember(embedder, by_text)
        for job_texts, fut in jobs:
            fut.set_result(np.stack([by_text[t] for t in job_texts]))

    def _remember(self, embedder: Any, by_text: dict[str, np.ndarray]) -> None:
        with self._cache_lock:
            if embedder is not self._cache_owner:  # another model (the index was re-made): old vectors are not its
                self._cache.clear()
                self._cache_owner = embedder
            for t, v in by_text.items():
                v.flags.writeable = False  # shared between requests: nobody may change it in place
                self._cache[t] = v
                self._cache.move_to_end(t)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def forget(self) -> None:
        """Drop the cached vectors (the index was re-made with another model)."""
        with self._cache_lock:
            self._cache.clear()
            self._cache_owner = None

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)


class ImageBatcher(TextBatcher):
    """Uploaded images, batched the same way (no cache: uploads are rarely the same bytes twice). One pass
    over eight images costs far less than eight passes: a torch CNN's per-layer Python runs under the GIL,
    which sixteen request threads contend for.

    >>> ImageBatcher(lambda: index.embedder).embed([image]).shape            # doctest: +SKIP
    (1, 512)
    """

    thread_name = "visdex-image-batcher"

    def __init__(self, embedder: Callable[[], Any], max_batch: int = 16):
        super().__init__(embedder, max_batch=max_batch, cache_size=0)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:  # type: ignore[override]
        self._ensure_thread()
        fut: Future = Future()
        self._queue.put((list(images), fut))
        return fut.result()

    def _embed_jobs(self, jobs: list[tuple[list, Future]]) -> None:
        images = [im for job_images, _ in jobs for im in job_images]
        try:
            vectors = self._embedder().embed_images(images)
        except BaseException as exc:  # every waiting request gets the error, none hangs
            for _, fut in jobs:
                fut.set_exception(exc)
            return
        self.batches += 1
        start = 0
        for job_images, fut in jobs:
            fut.set_result(vectors[start : start + len(job_images)])
            start += len(job_images)


def _generation(db: IndexDB) -> int:
    return db.generation


class ServedIndex:
    """An index opened once, its model loaded once, shared safely by concurrent requests.

    >>> served = ServedIndex("/tmp/idx"); served.warm()                      # doctest: +SKIP
    >>> served.call(lambda ix: ix.search("a cat", k=3))                     # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, *, model: str | None = None, device: str | None = None,
                 model_threads: int | None = 1):  # fmt: skip
        nice = config.get("analyses_nice")  # a bad value fails before anything is opened
        self.path = Path(path).expanduser()
        self.device = device
        # torch threads for the image passes of uploads. One: a server runs requests side by side, and two
        # OpenMP threads on a busy 2-core machine wait for each other (measured 48 -> 35 ms CPU an upload,
        # ~10x less wall time under load). None leaves torch's setting alone.
        self.model_threads = model_threads
        self._torch_threads: int | None = None  # torch's own setting, put back by close()
        self.ix: Index = open_index(self.path, model=model, device=device, create=False)
        self.lock = threading.RLock()
        self._generation = self.ix.db.generation
        self._fingerprint = self.ix.db.get_meta("fingerprint")
        self.background = Background(
            lambda: open_index(self.path, create=False),
            default_jobs(),
            nice=nice,
            generation=lambda: self.files(_generation),
        )
        self._warm = False
        self._files_lock = threading.Lock()
        self._files_db: IndexDB | None = None
        self.texts = TextBatcher(self._text_embedder)
        self.images = ImageBatcher(self._image_embedder)  # uploads' forward passes, outside self.lock
        self._image_model = None  # the ONNX image tower for uploads, when one is cached (see warm)

    def warm(self) -> None:
        """Load the model and the vectors now, so the first query is not a cold one (once; later calls return).
        An index without vectors yet has no model to load: its first query loads the default one."""
        with self.lock:
            if self._warm or self.ix.fingerprint is None:
                self.background.start()  # an empty index: its analyses follow the first vectors
                return
            emb = self.ix.embedder  # loads and checks the model against the index's fingerprint
            self._limit_torch_threads()
            _ = self.ix.store.index  # builds or loads FAISS once, not inside a racing request
            if "text" in emb.modalities:
                try:  # the model is loaded now: export its text tower once (no-op when cached or switched off)
                    self.ix.prepare_text_queries()
                except Exception as exc:  # noqa: BLE001 -- only speed is lost: torch answers text queries
                    log.warning("could not export the text tower to ONNX (%s); text queries use the model", exc)
                self.ix.use_fast_text_queries()  # the export just made
                self.ix.text_embedder.embed_texts(["warm up"])  # first forward pays one-off allocations
            self._image_model = self._onnx_image_tower(emb) if "image" in emb.modalities else None
            self._warm = True
            self.background.start()  # after the model: the first analyses do not slow the start-up

    def _onnx_image_tower(self, emb):
        """The model's cached fp32 ONNX towers (what CPU indexing exports; the same vectors, checked) for
        uploads on a CPU, when there are some; else None (the model itself embeds uploads). ONNX Runtime
        runs a whole pass without the GIL; torch re-takes it at every layer, and sixteen request threads
        make each take a wait."""
        from ..api import cpu_onnx_wanted

        if emb.device != "cpu" or not cpu_onnx_wanted(self.ix.model_name, self.device, 1):
            return None
        from ..models.onnx import load_reference_onnx

        try:
            ref = load_reference_onnx(self.ix.model_name, export=False)
        except Exception as exc:  # noqa: BLE001 -- only speed is lost: the model embeds uploads
            log.info("uploads use the model: %s", exc)
            return None
        fp = self.ix.fingerprint
        return ref if ref is not None and fp is not None and ref.fingerprint().compatible(fp) else None

    def _limit_torch_threads(self) -> None:
        torch = sys.modules.get("torch")  # an ONNX model never imported it: nothing to limit
        if torch is None or self.model_threads is None or self._torch_threads is not None:
            return
        self._torch_threads = torch.get_num_threads()
        torch.set_num_threads(self.model_threads)

    def _text_embedder(self):
        with self.lock:
            self.warm()
            self.ix.require_vectors()  # an empty index has no model to embed with: IndexEmpty, never a default one
            return self.ix.text_embedder

    # -- searches: texts embedded in shared batches, outside the lock ---------------------
    def search(self, query, k: int, **opts) -> list:
        """``Index.search`` with the query's text terms embedded by :attr:`texts` (batched with other
        requests' texts) before the lock is taken for the search itself."""
        from ..query import parse_query

        vectors, image, fingerprint = None, None, self._fingerprint
        if isinstance(query, Image.Image):  # embedded before the lock is taken, like texts
            image, crop = query, opts.pop("crop", None)
            query = self.embed_image(image, crop)
        elif isinstance(query, str):
            crop = opts.get("crop")
            texts = list(dict.fromkeys(t.value for t in parse_query(query, crop=crop).terms if t.kind == "text"))
            if texts:  # embedded before the lock is taken: requests queue in the batcher, not behind the lock
                vectors = dict(zip(texts, self.texts.embed(texts), strict=True))

        def run(ix: Index) -> list:
            if image is not None:  # re-indexed with another model meanwhile: embed again with the new one
                vec = query if self._fingerprint == fingerprint else image
                return ix.search(vec, k=k, crop=None if vec is query else crop, **opts)
            ok = vectors and ix.fingerprint is not None and next(iter(vectors.values())).shape[-1] == ix.fingerprint.dim
            return ix.search(query, k=k, text_vectors=vectors if ok else None, **opts)  # re-indexed meanwhile: redo

        return self.call(run)

    def embed_image(self, image: Image.Image, crop=None) -> np.ndarray:
        """An uploaded image's query vector, embedded in a batch with other uploads, outside the search lock."""
        from ..query import Crop

        image = image.convert("RGB")  # as Index.search does with an image
        if crop is not None:
            crop = Crop.parse(crop) if isinstance(crop, str) else crop
            image = image.crop(crop.box(*image.size))
        return self.images.embed([image])[0]

    def _image_embedder(self):
        with self.lock:
            self.warm()
            self.ix.require_vectors()
            return self._image_model or self.ix.embedder

    # -- the main index -------------------------------------------------------------------
    def call(self, fn: Callable[[Index], T]) -> T:
        """Run ``fn(index)`` under the lock, after picking up changes made by other processes."""
        with self.lock:
            self._refresh()
            return fn(self.ix)

    def _refresh(self) -> None:
        gen = self.ix.db.generation
        if gen == self._generation:
            return
        log.info("index %s changed (generation %s -> %s); reloading its vectors", self.path, self._generation, gen)
        fingerprint = self.ix.db.get_meta("fingerprint")
        if fingerprint != self._fingerprint:  # first vectors, or re-indexed with another model: start afresh
            old, self.ix = self.ix, open_index(self.path, device=self.device, create=False)
            old.close()
            self.texts.forget()
            self._fingerprint, self._warm = fingerprint, False
            self.warm()
        else:  # the store caches the FAISS index in memory; a fresh one reloads it from disk / SQLite
            self.ix.reload_store()
            if fingerprint is not None:
                _ = self.ix.store.index
        self._generation = gen

    @property
    def generation(self) -> int:
        return self.call(lambda ix: ix.db.generation)

    # -- file lookups on a third connection ----------------------------------------------
    def files(self, fn: Callable[[IndexDB], T]) -> T:
        """``fn(db)`` on a connection kept for file lookups (thumbnails, originals), so a page of
        40 thumbnails never queues behind searches holding the main lock."""
        with self._files_lock:
            if self._files_db is None:
                self._files_db = IndexDB(self.path, create=False)
            return fn(self._files_db)

    # -- analyses in the background ----------------------------------------------------
    def analysis(self, key: tuple, fn: Callable[[Index, Any], T], wait: float = 0.0) -> T | Pending:
        """The analysis ``key`` (computed by ``fn(index, progress)`` in the background, once per index
        state), or :class:`~.background.Pending` with its progress if not ready within ``wait`` seconds."""
        return self.background.get(key, fn, wait=wait)

    def close(self) -> None:
        self.texts.close()
        self.images.close()
        if self._torch_threads is not None:
            sys.modules["torch"].set_num_threads(self._torch_threads)
        with self.lock:
            self.ix.close()
        self.background.close()
        with self._files_lock:
            if self._files_db is not None:
                self._files_db.close()
