"""visdex index --engine ray on a local Ray cluster (ray.init(num_cpus=2), shared by the module: Ray takes
seconds to start). The driver plans and writes; Ray Data decodes and embeds. Real files, real SQLite."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from visdex.api import open_index  # noqa: E402
from visdex.engines.ray_data import EmbedActor, RayEngine, decode_batch  # noqa: E402

from clihelp import SRC, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module; tests reach it in-process (RayEngine joins it) or, for the kill test,
    from a driver process by its address."""
    if ray.is_initialized():
        ray.shutdown()
    # a local test cluster: no token, so that the kill test's driver process can join it
    old, os.environ["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE"), "disabled"
    for attempt in (1, 2):  # a raylet starting in a busy process can miss its 30 s start-up deadline (seen in CI)
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception as e:
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fault injectors below, on workers
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    if old is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = old


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _vectors(index: Path) -> dict[str, np.ndarray]:
    with open_index(index, create=False) as ix:
        rows = ix.db.files_by_ids([r.id for r in ix.db.files_under(ix.db.roots())])
        ids = [i for i, r in rows.items() if r.status == "ok"]
        got = ix.store.get(ids)
        return {rows[i].path: v for i, v in zip(ids, got, strict=True)}


def _integrity(index: Path) -> tuple[int, int, int]:
    """(file rows, distinct paths, vectors): the same three numbers when nothing is duplicated."""
    con = sqlite3.connect(f"file:{index / 'index.db'}?mode=ro", uri=True)
    try:
        files, paths = con.execute("SELECT COUNT(*), COUNT(DISTINCT path) FROM files WHERE status = 'ok'").fetchone()
        (vectors,) = con.execute("SELECT COUNT(*) FROM vectors").fetchone()
        return files, paths, vectors
    finally:
        con.close()


def test_ray_engine_indexes_like_the_local_pipeline(capsys, cluster, tmp_path, folder, tiny_clip):
    """The CLI's --engine ray: the same vectors as the local pipeline, the same failures recorded."""
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with open_index(tmp_path / "local", model=str(tiny_clip)) as ix:
        local = ix.add([folder], batch_size=4)
    code, out, err = run_cli(capsys, "index", folder, "--index", tmp_path / "ray", "--model", tiny_clip,
                             "--engine", "ray", "--batch-size", "4", "--json")  # fmt: skip
    assert code == 0, err
    assert '"new": 10' in out and '"failed": 1' in out and local.new == 10
    a, b = _vectors(tmp_path / "local"), _vectors(tmp_path / "ray")
    assert sorted(a) == sorted(b) and len(a) == 10
    for path in a:
        np.testing.assert_allclose(a[path], b[path], atol=1e-5)
    with open_index(tmp_path / "ray", create=False) as ix:
        assert [p for p, _ in ix.status().failures] == [str(folder / "broken.jpg")]


def test_cpu_plan_is_one_single_threaded_actor_per_core(cluster):
    """On CPUs each core gets its own model actor with one torch thread and half a CPU slot (decode tasks get the
    other half); fewer actors (``workers``) get the spare cores as threads. Before: one actor, two threads."""
    plan = RayEngine().plan(ray)
    assert (plan.actors, plan.threads, plan.cpus, plan.gpus, plan.device) == (2, 1, 0.5, 0.0, "cpu")
    one = RayEngine(workers=1, cpus_per_worker=1).plan(ray)
    assert (one.actors, one.threads, one.cpus) == (1, 2, 1)
    small = RayEngine().plan(ray, files=10)  # one decode block: one actor, with both cores
    assert (small.actors, small.threads) == (1, 2)


def _ray_lines(stderr: str) -> list[str]:
    """Lines of Ray's own logging (its loggers, raylet / GCS / core worker messages) in a CLI's stderr."""
    pattern = re.compile(r"\bray\b|raylet|gcs|core_worker|worker\.py|\[\d{4}-\d\d-\d\d |INFO |WARNING ", re.I)
    return [line for line in stderr.splitlines() if pattern.search(line) and not line.startswith("Ray's log: ")]


