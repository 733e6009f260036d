"""``visdex index --engine ray``: Ray Data decodes and embeds; this process plans and writes.

The driver (this process) plans as the local pipeline does (:func:`visdex.ingest.ingest`: new, changed,
moved, deleted files; fingerprint checks) and hands the files to embed to Ray Data:

    paths --(CPU tasks)--> decode: hash, EXIF, resize + crop to uint8 --(model actors)--> vectors --> driver

Decode runs as stateless CPU tasks (:func:`decode_batch`, the same decoder as the local pipeline); embedding
runs in a pool of actors (:class:`EmbedActor`), one per GPU slot (``gpus_per_worker``) or CPU slot, each
loading the model once and checking its fingerprint against the driver's. Batches are sized per device
(:data:`visdex.gpu.GPU_BATCH` on a GPU, ``VISDEX_BATCH_SIZE`` on a CPU). Vectors stream back to the driver,
which writes each batch in one transaction (file rows + vectors, upserts by path): writing a batch twice
changes nothing, so a Ray task retried after a worker died, or a run started again after the driver was
killed, neither loses nor duplicates anything.

Ray's own log lines (cluster start-up, Ray Data's plans and progress) go to a file, :attr:`RayEngine.log_path`
(``ray-logs/`` in visdex's cache dir; workers' logs stay in the Ray session's ``logs/`` folder), so a terminal
shows visdex's bar and errors only.

>>> from visdex import open_index                                              # doctest: +SKIP
>>> with open_index("ix", model="clip-vit-b-32") as ix:                        # doctest: +SKIP
...     ix.add(["/data/photos"], engine=RayEngine(address="auto", gpus_per_worker=1))
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, TextIO

import numpy as np

from .. import config
from ..errors import MissingDependency, ModelMismatch, VisdexError
from ..files import FileInfo
from ..models.base import Fingerprint, Preprocess

log = logging.getLogger(__name__)

DECODE_BATCH = 16  # files per decode task: amortises task overhead, keeps blocks small (224^2 crops)
TEXT_FIELDS = ("error", "hash", "format", "taken_at", "camera")
RETRIES = 3  # a decode task or an actor's call retried after its worker died (then the run stops)
LOG_DIR = "ray-logs"  # under the cache dir (VISDEX_CACHE_DIR): the driver's Ray log lines, one file per run
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")  # those Ray gives handlers of their own
# CPU slots a CPU model actor reserves: half a core, so that one single-threaded actor per core leaves the other
# half of the cluster's slots to decode tasks
CPU_ACTOR_CPUS = 0.5


class Plan(NamedTuple):
    """How :class:`RayEngine` runs on the cluster as it is now."""

    actors: int  # model actors
    gpus: float  # GPUs per actor (0: a CPU actor)
    cpus: float  # CPU slots per actor
    device: str
    batch_size: int
    threads: int | None  # torch threads per CPU actor (None on a GPU)


class RayEngineError(VisdexError):
    """Ray could not run the job (cluster unreachable, a worker failing past its retries)."""

    exit_code = 1


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise MissingDependency("ray", "ray", "visdex index --engine ray") from e
    return ray


# -- the two stages (run on Ray workers) -----------------------------------------------------
def decode_batch(batch: dict[str, np.ndarray], preprocess: Preprocess, max_pixels: int | None) -> dict:
    """Ray task: paths -> model-sized uint8 crops and what the index records of each file. A file that does
    not decode gets ``ok=False`` and its reason (zeros for pixels), exactly as the local pipeline records it."""
    from ..stages import Failed as _Failed
    from ..stages import init_worker as _init_worker
    from ..stages import load as _load

    _init_worker(preprocess, max_pixels)
    out: dict[str, list] = {k: [] for k in ("i", "ok", "width", "height", "pixels", *TEXT_FIELDS)}
    blank = np.zeros((preprocess.size, preprocess.size, 3), np.uint8)
    for i, path in zip(batch["i"], batch["path"], strict=True):
        r = _load(FileInfo(str(path), "", 0, 0.0))
        out["i"].append(int(i))
        if isinstance(r, _Failed):
            out["ok"].append(False)
            out["error"].append(r.reason)
            out["pixels"].append(blank)
            for k in ("hash", "format", "taken_at", "camera", "width", "height"):
                out[k].append(0 if k in ("width", "height") else "")
            continue
        out["ok"].append(True)
        out["error"].append("")
        out["pixels"].append(r.pixels if r.pixels is not None and r.pixels.shape == blank.shape else blank)
        for k in ("hash", "format", "taken_at", "camera"):
            out[k].append(getattr(r, k) or "")
        out["width"].append(r.width)
        out["height"].append(r.height)
    arrays = {k: np.asarray(v, dtype=object if k in TEXT_FIELDS else None) for k, v in out.items()}
    arrays["pixels"] = np.stack(out["pixels"]) if out["pixels"] else np.zeros((0, *blank.shape), np.uint8)
    for k in TEXT_FIELDS:  # plain str arrays: Arrow stores them as strings, not pickled objects
        arrays[k] = arrays[k].astype(str)
    return arrays


class EmbedActor:
    """Ray actor: loads the model once (on its GPU, or the CPU), embeds the decoded crops of each batch."""

    def __init__(self, model: str, device: str, fingerprint: str, threads: int | None = None,
                 cpu_backend: str | None = None):  # fmt: skip
        from ..models import load_embedder

        if cpu_backend:  # the driver's choice (fp32 / bf16), not the node's environment: the same vectors as locally
            os.environ["VISDEX_CPU_BACKEND"] = cpu_backend
        if threads and device == "cpu":  # Ray sets OMP_NUM_THREADS from the actor's CPU slots: the plan's count wins
            import torch  # (1 with an actor per core; more when ``workers`` leaves cores to model threads)

            torch.set_num_threads(threads)
        self.embedder = load_embedder(model, device=device)
        theirs = Fingerprint.from_json(fingerprint)
        if not self.embedder.fingerprint().compatible(theirs):
            raise ModelMismatch(
                f"the model {model!r} on a Ray worker ({self.embedder.fingerprint().short()}) differs from the "
                f"driver's ({theirs.short()}): install the same model (weights, version) on every node"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["ok"], bool)
        vectors = np.zeros((len(ok), self.embedder.dim), np.float32)
        if ok.any():
            pixels = np.asarray(batch["pixels"])[ok]
            vectors[ok] = self.embedder.embed_pixels(self.embedder.preprocess.normalize(pixels))
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["vector"] = vectors
        return out


# -- the driver ----------------------------------------------------------------------------
class RayEngine:
    """Decode and embed on a Ray cluster. ``address``: None starts a local cluster in this process ("auto":
    the cluster this machine belongs to; "ray://host:10001": Ray Client). ``gpus_per_worker``: GPUs per model
    actor (0.5: two actors share a GPU; None: 1 when the cluster has GPUs, else CPU actors). ``workers``:
    model actors (None: one per GPU slot; on CPUs, one single-threaded actor per core). ``cpus_per_worker``:
    CPU slots an actor reserves (None: 1 with a GPU, :data:`CPU_ACTOR_CPUS` on CPUs). ``init``: more
    ``ray.init`` arguments.

    A subclass may replace :attr:`decode_fn` or :attr:`actor_cls` (the tests inject faults that way)."""

    decode_fn = staticmethod(decode_batch)
    actor_cls = EmbedActor

    def __init__(self, address: str | None = None, *, gpus_per_worker: float | None = None,
                 workers: int | None = None, batch_size: int | None = None, cpus_per_worker: float | None = None,
                 init: dict | None = None):  # fmt: skip
        if gpus_per_worker is not None and gpus_per_worker < 0:
            raise VisdexError(f"{{field}} must be 0 or more, not {gpus_per_worker}", field="gpus_per_worker")
        self.address, self.gpus_per_worker, self.workers = address, gpus_per_worker, workers
        self.batch_size, self.cpus_per_worker, self.init = batch_size, cpus_per_worker, init or {}
        self._started = False
        self.log_path: Path | None = None  # where Ray's driver-side log lines went (set on connect)
        self._stderr = _StderrToFile()

    def connect(self):
        ray = _ray()
        self._log_to_file()
        self._stderr.start(self.log_path)
        if not ray.is_initialized():
            try:
                # configure_logging=False: Ray would put its stderr handler back on its loggers; it still clears
                # theirs, so what it says while starting goes to the log through sys.stderr
                with self._log_as_stderr():
                    ray.init(address=self.address, log_to_driver=False, include_dashboard=False,
                             configure_logging=False, **self.init)  # fmt: skip
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise RayEngineError(f"cannot reach the Ray cluster at {self.address or 'a new local one'}: {e}") from e
            self._started = True
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the driver draws visdex's own bar
        ctx.print_on_execution_start = False
        self._log_to_file()  # again: initialising may have added console handlers
        return ray

    @contextmanager
    def _log_as_stderr(self) -> Iterator[None]:
        old = sys.stderr
        with open(str(self.log_path), "a", encoding="utf-8") as f:
            sys.stderr = f
            try:
                yield
            finally:
                sys.stderr = old

    def _log_to_file(self) -> None:
        """Ray's loggers write to :attr:`log_path` instead of the terminal (their errors reach the user as the
        exceptions visdex raises)."""
        folder = Path(config.get("cache_dir")) / LOG_DIR
        if self.log_path is None:
            folder.mkdir(parents=True, exist_ok=True)
            self.log_path = folder / f"driver-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        mine = str(self.log_path)
        for name in RAY_LOGGERS:
            logger = logging.getLogger(name)
            for h in list(logger.handlers):
                theirs = getattr(h, "baseFilename", None)
                stderr = isinstance(h, logging.StreamHandler) and theirs is None  # Ray's PlainRayHandler
                if stderr or (theirs is not None and theirs != mine and theirs.startswith(str(folder))):
                    logger.removeHandler(h)  # (an earlier engine's file: closed, this run has its own)
                    h.close()
            if not any(getattr(h, "baseFilename", None) == mine for h in logger.handlers):
                handler = logging.FileHandler(mine, encoding="utf-8", delay=True)
                handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
                handler.setLevel(logging.INFO)  # Ray Data logs its DEBUG lines (whole configs) too
                logger.addHandler(handler)
            logger.propagate = False

    def close(self) -> None:
        """Stop the local cluster this engine started (a cluster it joined keeps running); the terminal gets
        file descriptor 2 back."""
        if self._started:
            _ray().shutdown()
            self._started = False
        self._stderr.stop()

    def plan(self, ray, files: int | None = None) -> Plan:
        """How to run ``files`` files on the cluster as it is now (no more actors than decode blocks: a small job
        starts no model it cannot feed). On CPUs: one model actor per core, each with one torch thread
        and half a CPU slot (the other half of the slots run decode tasks). Measured on 2 cores
        (``benchmarks/scale_out.py``): two single-threaded actors embed 1.14-1.19x as fast as one actor with two
        threads, whose threads wait for each other at every layer while decode tasks and Ray's own processes
        hold one of the cores."""
        resources = ray.cluster_resources()
        gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        per = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if per > 0:
            from ..gpu import GPU_BATCH

            actors = _at_most(self.workers or max(1, int(gpus / per)), files)
            slots = self.cpus_per_worker if self.cpus_per_worker is not None else 1.0
            return Plan(actors, per, slots, "cuda", self.batch_size or GPU_BATCH, None)
        actors = _at_most(self.workers or max(1, int(cpus)), files)
        slots = self.cpus_per_worker if self.cpus_per_worker is not None else CPU_ACTOR_CPUS
        threads = max(1, round(cpus / actors))  # fewer actors than cores (``workers``): the rest as model threads
        return Plan(actors, 0.0, slots, "cpu", self.batch_size or config.get("batch_size"), threads)

    def embedded(self, todo: Sequence[FileInfo], embedder, *, batch_size: int | None = None
                 ) -> Iterator[tuple[list, np.ndarray | None]]:  # fmt: skip
        """(batch of ``_Loaded`` / ``_Failed``, vectors of the loaded ones) as Ray finishes them, in any order."""
        ray = self.connect()
        if batch_size:
            self.batch_size = batch_size
        plan = self.plan(ray, len(todo))
        size = plan.batch_size
        log.info("ray: %d model actor(s) on %s, batches of %d, %d files", plan.actors, plan.device, size, len(todo))
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated", module=r"visdex\..*")
        ds = ray.data.from_items([{"i": i, "path": info.path} for i, info in enumerate(todo)],
                                 override_num_blocks=max(1, min(-(-len(todo) // DECODE_BATCH), 4096)))  # fmt: skip
        decode_args = {"preprocess": embedder.preprocess, "max_pixels": config.get("max_pixels")}
        ds = ds.map_batches(self.decode_fn, batch_size=DECODE_BATCH, batch_format="numpy", num_cpus=1,
                            max_retries=RETRIES, fn_kwargs=decode_args)  # fmt: skip
        ds = ds.map_batches(self.actor_cls, batch_size=size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=plan.actors), num_gpus=plan.gpus,
                            num_cpus=plan.cpus, max_restarts=RETRIES, max_task_retries=RETRIES,
                            fn_constructor_kwargs={"model": embedder.name, "device": plan.device,
                                                   "threads": plan.threads,
                                                   "fingerprint": embedder.fingerprint().to_json(),
                                                   "cpu_backend": config.get("cpu_backend")})  # fmt: skip
        try:
            # re-sliced to model batches: each one is one transaction on the driver (and one step of the bar)
            for b in ds.iter_batches(batch_size=size, batch_format="numpy"):
                yield _results(b, todo)
            self._log_stats(ds)
        except ray.exceptions.RayError as e:
            cause = _visdex_cause(e)
            if cause is not None:
                raise cause from e
            raise RayEngineError(f"the Ray job failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e

    def _log_stats(self, ds) -> None:
        """Ray Data's per-stage timings (wall, CPU, rows, backpressure) into the log: where a run's time went."""
        try:
            stats = ds.stats()
        except Exception as e:  # statistics are a diagnosis, never a reason to fail a finished run
            stats = f"(no statistics: {type(e).__name__}: {e})"
        logging.getLogger("ray.data").info("visdex: Ray Data's statistics for this run:\n%s", stats)


def _at_most(actors: int, files: int | None) -> int:
    return actors if files is None else max(1, min(actors, -(-files // DECODE_BATCH)))


class _StderrToFile:
    """Ray's C++ core worker in this process prints its errors and advisories to file descriptor 2 itself (no
    Python logger to re-route): while the engine is connected, fd 2 goes to the log file and ``sys.stderr`` to a
    duplicate of the terminal, so visdex's bar and messages still show. Only when ``sys.stderr`` is fd 2 (not
    under a test's capture or a caller's own stream)."""

    def __init__(self) -> None:
        self.saved: int | None = None
        self.old: TextIO | None = None

    def start(self, path: Path | None) -> None:
        if self.saved is not None or path is None:
            return
        try:
            if sys.stderr is None or sys.stderr.fileno() != 2:
                return
        except (AttributeError, OSError, ValueError):  # a capture object has no descriptor
            return
        sys.stderr.flush()
        self.saved = os.dup(2)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
        old = self.old = sys.stderr
        sys.stderr = os.fdopen(os.dup(self.saved), "w", buffering=1, encoding=old.encoding, errors=old.errors)

    def stop(self) -> None:
        if self.saved is None:
            return
        ours = sys.stderr
        if self.old is not None:
            sys.stderr = self.old
        ours.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        ours.close()
        self.saved = self.old = None


def _results(b: dict[str, np.ndarray], todo: Sequence[FileInfo]) -> tuple[list, np.ndarray | None]:
    from ..stages import Failed as _Failed
    from ..stages import Loaded as _Loaded

    batch: list = []
    vectors = []
    for j, i in enumerate(b["i"]):
        info = todo[int(i)]
        if not b["ok"][j]:
            batch.append(_Failed(info, str(b["error"][j])))
            continue
        text = {k: (str(b[k][j]) or None) for k in ("format", "taken_at", "camera")}
        batch.append(_Loaded(info, str(b["hash"][j]), int(b["width"][j]), int(b["height"][j]), text["format"],
                             text["taken_at"], text["camera"], None))  # fmt: skip
        vectors.append(b["vector"][j])
    return batch, (np.stack(vectors).astype(np.float32) if vectors else None)


def _visdex_cause(e: BaseException) -> VisdexError | None:
    """A VisdexError raised on a worker (ModelMismatch, MissingDependency) comes back wrapped; unwrap it."""
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, VisdexError):
            return cur
        nxt = getattr(cur, "cause", None)
        cur = nxt if isinstance(nxt, BaseException) else cur.__cause__
    return None


def default_address() -> str | None:
    """``RAY_ADDRESS`` when set (Ray's own convention), else None: a local cluster."""
    return os.environ.get("RAY_ADDRESS") or None
