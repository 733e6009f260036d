"""The family adapters' contract: every family runs the whole command set, and every hook an adapter owns
(GPU forward, ONNX towers, trainable stages, identity) computes what the embedder itself computes.

Tiny random-weight models of each family (tests/tinymodels.py) go through the same loading code as hub
models: ``save_pretrained`` folders (CLIP, SigLIP, DINOv2), an OpenCLIP folder with the real CLIP BPE
tokenizer, a timm ``save_for_hf`` folder. The offline ConSE model uses its real packaged weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from visdex.models import list_models, load_embedder
from visdex.models.families import adapter_for, families, family, resolve

from clihelp import run_cli


@pytest.fixture(scope="session")
def tiny_openclip(tmp_path_factory):
    pytest.importorskip("open_clip")
    from tinymodels import make_tiny_openclip

    return make_tiny_openclip(tmp_path_factory.mktemp("tiny-openclip"))


@pytest.fixture(scope="session")
def tiny_timm(tmp_path_factory):
    from tinymodels import make_tiny_timm

    return make_tiny_timm(tmp_path_factory.mktemp("tiny-timm"))


@pytest.fixture(scope="session")
def family_models(tiny_clip, tiny_siglip, tiny_dinov2, tiny_openclip, tiny_timm) -> dict[str, str]:
    """Adapter name -> a model name of that family that needs no download."""
    return {"clip": str(tiny_clip), "siglip": str(tiny_siglip), "dinov2": str(tiny_dinov2),
            "open_clip": str(tiny_openclip), "timm": f"timm:local-dir:{tiny_timm}",
            "conse": "lite0-minilm"}  # fmt: skip


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VISDEX_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "family-model-cache"))


def test_every_family_has_an_adapter_and_a_test_model(family_models):
    assert sorted(f.name for f in families()) == sorted(family_models)
    for spec in list_models():  # the catalog names a family; the registry finds its adapter
        assert family(spec.family).name in family_models


FAST = ["clip", "siglip", "dinov2", "open_clip", "timm"]


def _photo(tmp_path, colour=(200, 30, 30), size=(96, 64)) -> str:
    path = tmp_path / f"probe-{colour[0]}.png"
    Image.new("RGB", size, colour).save(path)
    return str(path)


def _command_set(capsys, tmp_path, folder, model: str, text: bool, onnx: bool = True) -> None:
    ix = tmp_path / "ix"
    code, out, err = run_cli(capsys, "index", folder, "--index", ix, "--model", model, "-q")
    assert code == 0, err
    if text:
        code, out, err = run_cli(capsys, "search", "a photo of a cat", "--index", ix, "-n", "2", "--json")
        assert code == 0, err
        assert len(out.splitlines()) == 2
    image = next(p for p in sorted(folder.iterdir()))
    code, out, err = run_cli(capsys, "search", image, "--index", ix, "-n", "1", "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["path"].endswith(image.name)  # an image finds itself first
    code, out, err = run_cli(capsys, "dupes", "--index", ix, "--json")
    assert code == 0, err
    if not onnx:
        return
    onnx_ix = tmp_path / "onnx-ix"
    code, out, err = run_cli(capsys, "index", folder, "--index", onnx_ix, "--model", f"onnx:{model}", "-q")
    assert code == 0, err
    code, out, err = run_cli(capsys, "search", image, "--index", onnx_ix, "-n", "1", "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["path"].endswith(image.name)


@pytest.mark.parametrize("name", FAST)
def test_every_family_indexes_searches_and_finds_dupes(name, family_models, capsys, tmp_path, folder):
    model = family_models[name]
    text = load_embedder(model, device="cpu").supports_text
    _command_set(capsys, tmp_path, folder, model, text, onnx=False)


@pytest.mark.slow  # ONNX export and int8 calibration: ~5-10 s a family
@pytest.mark.parametrize("name", FAST)
def test_every_family_runs_the_command_set_with_onnx(name, family_models, capsys, tmp_path, folder):
    model = family_models[name]
    text = load_embedder(model, device="cpu").supports_text
    _command_set(capsys, tmp_path, folder, model, text)


@pytest.mark.slow
def test_offline_conse_family_runs_the_command_set(family_models, capsys, tmp_path, folder):
    _command_set(capsys, tmp_path, folder, family_models["conse"], True)


@pytest.mark.parametrize("name", FAST)
def test_gpu_forward_and_onnx_identity_match_the_embedder(name, family_models, tmp_path):
    """The GPU batcher's forward (run here on CPU tensors) makes the embedder's own vectors, and the ONNX
    cache key (computed without torch) names the same source the loaded model's fingerprint does."""
    import torch

    from visdex.models import _BY_NAME
    from visdex.models.onnx import model_identity

    emb = load_embedder(family_models[name], device="cpu")
    forward, post = adapter_for(emb).image_forward(emb)
    pixels = emb.preprocess.batch([Image.open(_photo(tmp_path)), Image.open(_photo(tmp_path, (10, 90, 200)))])
    with torch.inference_mode():
        got = post(forward(torch.from_numpy(pixels)).float().numpy())
    np.testing.assert_allclose(got, emb.embed_pixels(pixels), atol=1e-5)
    ident = model_identity(family_models[name])
    assert ident["revision"] == emb.fingerprint().revision and ident["source"] == emb.fingerprint().source
    assert resolve(family_models[name], list(_BY_NAME))[0] is adapter_for(emb)


