"""transformers DINOv2 (``model_type`` dinov2, dinov2_with_registers): image only.

The vector is ``pooler_output``, the layer-normed CLS token. Fine-tuning may unfreeze the final layer
norm and the last encoder layers (``finetune labelled --train-blocks N``).
"""

from __future__ import annotations

from collections.abc import Callable

from ..base import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ..hf import HFEmbedder, TransformersFamily
from .base import FamilyProfile, ModelRef, Stage, Stages


class Dinov2Embedder(HFEmbedder):
    family = "dinov2"

    @classmethod
    def default_preprocess(cls, config) -> Preprocess:
        return Preprocess(size=224, resize_to=256, mode="shortest", mean=IMAGENET_MEAN, std=IMAGENET_STD)

    @staticmethod
    def output_dim(config) -> int:
        return int(config.hidden_size)

    def image_tower(self, x):
        return self.model(pixel_values=x).pooler_output  # layer-normed CLS token


class Dinov2Family(TransformersFamily):
    name = "dinov2"
    catalog_families = ("dinov2",)
    model_types = ("dinov2", "dinov2_with_registers")
    has_text = False
    profile = FamilyProfile(good_for="image only: near-duplicates, 'looks like this' and instance retrieval")

    def embedder_for(self, model_type: str) -> type[HFEmbedder]:
        return Dinov2Embedder

    def trainable_stages(self, emb) -> Stages:
        """Patch embeddings (stem), ``encoder.layer.0`` .. ``N-1``, then ``layernorm``."""
        m = emb.model.float()
        stages = [Stage((f"encoder.layer.{i}.",), _unwrap(layer)) for i, layer in enumerate(m.encoder.layer)]
        stages.append(Stage(("layernorm.",), m.layernorm))
        return Stages(module=m, stem=m.embeddings, stages=stages, pool=lambda h: h[:, 0])  # Dinov2Model's pooler

    def naive_forward(self, ref: ModelRef):
        from transformers import AutoImageProcessor, AutoModel

        processor = AutoImageProcessor.from_pretrained(ref.source)
        net = AutoModel.from_pretrained(ref.source).eval()
        return (lambda images: net(**processor(images=images, return_tensors="pt")).pooler_output), int(
            net.config.hidden_size
        )


def _unwrap(layer) -> Callable:
    """A transformers layer returns a tensor (v5) or a tuple whose first item is the hidden state (v4)."""

    def run(h):
        out = layer(h)
        return out[0] if isinstance(out, tuple) else out

    return run


FAMILY = Dinov2Family()
