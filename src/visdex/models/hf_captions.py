"""How ``finetune captions`` trains a transformers CLIP or SigLIP model (the adapters' ``caption_training``).

Towers: ``vision_model`` / ``text_model`` with CLIP's separate projections or SigLIP's heads; the text
forward tokenises exactly as the embedder does at query time; the saved folder is ``save_pretrained``
plus the tokenizer and an image processor config that reads back as the embedder's preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path

from .families.base import CaptionTraining
from .hf import default_preprocess, model_features, preprocess_from_config, quiet_transformers


def caption_training(emb) -> CaptionTraining:
    model = emb.model
    towers = {}
    for tower, enc, proj, last_norm in (("image", model.vision_model, "visual_projection", "post_layernorm"),
                                        ("text", model.text_model, "text_projection", "final_layer_norm")):  # fmt: skip
        projection = getattr(model, proj, None)  # CLIP projects outside the tower; SigLIP's head is inside it
        whole = [enc] + ([projection] if projection is not None else [])
        top = [getattr(enc, last_norm, None), projection if projection is not None else getattr(enc, "head", None)]
        towers[tower] = (whole, list(enc.encoder.layers), [m for m in top if m is not None])
    return CaptionTraining(
        towers=towers,
        # the embedder's own image forward (CLIP, SigLIP, SigLIP 2 NaFlex): training sees what indexing computes
        image_features=emb.image_tower,
        text_features=lambda texts: model_features(model.get_text_features(**_tokens(emb, texts))),
        logit_scale=model.logit_scale,
        logit_bias=getattr(model, "logit_bias", None),
        save=lambda merged, folder: save_model_folder(emb, merged, folder),
    )


def _tokens(emb, texts: list[str]) -> dict:
    """Tokenise exactly as the embedder does at query time (padding, length, lowercasing)."""
    if emb.lowercase:
        texts = [t.lower() for t in texts]
    batch = emb.tokenizer(texts, padding=emb.text_padding, truncation=True, max_length=emb.text_length,
                          return_tensors="pt").to(emb.device)  # fmt: skip
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def save_model_folder(emb, model, folder: Path) -> None:
    """``save_pretrained`` of ``model``, the embedder's tokenizer and its image processor config into ``folder``."""
    with quiet_transformers():
        model.save_pretrained(folder)
        emb.tokenizer.save_pretrained(folder)
    _save_image_processor(emb, folder)


def _save_image_processor(emb, folder: Path) -> None:
    """The base's preprocessor_config.json when it reads back as the same preprocessing, else one written
    from the embedder's own :class:`~visdex.models.base.Preprocess` (what indexing actually uses)."""
    fallback = default_preprocess(emb.model_type, emb.model.config)
    try:
        import transformers

        transformers.AutoImageProcessor.from_pretrained(emb.source).save_pretrained(folder)
        cfg = json.loads((folder / "preprocessor_config.json").read_text())
        if preprocess_from_config(cfg, fallback) == emb.preprocess:
            return
    except Exception:  # no processor to copy (or an odd one): describe our own preprocessing instead
        cfg = {}
    pre = emb.preprocess
    cfg.update({"do_resize": True, "do_rescale": True, "rescale_factor": pre.rescale, "do_normalize": True,
                "image_mean": list(pre.mean), "image_std": list(pre.std),
                "resample": 2 if pre.resample == "bilinear" else 3})  # fmt: skip
    if pre.mode == "squash":
        cfg.update({"size": {"height": pre.size, "width": pre.size}, "do_center_crop": False})
        cfg.pop("crop_size", None)
    else:
        cfg.update({"size": {"shortest_edge": pre.resize_to}, "do_center_crop": True,
                    "crop_size": {"height": pre.size, "width": pre.size}})  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2))