def test_cli_with_ray_shows_no_ray_log_lines(cluster, tmp_path, folder, tiny_clip):
    """A driver process (as a user runs it, joining the cluster): stderr holds visdex's lines only; Ray's went to a
    file that the CLI names once, at the end. (Before: Ray's 'Connecting to existing Ray cluster...' and Ray Data's
    plan and progress lines.)"""
    run = subprocess.run([sys.executable, "-m", "visdex", "index", folder, "--index", tmp_path / "ix", "--model",
                          tiny_clip, "--engine", "ray", "--ray-address", cluster, "--batch-size", "4"],
                         env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "10 new" in run.stdout
    assert _ray_lines(run.stderr) == [], run.stderr
    named = [line for line in run.stderr.splitlines() if line.startswith("Ray's log: ")]
    assert len(named) == 1, run.stderr
    log = Path(named[0].removeprefix("Ray's log: ").strip())
    assert log.is_file() and "ray" in log.read_text().lower()  # Ray's lines are kept, in the file


@pytest.mark.slow
def test_ray_engine_runs_are_incremental(cluster, tmp_path, folder, tiny_clip):
    """Unchanged files are skipped, changed ones re-embedded, moved ones keep their vectors, deleted ones leave."""
    with open_index(tmp_path / "ray", model=str(tiny_clip)) as ix:
        assert ix.add([folder], batch_size=4, engine=RayEngine()).new == 10
    b = _vectors(tmp_path / "ray")
    photos = sorted(folder.iterdir())
    photos[0].write_bytes(photos[1].read_bytes() + b"\0")  # changed
    os.rename(photos[2], folder / "moved.jpg")  # moved: keeps its vector, not re-embedded
    photos[3].unlink()  # deleted
    with open_index(tmp_path / "ray") as ix:
        report = ix.add([folder], batch_size=4, engine=RayEngine())
    assert (report.new, report.updated, report.moved, report.removed, report.unchanged) == (0, 1, 1, 1, 7)
    assert _integrity(tmp_path / "ray") == (9, 9, 9)
    np.testing.assert_allclose(_vectors(tmp_path / "ray")[str(folder / "moved.jpg")], b[str(photos[2])], atol=0)


# -- faults ------------------------------------------------------------------------------------------
FLAGS: dict[str, str] = {}  # set by the test before the job is pickled: workers get the values with the code


def _die_once(flag: str) -> None:
    """Kill this Ray worker process the first time any worker gets here (the flag file says it happened)."""
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


class DyingActor(EmbedActor):
    def __call__(self, batch):
        _die_once(FLAGS["actor"])
        return super().__call__(batch)


def dying_decode(batch, preprocess, max_pixels):
    _die_once(FLAGS["decode"])
    return decode_batch(batch, preprocess, max_pixels)


class DyingEngine(RayEngine):
    decode_fn = staticmethod(dying_decode)
    actor_cls = DyingActor


@pytest.mark.slow
def test_a_worker_killed_mid_batch_is_retried(cluster, tmp_path, folder, tiny_clip):
    FLAGS.update(actor=str(tmp_path / "actor-died"), decode=str(tmp_path / "decode-died"))
    engine = DyingEngine()
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        report = ix.add([folder], batch_size=2, engine=engine)
    assert all(map(os.path.exists, FLAGS.values())), "the fault was not injected"
    assert (report.new, report.failed) == (10, 0)
    assert _integrity(tmp_path / "ix") == (10, 10, 10)


DRIVER = """
import sys, time
from visdex.api import open_index
from visdex.engines.ray_data import EmbedActor, RayEngine
from visdex.ingest import Progress

class SlowActor(EmbedActor):  # slow enough to be killed mid-run
    def __call__(self, batch):
        time.sleep(0.4)
        return super().__call__(batch)

class SlowEngine(RayEngine):
    actor_cls = SlowActor

class Said(Progress):
    def advance(self, n=1):
        print("batch", flush=True)

with open_index(sys.argv[1], model=sys.argv[2]) as ix:
    ix.db.hold_writer()
    ix.add([sys.argv[3]], batch_size=2, progress=Said(), engine=SlowEngine(sys.argv[4] or None))
print("finished", flush=True)
"""


@pytest.mark.slow
def test_a_driver_killed_resumes_with_nothing_lost_or_duplicated(cluster, tmp_path, folder, tiny_clip):
    for i in range(3):  # 40 images: enough batches to be killed in the middle
        for p in list(folder.glob("*.jpg"))[:10]:
            shutil.copy(p, folder / f"copy{i}-{p.name}")
    n = len(list(folder.glob("*.jpg")))
    run = subprocess.Popen([sys.executable, "-c", DRIVER, tmp_path / "ix", tiny_clip, folder, cluster], env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        seen = 0
        deadline = time.monotonic() + 120
        while seen < 3 and time.monotonic() < deadline:
            line = run.stdout.readline()
            assert line, (run.wait(), run.stderr.read())
            seen += line.strip() == "batch"
        run.send_signal(signal.SIGKILL)
    finally:
        run.kill()
        run.wait()
    files, paths, vectors = _integrity(tmp_path / "ix")
    assert 0 < files < n and files == paths == vectors  # some batches written, each whole
    with open_index(tmp_path / "ix") as ix:
        report = ix.add([folder], batch_size=4, engine=RayEngine())
    assert report.new == n - files and report.unchanged == files
    assert _integrity(tmp_path / "ix") == (n, n, n)


@pytest.mark.slow
def test_ray_engine_reads_webdataset_shards_by_url(cluster, tmp_path, photos, tiny_clip):
    """Workers read the samples themselves (a file:// shard); captions stay with the driver's rows."""
    from visdex.sources import write_shard

    files = sorted(photos.values())[:4]
    write_shard(tmp_path / "00000.tar", [{"key": f"{i:09d}", "jpg": p.read_bytes(), "txt": p.stem}
                                         for i, p in enumerate(files)])  # fmt: skip
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        report = ix.add([f"file://{tmp_path}/{{00000..00000}}.tar"], batch_size=2, engine=RayEngine())
        assert (report.new, report.failed) == (4, 0)
        rows = ix.db.files_under(ix.db.roots())
        captions = [a["caption"] for a in ix.db.file_attrs([r.id for r in rows]).values()]
        assert sorted(captions) == sorted(p.stem for p in files)
