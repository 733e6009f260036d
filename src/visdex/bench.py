"""Throughput and latency benchmarks, measured the way a user runs visdex, recorded as JSON.

Each ``bench_*`` function measures one thing on the files and model it is given and returns a
plain dict (numbers plus what was measured); :func:`run_suite` runs a chosen set side by side
on one folder and adds :func:`machine_info`, so results from different machines are never
mixed up. On a shared CPU only ratios measured in one run mean much; absolute numbers are
for GPUs (see the README, "Speed").

>>> files = make_photo_set("/tmp/bench-6mp", 64, megapixels=6)                 # doctest: +SKIP
>>> bench_decode(files, load_embedder("effnet-lite0").preprocess, workers=2)   # doctest: +SKIP
{'name': 'decode', 'images': 64, 'seconds': 0.9, 'img_per_s': 71.1, ...}
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import config
from .files import FileInfo

if TYPE_CHECKING:
    from .models.base import Embedder

SUITES = ("decode", "model", "ingest", "naive", "query", "onnx")


# ---------------------------------------------------------------- where and on what


def machine_info() -> dict:
    """CPU model, cores, RAM, GPU, library versions and the date: what a number needs to be read."""
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": _ram_gb(),
        # other work on the machine shows here: on a shared CPU, compare only numbers from one run
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "cpu_int8": _int8_kind(),
    }
    for mod in ("numpy", "PIL", "torch", "onnxruntime", "faiss", "transformers", "timm", "torchvision"):
        try:
            info[f"{mod}_version"] = getattr(__import__(mod), "__version__", "?")
        except Exception:  # not installed: not part of this machine's setup
            continue
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _int8_kind() -> str:
    """Which int8 dot-product path the CPU offers: int8 ONNX speed and accuracy depend on it."""
    from .models.onnx_export import int8_saturates

    if int8_saturates():
        return "x86 without VNNI (7-bit int8 weights)"
    return "VNNI / ARM dot product (8-bit int8 weights)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def source_photos() -> list[np.ndarray]:
    """Real photos to build benchmark folders from: ``examples/photos`` if present, and scikit-image's."""
    from PIL import Image

    arrays = []
    examples = Path(__file__).resolve().parents[2] / "examples" / "photos"
    for p in sorted(examples.glob("*.jpg")) if examples.is_dir() else []:
        arrays.append(np.asarray(Image.open(p).convert("RGB")))
    try:
        from skimage import data

        for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"):
            arrays.append(np.asarray(getattr(data, name)())[..., :3])
    except Exception:  # scikit-image missing or its data not bundled: the examples are enough
        pass
    if not arrays:
        from .models.onnx_export import synthetic_images

        arrays = [np.asarray(im) for im in synthetic_images(8)]
    return [a if a.ndim == 3 else np.stack([a] * 3, -1) for a in arrays]


def make_photo_set(folder: str | os.PathLike, n: int, *, megapixels: float = 6.0, quality: int = 90,
                   seed: int = 0) -> list[Path]:  # fmt: skip
    """``n`` distinct camera-like JPEGs of about ``megapixels`` (3:2) made from real photos.

    Each is a real photo upscaled (bicubic) to the target size, randomly cropped, flipped and
    tinted, so every file decodes to different pixels; existing files of the same name are
    reused, so a benchmark folder is made once.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w = int(round((megapixels * 1e6 * 1.5) ** 0.5))
    h = int(round(w / 1.5))
    tag = f"{megapixels:g}mp"
    paths = [folder / f"{tag}-{i:05d}.jpg" for i in range(n)]
    todo = [(i, p) for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        sources = source_photos()
        rng = np.random.default_rng(seed)
        for i, p in todo:
            src = Image.fromarray(sources[i % len(sources)])
            scale = max(w / src.width, h / src.height) * float(rng.uniform(1.0, 1.3))
            big = src.resize((int(src.width * scale) + 1, int(src.height * scale) + 1), Image.Resampling.BICUBIC)
            x, y = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
            img = big.crop((x, y, x + w, y + h))
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            arr = np.asarray(img).astype(np.float32) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(p, quality=quality)
    return paths


# ---------------------------------------------------------------- the measurements


def readable_images(files: Sequence[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(files that decode, [(path, reason), ...] for those that do not): a benchmark measures readable
    photos, and one bad file must not stop it (the ingest suite meets and records the bad ones again)."""
    from .decode import decode_image
    from .errors import BadImage, MissingDependency

    good, skipped = [], []
    for p in files:
        try:
            decode_image(p, max_pixels=config.get("max_pixels"), draft_size=64)
        except (BadImage, MissingDependency) as e:
            skipped.append((str(p), str(e)))
            continue
        good.append(p)
    return good, skipped


