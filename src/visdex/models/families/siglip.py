"""transformers SigLIP and SigLIP 2 (``model_type`` siglip, and siglip2 for the NaFlex checkpoints).

SigLIP's text tower was trained on exactly 64 tokens, padded, and pools the last position, so texts
are padded to 64 ("max_length"). SigLIP 2 was trained on lowercased text. NaFlex checkpoints get a
fixed square grid of patches (the number of patches of the model's budget), not an aspect-preserving one.
"""

from __future__ import annotations

from ...errors import ModelLoadError
from ..base import HALF, Preprocess
from ..hf import HFEmbedder, TransformersFamily, model_features, vision_side
from .base import FamilyProfile

SIGLIP_TEXT_LENGTH = 64


class SiglipEmbedder(HFEmbedder):
    family = "siglip"
    text_padding = "max_length"

    @classmethod
    def default_preprocess(cls, config) -> Preprocess:
        side = vision_side(config)
        return Preprocess(size=side, resize_to=side, mode="squash", mean=HALF, std=HALF, resample="bilinear")

    @staticmethod
    def output_dim(config) -> int:
        return int(config.vision_config.hidden_size)

    def wanted_text_length(self, tokenizer) -> int | None:
        return SIGLIP_TEXT_LENGTH

    def lowercases(self, tokenizer) -> bool:
        # SigLIP 2 was trained on lowercased text (its Gemma tokenizer is case-sensitive).
        return self.model_type == "siglip2" or "gemma" in type(tokenizer).__name__.lower()


class NaflexEmbedder(SiglipEmbedder):
    """SigLIP 2 NaFlex: flattened patches, a full mask and the grid shape instead of a pixel tensor."""

    def image_tower(self, x):
        return model_features(self.model.get_image_features(**naflex_inputs(x, self.model.config)))


def naflex_inputs(x, config) -> dict:
    """A square pixel batch as SigLIP 2 NaFlex wants it: flattened patches, a full mask, the grid shape."""
    import torch

    n, c, h, w = x.shape
    p = int(config.vision_config.patch_size)
    gh, gw = h // p, w // p
    patches = x.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(n, gh * gw, p * p * c)
    mask = torch.ones((n, gh * gw), dtype=torch.long, device=x.device)
    shapes = torch.tensor([[gh, gw]] * n, dtype=torch.long, device=x.device)
    return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}


class SiglipFamily(TransformersFamily):
    name = "siglip"
    catalog_families = ("siglip",)
    model_types = ("siglip", "siglip2")  # SigLIP 2 "FixRes" checkpoints say "siglip"; "siglip2" is NaFlex
    profile = FamilyProfile(
        good_for="multilingual text queries; more accurate text-to-image than CLIP of the same size",
        contrastive_loss="sigmoid pairwise loss (SigLIP's own; works with modest batch sizes)",
    )

    def embedder_for(self, model_type: str) -> type[HFEmbedder]:
        return NaflexEmbedder if model_type == "siglip2" else SiglipEmbedder

    def onnx_towers(self, emb, pixels) -> dict:
        if isinstance(emb, NaflexEmbedder):
            raise ModelLoadError(
                f"the ONNX backend does not support SigLIP 2 NaFlex checkpoints ({emb.name}); use the torch backend "
                "(its fixed-resolution SigLIP 2 models, such as siglip2-base, are supported)"
            )
        return super().onnx_towers(emb, pixels)


FAMILY = SiglipFamily()
