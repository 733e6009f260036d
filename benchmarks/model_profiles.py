"""Speed profile of the catalog's architectures and of the FAISS index kinds, for `visdex recommend`.

Model speed does not depend on the weights, so each architecture is built from its config with
random weights (no download): batch-1 latency of the image and text towers (what one query costs)
and batched image throughput (what indexing costs). Then one-thread FAISS search latency of flat,
HNSW and IVF-PQ on clustered synthetic vectors. `visdex recommend` reads the JSON this writes.

    python benchmarks/model_profiles.py                      # -> benchmarks/results/model_profiles-cpu.json
    python benchmarks/model_profiles.py --device cuda --out benchmarks/results/model_profiles-gpu.json

Run it on an otherwise idle machine; numbers from a shared one are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _vision(name: str):
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    if name == "clip-vit-b-32":
        return CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=512))
    if name == "clip-vit-b-16":
        return CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=512, patch_size=16))
    if name == "clip-vit-l-14":
        return CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            patch_size=14, projection_dim=768))  # fmt: skip
    if name == "siglip2-base":
        return SiglipVisionModel(SiglipVisionConfig())
    if name == "dinov2-small":
        return Dinov2Model(Dinov2Config(hidden_size=384, num_attention_heads=6, image_size=224))
    if name == "dinov2-base":
        return Dinov2Model(Dinov2Config(image_size=224))
    if name == "effnet-lite0":
        import timm

        return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    raise KeyError(name)


def _text(name: str):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, SiglipTextConfig, SiglipTextModel

    if name in ("clip-vit-b-32", "clip-vit-b-16"):
        return CLIPTextModelWithProjection(CLIPTextConfig(projection_dim=512)), 77
    if name == "clip-vit-l-14":
        return CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, projection_dim=768)), 77  # fmt: skip
    if name == "siglip2-base":
        return SiglipTextModel(SiglipTextConfig()), 64  # SigLIP pads every text to 64 tokens
    return None, 0


def _time(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after two warm-up calls."""
    fn(), fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _run(model, x, device: str):
    def call():
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=device.startswith("cuda")):
            out = model(x) if not isinstance(x, dict) else model(**x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    return call


def profile_model(name: str, device: str, batch: int, repeats: int) -> list[dict]:
    model = _vision(name).eval().to(device)
    one = torch.randn(1, 3, 224, 224, device=device)
    many = torch.randn(batch, 3, 224, 224, device=device)
    image_ms = _time(_run(model, one, device), repeats) * 1000
    rate = batch / _time(_run(model, many, device), max(2, repeats // 4))
    rows = [{"model": name, "tower": "image", "batch1_ms": round(image_ms, 2), "images_per_second": round(rate, 1),
             "batch": batch}]  # fmt: skip
    del model
    text, length = _text(name)
    if text is not None:
        text = text.eval().to(device)
        # CLIP pads to the longest text in the batch (a short query: ~12 tokens); SigLIP always to 64.
        n_tokens = 12 if length == 77 else length
        ids = {"input_ids": torch.randint(1, 1000, (1, n_tokens), device=device)}
        rows.append(
            {"model": name, "tower": "text", "batch1_ms": round(_time(_run(text, ids, device), repeats) * 1000, 2)}
        )
    return rows


def _clustered(rng, n: int, d: int) -> np.ndarray:
    import faiss

    centres = rng.standard_normal((max(16, n // 100), d)).astype("float32")
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d)).astype("float32")
    faiss.normalize_L2(x)
    return x


def profile_ann(n: int, d: int, queries: int = 200) -> list[dict]:
    import faiss

    rng = np.random.default_rng(0)
    x, q = _clustered(rng, n, d), _clustered(rng, queries, d)
    ip = faiss.METRIC_INNER_PRODUCT
    hnsw = faiss.IndexHNSWFlat(d, 32, ip)
    hnsw.hnsw.efConstruction = 80
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, 1024, 64, 8, ip)
    kinds = [("flat", "fp32", faiss.IndexFlatIP(d)),
             ("flat", "fp16", faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, ip)),
             ("flat", "int8", faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, ip)),
             ("hnsw", "fp32", hnsw), ("ivfpq", "pq", ivf)]  # fmt: skip
    exact = faiss.IndexFlatIP(d)
    exact.add(x)
    _, truth = exact.search(q, 10)
    rows = []
    for index, codec, ix in kinds:
        if not ix.is_trained:
            ix.train(x[: min(n, 50_000)])
        ix.add(x)
        if index == "hnsw":
            ix.hnsw.efSearch = 128
        if index == "ivfpq":
            ix.nprobe = 32
        faiss.omp_set_num_threads(1)  # one query, one thread: a latency, not a throughput
        ms = [_time(lambda i=i, ix=ix: ix.search(q[i : i + 1], 10), 1) * 1000 for i in range(queries)]
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        _, found = ix.search(q, 10)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))
        rows.append({"index": index, "codec": codec, "n": n, "dim": d, "p50_ms": round(statistics.median(ms), 4),
                     "recall@10": round(recall, 4)})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=None, help="throughput batch (default 16 on CPU, 256 on GPU)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--ann-n", type=int, default=100_000)
    ap.add_argument("--models", default="clip-vit-b-32,clip-vit-b-16,clip-vit-l-14,siglip2-base,dinov2-small,"
                                        "dinov2-base,effnet-lite0")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    gpu = args.device.startswith("cuda")
    batch = args.batch or (256 if gpu else 16)
    models = [row for name in args.models.split(",") if name
              for row in profile_model(name, args.device, batch, args.repeats)]  # fmt: skip
    result = {
        "benchmark": "model_profiles",
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "hardware": "gpu" if gpu else "cpu",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "models": models,
        "ann": [] if gpu else profile_ann(args.ann_n, 512),
    }
    out = args.out or RESULTS / f"model_profiles-{'gpu' if gpu else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
