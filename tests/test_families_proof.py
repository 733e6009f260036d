"""Proof that each family adapter computes what its library's documented recipe computes.

For every family, at a real architecture size with random weights (nothing downloads), visdex's
vectors (visdex's decoder, its numpy preprocessing, its tokenisation call) are compared with the
library's own pipeline on real photos: OpenCLIP ``create_model_and_transforms`` + ``encode_image`` /
``encode_text`` with its tokenizer; transformers' processor + ``get_image_features`` /
``get_text_features`` (DINOv2: ``pooler_output``); timm ``resolve_data_config`` + ``create_transform``
+ ``forward_head(pre_logits=True)``. Cosine >= 0.9999 for every photo (non-square, EXIF-rotated,
grayscale, RGBA) and every text (a long one is truncated at the context length). The smallest real
architecture of each family runs by default; the bigger ones are marked slow.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from familyproof import TEXTS, clip_bpe_tokenizer, cosines, library_images, visdex_images, write_photos

MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    pytest.importorskip("skimage")
    files = write_photos(tmp_path_factory.mktemp("photos"))
    return visdex_images(files), library_images(files)


def _assert_close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert ours.shape == theirs.shape, what
    cos = cosines(ours, theirs)
    assert cos.min() >= MIN_COSINE, f"{what}: cosine per row {np.round(cos, 6).tolist()}"


# ---------------------------------------------------------------- OpenCLIP


def _openclip_case(arch: str, photos) -> None:
    import torch

    open_clip = pytest.importorskip("open_clip")
    from visdex.models.families.openclip import OpenClipEmbedder

    logging.getLogger().setLevel(logging.ERROR)  # "No pretrained weights loaded": intended here
    torch.manual_seed(0)
    model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=None)
    tokenizer = open_clip.get_tokenizer(arch)
    model.eval()
    ours_imgs, lib_imgs = photos
    with torch.inference_mode():
        theirs_img = model.encode_image(torch.stack([transform(im) for im in lib_imgs])).numpy()
        theirs_txt = model.encode_text(tokenizer(TEXTS)).numpy()
    emb = OpenClipEmbedder(model, tokenizer, name=f"open_clip:{arch}", source=arch, revision="random")
    _assert_close(emb.embed_images(ours_imgs), theirs_img, f"{arch} images")
    _assert_close(emb.embed_texts(TEXTS), theirs_txt, f"{arch} texts")
    assert len(tokenizer([TEXTS[-1]])[0]) == emb.context_length == 77  # the long text was truncated


def test_openclip_vit_s_32_equals_open_clip(photos):
    _openclip_case("ViT-S-32", photos)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ViT-B-32", "MobileCLIP2-S0", "RN50"])
def test_openclip_bigger_archs_equal_open_clip(arch, photos):
    _openclip_case(arch, photos)


# ---------------------------------------------------------------- timm


def _timm_case(name: str, photos) -> None:
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config

    from visdex.models.families.timm import TimmEmbedder

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False).eval()
    transform = create_transform(**resolve_data_config({}, model=net))
    ours_imgs, lib_imgs = photos
    with torch.inference_mode():
        x = torch.stack([transform(im.convert("RGB")) for im in lib_imgs])
        theirs = net.forward_head(net.forward_features(x), pre_logits=True).numpy()
    emb = TimmEmbedder(net, name=f"timm:{name}", source=name, revision="random")
    _assert_close(emb.embed_images(ours_imgs), theirs, name)


def test_timm_resnet50_equals_timm(photos):
    _timm_case("resnet50.a1_in1k", photos)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b4", "vit_small_patch14_dinov2"])
def test_timm_bigger_models_equal_timm(name, photos):
    _timm_case(name, photos)


# ---------------------------------------------------------------- transformers (through visdex's loader)


def _hf_dir(tmp_path, model, processor, tokenizer=None):
    model.eval().save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp_path)
    return tmp_path


def _hf_case(folder, photos, *, text_kwargs: dict | None, image_fn) -> None:
    import torch
    import transformers

    from visdex.models import load_embedder

    emb = load_embedder(str(folder), device="cpu")
    processor = transformers.AutoProcessor.from_pretrained(folder)
    image_processor = getattr(processor, "image_processor", processor)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    ours_imgs, lib_imgs = photos
    with torch.inference_mode():
        theirs = image_fn(model, image_processor(images=lib_imgs, return_tensors="pt"))
    _assert_close(emb.embed_images(ours_imgs), theirs.numpy(), f"{folder.name} images")
    if text_kwargs is not None:
        with torch.inference_mode():
            inputs = processor.tokenizer(TEXTS, return_tensors="pt", truncation=True, **text_kwargs)
            out = model.get_text_features(**inputs)
        theirs_txt = out if isinstance(out, torch.Tensor) else out.pooler_output
        _assert_close(emb.embed_texts(TEXTS), theirs_txt.numpy(), f"{folder.name} texts")


def _features(out):
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_dinov2_small_equals_transformers(photos, tmp_path):
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)  # facebook/dinov2-small's config and preprocessor_config
    config = Dinov2Config(hidden_size=384, num_attention_heads=6, image_size=518, patch_size=14)
    processor = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])  # fmt: skip
    folder = _hf_dir(tmp_path / "dinov2-small", Dinov2Model(config), processor)
    _hf_case(folder, photos, text_kwargs=None, image_fn=lambda m, inputs: m(**inputs).pooler_output)


@pytest.mark.slow
def test_clip_b32_equals_transformers(photos, tmp_path):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)  # CLIPConfig() is openai/clip-vit-base-patch32's architecture
    folder = _hf_dir(tmp_path / "clip-b32", CLIPModel(CLIPConfig()), CLIPImageProcessor(), clip_bpe_tokenizer(77))
    _hf_case(folder, photos, text_kwargs={"padding": True},
             image_fn=lambda m, inputs: _features(m.get_image_features(**inputs)))  # fmt: skip


@pytest.mark.slow
def test_siglip_base_equals_transformers(photos, tmp_path):
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)  # SiglipConfig() is siglip-base-patch16-224; the CLIP BPE stands in for its SentencePiece
    config = SiglipConfig(text_config={"vocab_size": 49408, "max_position_embeddings": 64})
    processor = SiglipImageProcessor(size={"height": 224, "width": 224}, resample=2)
    folder = _hf_dir(tmp_path / "siglip-base", SiglipModel(config), processor, clip_bpe_tokenizer(64))
    _hf_case(folder, photos, text_kwargs={"padding": "max_length", "max_length": 64},
             image_fn=lambda m, inputs: _features(m.get_image_features(**inputs)))  # fmt: skip
