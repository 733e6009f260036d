"""Draft-mode JPEG decoding per model family: how far the vectors move from a full decode.

Indexing decodes JPEGs with libjpeg's draft mode (1/2..1/8 scale, never below the model's resize side)
and box-reduces big images before the model's own resize (``visdex.decode``, ``draft_size=resize_to``).
That changes pixels. For each family this embeds the same real photos twice -- full decode, and the
decode ingest does -- and reports the cosine distribution between the two vectors of each photo.
The requirement (issue 11): the 1st percentile stays >= 0.99, else that family must decode larger.

Photos: the real photos bundled with visdex (examples/photos, scikit-image's, 300-640 px: draft mode
box-reduces the ones over twice the resize side) and camera-sized 6 MP JPEGs made from them
(``visdex.bench.make_photo_set``: upscaled, cropped, tinted; draft mode decodes these at 1/4..1/8).

Weights: the offline models have real weights (effnet-lite0, lite0-minilm); the hub families cannot be
downloaded here, so they run at their real architecture size with random weights. Random networks are
not trained to ignore resampling noise, so their numbers are a pessimistic stand-in for trained ones.

    python benchmarks/family_draft.py --n 24
    python benchmarks/family_draft.py --families timm open_clip --n 8

Writes benchmarks/results/family-draft.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def _embedders(tmp: Path) -> dict:
    """family -> (label, a function that builds the embedder). Real architecture sizes; see the module doc."""
    import torch

    def clip():
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

        from familyproof import clip_bpe_tokenizer
        from visdex.models import load_embedder

        torch.manual_seed(0)
        folder = tmp / "clip-b32"
        CLIPModel(CLIPConfig()).save_pretrained(folder)
        CLIPImageProcessor().save_pretrained(folder)
        clip_bpe_tokenizer().save_pretrained(folder)
        return load_embedder(str(folder), device="cpu")

    def siglip():
        from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

        from visdex.models import load_embedder

        torch.manual_seed(0)
        folder = tmp / "siglip-base"
        model = SiglipModel(SiglipConfig())
        model.save_pretrained(folder)
        SiglipImageProcessor(size={"height": 224, "width": 224}, resample=2).save_pretrained(folder)
        from familyproof import clip_bpe_tokenizer

        clip_bpe_tokenizer(64).save_pretrained(folder)
        return load_embedder(str(folder), device="cpu")

    def dinov2():
        from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

        from visdex.models import load_embedder

        torch.manual_seed(0)
        folder = tmp / "dinov2-small"
        Dinov2Model(
            Dinov2Config(hidden_size=384, num_attention_heads=6, image_size=518, patch_size=14)
        ).save_pretrained(folder)
        processor = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
                                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])  # fmt: skip
        processor.save_pretrained(folder)
        return load_embedder(str(folder), device="cpu")

    def open_clip_():
        import open_clip

        from visdex.models.families.openclip import OpenClipEmbedder

        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32", pretrained=None)
        tokenizer = open_clip.get_tokenizer("ViT-B-32")
        return OpenClipEmbedder(model, tokenizer, name="open_clip:ViT-B-32", source="ViT-B-32", revision="random")

    def timm_(name):
        def build():
            import timm

            from visdex.models.families.timm import TimmEmbedder

            torch.manual_seed(0)
            return TimmEmbedder(timm.create_model(name, pretrained=False), name=f"timm:{name}", source=name,
                                revision="random")  # fmt: skip

        return build

    def offline(name):
        def build():
            from visdex.models import load_embedder

            return load_embedder(name, device="cpu")

        return build

    return {
        "clip": ("transformers CLIP ViT-B/32, random weights", clip),
        "siglip": ("transformers SigLIP base/16 224, random weights", siglip),
        "dinov2": ("transformers DINOv2-small, random weights", dinov2),
        "open_clip": ("OpenCLIP ViT-B-32, random weights", open_clip_),
        "timm": ("timm resnet50.a1_in1k, random weights", timm_("resnet50.a1_in1k")),
        "timm-vit": ("timm vit_small_patch14_dinov2 (518 px), random weights", timm_("vit_small_patch14_dinov2")),
        "conse-effnet": ("effnet-lite0, real weights", offline("effnet-lite0")),
        "conse": ("lite0-minilm (ConSE), real weights", offline("lite0-minilm")),
    }


def _photos(folder: Path, n: int) -> dict[str, list[Path]]:
    from PIL import Image

    from visdex.bench import make_photo_set, source_photos

    native = folder / "native"
    native.mkdir(parents=True, exist_ok=True)
    files = []
    for i, arr in enumerate(source_photos()):
        p = native / f"photo-{i:02d}.jpg"
        if not p.is_file():
            Image.fromarray(arr).save(p, quality=92)
        files.append(p)
    return {"native": files, "6mp": make_photo_set(folder / "6mp", n, megapixels=6.0)}


def _stats(cos: np.ndarray) -> dict:
    return {"n": int(len(cos)), "min": round(float(cos.min()), 6), "p1": round(float(np.percentile(cos, 1)), 6),
            "p5": round(float(np.percentile(cos, 5)), 6), "median": round(float(np.median(cos)), 6),
            "mean": round(float(cos.mean()), 6)}  # fmt: skip


def measure(emb, sets: dict[str, list[Path]]) -> dict:
    from visdex.decode import decode_image

    pre = emb.preprocess
    out = {"resize_to": pre.resize_to, "size": pre.size, "draft_side": pre.draft_side}
    for label, files in sets.items():
        full = emb.embed_images([decode_image(f).image for f in files])
        draft = emb.embed_images([decode_image(f, draft_size=pre.draft_side).image for f in files])
        out[label] = _stats(np.sum(full * draft, axis=1))
    both = [out[k]["p1"] for k in sets]
    out["p1_ok"] = bool(min(both) >= 0.99)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="6 MP photos (made once, reused)")
    parser.add_argument("--families", nargs="*", help="subset of: clip siglip dinov2 open_clip timm timm-vit conse ...")
    parser.add_argument("--photos", default=os.path.join(tempfile.gettempdir(), "visdex-draft-photos"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "family-draft.json"))
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    sets = _photos(Path(args.photos), args.n)
    builders = _embedders(Path(tempfile.mkdtemp(prefix="visdex-draft-models-")))
    results = {}
    for fam in args.families or list(builders):
        label, build = builders[fam]
        t0 = time.perf_counter()
        results[fam] = {"model": label, **measure(build(), sets), "seconds": round(time.perf_counter() - t0, 1)}
        print(fam, json.dumps(results[fam]), flush=True)
    out = Path(args.out)
    old = json.loads(out.read_text())["results"] if out.is_file() else {}  # a run of some families updates those
    record = {"what": "cosine(full decode, draft decode at draft_side) per photo, per family",
              "load_average": os.getloadavg(), "photos": {k: len(v) for k, v in sets.items()},
              "results": {**old, **results}}  # fmt: skip
    out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
