"""Tiny random-weight CLIP / SigLIP / DINOv2 models for tests.

Each builder writes a complete model directory (config + weights + tokenizer +
``preprocessor_config.json``) with ``save_pretrained``, so tests load it through the same
``load_embedder(str(path))`` code path as a real hub model, without any download. Weights are
seeded, so two builds of the same model are byte-identical in behaviour.

>>> from tinymodels import make_tiny_clip
>>> path = make_tiny_clip(tmp_path / "clip")          # doctest: +SKIP
>>> load_embedder(str(path)).embed_texts(["a cat"])   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 32
PATCH = 8
HIDDEN = 32
PROJECTION = 16
MAX_TEXT = 16

# Small closed vocabulary; anything else maps to [UNK]. Enough words for the texts tests use.
_VOCAB = """
a an the photo picture of on in at
cat cats dog dogs kitten puppy car tree house cup coffee rocket space man woman person
red blue green black white beach sunset night day
"""
WORDS = _VOCAB.split()
SPECIAL = ["[PAD]", "[UNK]", "<s>", "</s>"]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


def _tokenizer(max_length: int):
    """A word-level fast tokenizer built offline: lowercase, whitespace split, ``<s> ... </s>``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=max_length,
    )


def _text_kwargs() -> dict:
    return dict(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TEXT,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )


def _vision_kwargs(image_size: int = IMAGE_SIZE) -> dict:
    return dict(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=PATCH,
    )


def _save(model, path: Path, image_processor, tokenizer=None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(path)
    image_processor.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def make_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A 2-layer CLIP (text + image, 16-d) with a 32 px input: shortest side 36, centre crop 32."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(text_config=_text_kwargs(), vision_config=_vision_kwargs(), projection_dim=PROJECTION)
    processor = CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return _save(CLIPModel(config), path, processor, _tokenizer(MAX_TEXT))


def make_tiny_siglip(path: Path, seed: int = 0) -> Path:
    """A 2-layer SigLIP (text + image, 32-d): squash to 32 px, mean/std 0.5, bilinear."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(seed)
    config = SiglipConfig(text_config=_text_kwargs(), vision_config=_vision_kwargs())
    processor = SiglipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=2,  # PIL bilinear, as the real SigLIP 2 checkpoints use
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return _save(SiglipModel(config), path, processor, _tokenizer(MAX_TEXT))


def make_tiny_dinov2(path: Path, seed: int = 0) -> Path:
    """A 2-layer DINOv2 (image only, 32-d): shortest side 40, centre crop 32, ImageNet mean/std."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(**_vision_kwargs(), mlp_ratio=2)
    processor = BitImageProcessor(
        size={"shortest_edge": 40},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )
    return _save(Dinov2Model(config), path, processor)


def make_tiny_siglip2(path: Path, seed: int = 0) -> Path:
    """A 2-layer SigLIP 2 NaFlex model (``model_type`` siglip2, 32-d): 16 patches of 8 px, i.e. a 32 px square."""
    import torch
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    torch.manual_seed(seed)
    vision = _vision_kwargs()
    del vision["image_size"]  # NaFlex has a patch budget instead of an image size
    config = Siglip2Config(text_config=_text_kwargs(), vision_config={**vision, "num_patches": 16})
    processor = Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=16)
    return _save(Siglip2Model(config), path, processor, _tokenizer(MAX_TEXT))


# ---------------------------------------------------------------- OpenCLIP and timm (tiny, random weights)

# A 2-layer OpenCLIP ViT with the real CLIP BPE vocabulary (49,408 tokens, shipped in open_clip's wheel) and
# context length 77, so texts go through OpenCLIP's own tokenizer exactly as for a hub model.
TINY_OPENCLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def make_tiny_openclip(path: Path, seed: int = 0) -> Path:
    """An OpenCLIP folder (``open_clip_config.json`` + ``open_clip_model.safetensors``), as OpenCLIP's hub
    repos are laid out: loads with ``open_clip:local-dir:<path>`` or the bare path."""
    import json

    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = CLIP(**TINY_OPENCLIP_CFG).eval()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    preprocess_cfg = {"size": 32, "mode": "RGB", "mean": OPENAI_DATASET_MEAN, "std": OPENAI_DATASET_STD,
                      "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}  # fmt: skip
    cfg = {"model_cfg": TINY_OPENCLIP_CFG, "preprocess_cfg": preprocess_cfg}
    (path / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


def make_tiny_timm(path: Path, arch: str = "test_vit", seed: int = 0) -> Path:
    """A timm folder written by ``timm.models.save_for_hf`` (``config.json`` + ``model.safetensors``): timm's own
    tiny test architectures (``test_vit``, ``test_efficientnet``, ``test_resnet``; ~0.4 M params, 160 px)."""
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_for_hf(timm.create_model(arch, pretrained=False).eval(), str(path))
    return path
