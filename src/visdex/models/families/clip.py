"""transformers CLIP (``model_type`` clip): OpenAI's CLIP checkpoints and any ``save_pretrained`` CLIP folder.

Vectors are ``get_image_features`` / ``get_text_features`` (the projected embeddings), preprocessing
is the checkpoint's ``preprocessor_config.json`` (shortest side, centre crop, CLIP mean/std).
"""

from __future__ import annotations

from ..base import CLIP_MEAN, CLIP_STD, Preprocess
from ..hf import HFEmbedder, TransformersFamily, vision_side
from .base import FamilyProfile


class ClipEmbedder(HFEmbedder):
    family = "clip"

    @classmethod
    def default_preprocess(cls, config) -> Preprocess:
        side = vision_side(config)
        return Preprocess(size=side, resize_to=side, mode="shortest", mean=CLIP_MEAN, std=CLIP_STD)

    @staticmethod
    def output_dim(config) -> int:
        return int(config.projection_dim)


class ClipFamily(TransformersFamily):
    name = "clip"
    catalog_families = ("clip",)
    model_types = ("clip",)
    profile = FamilyProfile(
        good_for="general text and image search in English",
        contrastive_loss="InfoNCE (CLIP's symmetric cross-entropy over in-batch negatives; larger batches help)",
    )

    def embedder_for(self, model_type: str) -> type[HFEmbedder]:
        return ClipEmbedder


FAMILY = ClipFamily()
