"""The GPU numbers in one command: ingest rates, model rates and the dupes candidate stage on a CUDA machine,
in under 8 minutes, written to one JSON file.

    python benchmarks/gpu_suite.py                                # CUDA -> benchmarks/results/gpu_suite.json
    python benchmarks/gpu_suite.py --dry-run --out /tmp/g.json    # CPU, tiny sizes, < 1 min: the same code path
    bash scripts/gpu_oneshot.sh                                   # what runs on a lent GPU machine (see there)

Parts, each in its own process under its own time budget (one that runs out of time or fails records why
and keeps the numbers it had; the others still run):

* ``ingest_6mp``: distinct synthetic 6-MP camera-like JPEGs (hard-linked copies make the run long enough)
  through ``Index.add`` with the model on CUDA: nvJPEG decoding (``VISDEX_GPU_DECODE=gpu``) and PIL decode
  workers (``=cpu``), plus decode-only rates of both and what ``auto`` picks. Target >= 800 img/s.
* ``ingest_small``: <= 0.5-MP catalog-style JPEGs, the same runs, plus ``Index.add_catalog`` from a CSV.
  Target >= 10,000 img/s.
* ``models``: model-only img/s (fp16, batch 256, after warm-up, synchronised) of CLIP ViT-B/32, ViT-B/16 and
  DINOv2-S at their real sizes with random weights (built from transformers configs, loaded by visdex as
  local models), and the same through ``GpuBatcher`` (uint8 host batch -> vectors on the host).
* ``dupes``: the candidate stage of ``visdex dupes`` over 10^6 x 512 vectors with 1% planted near-copies
  (benchmarks/ann.py's recipe, generated on the GPU): exact k-NN on the GPU (visdex.gpu_dupes), on vectors
  already there and through a real SQLite store (``dupes._candidate_pairs(ix, t, device="cuda")``); time and
  recall of the planted pairs. Target < 30 s.

Targets are for an H100-class GPU (H100 / H200); ``target_met`` says whether this run met them, null in a
dry run. Synthetic files are read from the page cache (they were just written): disk speed is not measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_data import ImageSet, ensure_model, make_image_set, make_vectors  # noqa: E402 - the path above

RESULTS = ROOT / "benchmarks" / "results"
PARTS = ("ingest_6mp", "ingest_small", "models", "dupes")
BUDGET_S = {"ingest_6mp": 100, "ingest_small": 100, "models": 75, "dupes": 95}  # 370 s at most, ~4 min expected
TARGETS = {
    "ingest_6mp": {"img_per_s_at_least": 800, "of": "6-MP JPEGs through Index.add, model on the GPU"},
    "ingest_small": {"img_per_s_at_least": 10_000, "of": "<= 0.5-MP JPEGs through Index.add, model on the GPU"},
    "dupes": {"seconds_at_most": 30, "of": "dupes candidate stage, 10^6 x 512 vectors in a store"},
}
H100_CLASS = ("H100", "H200", "H800", "GH200")
MODELS = ("clip-vit-b-32", "clip-vit-b-16", "dinov2-small")
INGEST_MODEL = "clip-vit-b-32"  # visdex's default model
DUPES_THRESHOLD = 0.9  # as benchmarks/dupes_scale.py: planted copies are at cosine 0.94-0.995


@dataclass(frozen=True)
class Sizes:
    photos: ImageSet
    smalls: ImageSet
    catalog_items: int
    batch: int
    round_s: float  # one timed round of a model
    vectors: int
    real_models: bool


FULL = Sizes(
    photos=ImageSet(((3000, 2000), (2000, 3000)), distinct=256, copies=12),  # 3072 files, ~2.3 MB each
    smalls=ImageSet(((800, 600), (600, 600), (640, 480), (600, 800), (500, 500)), distinct=512, copies=48),
    catalog_items=1024,  # add_catalog starts a decode pool per 128 items: a slow path, kept short
    batch=256,
    round_s=1.0,
    vectors=1_000_000,
    real_models=True,
)
DRY = Sizes(
    photos=ImageSet(((300, 200), (200, 300)), distinct=4, copies=2),
    smalls=ImageSet(((80, 60), (60, 60)), distinct=4, copies=3),
    catalog_items=6,
    batch=8,
    round_s=0.05,
    vectors=2000,
    real_models=False,
)


# ---------------------------------------------------------------- the parent: one process per part


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_suite.json")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the code path, measures nothing")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--work", type=Path, help="generated images and models (default: a folder in TMPDIR)")
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: every core)")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every part's time budget")
    ap.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--machine", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.gettempdir()) / ("visdex-gpu-suite" + ("-dry" if args.dry_run else ""))
    workers = args.workers or (min(2, os.cpu_count() or 1) if args.dry_run else os.cpu_count() or 1)
    if args.child:
        return run_child(args.child, args.child_out, args.deadline, args.dry_run, work, workers, args.machine)

    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    result = {
        "suite": "benchmarks/gpu_suite.py",
        "dry_run": args.dry_run,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "workers": workers,
        "targets": TARGETS,
        "targets_for": "an H100-class GPU (" + ", ".join(H100_CLASS) + ")",
        "parts": {},
    }
    for part in args.parts:
        budget = BUDGET_S[part] * args.budget_scale * (0.75 if args.dry_run else 1.0)
        print(f"== {part} (budget {budget:.0f} s)", flush=True)
        result["parts"][part] = run_part(part, budget, args.dry_run, work, workers, "machine" not in result)
        _summarise(result, t_start)
        write_json(args.out, result)
    print(table(result))
    print(f"wrote {args.out}")
    return 0


def run_part(part: str, budget: float, dry: bool, work: Path, workers: int, with_machine: bool) -> dict:
    """Run one part in a child process (a new session, so a timeout also ends its decode workers)."""
    out = work / f"part-{part}.json"
    out.unlink(missing_ok=True)
    t0 = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", part, "--child-out", str(out),
           "--deadline", str(t0 + budget - 8), "--work", str(work), "--workers", str(workers)]  # fmt: skip
    cmd += ["--dry-run"] * dry + ["--machine"] * with_machine
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VISDEX_CACHE_DIR": str(work / "cache"), "VISDEX_QUERY_EXPORT": "off"}  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        rc, timed_out = proc.wait(timeout=budget), False
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):  # the whole group: its decode workers too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        rc = proc.returncode
    try:
        data = json.loads(out.read_text())
    except (OSError, ValueError):
        data = {"part": part}
    data["budget_s"] = round(budget)
    data["seconds"] = round(time.time() - t0, 1)
    if timed_out:
        data["status"] = "timeout"
        data["reason"] = f"ran past its {budget:.0f} s budget; the numbers it had by then are kept"
    elif rc != 0 or data.get("status") in (None, "running"):
        data["status"] = "failed"
        data.setdefault("reason", f"the part's process exited with code {rc}: see the log")
    data.setdefault("target_met", None)
    return data


def _summarise(result: dict, t_start: float) -> None:
    parts = result["parts"]
    for p in parts.values():  # the machine is the same for every part: keep one copy, at the top
        if "machine" in p:
            result["machine"] = p.pop("machine")
    result["total_s"] = round(time.time() - t_start, 1)
    if result["dry_run"]:
        result["targets_met"] = None  # a dry run measures nothing
    else:
        result["targets_met"] = {p: parts[p].get("target_met") for p in TARGETS if p in parts}


def table(result: dict) -> str:
    lines = [f"{'part':<14} {'status':<8} {'s':>6}  headline", "-" * 78]
    for name, p in result["parts"].items():
        head = p.get("headline") or p.get("reason") or ""
        met = {True: "target met", False: "target MISSED"}.get(p.get("target_met"), "")
        lines.append(f"{name:<14} {p.get('status', '?'):<8} {p.get('seconds', 0):>6}  {head}  {met}")
    lines.append(f"total {result.get('total_s')} s; dry run: {result['dry_run']}")
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- the child: one part, numbers saved as they come


class Recorder:
    """A part's results, saved after every step, so a part killed at its budget keeps what it measured."""

    def __init__(self, path: Path, part: str, deadline: float, dry: bool, work: Path, workers: int):
        self.path, self.deadline, self.dry, self.work, self.workers = path, deadline, dry, work, workers
        self.sizes = DRY if dry else FULL
        self.device = "cpu" if dry else "cuda"
        self.data: dict = {"part": part, "status": "running", "target": TARGETS.get(part), "target_met": None}

    def left(self) -> float:
        return self.deadline - time.time()

    def put(self, **values) -> None:
        self.data.update(values)
        write_json(self.path, self.data)

    def step(self, name: str, fn, need_s: float = 0.0):
        """Run ``fn`` and record what it returns under ``name``; skip it when the budget has not ``need_s`` left;
        record its error (and go on) when it raises."""
        if not self.dry and self.left() < need_s:
            self.data.setdefault("skipped_steps", {})[name] = f"{self.left():.0f} s of the budget left, needs ~{need_s}"
            return self.put()
        print(f"  {self.data['part']}: {name}", flush=True)
        t0 = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # one step's failure is a number missing, not a lost part
            self.data.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            return self.put()
        if isinstance(value, dict):
            value.setdefault("step_s", round(time.perf_counter() - t0, 2))
        self.put(**{name: value})
        return value

    def finish(self, headline: str, met: bool | None) -> None:
        status = "partial" if self.data.get("errors") or self.data.get("skipped_steps") else "ok"
        self.put(status=status, headline=headline, target_met=None if self.dry else met)


