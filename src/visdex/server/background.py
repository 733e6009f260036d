"""Slow analyses (the map, duplicates, clusters) computed in the background, once per index state.

One low-priority worker thread runs them on its own read connection (its own :class:`~visdex.api.Index`),
so a search never waits for a lock they hold. Requests never compute: they look the result up, ask for it
(it jumps the queue), and wait at most a moment; the route answers 202 with the progress meanwhile.
After start-up and whenever the index's generation moves (another process indexed), the worker drops the
old results and computes the web UI's defaults again, so the first map of a big library is ready before
anyone opens it.

Why a thread and not a process: the results (numpy arrays, groups) would need pickling back and a spawned
process pays a second import of the whole stack; the worker's thread runs at a lower CPU priority
(``VISDEX_ANALYSES_NICE``, default nice 5 on Linux: 19 starved it whenever another program ran, see
docs/http.md) and sleeps a millisecond between steps that report progress, so searches get the cores and
the GIL first.

>>> bg = Background(open_ix, defaults={("map", "auto", 0): project}); bg.start()  # doctest: +SKIP
>>> bg.get(("map", "auto", 0), project, wait=1.0)                                  # doctest: +SKIP
Pending(progress=0.4)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import config

if TYPE_CHECKING:
    from ..api import Index

log = logging.getLogger(__name__)

Key = tuple
Job = Callable[[Any, Any], Any]  # (index, progress) -> result
POLL_S = 1.0  # how often an idle worker looks at the index's generation
MAX_KEPT = 32  # results kept besides the defaults: parameters from requests must not grow memory without end


@dataclass
class Pending:
    """A result being computed (or queued): ``progress`` in [0, 1]; a job of named steps says which runs."""

    progress: float = 0.0
    steps: list[str] = field(default_factory=list)
    step: int | None = None

    def body(self) -> dict:
        """The JSON of a 202 answer: ``{"status": "computing", "progress": 0.4[, "steps": [...], "step": 1]}``."""
        out: dict = {"status": "computing", "progress": self.progress}
        if self.steps:
            out.update(steps=self.steps, step=self.step)
        return out


class Stopped(BaseException):
    """Raised inside a job, at its next progress report, when the server shuts down: the job ends there (a
    BaseException, so that no job's own ``except Exception`` keeps it running on a closing index)."""


class Progress:
    """The progress hook the library calls (``start(total)``, ``advance(n)``); each step yields the CPU a moment
    and ends the job (:class:`Stopped`) once ``stop`` is set."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop
        self.total = 0
        self.done = 0
        self.stages = 1  # a job in several passes (each start() begins one) reports across them
        self.stage = 0
        self.names: list[str] = []  # the steps' names, for a job that names them (step())

    def _check(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Stopped

    def start(self, total: int) -> None:
        self._check()
        if self.total:
            self.stage = min(self.stage + 1, self.stages - 1)
        self.total, self.done = max(int(total), 1), 0

    def step(self, index: int, names: list[str]) -> None:
        """Step ``index`` of the named ``names`` begins (a start() within it counts inside the step)."""
        self.names, self.stages = list(names), max(len(names), 1)
        self.stage, self.total, self.done = min(index, self.stages - 1), 0, 0
        self._check()
        time.sleep(0.001)

    def pending(self) -> Pending:
        return Pending(self.fraction, list(self.names), self.stage if self.names else None)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._check()
        time.sleep(0.001)  # yield the GIL to request threads between batches

    @property
    def fraction(self) -> float:
        within = self.done / self.total if self.total else 0.0
        return round(min(0.99, (self.stage + within) / self.stages), 3)


@dataclass
class _Entry:
    job: Job
    progress: Progress = field(default_factory=Progress)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    started: float | None = None
    seconds: float | None = None


class Background:
    """Computes analyses on one worker thread, cached per index generation.

    ``open_index``: opens the worker's own read connection. ``defaults``: key -> job, computed after
    :meth:`start` and after every change of the index."""

    def __init__(self, open_index: Callable[[], Index], defaults: dict[Key, Job] | None = None,
                 nice: int | None = None, generation: Callable[[], int] | None = None):  # fmt: skip
        self._open_index = open_index
        self._current = generation  # the index's generation read on another connection: requests see changes at once
        self._reload = False  # the worker's store must reload its vectors before the next job
        self.defaults = dict(defaults or {})
        self.nice = config.default("analyses_nice") if nice is None else nice  # the thread's nice on Linux
        self._cond = threading.Condition()
        self._entries: dict[Key, _Entry] = {}
        self._wanted: list[Key] = []  # asked for by a request: before the defaults
        self._queued: list[Key] = []
        self._ix: Index | None = None  # the worker's own, opened by its thread
        self.generation: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = False
        self._stopping = threading.Event()  # seen by a running job at its next progress report
        self.computed = 0  # jobs finished (the tests check that a new index state recomputes)

    # -- the request side ---------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="visdex-analyses", daemon=True)
                self._thread.start()

    def get(self, key: Key, job: Job, wait: float = 0.0) -> Any:
        """The result for ``key`` (raising the error it raised), or :class:`Pending` if not ready within ``wait`` s."""
        self.start()
        deadline = time.monotonic() + max(wait, 0.0)
        gen = self._current() if self._current is not None else None
        with self._cond:
            if gen is not None:
                self._sync(gen)
            entry = self._entries.get(key)
            if entry is None:
                self._forget_old()
                entry = self._entries[key] = _Entry(job)
                self._wanted.append(key)
                self._cond.notify_all()
            elif key in self._queued:  # a default someone now waits for: compute it next
                self._queued.remove(key)
                self._wanted.append(key)
            while not entry.done.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return entry.progress.pending() if entry.started else Pending()
                self._cond.wait(left)
                entry = self._entries.get(key) or entry  # a new generation replaced it: follow the new one
        if entry.error is not None:
            raise entry.error
        return entry.result

    def status(self) -> dict:
        """Each known key: computing / queued / ready / failed, with progress and seconds taken."""
        with self._cond:
            out = {}
            for key, e in self._entries.items():
                state = "ready" if e.done.is_set() and e.error is None else "failed" if e.error else "computing"
                if state == "computing" and e.started is None:
                    state = "queued"
                out[" ".join(map(str, key))] = {"status": state, "progress": 1.0 if e.done.is_set() else
                                                 e.progress.fraction, "seconds": e.seconds}  # fmt: skip
            return {"generation": self.generation, "jobs": out}

    def close(self) -> None:
        """Stop the worker: a running job ends at its next progress report, and the worker closes its own index
        (never this thread: a job still inside one long step would then read a closed database)."""
        with self._cond:
            self._stop = True
            self._stopping.set()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
            if thread.is_alive():  # a daemon thread: it ends with the process, or closes its index when done
                log.info("analyses: a job is still inside a step without progress reports; it is left to end")
        elif self._ix is not None:
            self._ix.close()
            self._ix = None

    # -- the worker -----------------------------------------------------------------------
    def _run(self) -> None:
        _lower_priority(self.nice)
        try:
            ix = self._ix = self._open_index()
        except Exception:  # noqa: BLE001 -- a server without analyses still searches
            log.exception("analyses: could not open the index")
            return
        try:
            self._loop(ix)
        except Stopped:
            pass
        finally:
            self._ix = None
            ix.close()  # here, on its own thread, after its last job

    def _loop(self, ix: Index) -> None:
        while True:
            with self._cond:
                if self._stop:
                    return
                self._sync(ix.db.generation)
                key = self._next()
                if key is None:
                    self._cond.wait(POLL_S)
                    continue
                entry = self._entries[key]
                entry.started, generation = time.monotonic(), self.generation
                if self._reload:  # the store caches FAISS in memory; a fresh one reloads the vectors
                    ix.reload_store()
                    self._reload = False
            self._compute(ix, key, entry, generation)

    def _sync(self, gen: int) -> None:
        """A new index state (under the lock): forget every result, queue the defaults again."""
        if gen == self.generation:
            return
        if self.generation is not None:
            log.info("analyses: the index changed (generation %s -> %s); computing again", self.generation, gen)
        self.generation, self._reload = gen, True
        # other keys asked for before are computed again when asked again (the UI polls)
        self._entries = {k: _Entry(job) for k, job in self.defaults.items()}
        self._queued = list(self.defaults)
        self._wanted = []
        self._cond.notify_all()  # waiters follow the new entries

    def _forget_old(self) -> None:
        extra = [k for k, e in self._entries.items() if k not in self.defaults and e.done.is_set()]
        for key in extra[: max(0, len(extra) - MAX_KEPT + 1)]:  # oldest first (dicts keep insertion order)
            del self._entries[key]

    def _next(self) -> Key | None:
        for queue in (self._wanted, self._queued):
            while queue:
                key = queue.pop(0)
                entry = self._entries.get(key)
                if entry is not None and entry.started is None:
                    return key
        return None

    def _compute(self, ix: Index, key: Key, entry: _Entry, generation: int | None) -> None:
        t0 = time.perf_counter()
        entry.progress.stop = self._stopping
        try:
            result, error = entry.job(ix, entry.progress), None
        except Exception as exc:  # noqa: BLE001 -- the request that asks gets it (its typed error: 400, 501, ...)
            result, error = None, exc
        with self._cond:
            self._sync(ix.db.generation)
            if self.generation != generation:  # indexed meanwhile: this answer is stale, compute it again
                entry.started, entry.progress = None, Progress()
                self._entries.setdefault(key, entry)
                if key in self._queued:
                    self._queued.remove(key)
                self._wanted.append(key)  # someone may be waiting for it
                return
            entry.result, entry.error, entry.seconds = result, error, round(time.perf_counter() - t0, 3)
            entry.done.set()
            self.computed += 1
            self._cond.notify_all()
        log.info("analyses: %s in %.1f s", key, time.perf_counter() - t0)


def _lower_priority(nice: int) -> None:
    """This thread at a lower CPU priority (Linux: a thread has its own nice value; never raised above the
    process's own), so searches go first."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), nice))
    except (AttributeError, OSError):  # not Linux, or not allowed: only the priority is lost
        pass


# -- the analyses the server runs: one key and one job per request's parameters ----------------
def _library(module: str, name: str):
    """A function of the library that may not be installed in this build; absent -> MissingDependency (501)."""
    import importlib

    from ..errors import MissingDependency

    try:
        return getattr(importlib.import_module(f"visdex.{module}"), name)
    except (ImportError, AttributeError):
        raise MissingDependency(f"visdex.{module}.{name}", purpose="this endpoint") from None


def map_job(method: str = "auto", seed: int = 0) -> tuple[Key, Job]:
    project = _library("viz", "project_2d")
    return ("map", method, seed), lambda ix, progress: project(ix, method=method, seed=seed, progress=progress)


def dupes_job(threshold: float | None = None, exact_only: bool = False) -> tuple[Key, Job]:
    find = _library("dupes", "find_duplicates")

    def job(ix, progress: Progress):
        progress.stages = 2  # candidates (reported), then the pixel checks (not reported: shown as half done)
        return find(ix, threshold=threshold, exact_only=exact_only, progress=progress)

    return ("dupes", threshold, exact_only), job


def clusters_job(k: int | None = None, seed: int = 0) -> tuple[Key, Job]:
    cluster = _library("cluster", "cluster_index")
    return ("clusters", k, seed), lambda ix, progress: cluster(ix, k, seed=seed, progress=progress)


def default_jobs() -> dict[Key, Job]:
    """What the web UI asks for first (the map, duplicates, clusters with default parameters)."""
    jobs = {}
    for make in (dupes_job, clusters_job, map_job):
        try:
            key, job = make()
        except Exception:  # noqa: BLE001 -- a build without that module: its route answers 501 when asked
            continue
        jobs[key] = job
    return jobs
