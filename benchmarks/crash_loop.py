"""Crash loop: ``kill -9`` visdex at random moments and check, after every kill, that the index is whole.

Each iteration picks a phase and starts the real CLI in a subprocess:

- ``index``: stashed files come back and a few files are rewritten, then ``visdex index FOLDER``;
- ``rebuild``: ``visdex index --rebuild --model OTHER`` (the two models alternate);
- ``tag``: ``visdex tag --labels ...``;
- ``delete``: some files are removed from the folder, then ``visdex index FOLDER`` prunes them;
- ``trash``: exact copies of a few files are made and indexed, then ``visdex dupes --exact-only --trash --apply``
  moves them to ``.visdex-trash``; after it, ``visdex trash undo`` (always after a kill, else one time in two);
- ``ray`` (with ``--ray``): as ``index``, through ``visdex index --engine ray`` on a local Ray cluster started
  once for the loop (``ray start --head``, as a user's cluster): the driver is killed; after it, no embedding
  actor of its job may still run (Ray ends a dead driver's workers).

It is killed (SIGKILL) a random time after its first write reached the database (or, one time in five,
a random time after it started: start-up and planning). After each kill:

- ``PRAGMA integrity_check`` is ok; no decode worker of the killed run is still alive;
- every file row marked indexed has exactly one vector of the index's dimension and every vector an
  indexed file; no path twice;
- a sample of files finds itself first (score 1) through the saved ANN file, loaded as a new process would;
- ``visdex status`` works (a subprocess, or in-process with ``--status-inline``);
- after a ``trash`` run, every file of the folder is in place or in the trash with a journal entry, its bytes
  unchanged; after its undo, every file is back in place.

At the end every file is restored, a last clean ``visdex index`` runs and the same checks apply, plus: every
file of the folder indexed, no temporary file left. Results -> JSON (kills per phase, failures: must be 0).

    python benchmarks/crash_loop.py --iterations 50       # ~10 min on 2 busy cores -> results/crash_loop.json
    python benchmarks/crash_loop.py --iterations 50 --ray # the Ray path too (needs visdex[ray])
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(ROOT / "tests"))

RESULTS = ROOT / "benchmarks" / "results"
PHASES = ("index", "rebuild", "tag", "delete", "trash")
RAY_ACTOR = "EmbedActor"  # in the process title of the Ray workers that embed (ray::MapWorker(MapBatches(EmbedActor)))
LABELS = "cat,dog,car,tree,beach,house"
SELF_SAMPLE = 5


# -- the photo folder and models ------------------------------------------------------------------
def make_folder(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` distinct small JPEGs: crops of scikit-image's photos at random places and scales."""
    import numpy as np
    from PIL import Image

    from imagefactory import real_photos, write_photo

    rng = np.random.default_rng(seed)
    photos = list(real_photos().values())
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = photos[i % len(photos)]
        h, w = arr.shape[:2]
        size = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = Image.fromarray(arr[y : y + size, x : x + size]).resize((96, 96))
        write_photo(folder, f"img{i:03d}", np.asarray(crop), quality=int(rng.integers(70, 95)))


def make_models(where: Path, kind: str) -> list[str]:
    """Two models to alternate between in rebuilds (both embed text, so ``tag`` works with either)."""
    if kind == "tiny":
        from tinymodels import make_tiny_clip

        return [str(make_tiny_clip(where / "clip-a", seed=0)), str(make_tiny_clip(where / "clip-b", seed=1))]
    return [kind, kind]  # one model: rebuilds re-embed with it (still built aside and swapped)


# -- running and killing ------------------------------------------------------------------------------
def _env(tag: str, workers: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "VISDEX_WORKERS": str(workers), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "CRASH_LOOP_TAG": tag}  # fmt: skip