def run_child(part: str, out: Path, deadline: float, dry: bool, work: Path, workers: int, with_machine: bool) -> int:
    rec = Recorder(out, part, deadline, dry, work, workers)
    try:
        import torch

        from visdex import bench

        if not dry and not torch.cuda.is_available():
            rec.put(status="skipped", reason="no CUDA device here (torch.cuda.is_available() is False); "
                    "on a CPU, --dry-run checks the code path", device=device_info("cpu"))  # fmt: skip
            return 0
        rec.put(device=device_info(rec.device), sizes=_sizes_for(part, rec.sizes))
        if with_machine:  # the same for every part, and it imports every library: once is enough
            rec.put(machine=bench.machine_info())
        {"ingest_6mp": part_ingest, "ingest_small": part_ingest, "models": part_models, "dupes": part_dupes}[part](
            rec, part
        )
    except Exception as exc:
        traceback.print_exc()
        rec.put(status="failed", reason=f"{type(exc).__name__}: {exc}")
    return 0


def _sizes_for(part: str, s: Sizes) -> dict:
    if part == "ingest_6mp":
        return asdict(s.photos)
    if part == "ingest_small":
        return {**asdict(s.smalls), "catalog_items": s.catalog_items}
    if part == "models":
        return {"batch": s.batch, "round_s": s.round_s, "real_sizes": s.real_models}
    return {"vectors": s.vectors}


