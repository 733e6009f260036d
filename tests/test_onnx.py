"""The ONNX Runtime backends: export once, int8, honest fingerprints, queries across backends.

Thresholds are what was measured (see docs/readme/speed.md), with a margin: tiny random
models quantise almost losslessly (cosine > 0.999); the real-weight offline models reach a
mean cosine of ~0.995 on real photos.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from visdex import open_index
from visdex.errors import MissingDependency, ModelMismatch, UnknownModel, UnsupportedModality
from visdex.models import load_embedder
from visdex.models.onnx import (
    QUERY_MIN_COSINE,
    OnnxEmbedder,
    model_identity,
    query_compatible,
    split_backend,
    with_backend,
)

from clihelp import SRC, run_cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TEXTS = ["a photo of a cat", "a red car on the beach at night", "dog", ""]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A fresh cache for this module: exports are made here, by the code under test, not reused from old runs."""
    path = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISDEX_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def clip_int8(onnx_cache, tiny_clip):
    return load_embedder(str(tiny_clip), backend="onnx-int8")


def _images(photos, n=6):
    return [Image.open(p).convert("RGB") for p in list(photos.values())[:n]]


def _cos(a, b):
    return np.sum(a * b, axis=1)


def test_backend_names():
    assert split_backend("onnx-int8:clip-vit-b-32") == ("onnx-int8", "clip-vit-b-32")
    assert split_backend("onnx:hf:org/repo") == ("onnx", "hf:org/repo")
    assert split_backend("torch:effnet-lite0") == ("torch", "effnet-lite0")
    assert split_backend("/models/onnx-int8/clip") == ("torch", "/models/onnx-int8/clip")
    assert with_backend("onnx:effnet-lite0", "onnx-int8") == "onnx-int8:effnet-lite0"
    assert with_backend("onnx-int8:effnet-lite0", "torch") == "effnet-lite0"
    with pytest.raises(UnknownModel):
        with_backend("effnet-lite0", "tensorrt")


def test_int8_clip_vectors_are_close_to_torch(clip_int8, tiny_clip, photos):
    torch_emb = load_embedder(str(tiny_clip), device="cpu")
    images = _images(photos)
    a, b = clip_int8.embed_images(images), torch_emb.embed_images(images)
    assert a.shape == b.shape == (len(images), torch_emb.dim) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert _cos(a, b).min() > 0.99
    ta, tb = clip_int8.embed_texts(TEXTS), torch_emb.embed_texts(TEXTS)
    assert ta.shape == tb.shape and _cos(ta, tb).min() > 0.99
    # the export recorded its own measurement, per backend and modality
    assert clip_int8.quality["image"]["min"] > 0.99 and clip_int8.quality["text"]["n"] > 20
    assert clip_int8.manifest["towers"]["image"]["exporter"] == "dynamo"


def test_fp32_onnx_equals_torch_and_fingerprints_differ(onnx_cache, tiny_clip, clip_int8, photos):
    torch_emb = load_embedder(str(tiny_clip), device="cpu")
    fp32 = load_embedder(f"onnx:{tiny_clip}")
    images = _images(photos, 3)
    np.testing.assert_allclose(fp32.embed_images(images), torch_emb.embed_images(images), atol=1e-4)
    np.testing.assert_allclose(fp32.embed_texts(TEXTS), torch_emb.embed_texts(TEXTS), atol=1e-4)
    fps = [e.fingerprint() for e in (torch_emb, fp32, clip_int8)]
    assert fps[1].revision == fps[0].revision + "+onnx" and fps[2].revision == fps[0].revision + "+onnx-int8"
    assert not fps[0].compatible(fps[1]) and not fps[0].compatible(fps[2]) and not fps[1].compatible(fps[2])
    assert fps[2].name == f"onnx-int8:{tiny_clip}"
    assert (fps[0].source, fps[0].dim, fps[0].preprocessing) == (fps[2].source, fps[2].dim, fps[2].preprocessing)


def test_export_is_cached_and_reloads_without_torch(onnx_cache, clip_int8, tiny_clip):
    exports = sorted(p.name for p in (onnx_cache / "onnx").iterdir())
    assert len(exports) == 1 and (onnx_cache / "onnx" / exports[0] / "manifest.json").is_file()
    # A second process loads the cached export and embeds a text with torch made unimportable.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from visdex.models import load_embedder\n"
        f"e = load_embedder('onnx-int8:{tiny_clip}')\n"
        "v = e.embed_texts(['a cat'])\n"
        "print(v.shape, 'torch' in sys.modules and sys.modules['torch'] is not None)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC, "VISDEX_CACHE_DIR": str(onnx_cache)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(1,", "16)", "False"]
    assert sorted(p.name for p in (onnx_cache / "onnx").iterdir()) == exports  # nothing new exported


