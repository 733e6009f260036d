"""Synthetic inputs for benchmarks/gpu_suite.py, made on the machine that measures (nothing to download or carry):
camera-like JPEGs, CLIP / DINOv2 model directories at their real sizes with random weights, and
benchmarks/ann.py's clustered vectors with planted near-copies, generated with torch on the device.

>>> folder, files, stats = make_image_set(Path("/tmp/x"), ((3000, 2000),), 256, 12, 90, workers=16)   # doctest: +SKIP
>>> ensure_model(Path("/tmp/x"), "clip-vit-b-32", real=True)                                           # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ImageSet:
    sizes: tuple[tuple[int, int], ...]  # (width, height), cycled
    distinct: int
    copies: int  # hard links of each distinct file in the indexed folder
    quality: int = 90


# ---------------------------------------------------------------- synthetic images


def write_jpeg(job: tuple[str, int, int, int, int]) -> int:
    """One camera-like JPEG: colour blobs, texture, a gradient and sensor-like noise; returns its size in bytes.

    At 6 MP and quality 90 this gives ~2.3 MB, about what a camera writes; flat synthetic images would
    compress to a fraction of that and decode unrealistically fast.
    """
    from PIL import Image, ImageChops

    path, seed, w, h, quality = job
    r = np.random.default_rng(seed)
    coarse = Image.fromarray(r.integers(0, 256, (6, 9, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    mid = Image.fromarray(r.integers(0, 256, (max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8))
    mid = mid.resize((w, h), Image.Resampling.BILINEAR)
    grad = Image.linear_gradient("L").rotate(float(r.uniform(0, 360)), Image.Resampling.BILINEAR, expand=True)
    img = Image.blend(Image.blend(coarse, mid, 0.35), grad.resize((w, h)).convert("RGB"), 0.25)
    noise = Image.effect_noise((w + 64, h + 64), 12)  # C code: much faster than numpy at 6 MP
    o = r.integers(0, 64, 6)
    channels = [noise.crop((int(o[i]), int(o[i + 3]), int(o[i]) + w, int(o[i + 3]) + h)) for i in range(3)]
    rgb = Image.merge("RGB", channels)  # three offsets of one noise field: colour noise, made once per image
    ImageChops.add(img, rgb, scale=1.0, offset=-128).save(path, "JPEG", quality=quality)
    return os.path.getsize(path)


def make_image_set(root: Path, spec: ImageSet, workers: int) -> tuple[Path, list[Path], dict]:
    """(folder to index, its files, stats): ``spec.distinct`` JPEGs made in parallel, hard-linked ``copies`` times."""
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    src, folder = root / "distinct", root / f"all-x{spec.copies}"
    src.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(spec.distinct):
        w, h = spec.sizes[i % len(spec.sizes)]
        p = src / f"img{i:05d}-{w}x{h}.jpg"
        if not p.is_file():
            jobs.append((str(p), i, w, h, spec.quality))
    if len(jobs) >= 16:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(write_jpeg, jobs, chunksize=4))
    else:
        list(map(write_jpeg, jobs))
    distinct = sorted(src.glob("*.jpg"))[: spec.distinct]
    if not folder.is_dir():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for c in range(spec.copies):
            for p in distinct:
                try:
                    os.link(p, tmp / f"c{c:03d}-{p.name}")
                except OSError:  # no hard links on this file system
                    shutil.copy(p, tmp / f"c{c:03d}-{p.name}")
        tmp.rename(folder)
    files = sorted(folder.glob("*.jpg"))
    sizes = [p.stat().st_size for p in distinct]
    stats = {"distinct": len(distinct), "files": len(files), "mean_mb": round(float(np.mean(sizes)) / 1e6, 3),
             "megapixels": sorted({round(w * h / 1e6, 2) for w, h in spec.sizes}), "quality": spec.quality,
             "made_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    return folder, files, stats


# ---------------------------------------------------------------- models at their real sizes, random weights


def ensure_model(work: Path, name: str, real: bool) -> Path:
    """A local model directory visdex loads like a hub model (made once per work folder)."""
    family = "dinov2" if name.startswith("dinov2") else "clip"
    path = work / "models" / (name if real else family + "-tiny")  # a dry run needs one tiny model per family
    if (path / "config.json").is_file():
        return path
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    sys.path.insert(0, str(ROOT / "tests"))
    import tinymodels

    if not real:
        (tinymodels.make_tiny_dinov2 if family == "dinov2" else tinymodels.make_tiny_clip)(tmp)
    else:
        _real_model(tmp, name, tinymodels)
    if path.exists():  # made meanwhile by another part
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(path)
    return path


def _real_model(path: Path, name: str, tinymodels) -> None:
    """CLIP ViT-B/32, ViT-B/16 or DINOv2-S with the published architecture and preprocessing, random weights."""
    import torch
    import transformers as tf

    init_on = "cuda" if torch.cuda.is_available() else "cpu"  # random init of ~150M parameters is slow on a CPU
    torch.manual_seed(0)
    if name.startswith("clip"):
        text = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                    num_attention_heads=8, max_position_embeddings=77, pad_token_id=tinymodels.PAD_ID,
                    bos_token_id=tinymodels.BOS_ID, eos_token_id=tinymodels.EOS_ID)  # fmt: skip
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=224, patch_size=32 if name == "clip-vit-b-32" else 16)  # fmt: skip
        with torch.device(init_on):
            model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=512))
        processor = tf.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
        tokenizer = tinymodels._tokenizer(77)  # word-level stand-in: the text tower is not measured here
    else:
        config = tf.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                                 patch_size=14, image_size=518, layerscale_value=1.0)  # fmt: skip
        with torch.device(init_on):
            model = tf.Dinov2Model(config)
        processor = tf.BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])  # fmt: skip
        tokenizer = None
    tinymodels._save(model.half(), path, processor, tokenizer)  # fp16 on disk: visdex runs it in fp16 on CUDA


# ---------------------------------------------------------------- vectors


def make_vectors(n: int, device: str):
    """benchmarks/ann.py's data recipe in torch, on the device: clustered 512-d unit vectors, 1% near-copies.

    Returns (vectors float32 (n, 512) on ``device``, planted (copy, original) pairs as numpy).
    """
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ann import ALPHA, CLUSTERS, DIM, DUP_FRACTION, SIGMA

    g = torch.Generator(device=device).manual_seed(1234)
    scales = (1.0 + torch.arange(DIM, device=device, dtype=torch.float32)) ** -ALPHA
    basis, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=g, device=device))
    centres = (torch.randn(CLUSTERS, DIM, generator=g, device=device) * scales) @ basis.T
    centres /= centres.norm(dim=1, keepdim=True)
    spread = (0.5 + torch.rand(CLUSTERS, generator=g, device=device)) * SIGMA / scales.square().sum().sqrt()
    x = torch.empty(n, DIM, device=device)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        c = torch.randint(0, CLUSTERS, (m,), generator=g, device=device)
        v = centres[c] + spread[c, None] * ((torch.randn(m, DIM, generator=g, device=device) * scales) @ basis.T)
        x[start : start + m] = v / v.norm(dim=1, keepdim=True)
    n_dup = int(n * DUP_FRACTION)
    src = torch.randint(0, n - n_dup, (n_dup,), generator=g, device=device)
    noise = torch.randn(n_dup, DIM, generator=g, device=device)
    noise *= ((0.1 + 0.25 * torch.rand(n_dup, generator=g, device=device)) / noise.norm(dim=1))[:, None]
    v = x[src] + noise
    x[n - n_dup :] = v / v.norm(dim=1, keepdim=True)
    planted = np.stack([np.arange(n - n_dup, n), src.cpu().numpy()], axis=1)
    return x, planted