def device_info(device: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    info: dict = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda}
    for dist in ("torchvision", "transformers", "faiss-cpu", "pillow", "numpy"):
        try:
            info[dist] = version(dist)  # from the metadata: importing each would cost seconds per part
        except PackageNotFoundError:
            info[dist] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    multiprocessors=p.multi_processor_count, cudnn=torch.backends.cudnn.version(),
                    h100_class=any(c in p.name for c in H100_CLASS))  # fmt: skip
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=15).stdout.strip()  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    else:
        from visdex.bench import _cpu_model

        info["name"] = "CPU: " + _cpu_model()
    return info


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _peak_gib(device: str, reset: bool = True) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return peak


def _preprocess(model_dir: Path):
    from visdex.models.base import Preprocess
    from visdex.models.hf import preprocess_from_config

    cfg = json.loads((model_dir / "preprocessor_config.json").read_text())
    return preprocess_from_config(cfg, Preprocess(size=224, resize_to=224))


# ---------------------------------------------------------------- parts 1 and 2: ingest


def _ingest(folder: Path, model: Path, workers: int, batch: int, device: str, decode: str) -> dict:
    from visdex import bench

    os.environ["VISDEX_GPU_DECODE"] = decode
    _peak_gib(device)
    r = bench.bench_ingest(folder, str(model), workers, batch, device)
    return {**r, "decode": decode, "device": device, "peak_gpu_gib": _peak_gib(device)}