def test_int8_gate_keeps_a_drifting_tower_in_fp32():
    from visdex.models.onnx_export import INT8_GATE, _gate_int8

    good, bad = {"mean": 0.999, "min": 0.995, "n": 16}, {"mean": 0.985, "min": 0.96, "n": 16}
    manifest = {"base_fingerprint": {"name": "m"}, "towers": {
        t: {"files": {"onnx": f"{t}.onnx", "onnx-int8": f"{t}.int8.onnx", "int8": f"{t}.int8.onnx"}}
        for t in ("image", "text")}, "quality": {"onnx": {"image": {"mean": 1.0, "min": 1.0, "n": 16},
        "text": {"mean": 1.0, "min": 1.0, "n": 31}}, "onnx-int8": {"image": bad, "text": good}}}  # fmt: skip
    _gate_int8(manifest)
    image, text = manifest["towers"]["image"], manifest["towers"]["text"]
    assert image["files"]["onnx-int8"] == "image.onnx" and "0.9850" in image["int8_gate"]
    assert text["files"]["onnx-int8"] == "text.int8.onnx" and "int8_gate" not in text
    assert manifest["quality"]["onnx-int8"] == {"image": manifest["quality"]["onnx"]["image"], "text": good}
    assert manifest["quality"]["int8-raw"] == {"image": bad}
    assert bad["mean"] < INT8_GATE[0] <= good["mean"]