def _result(name: str, images: int, seconds: float, **details) -> dict:
    return {"name": name, "images": images, "seconds": round(seconds, 3),
            "img_per_s": round(images / seconds, 2) if seconds > 0 else None, **details}  # fmt: skip


def bench_decode(files: Sequence[Path], preprocess, workers: int) -> dict:
    """Decode-only: the ingest decode stage (draft decode, EXIF, resize/crop to uint8) with no model."""
    from .stages import decoded

    infos = [FileInfo(str(p), str(Path(p).parent), 0, 0.0) for p in files]
    t0 = time.perf_counter()
    n = sum(1 for r in decoded(infos, preprocess, workers) if getattr(r, "pixels", None) is not None)
    return _result("decode", n, time.perf_counter() - t0, workers=workers)


def bench_model(embedder, n: int, batch_size: int, images: Sequence[Path] = ()) -> dict:
    """Model-only: ``embed_pixels`` on ready, normalised batches (real crops when ``images`` are given)."""
    pre = embedder.preprocess
    if images:
        from .decode import decode_image

        crops = [pre.to_uint8(decode_image(p, draft_size=pre.draft_side).image) for p in list(images)[:batch_size]]
        batch = pre.normalize(np.stack([crops[i % len(crops)] for i in range(batch_size)]))
    else:
        batch = np.random.default_rng(0).standard_normal((batch_size, 3, pre.size, pre.size), dtype=np.float32)
    embedder.embed_pixels(batch)  # warm-up at the measured batch shape: lazy init, kernel selection
    done, t0 = 0, time.perf_counter()
    while done < n:
        embedder.embed_pixels(batch)
        done += len(batch)
    return _result("model", done, time.perf_counter() - t0, batch_size=batch_size, model=embedder.name)


def bench_ingest(folder: Path, model: str, workers: int, batch_size: int, device: str = "cpu") -> dict:
    """End to end: ``visdex index`` on ``folder`` into a fresh index (scan, hash, decode, embed, SQLite, FAISS)."""
    from .api import open_index

    with tempfile.TemporaryDirectory(prefix="visdex-bench-") as tmp, \
            open_index(Path(tmp) / "ix", model=model, device=device) as ix:  # fmt: skip
        ix.embedder  # noqa: B018  model load is not part of the indexing rate
        t0 = time.perf_counter()
        report = ix.add([folder], workers=workers, batch_size=batch_size)
        seconds = time.perf_counter() - t0
    return _result("ingest", report.embedded, seconds, workers=workers, batch_size=batch_size, model=model,
                   failed=report.failed)  # fmt: skip


def bench_naive(files: Sequence[Path], model: str, batch_size: int) -> dict:
    """The tutorial recipe: PIL open, the model's own processor, one batch at a time, FAISS IndexFlatIP.

    Each family's adapter builds it from its library's documented recipe (transformers: AutoImageProcessor;
    timm and the offline models: timm's eval transform; OpenCLIP: create_model_and_transforms).
    Nothing runs in parallel except what torch does inside the model.
    """
    import faiss
    import torch
    from PIL import Image

    forward, dim = _naive_model(model)
    index = faiss.IndexFlatIP(dim)
    t0 = time.perf_counter()
    for start in range(0, len(files), batch_size):
        images = [Image.open(f).convert("RGB") for f in files[start : start + batch_size]]
        with torch.no_grad():
            feats = torch.nn.functional.normalize(forward(images).float(), dim=-1)
        index.add(feats.numpy())
    return _result("naive", index.ntotal, time.perf_counter() - t0, batch_size=batch_size, model=model)