def _decode_only_gpu(files: list[Path], pre, workers: int, device: str) -> dict:
    """The nvJPEG route alone (read + parse on CPU threads, decode/orient/resize/crop on the device), no model."""
    from visdex import config, gpu
    from visdex.files import FileInfo

    infos = [FileInfo(str(p), str(p.parent), 0, 0.0) for p in files]
    limit = config.get("max_pixels")
    list(gpu._gpu_decoded(infos[:2], pre, 1, limit, device))  # warm-up: decoder handles, kernels
    _sync(device)
    t0 = time.perf_counter()
    n = sum(1 for r in gpu._gpu_decoded(infos, pre, workers, limit, device) if hasattr(r, "pixels"))
    _sync(device)
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": round(dt, 3), "img_per_s": round(n / dt, 1), "workers": workers, "device": device}


def _catalog(files: list[Path], model: Path, workers: int, device: str, tmp: Path) -> dict:
    """``Index.add_catalog`` (CSV, one image per item): the catalog path has no GPU decode or batcher stage."""
    from visdex import open_index

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    csv = tmp / "items.csv"
    csv.write_text("id,image\n" + "".join(f"sku{i},{p}\n" for i, p in enumerate(files)))
    with open_index(tmp / "ix", model=str(model), device=device) as ix:
        ix.embedder  # noqa: B018 - the model load is not part of the rate
        t0 = time.perf_counter()
        report = ix.add_catalog(csv, workers=workers)
        dt = time.perf_counter() - t0
    shutil.rmtree(tmp, ignore_errors=True)
    return {"items": report.images, "failed": report.failed, "seconds": round(dt, 3),
            "img_per_s": round(report.images / dt, 1), "workers": workers, "device": device}  # fmt: skip