def test_gated_export_runs_fp32_and_keeps_the_int8_file(tmp_path, monkeypatch, tiny_clip, photos):
    """With a gate no int8 tower can pass, onnx-int8 gives fp32 vectors under its own fingerprint;
    raw_int8 still runs the int8 files (what benchmarks report beside it)."""
    import visdex.models.onnx_export as export

    monkeypatch.setenv("VISDEX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(export, "INT8_GATE", (1.01, 1.01))
    gated = load_embedder(f"onnx-int8:{tiny_clip}")
    assert set(gated.gated) == {"image", "text"} and gated.fingerprint().revision.endswith("+onnx-int8")
    fp32 = load_embedder(f"onnx:{tiny_clip}")
    images = _images(photos, 3)
    np.testing.assert_array_equal(gated.embed_images(images), fp32.embed_images(images))
    np.testing.assert_array_equal(gated.embed_texts(TEXTS), fp32.embed_texts(TEXTS))
    raw = OnnxEmbedder(gated.folder, gated.manifest, backend="onnx-int8", name=gated.name, raw_int8=True)
    assert not raw.gated and raw.quality["image"] == gated.manifest["quality"]["int8-raw"]["image"]
    assert not np.array_equal(raw.embed_images(images), fp32.embed_images(images))


def test_changed_weights_get_a_new_export(onnx_cache, tmp_path, tiny_dinov2):
    from tinymodels import make_tiny_dinov2

    first = load_embedder(f"onnx:{tiny_dinov2}")
    before = set((onnx_cache / "onnx").iterdir())
    other = load_embedder(f"onnx:{make_tiny_dinov2(tmp_path / 'dino-seed1', seed=1)}")
    assert len(set((onnx_cache / "onnx").iterdir()) - before) == 1
    assert other.base_fingerprint.revision != first.base_fingerprint.revision


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` sees when not installed
    with pytest.raises(MissingDependency, match=r"visdex\[onnx\]"):
        load_embedder("onnx-int8:effnet-lite0")


def test_onnx_backend_refuses_a_gpu_device(tiny_clip):
    from visdex.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="CPU"):
        load_embedder(f"onnx-int8:{tiny_clip}", device="cuda")


def test_index_built_with_int8_remembers_its_backend(onnx_cache, tmp_path, folder, tiny_clip, clip_int8):
    path = tmp_path / "ix"
    with open_index(path, model=f"onnx-int8:{tiny_clip}") as ix:
        report = ix.add([folder])
        assert report.new > 5 and report.failed == 0
        assert ix.fingerprint.name == f"onnx-int8:{tiny_clip}" and ix.fingerprint.revision.endswith("+onnx-int8")
    with open_index(path) as ix:  # no --model: the index loads its own backend
        assert isinstance(ix.embedder, OnnxEmbedder) and ix.embedder.backend == "onnx-int8"
        assert len(ix.search("a photo of a cat", k=3)) == 3
    # The torch model is another embedder: it may neither search nor add to this index.
    with open_index(path, model=str(tiny_clip)) as ix, pytest.raises(ModelMismatch, match="onnx-int8"):
        ix.search("a cat")


def test_torch_index_searched_with_an_onnx_text_tower(onnx_cache, tmp_path, folder, tiny_clip, clip_int8):
    path = tmp_path / "ix"
    with open_index(path, model=str(tiny_clip)) as ix:
        ix.add([folder])
        want = ix.search("a red car", k=5)
        fp, n = ix.fingerprint, len(ix)
    fp32 = load_embedder(f"onnx:{tiny_clip}")
    assert query_compatible(fp32, fp)  # measured cosine 1.0
    assert query_compatible(clip_int8, fp) == all(q["min"] >= QUERY_MIN_COSINE for q in clip_int8.quality.values())
    with open_index(path, model=f"onnx:{tiny_clip}") as ix:
        got = ix.search("a red car", k=5)
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-4)
        with pytest.raises(ModelMismatch, match="may search it but not add"):
            ix.add([folder])
        assert len(ix) == n and ix.fingerprint == fp  # nothing written


def test_cli_index_and_search_with_the_int8_backend(onnx_cache, capsys, tmp_path, folder, tiny_clip, clip_int8):
    ix = tmp_path / "ix"
    code, out, err = run_cli(capsys, "index", folder, "--index", ix, "--model", f"onnx-int8:{tiny_clip}", "-q")
    assert code == 0, err
    code, out, err = run_cli(capsys, "status", "--index", ix, "--json")
    assert json.loads(out)["model"] == f"onnx-int8:{tiny_clip}"
    code, out, err = run_cli(capsys, "search", "a cat", "--index", ix, "-n", "2", "--json")
    assert code == 0 and len(out.splitlines()) == 2, err
    code, out, err = run_cli(capsys, "search", "a cat", "--index", ix, "--model", str(tiny_clip))
    assert code == 3 and "error:" in err and "onnx-int8" in err


def test_image_only_onnx_model(onnx_cache, tiny_dinov2, photos):
    emb = load_embedder(f"onnx-int8:{tiny_dinov2}")
    ref = load_embedder(str(tiny_dinov2), device="cpu")
    images = _images(photos, 4)
    assert _cos(emb.embed_images(images), ref.embed_images(images)).min() > 0.99
    assert "text" not in emb.manifest["towers"]
    with pytest.raises(UnsupportedModality):
        emb.embed_texts(["a cat"])


@pytest.mark.slow
def test_siglip_onnx(onnx_cache, tiny_siglip, photos):
    emb = load_embedder(f"onnx-int8:{tiny_siglip}")
    ref = load_embedder(str(tiny_siglip), device="cpu")
    assert emb.manifest["tokenizer"]["padding"] == "max_length"
    assert _cos(emb.embed_texts(TEXTS), ref.embed_texts(TEXTS)).min() > 0.99
    images = _images(photos, 4)
    assert _cos(emb.embed_images(images), ref.embed_images(images)).min() > 0.99


@pytest.mark.slow
def test_siglip2_naflex_is_refused_clearly(onnx_cache, tmp_path):
    from visdex.errors import ModelLoadError

    from tinymodels import make_tiny_siglip2

    with pytest.raises(ModelLoadError, match="NaFlex"):
        load_embedder(f"onnx:{make_tiny_siglip2(tmp_path / 's2')}")


def test_offline_identity_matches_the_torch_fingerprint():
    torch_emb = load_embedder("effnet-lite0", device="cpu")
    assert model_identity("effnet-lite0")["revision"] == torch_emb.fingerprint().revision


@pytest.mark.slow
def test_effnet_int8_on_real_photos(onnx_cache, photos):
    """Real weights, real photos, calibration on synthetic images only: measured mean 0.995."""
    ref = load_embedder("effnet-lite0", device="cpu")
    images = _images(photos, len(photos))
    want = ref.embed_images(images)
    fp32 = load_embedder("onnx:effnet-lite0")
    assert _cos(fp32.embed_images(images), want).min() > 0.9999
    int8 = load_embedder("onnx-int8:effnet-lite0")
    cos = _cos(int8.embed_images(images), want)
    assert cos.mean() >= 0.99 and cos.min() > 0.97
    assert "static" in int8.manifest["towers"]["image"]["int8"]


@pytest.mark.slow
def test_lite0_minilm_int8_search_quality(onnx_cache, tmp_path, folder, photos):
    """The offline text+image model: int8 still finds the kitten and the coffee."""
    assert model_identity("lite0-minilm")["revision"] == load_embedder("lite0-minilm").fingerprint().revision
    with open_index(tmp_path / "ix", model="onnx-int8:lite0-minilm") as ix:
        ix.add([folder])
        assert os.path.basename(ix.search("kitten", k=1)[0].path).startswith("chelsea")
        assert os.path.basename(ix.search("breakfast drink", k=1)[0].path).startswith("coffee")
        assert ix.embedder.quality["text"]["mean"] >= 0.99