@pytest.mark.parametrize("name", ["dinov2", "timm"])
def test_trainable_stages_cut_the_network_exactly(name, family_models, tmp_path):
    """prefix (frozen, cached) then the trained stages give the embedder's own vectors: the cut loses nothing."""
    import torch

    from visdex.train.backbones import Backbone

    emb = load_embedder(family_models[name], device="cpu")
    backbone = Backbone(emb, train_blocks=2)
    pixels = emb.preprocess.batch([Image.open(_photo(tmp_path)), Image.open(_photo(tmp_path, (10, 90, 200)))])
    with torch.no_grad():
        got = backbone.pooled(torch.from_numpy(backbone.prefix(pixels))).numpy()
    np.testing.assert_allclose(got, emb.embed_pixels(pixels), atol=1e-4)
    assert backbone.trainable_parameters()


def test_openclip_names_fail_clearly():
    from visdex.errors import UnknownModel

    pytest.importorskip("open_clip")
    with pytest.raises(UnknownModel, match="laion2b_s34b_b79k"):  # no tag: the known tags are listed
        load_embedder("open_clip:ViT-B-32", device="cpu")
    with pytest.raises(UnknownModel):
        load_embedder("open_clip:No-Such-Arch/x", device="cpu")
    with pytest.raises(UnknownModel):
        load_embedder("timm:no_such_net_xyz", device="cpu")


def test_openclip_export_tokenizer_gives_open_clips_token_ids():
    """The tokenizer.json the torch-free query path loads tokenises like OpenCLIP's own tokenizer (padding aside:
    end-of-text instead of 0, which the causal text tower never sees)."""
    open_clip = pytest.importorskip("open_clip")
    from visdex.models.families.openclip import clip_bpe_tokenizer

    texts = ["a photo of a cat", "A Rocket!! on the pad", "don't stop—it's 5€ &amp; café", "  two  spaces\tand ",
             "emoji 🚀🐱", "ein Hund am Strand", "", "word " * 100]  # fmt: skip
    ours = clip_bpe_tokenizer(77)(texts, padding="max_length", truncation=True, max_length=77)["input_ids"]
    theirs = open_clip.get_tokenizer("ViT-B-32")(texts).tolist()
    eot = 49407
    assert ours == [[t if t else eot for t in row] for row in theirs]


def test_adapters_import_no_torch():
    """The registry imports every adapter module (the torch-free text-query path resolves names through it)."""
    import subprocess
    import sys

    code = (
        "import sys; from visdex.models.families import families; from visdex.models.onnx import model_identity; "
        "families(); model_identity('open_clip:ViT-B-32/laion2b_s34b_b79k'); model_identity('timm:resnet50.a1_in1k'); "
        "print(sorted(m for m in ('torch', 'transformers', 'timm', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