def part_ingest(rec: Recorder, part: str) -> None:
    from visdex import gpu

    small = part == "ingest_small"
    spec = rec.sizes.smalls if small else rec.sizes.photos
    dev, workers, batch = rec.device, rec.workers, rec.sizes.batch
    folder, files, stats = make_image_set(rec.work / ("images-small" if small else "images-6mp"), spec, workers)
    rec.put(images=stats)
    t0 = time.perf_counter()
    model = ensure_model(rec.work, INGEST_MODEL, rec.sizes.real_models)
    rec.put(model={"name": INGEST_MODEL, "real_size": rec.sizes.real_models, "path": str(model),
                   "made_s": round(time.perf_counter() - t0, 1)}, workers=workers, batch=batch)  # fmt: skip
    warm = folder.with_name("warm")
    if not warm.is_dir():
        warm.mkdir()
        for p in files[: max(batch // 4, 4)]:
            os.link(p, warm / p.name)
    # CUDA context, cuBLAS, nvJPEG and the decode pool's first start stay out of the timed runs
    rec.step("warmup", lambda: _ingest(warm, model, workers, batch, dev, "gpu"))
    runs = {}
    for mode in ("gpu", "cpu"):
        runs[mode] = rec.step(f"ingest_decode_{mode}", lambda m=mode: _ingest(folder, model, workers, batch, dev, m),
                              need_s=15)  # fmt: skip
    pre = _preprocess(model)
    rec.step("decode_only_gpu_route", lambda: _decode_only_gpu(files, pre, workers, dev), need_s=10)
    rec.step("decode_only_pil_workers", lambda: _bench_decode(files, pre, workers), need_s=10)
    if dev.startswith("cuda"):
        infos = _infos(files)
        rec.step("auto_picks", lambda: {"decoder": gpu.choose_decoder(infos, pre, workers, dev)}, need_s=5)
    if small:
        items = files[: rec.sizes.catalog_items]
        rec.step("catalog_csv", lambda: _catalog(items, model, workers, dev, rec.work / "catalog"), need_s=25)
    rates = {m: r["img_per_s"] for m, r in runs.items() if r and r.get("img_per_s")}
    if not rates:
        return rec.finish("no ingest run finished", None)
    best = max(rates, key=rates.get)
    target = TARGETS[part]["img_per_s_at_least"]
    how = "nvJPEG decode" if best == "gpu" and dev.startswith("cuda") else f"VISDEX_GPU_DECODE={best}"
    head = f"{rates[best]:.0f} img/s ({how}; target >= {target})"
    rec.finish(head, rates[best] >= target)


def _infos(files: list[Path]):
    from visdex.files import FileInfo

    return [FileInfo(str(p), str(p.parent), 0, 0.0) for p in files]


def _bench_decode(files: list[Path], pre, workers: int) -> dict:
    from visdex import bench

    return bench.bench_decode(files, pre, workers)


# ---------------------------------------------------------------- part 3: models


def _model_rate(path: Path, device: str, batch: int, round_s: float) -> dict:
    import torch

    from visdex import gpu
    from visdex.models import load_embedder

    emb = load_embedder(str(path), device=device, batch_size=batch)
    forward = gpu.image_forward(emb)[0]
    size = emb.preprocess.size
    x = torch.randn(batch, 3, size, size, device=device).to(emb.dtype)
    out: dict = {"batch": batch, "dtype": str(emb.dtype).replace("torch.", ""), "input_px": size, "dim": emb.dim}
    tower = getattr(emb.model, "vision_model", emb.model)
    out["image_tower_params_m"] = round(sum(p.numel() for p in tower.parameters()) / 1e6, 1)
    with torch.inference_mode():
        t0 = time.perf_counter()
        forward(x)
        _sync(device)
        out["first_batch_s"] = round(time.perf_counter() - t0, 3)
        forward(x)
        _sync(device)
        t0 = time.perf_counter()
        forward(x)
        forward(x)
        _sync(device)
        iters = max(2, min(400, round(round_s / ((time.perf_counter() - t0) / 2))))
        rounds = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(iters):
                forward(x)
            _sync(device)
            rounds.append(round(batch * iters / (time.perf_counter() - t0), 1))
        out.update(img_per_s=statistics.median(rounds), rounds_img_per_s=rounds, iters_per_round=iters)
        try:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as fc:
                forward(x)
            out["gflop_per_img"] = round(fc.get_total_flops() / batch / 1e9, 2)
            out["achieved_tflop_s"] = round(fc.get_total_flops() / batch * out["img_per_s"] / 1e12, 1)
        except Exception as exc:  # the FLOP count is a reading aid, not a result
            out["gflop_per_img"] = f"not counted: {type(exc).__name__}"
    out["peak_gpu_gib"] = _peak_gib(device)
    if device.startswith("cuda"):  # uint8 host batch -> pinned copy -> normalise -> fp16 model -> host vectors
        batcher = gpu.GpuBatcher(emb, max_batch=batch)
        crops = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        batcher(crops)
        t0 = time.perf_counter()
        for _ in range(iters):
            batcher(crops)
        out["gpu_batcher_img_per_s"] = round(batch * iters / (time.perf_counter() - t0), 1)
        del batcher
    else:
        out["gpu_batcher_img_per_s"] = "not measured: GpuBatcher needs CUDA"
    del emb, forward, x
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # the next model starts with the memory free
    return out


def _made_and_rated(rec: Recorder, name: str) -> dict:
    t0 = time.perf_counter()
    path = ensure_model(rec.work, name, rec.sizes.real_models)
    made = round(time.perf_counter() - t0, 1)
    return {"model_made_s": made, **_model_rate(path, rec.device, rec.sizes.batch, rec.sizes.round_s)}


def part_models(rec: Recorder, part: str) -> None:
    rates = {}
    for name in MODELS:
        r = rec.step(name, lambda name=name: _made_and_rated(rec, name), need_s=15)
        if r:
            rates[name] = r["img_per_s"]
    head = ", ".join(f"{k} {v:.0f}" for k, v in rates.items()) + " img/s (model only, fp16)" if rates else "none ran"
    rec.finish(head, None)  # no target: these numbers explain the ingest parts


# ---------------------------------------------------------------- part 4: dupes


def _recall(a: np.ndarray, b: np.ndarray, planted: np.ndarray, n: int) -> dict:
    keys = np.unique(np.minimum(planted[:, 0], planted[:, 1]) * n + np.maximum(planted[:, 0], planted[:, 1]))
    found = np.isin(keys, np.asarray(a, np.int64) * n + np.asarray(b, np.int64))
    return {"candidate_pairs": int(len(a)), "planted_pairs": int(len(keys)), "planted_found": int(found.sum()),
            "recall_planted": round(float(found.mean()), 5)}  # fmt: skip


def _dense(x, planted: np.ndarray, device: str) -> dict:
    from visdex import gpu_dupes

    n = len(x)
    ids = np.arange(n)
    gpu_dupes.dense_candidate_pairs(x[:4096], ids[:4096], DUPES_THRESHOLD)  # warm-up: cuBLAS, top-k kernels
    _sync(device)
    _peak_gib(device)
    t0 = time.perf_counter()
    a, b, _ = gpu_dupes.dense_candidate_pairs(x, ids, DUPES_THRESHOLD)
    _sync(device)
    dt = time.perf_counter() - t0
    return {"wall_s": round(dt, 2), "vectors_per_s": round(n / dt, 1), **_recall(a, b, planted, n),
            "rows_per_block": gpu_dupes.block_rows(n, device), "peak_gpu_gib": _peak_gib(device)}  # fmt: skip


def _write_store(x, path: Path) -> dict:
    """The vectors as a visdex store's truth (SQLite), as a real index holds them."""
    from visdex.store.db import IndexDB
    from visdex.store.local import LocalVectorStore

    shutil.rmtree(path, ignore_errors=True)
    vecs = x.cpu().numpy()
    t0 = time.perf_counter()
    db = IndexDB(path)
    store = LocalVectorStore(db, vecs.shape[1], ann="flat")
    for start in range(0, len(vecs), 50_000):
        store.upsert(np.arange(start, min(start + 50_000, len(vecs))), vecs[start : start + 50_000])
    db.close()
    return {"seconds": round(time.perf_counter() - t0, 1), "vectors": len(vecs)}


def _via_store(path: Path, planted: np.ndarray, n: int, device: str) -> dict:
    from types import SimpleNamespace

    from visdex import dupes
    from visdex.store.db import IndexDB
    from visdex.store.local import LocalVectorStore

    db = IndexDB(path)
    store = LocalVectorStore(db, 512)
    _peak_gib(device)
    t0 = time.perf_counter()
    pairs = dupes._candidate_pairs(SimpleNamespace(store=store), DUPES_THRESHOLD, device=device)
    dt = time.perf_counter() - t0
    db.close()
    arr = np.array([(a, b) for a, b, _ in pairs], np.int64).reshape(-1, 2)
    return {"wall_s": round(dt, 2), "vectors_per_s": round(n / dt, 1), **_recall(arr[:, 0], arr[:, 1], planted, n),
            "peak_gpu_gib": _peak_gib(device),
            "what": "dupes._candidate_pairs(ix, 0.9, device=...): read the store's SQLite truth, exact k-NN on the "
                    "device, (a, b, cosine) list"}  # fmt: skip


def part_dupes(rec: Recorder, part: str) -> None:
    dev, n = rec.device, rec.sizes.vectors
    t0 = time.perf_counter()
    x, planted = make_vectors(n, dev)
    _sync(dev)
    rec.put(vectors=n, dim=int(x.shape[1]), threshold=DUPES_THRESHOLD, generate_s=round(time.perf_counter() - t0, 2),
            data="benchmarks/ann.py's recipe (1000 clusters, 1% planted near-copies at cosine 0.94-0.995), in torch",
            cpu_reference="benchmarks/results/dupes-1e6.json: the store's HNSW search, 2 CPU cores")  # fmt: skip
    dense = rec.step("on_device", lambda: _dense(x, planted, dev), need_s=10)
    store_dir = rec.work / "dupes-store"
    written = rec.step("store_write", lambda: _write_store(x, store_dir), need_s=40)
    via = rec.step("through_store", lambda: _via_store(store_dir, planted, n, dev), need_s=25) if written else None
    shutil.rmtree(store_dir, ignore_errors=True)
    limit = TARGETS[part]["seconds_at_most"]
    if via:
        head = f"{via['wall_s']} s through the store, recall {via['recall_planted']} (target < {limit} s)"
        return rec.finish(head, via["wall_s"] < limit)
    if dense:  # the store run did not happen: the target, which includes reading the store, stays open
        return rec.finish(f"{dense['wall_s']} s on vectors already on the device, recall {dense['recall_planted']}",
                          None)  # fmt: skip
    rec.finish("nothing measured", None)


if __name__ == "__main__":
    sys.exit(main())
