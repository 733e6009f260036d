"""The index a server serves, shared by every request thread.

Why one lock around library calls (and not a connection per thread): an :class:`~visdex.api.Index`
holds one SQLite connection, one in-memory FAISS index and one model. Python's ``sqlite3`` shares
a statement cache per connection that is not safe to use from two threads at once, the Hugging
Face fast tokenizers raise "Already borrowed" when called concurrently, and on a CPU one forward
pass already uses every core. A connection per thread would also mean a FAISS copy per thread.
So library calls (embed + search + hydrate: milliseconds) run one at a time, in the thread pool,
never on the event loop; everything else (reading uploads, decoding and checking them, making and
sending thumbnails and originals, JSON) runs in parallel.

Slow analyses (duplicates, clusters, the map) run on a *second* read-only :class:`Index` with
its own connection and their own lock, so a map being computed never stalls a search. Their
results are cached until the index changes (its generation counter moves). File lookups for
thumbnails and originals use a third connection, so they never wait behind a search either.

When another process (``visdex index``) changes the index while it is served, the next request
notices the new generation and reloads the vectors, so new photos show up without a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..api import Index, open_index
from ..store.db import IndexDB

log = logging.getLogger(__name__)
T = TypeVar("T")


class ServedIndex:
    """An index opened once, its model loaded once, shared safely by concurrent requests.

    >>> served = ServedIndex("/tmp/idx"); served.warm()                      # doctest: +SKIP
    >>> served.call(lambda ix: ix.search("a cat", k=3))                     # doctest: +SKIP
    """

    def __init__(self, path: str | Path, *, model: str | None = None, device: str | None = None):
        self.path = Path(path).expanduser()
        self.device = device
        self.ix: Index = open_index(self.path, model=model, device=device, create=False)
        self.lock = threading.RLock()
        self._generation = self.ix.db.generation
        self._fingerprint = self.ix.db.get_meta("fingerprint")
        self._analysis_lock = threading.Lock()
        self._analysis_ix: Index | None = None
        self._analysis_generation: int | None = None
        self._cache: dict[tuple, Any] = {}
        self._warm = False
        self._files_lock = threading.Lock()
        self._files_db: IndexDB | None = None

    def warm(self) -> None:
        """Load the model and the vectors now, so the first query is not a cold one (once; later calls return).
        An index without vectors yet has no model to load: its first query loads the default one."""
        with self.lock:
            if self._warm or self.ix.fingerprint is None:
                return
            emb = self.ix.embedder  # loads and checks the model against the index's fingerprint
            _ = self.ix.store.index  # builds or loads FAISS once, not inside a racing request
            if "text" in emb.modalities:
                emb.embed_texts(["warm up"])  # first forward pays one-off allocations
            self._warm = True

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
            self._fingerprint, self._warm = fingerprint, False
            self.warm()
        else:  # the store caches the FAISS index in memory; a fresh one reloads it from disk / SQLite
            self.ix._store = None
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

    # -- analyses on a second connection -------------------------------------------------
    def analysis(self, key: tuple, fn: Callable[[Index], T]) -> T:
        """``fn(index)`` on the analysis connection, cached until the index changes."""
        with self._analysis_lock:
            if self._analysis_ix is None:
                self._analysis_ix = open_index(self.path, create=False)
            gen = self._analysis_ix.db.generation
            if gen != self._analysis_generation:
                self._cache.clear()
                self._analysis_ix._store = None  # see _refresh
                self._analysis_generation = gen
            if key not in self._cache:
                self._cache[key] = fn(self._analysis_ix)
            return self._cache[key]

    def close(self) -> None:
        with self.lock:
            self.ix.close()
        with self._analysis_lock:
            if self._analysis_ix is not None:
                self._analysis_ix.close()
        with self._files_lock:
            if self._files_db is not None:
                self._files_db.close()