def _naive_model(model: str):
    """(images -> features, dim) the way the family's library documents it: its adapter's recipe."""
    from .models import resolve_family
    from .models.onnx import split_backend

    adapter, ref = resolve_family(split_backend(model)[1])
    return adapter.naive_forward(ref)


def bench_query(index_path: Path, queries: Sequence[str], k: int = 10, repeats: int = 5) -> dict:
    """Query latency: warm p50/p99 in this process, and a cold ``visdex search`` process to its first result."""
    from .api import open_index

    with open_index(index_path, create=False) as ix:
        ix.search(queries[0], k=k)  # loads the model and the FAISS index
        times = []
        for _ in range(repeats):
            for q in queries:
                t0 = time.perf_counter()
                ix.search(q, k=k)
                times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    cold = cold_start(index_path, queries[0], k)
    return {"name": "query", "queries": len(times), "warm_p50_ms": round(statistics.median(times), 2),
            "warm_p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 2),
            "cold_start_s": cold}  # fmt: skip


def cold_start(index_path: Path, query: str, k: int = 10) -> float:
    """Seconds from starting ``python -m visdex search`` to its exit with results (imports, model, index)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep
           + os.environ.get("PYTHONPATH", "")}  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "visdex", "search", query, "--index", str(index_path), "-n", str(k),
                    "--json"], env=env, check=True, capture_output=True)  # fmt: skip
    return round(time.perf_counter() - t0, 3)


def bench_onnx(model: str, images: Sequence[Path], n: int, batch_size: int,
               backends: Sequence[str] = ("torch", "onnx", "onnx-int8")) -> dict:  # fmt: skip
    """img/s of each backend on the same crops, side by side, and the cosine of its vectors to torch fp32."""
    from .models import load_embedder
    from .models.onnx import split_backend

    base = split_backend(model)[1]
    embedders = {b: load_embedder(base, device="cpu", backend=b) for b in backends}
    int8 = embedders.get("onnx-int8")
    from .models.onnx import OnnxEmbedder

    if isinstance(int8, OnnxEmbedder) and int8.gated:  # a tower kept in fp32: measure its int8 form too
        embedders["onnx-int8-raw"] = OnnxEmbedder(int8.folder, int8.manifest, backend="onnx-int8", name=int8.name,
                                                  raw_int8=True)  # fmt: skip
    ref = embedders.get("torch") or load_embedder(base, device="cpu")
    pre = ref.preprocess
    from .decode import decode_image

    crops = np.stack([pre.to_uint8(decode_image(p, draft_size=pre.draft_side).image) for p in images])
    pixels = pre.normalize(crops)
    want = ref.embed_pixels(pixels)
    rows: dict[str, dict] = {}
    rates = _interleaved_rates(embedders, pixels, n, batch_size)
    for b, emb in embedders.items():
        cos = np.sum(emb.embed_pixels(pixels) * want, axis=1)
        rows[b] = {"img_per_s": rates[b], "cosine_mean": round(float(cos.mean()), 5),
                   "cosine_min": round(float(cos.min()), 5)}  # fmt: skip
        if isinstance(emb, OnnxEmbedder):
            rows[b]["export_probe_quality"] = emb.quality
            if emb.gated:
                rows[b]["int8_gate"] = emb.gated
    torch_rate = rates.get("torch")
    for b in rows:
        rows[b]["speedup_vs_torch"] = round(rates[b] / torch_rate, 2) if torch_rate else None
    return {"name": "onnx", "model": base, "batch_size": batch_size, "photos": len(images), "backends": rows}


def _interleaved_rates(embedders: dict, pixels: np.ndarray, n: int, batch_size: int, rounds: int = 3) -> dict:
    """img/s per embedder, measured in alternating rounds so background load hits all of them alike."""
    batch = np.concatenate([pixels] * (-(-batch_size // len(pixels))))[:batch_size]
    for emb in embedders.values():
        emb.embed_pixels(batch)  # warm-up at the measured shape
    best: dict[str, float] = {}
    per_round = max(batch_size, n // rounds)
    for _ in range(rounds):
        for name, emb in embedders.items():
            done, t0 = 0, time.perf_counter()
            while done < per_round:
                emb.embed_pixels(batch)
                done += len(batch)
            best[name] = max(best.get(name, 0.0), done / (time.perf_counter() - t0))
    return {k: round(v, 2) for k, v in best.items()}


# ---------------------------------------------------------------- the suite


def run_suite(
    folder: Path,
    model: str,
    *,
    suites: Sequence[str] = SUITES,
    workers: int | None = None,
    batch_size: int = 32,
    model_images: int = 128,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run ``suites`` on the images in ``folder`` with ``model``; returns one JSON-ready dict.

    Files that cannot be decoded are left out and listed under ``skipped`` with their reasons.
    Adds ``ratios``: end-to-end over min(decode, model), over the shared-core bound
    1/(1/decode + 1/model) (what a CPU that runs both stages on the same cores can reach),
    and over the naive loop.

    >>> run_suite(Path("/tmp/bench-6mp"), "effnet-lite0", suites=["decode", "model"])   # doctest: +SKIP
    """
    from .errors import BadDataset
    from .files import scan
    from .models import load_embedder

    progress = progress or (lambda _msg: None)
    workers = workers or config.get("workers") or max(1, min(os.cpu_count() or 1, 8))
    found = [Path(f.path) for f in scan([str(folder)])]
    files, skipped = readable_images(found)
    if not files:
        why = f"; e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise BadDataset(f"no readable images in {folder} ({len(found)} files{why})")
    result: dict = {"machine": machine_info(), "model": model, "folder_images": len(files), "workers": workers,
                    "skipped": [{"path": p, "reason": r} for p, r in skipped], "results": {}}  # fmt: skip
    emb = None
    if {"decode", "model", "onnx"} & set(suites):
        emb = load_embedder(model, device="cpu", batch_size=batch_size)
        result["machine"] = machine_info()  # torch threads etc. now that the model is loaded
    steps: list[tuple[str, Callable[[], dict]]] = [
        ("decode", lambda: bench_decode(files, _loaded(emb).preprocess, workers)),
        ("model", lambda: bench_model(emb, model_images, batch_size, files)),
        ("ingest", lambda: bench_ingest(folder, model, workers, batch_size)),
        ("naive", lambda: bench_naive(files, model, batch_size)),
        ("onnx", lambda: bench_onnx(model, files[:16], model_images, batch_size)),
    ]
    for name, fn in steps:
        if name in suites:
            progress(name)
            result["results"][name] = fn()
    if "query" in suites:
        progress("query")
        result["results"]["query"] = _query_suite(folder, model, workers, batch_size, files[0])
    result["ratios"] = _ratios(result["results"])
    return result