class Subprocesses:
    """Each run is ``python -m visdex ARGS``: exactly what a user runs (each pays for importing torch)."""

    def start(self, args: list[str], tag: str, workers: int) -> tuple[int, object]:
        proc = subprocess.Popen([sys.executable, "-m", "visdex", *map(str, args)], env=_env(tag, workers),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        return proc.pid, proc

    def wait(self, handle) -> tuple[int, str]:
        handle.wait()
        return handle.returncode, handle.stderr.read() if handle.stderr else ""

    def close(self) -> None:
        pass


class Zygote:
    """Runs forked from one process that imported torch and visdex once (the CLI's own ``main`` in each child),
    so a run starts in milliseconds: what the test suite uses to kill five runs in seconds."""

    CODE = r"""
import json, os, sys
import torch
torch.set_num_threads(1)
import transformers, visdex.api, visdex.cli, visdex.ingest, visdex.models, visdex.rebuild, visdex.tags
from visdex.cli import main
from visdex.models import load_embedder
for name in sys.argv[1:]:  # imports the model families' modules (transformers imports them lazily)
    load_embedder(name, device="cpu").embed_texts(["a photo"])
out = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the run: as `python -m visdex ARGS`, its output to files
        os.environ.update(req["env"])
        sys.argv = ["visdex", *req["args"]]
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.dup2(os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback; traceback.print_exc(); code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    out.write(json.dumps({"pid": pid}) + "\n"); out.flush()
    _, status = os.waitpid(pid, 0)
    out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n"); out.flush()
"""

    def __init__(self, work: Path, warm: list[str]):
        self.work = work
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, *warm], env=_env("zygote", 1),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.n = 0

    def start(self, args: list[str], tag: str, workers: int) -> tuple[int, object]:
        self.n += 1
        err = self.work / f"run-{self.n}.err"
        env = {"VISDEX_WORKERS": str(workers), "CRASH_LOOP_TAG": tag}  # the decode workers it spawns carry the tag
        self.proc.stdin.write(json.dumps({"args": [str(a) for a in args], "env": env, "stderr": str(err)}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"], err

    def wait(self, handle) -> tuple[int, str]:
        rc = json.loads(self.proc.stdout.readline())["rc"]
        return rc, Path(handle).read_text(errors="replace") if Path(handle).exists() else ""

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def visdex(*args: str, launcher=None, workers: int = 1) -> subprocess.CompletedProcess:
    """A run to its end: (exit code, stderr)."""
    launcher = launcher or Subprocesses()
    _, handle = launcher.start([str(a) for a in args], "clean", workers)
    rc, err = launcher.wait(handle)
    return subprocess.CompletedProcess(args, rc, "", err)


def signature(ix: Path) -> tuple:
    """What changes when a run writes: the generation, rebuild rows, tags, file rows."""
    try:
        conn = sqlite3.connect(f"{(ix / 'index.db').as_uri()}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return ()
    try:
        out = []
        for sql in ("SELECT value FROM meta WHERE key = 'generation'", "SELECT COUNT(*) FROM rebuild_vectors",
                    "SELECT COUNT(*), SUM(score) FROM tags", "SELECT COUNT(*), SUM(mtime) FROM files"):  # fmt: skip
            try:
                out.append(tuple(conn.execute(sql).fetchone() or ()))
            except sqlite3.Error:
                out.append(None)
        return tuple(out)
    finally:
        conn.close()


def run_and_kill(launcher, args: list[str], ix: Path, rng: random.Random, workers: int, window: float,
                 early_fraction: float = 0.2) -> dict:  # fmt: skip
    """Start ``visdex ARGS``, SIGKILL it at a random moment; what happened."""
    tag = uuid.uuid4().hex
    before = signature(ix)
    t0 = time.monotonic()
    pid, handle = launcher.start(args, tag, workers)
    early = rng.random() < early_fraction
    first_write = None
    if early:
        deadline = t0 + rng.uniform(0.0, 3.0)
    else:
        while _alive(pid) and signature(ix) == before and time.monotonic() - t0 < 300:
            time.sleep(0.02)
        first_write = time.monotonic() - t0
        deadline = time.monotonic() + rng.uniform(0.0, window)
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    killed = _alive(pid)
    if killed:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    rc, err = launcher.wait(handle)
    killed = killed and rc == -signal.SIGKILL
    return {"killed": killed, "early": early, "rc": rc, "seconds": round(time.monotonic() - t0, 2),
            "first_write_s": None if first_write is None else round(first_write, 2), "stderr": err[-500:],
            "orphans": orphans(tag)}  # fmt: skip


class RayCluster:
    """A local Ray cluster for the loop's ``ray`` runs, started as a user starts one (``ray start --head``)."""

    def __init__(self, cpus: int = 2):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self.cleanup_s: list[float] = []  # after each killed driver: seconds until its actors had gone
        self.tag = f"ray-{uuid.uuid4().hex}"  # in the environment of every process of this cluster (not another's)
        # a local test cluster without a token (as tests/test_ray.py's), so the killed drivers can join it: they
        # inherit the setting from this process's environment
        os.environ["RAY_AUTH_MODE"] = "disabled"
        self.env = {**_env(self.tag, 1), "RAY_USAGE_STATS_ENABLED": "0"}
        self.temp = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
        out = subprocess.run([str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
                              f"--num-cpus={cpus}", "--include-dashboard=false", f"--temp-dir={self.temp}"],
                             env=self.env, check=True, capture_output=True, text=True).stdout  # fmt: skip
        # the address Ray bound, as it tells workers to join ("ray start --address='10.0.0.5:6379'")
        found = re.search(r"--address='([^']+)'", out)
        self.address = found.group(1) if found else self.address

    def orphans(self, wait: float = 60.0) -> int:
        """Embedding workers of a killed driver's job still alive after ``wait`` seconds (killed if any). Ray ends
        them once it sees the driver gone (its heartbeats: seconds on a loaded machine); ``cleanup_s`` keeps how
        long each took."""
        t0 = time.monotonic()
        while True:
            alive = [pid for pid in _tagged(self.tag) if _alive(pid) and _titled(pid, RAY_ACTOR)]
            if not alive or time.monotonic() > t0 + wait:
                break
            time.sleep(0.5)
        self.cleanup_s.append(round(time.monotonic() - t0, 1))
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return len(alive)

    def stop(self) -> None:
        """This cluster's processes only (``ray stop`` would end every Ray cluster on the machine)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _tagged(self.tag):
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            time.sleep(2)
        shutil.rmtree(self.temp, ignore_errors=True)


def _titled(pid: int, needle: str) -> bool:
    """Whether a process's command line (a Ray worker's process title) contains ``needle``."""
    try:
        return needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def orphans(tag: str, wait: float = 5.0) -> int:
    """Processes of a killed run still alive after ``wait`` seconds (its decode workers); killed if any."""
    deadline = time.monotonic() + wait
    while True:
        alive = [pid for pid in _tagged(tag) if _alive(pid)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return len(alive)


def _tagged(tag: str) -> list[int]:
    out = []
    needle = f"CRASH_LOOP_TAG={tag}".encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "environ").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# -- the trash phase ------------------------------------------------------------------------------------
def _files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file()]


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _trash_setup(folder: Path, ix: Path, rng: random.Random, launcher) -> dict[str, str]:
    """Exact copies of a few files, indexed (a clean run): what the move then finds. Returns path -> digest of
    every file of the folder."""
    originals = [p for p in _files(folder) if not p.name.startswith("copy-")]
    for p in rng.sample(sorted(originals), min(4, len(originals))):
        if not (folder / f"copy-{p.name}").exists():
            shutil.copy2(p, folder / f"copy-{p.name}")
    r = visdex("index", folder, "--index", ix, "-q", launcher=launcher)
    if r.returncode != 0:
        raise RuntimeError(f"indexing the copies failed: {r.stderr[-300:]}")
    return {str(p): _digest(p) for p in _files(folder)}


def _trash_check(folder: Path, ix: Path, before: dict[str, str], rng: random.Random, launcher,
                 undo: bool) -> list[str]:  # fmt: skip
    """Each file in place or in the trash with a journal entry, bytes unchanged; then (after a kill, or one time in
    two) ``visdex trash undo`` and every file back in place."""
    problems = []
    dst_of = {}
    if (ix / "trash.db").exists():
        conn = sqlite3.connect(f"{(ix / 'trash.db').as_uri()}?mode=ro", uri=True)
        dst_of = {os.fsdecode(s): os.fsdecode(d) for s, d in conn.execute("SELECT src, dst FROM entries")}
        conn.close()
    for path, digest in before.items():
        where = Path(path) if Path(path).exists() else Path(dst_of.get(path, "/nonexistent"))
        if not where.exists():
            problems.append(f"trash: {path} is neither in place nor in the trash")
        elif _digest(where) != digest:
            problems.append(f"trash: {where} changed")
    if undo or rng.random() < 0.5:
        r = visdex("trash", "undo", "--index", ix, launcher=launcher)
        if r.returncode not in (0, 2):  # 2: nothing to undo (killed before its journal entry)
            problems.append(f"trash undo exited {r.returncode}: {r.stderr[-300:]}")
        problems += [f"trash undo: {p} not back" for p, d in before.items() if not Path(p).exists() or
                     _digest(Path(p)) != d]  # fmt: skip
    return problems


# -- the checks ----------------------------------------------------------------------------------------
def check_index(ix: Path, rng: random.Random, status_inline: bool = True) -> list[str]:
    """Everything that must hold after any kill; the problems found (empty: whole)."""
    import numpy as np

    problems: list[str] = []
    conn = sqlite3.connect(f"{(ix / 'index.db').as_uri()}?mode=ro", uri=True)
    try:
        if (r := conn.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
            problems.append(f"integrity_check: {r}")
        fp = conn.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        dim = json.loads(fp[0])["dim"] if fp else None
        q = {
            "indexed files without a vector": "SELECT COUNT(*) FROM files f WHERE status = 'ok' AND NOT EXISTS "
            "(SELECT 1 FROM vectors v WHERE v.id = f.id)",
            "vectors without an indexed file": "SELECT COUNT(*) FROM vectors v WHERE NOT EXISTS "
            "(SELECT 1 FROM files f WHERE f.id = v.id AND f.status = 'ok')",
            "paths twice": "SELECT COUNT(*) FROM (SELECT path FROM files GROUP BY path HAVING COUNT(*) > 1)",
        }
        for what, sql in q.items():
            if n := conn.execute(sql).fetchone()[0]:
                problems.append(f"{n} {what}")
        if dim is not None and (n := conn.execute("SELECT COUNT(*) FROM vectors WHERE length(vec) != ?",
                                                  (4 * dim,)).fetchone()[0]):  # fmt: skip
            problems.append(f"{n} vectors not of the index's dimension {dim}")
        ok = [r[0] for r in conn.execute("SELECT path FROM files WHERE status = 'ok' ORDER BY id")]
    finally:
        conn.close()
    if dim is None or not ok:
        return problems
    from visdex.api import open_index

    with open_index(ix, create=False) as index:  # a fresh store: loads (and checks) the saved ANN file
        for path in rng.sample(ok, min(SELF_SAMPLE, len(ok))):
            if not Path(path).exists():
                continue  # removed from the folder, not yet pruned: still indexed, no file to query with
            hits = index.search(Path(path), k=3)
            own = [h.score for h in hits if h.path == path]
            if not hits or not own or own[0] < hits[0].score - 1e-5 or abs(own[0] - 1.0) > 1e-4:
                problems.append(f"self-search: {path} -> {[(h.path, round(h.score, 4)) for h in hits]}")
        vectors = np.asarray(index.store.count())
        if status_inline:
            st = index.status()
            if st.vectors != st.files_ok or st.vectors != int(vectors):
                problems.append(f"status: {st.files_ok} indexed, {st.vectors} vectors")
    if not status_inline:
        r = subprocess.run([sys.executable, "-m", "visdex", "status", "--index", str(ix), "--json"],
                           env=_env("status", 1), capture_output=True, text=True, timeout=300)  # fmt: skip
        if r.returncode != 0:
            problems.append(f"visdex status exit {r.returncode}: {r.stderr[-300:]}")
        else:
            st = json.loads(r.stdout)
            if st["vectors"] != st["files_ok"]:
                problems.append(f"status: {st['files_ok']} indexed, {st['vectors']} vectors")
    return problems


# -- the loop ------------------------------------------------------------------------------------------
def crash_loop(work: Path, iterations: int, *, seed: int = 0, model: str = "tiny", files: int = 80,
               workers: int = 2, batch_size: int = 4, phases: list[str] | None = None,
               status_inline: bool = False, fork: bool = False, early_fraction: float = 0.2,
               ray: bool = False, log=print) -> dict:  # fmt: skip
    """Run the loop in ``work`` (a scratch folder); returns the results (see the module docstring). ``fork``:
    runs forked from one warm process (:class:`Zygote`) instead of fresh interpreters."""
    t_start = time.perf_counter()
    models = make_models(work / "models", model)
    launcher = Zygote(work, models) if fork else Subprocesses()
    cluster = RayCluster() if ray else None
    try:
        res = _loop(launcher, work, models, iterations, seed, model, files, workers, batch_size, phases,
                    status_inline, early_fraction, log, cluster)  # fmt: skip
    finally:
        launcher.close()
        if cluster is not None:
            cluster.stop()
    if cluster is not None:
        res["ray_cleanup_s"] = cluster.cleanup_s
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    return res


def _loop(launcher, work: Path, models: list[str], iterations: int, seed: int, model: str, files: int, workers: int,
          batch_size: int, phases: list[str] | None, status_inline: bool, early_fraction: float,
          log, cluster: RayCluster | None = None) -> dict:  # fmt: skip
    rng = random.Random(seed)
    folder, stash, ix = work / "photos", work / "stash", work / "ix"
    stash.mkdir(parents=True, exist_ok=True)
    make_folder(folder, files, seed)
    current = 0
    r = visdex(
        "index", folder, "--index", ix, "--model", models[0], "-q", "--batch-size", batch_size, launcher=launcher
    )
    if r.returncode != 0:
        raise RuntimeError(f"the first index run failed: {r.stderr}")
    choices = (*PHASES, "ray") if cluster is not None else PHASES
    kills = dict.fromkeys(choices, 0)
    finished = dict.fromkeys(choices, 0)
    failures: list[dict] = []
    orphaned = 0
    window = dict.fromkeys(choices, 0.15)  # seconds after the first write in which to kill; learnt from runs
    runs = []
    for it in range(iterations):
        phase = phases[it % len(phases)] if phases else rng.choice(choices)
        common = ["--index", str(ix), "-q", "--batch-size", str(batch_size)]
        if phase in ("index", "ray"):
            for p in stash.iterdir():
                shutil.move(p, folder / p.name)
            for p in rng.sample(sorted(_files(folder)), max(3, files // 8)):  # rewritten: re-embedded
                p.write_bytes(p.read_bytes())
                os.utime(p, (time.time(), time.time() + rng.random()))
            args = ["index", str(folder), *common]
            if phase == "ray":
                assert cluster is not None, "the ray phase needs crash_loop(..., ray=True)"
                args += ["--engine", "ray", "--ray-address", cluster.address]
        elif phase == "rebuild":
            target = models[1 - current]
            args = ["index", "--rebuild", "--model", target, *common]
        elif phase == "tag":
            args = ["tag", "--labels", LABELS, "--index", str(ix), "-q"]
        elif phase == "trash":
            trash_before = _trash_setup(folder, ix, rng, launcher)
            args = ["dupes", "--exact-only", "--trash", "--apply", "--yes", "-q", "--index", str(ix)]
        else:
            for p in rng.sample(sorted(_files(folder)), max(1, files // 10)):
                shutil.move(p, stash / p.name)
            args = ["index", str(folder), *common]
        out = run_and_kill(launcher, args, ix, rng, workers, window[phase], early_fraction)
        if phase == "trash":
            found = _trash_check(folder, ix, trash_before, rng, launcher, undo=out["killed"])
            failures += [{"iteration": it, "phase": phase, "problem": p} for p in found]
        if phase == "rebuild":
            fp = _fingerprint(ix)
            if fp is not None and fp.get("source") == str(Path(models[1 - current]).resolve()):
                current = 1 - current
        if out["killed"]:
            kills[phase] += 1
        else:
            finished[phase] += 1
            if out["first_write_s"] is not None:  # it ended before the kill: aim earlier next time
                window[phase] = max(0.05, out["seconds"] - out["first_write_s"])
        if not out["killed"] and out["rc"] != 0:
            failures.append({"iteration": it, "phase": phase, "problem": f"exit {out['rc']}: {out['stderr']}"})
        if phase == "ray" and cluster is not None:
            out["orphans"] += cluster.orphans()
        orphaned += out["orphans"]
        if out["orphans"]:
            failures.append({"iteration": it, "phase": phase, "problem": f"{out['orphans']} orphaned workers"})
        problems = check_index(ix, rng, status_inline)
        failures += [{"iteration": it, "phase": phase, "problem": p} for p in problems]
        runs.append({"phase": phase, **{k: out[k] for k in ("killed", "early", "seconds", "first_write_s")},
                     "problems": len(problems)})  # fmt: skip
        log(f"{it:3d} {phase:8s} {'killed' if out['killed'] else 'finished':8s} after {out['seconds']:5.2f}s"
            f"  problems: {len(problems)}")  # fmt: skip
    # the end: everything back, one clean run
    for p in stash.iterdir():
        shutil.move(p, folder / p.name)
    shutil.rmtree(folder / ".visdex-trash", ignore_errors=True)  # moved copies (their originals stay)
    r = visdex("index", folder, "--index", ix, "-q", launcher=launcher)
    final = check_index(ix, rng, status_inline)
    if r.returncode != 0:
        final.append(f"the final clean run exited {r.returncode}: {r.stderr[-300:]}")
    conn = sqlite3.connect(f"{(ix / 'index.db').as_uri()}?mode=ro", uri=True)
    indexed = conn.execute("SELECT COUNT(*) FROM files WHERE status = 'ok'").fetchone()[0]
    conn.close()
    n_files = len(_files(folder))
    if indexed != n_files:
        final.append(f"{indexed} of {n_files} files indexed after the final run")
    temps = [p.name for p in ix.iterdir() if p.name.endswith(".tmp")]
    if temps:
        final.append(f"temporary files left: {temps}")
    failures += [{"iteration": "final", "phase": "index", "problem": p} for p in final]
    return {
        "iterations": iterations, "seed": seed, "model": model, "files": files, "workers": workers,
        "batch_size": batch_size, "kills": kills, "kills_total": sum(kills.values()),
        "finished_before_kill": finished, "orphaned_workers": orphaned, "failures": failures,
        "failure_count": len(failures), "final_files_indexed": indexed, "launcher": type(launcher).__name__,
        "runs": runs,
    }  # fmt: skip


def _fingerprint(ix: Path) -> dict | None:
    conn = sqlite3.connect(f"{(ix / 'index.db').as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        return json.loads(row[0]) if row else None
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="tiny", help="tiny (two random tiny CLIPs) or a model name, e.g. lite0-minilm")
    ap.add_argument("--files", type=int, default=80)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--fork", action="store_true", help="fork runs from one warm process (fast; not a fresh CLI)")
    ap.add_argument("--phases", help="comma-separated phases to take in turn (default: a random one each time)")
    ap.add_argument("--ray", action="store_true", help="add the ray phase (a local Ray cluster; needs visdex[ray])")
    ap.add_argument("--out", type=Path, default=RESULTS / "crash_loop.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="visdex-crash-") as tmp:
        res = crash_loop(Path(tmp), args.iterations, seed=args.seed, model=args.model, files=args.files,
                         workers=args.workers, batch_size=args.batch_size, fork=args.fork, ray=args.ray,
                         phases=args.phases.split(",") if args.phases else None)  # fmt: skip
    res["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    res["command"] = "python benchmarks/crash_loop.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("kills", "kills_total", "orphaned_workers", "failure_count", "seconds")}))
    return 0 if res["failure_count"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
