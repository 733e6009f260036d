"""ONNX Runtime fp32 / int8 against torch fp32 on CPU: img/s side by side, and how close the vectors stay.

Models: the two offline models with real weights (effnet-lite0, lite0-minilm) and, because real
CLIP / DINOv2 weights cannot be downloaded here, random-weight models of the real shapes built
from a config (CLIP ViT-B/32: 88 M vision + 63 M text parameters; DINOv2-small). Random weights
give honest *speed* numbers for the architecture; their cosines say little about real weights
(activations of random transformers are tamer), so the real-weight models carry the accuracy claim.

    python benchmarks/onnx_cpu.py                      # all models
    python benchmarks/onnx_cpu.py --models effnet-lite0

Writes benchmarks/results/onnx-cpu.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

TEXTS = ["a dog running on a beach at sunset", "a cup of coffee", "a rocket launching at night",
         "two cats sleeping on a red sofa", "snow covered mountains", "a portrait of a smiling woman",
         "a plate of pasta", "a black and white photo of a city"] * 4  # fmt: skip


def random_clip_b32(folder: Path) -> Path:
    """CLIP ViT-B/32 shapes (CLIPConfig defaults), random weights, a word-level tokenizer (77 tokens)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from tinymodels import _tokenizer

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig())
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)
    _tokenizer(77).save_pretrained(folder)
    return folder


def random_dinov2_small(folder: Path) -> Path:
    """DINOv2-small shapes (384-d, 12 layers, patch 14, 518 px position grid interpolated to 224)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=384, num_attention_heads=6, image_size=518, patch_size=14))
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder


def text_rates(model: str, rounds: int = 3) -> dict:
    """texts/s (batches of 32) and cosine to torch for each backend's text tower."""
    from visdex.models import load_embedder

    embs = {b: load_embedder(model, device="cpu", backend=b) for b in ("torch", "onnx", "onnx-int8")}
    if not embs["torch"].supports_text:
        return {}
    want = embs["torch"].embed_texts(TEXTS)
    out = {}
    best = dict.fromkeys(embs, 0.0)
    for _ in range(rounds):
        for b, e in embs.items():
            t0 = time.perf_counter()
            e.embed_texts(TEXTS)
            best[b] = max(best[b], len(TEXTS) / (time.perf_counter() - t0))
    for b, e in embs.items():
        cos = np.sum(e.embed_texts(TEXTS) * want, axis=1)
        out[b] = {"texts_per_s": round(best[b], 1), "speedup_vs_torch": round(best[b] / best["torch"], 2),
                  "cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5)}  # fmt: skip
    return out


def main() -> None:
    from visdex import bench

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["effnet-lite0", "lite0-minilm", "clip-b32-random",
                                                    "dinov2-small-random"])  # fmt: skip
    ap.add_argument("--images", type=int, default=96, help="images per backend per round for the speed test")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--work", default="/tmp/visdex-bench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    work = Path(args.work)
    photos = sorted((ROOT / "examples" / "photos").glob("*.jpg"))
    photos += bench.make_photo_set(work / "onnx-photos", 22, megapixels=0.5, seed=3)  # real photos, re-framed
    builders = {"clip-b32-random": random_clip_b32, "dinov2-small-random": random_dinov2_small}
    path = Path(args.out) / "onnx-cpu.json"
    result = {"machine": None, "photos": len(photos), "models": {}}
    if path.is_file():  # several runs (one model each) build up one file
        import json

        result["models"] = json.loads(path.read_text()).get("models", {})
    for name in args.models:
        model = str(builders[name](work / "models" / name)) if name in builders else name
        t0 = time.perf_counter()
        r = bench.bench_onnx(model, photos, args.images, args.batch_size)
        r["first_load_and_export_s"] = round(time.perf_counter() - t0, 1)
        r["weights"] = "random (real architecture)" if name in builders else "real"
        r["text"] = text_rates(model)
        result["models"][name] = r
        print(
            name,
            {b: (v["img_per_s"], v["speedup_vs_torch"], v["cosine_mean"]) for b, v in r["backends"].items()},
            r["text"] and {b: (v["speedup_vs_torch"], v["cosine_mean"]) for b, v in r["text"].items()},
            flush=True,
        )
    result["machine"] = bench.machine_info()
    result["load_average_end"] = os.getloadavg()
    print(bench.write_result(result, args.out, "onnx-cpu"))


if __name__ == "__main__":
    main()