def _loaded(emb: Embedder | None) -> Embedder:
    """The model :func:`run_suite` loaded for the suites that need one."""
    if emb is None:
        raise ValueError("no model loaded for this suite")  # a bug: run_suite loads it for these suites
    return emb


def _query_suite(folder: Path, model: str, workers: int, batch_size: int, image: Path) -> dict:
    from .api import open_index

    tmp = Path(tempfile.mkdtemp(prefix="visdex-bench-q-"))
    try:
        with open_index(tmp / "ix", model=model) as ix:
            ix.add([folder], workers=workers, batch_size=batch_size)
            text = ix.embedder.supports_text
        queries = ["a dog on a beach", "a cup of coffee", "a rocket at night"] if text else [str(image)]
        return bench_query(tmp / "ix", queries)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ratios(results: dict) -> dict:
    r = {k: v.get("img_per_s") for k, v in results.items() if isinstance(v, dict)}
    out = {}
    d, m, e, nv = r.get("decode"), r.get("model"), r.get("ingest"), r.get("naive")
    if d and m and e:
        out["ingest_over_min_decode_model"] = round(e / min(d, m), 3)
        out["ingest_over_shared_core_bound"] = round(e / (1 / (1 / d + 1 / m)), 3)
    if e and nv:
        out["ingest_over_naive"] = round(e / nv, 2)
    return out


def write_result(result: dict, out_dir: str | os.PathLike, name: str) -> Path:
    """``<out_dir>/<name>.json`` (pretty, sorted keys); returns the path."""
    import json

    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return path
