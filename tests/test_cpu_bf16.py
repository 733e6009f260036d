"""bfloat16 forward passes on CPUs with AMX: chosen by ``cpu_backend`` and the CPU, close to fp32, fp32 on request.

The speed is measured by ``benchmarks/peers.py`` (side by side with rclip); these tests check the choice and
that the vectors stay where fp32 puts them -- on the tiny random CLIP and on EfficientNet-Lite0's real weights
over real photos.
"""

from __future__ import annotations

import numpy as np
import pytest

from visdex.models import load_embedder
from visdex.models.families.base import cpu_bf16_default, cpu_has_amx_bf16, full_precision, uses_cpu_bf16


def test_amx_is_read_from_the_cpu_flags(tmp_path, cpu_flags):
    assert cpu_has_amx_bf16(cpu_flags("amx_tile amx_bf16 amx_int8")) is True
    assert cpu_has_amx_bf16(cpu_flags("avx512_bf16 amx_tile")) is False  # bf16 dot products only
    assert cpu_has_amx_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize(
    ("setting", "flags", "want"),
    [
        ("torch", "amx_bf16", False),
        ("onnx", "amx_bf16", False),
        ("bf16", "avx2", True),
        ("auto", "amx_tile amx_bf16 avx512_bf16", True),
        ("auto", "avx2", False),
        # AVX-512 BF16 without AMX (Zen 4/5, Cooper Lake) stays fp32: emulated there, torch's bf16 ViT-B/32 ran
        # at 0.64x its fp32 speed (benchmarks/results/cpu-isa.json)
        ("auto", "avx512_bf16 avx512_vnni", False),
        ("auto", "avx512_vnni", False),
    ],
)
def test_the_setting_and_the_cpu_choose_bf16(monkeypatch, setting, flags, want, cpu_flags):
    monkeypatch.setenv("VISDEX_CPU_BACKEND", setting)
    cpu_flags(flags)
    assert cpu_bf16_default() is want


def test_onnx_export_is_not_wanted_where_bf16_runs(monkeypatch, cpu_flags):
    from visdex.api import _cpu_onnx_wanted

    cpu_flags("amx_bf16")
    monkeypatch.setenv("VISDEX_CPU_BACKEND", "auto")
    assert not _cpu_onnx_wanted("clip-vit-b-32", "cpu", 1000)  # torch bf16 is the faster path there
    cpu_flags("avx512_bf16 avx512_vnni")
    assert _cpu_onnx_wanted("clip-vit-b-32", "cpu", 1000)  # no AMX: fp32 ONNX Runtime beat torch's bf16
    monkeypatch.setenv("VISDEX_CPU_BACKEND", "onnx")
    assert _cpu_onnx_wanted("clip-vit-b-32", "cpu", 1000)


def test_bad_backend_setting_is_a_clear_error(monkeypatch):
    from visdex import config
    from visdex.errors import BadSetting

    monkeypatch.setenv("VISDEX_CPU_BACKEND", "fp8")
    with pytest.raises(BadSetting, match="VISDEX_CPU_BACKEND.*auto, onnx, torch or bf16"):
        config.get("cpu_backend")


def _pixels(emb, photos, n: int = 6) -> np.ndarray:
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in list(photos.values())[:n]]
    return emb.preprocess.batch(images)


def test_bf16_vectors_stay_close_to_fp32_on_a_transformer(monkeypatch, tiny_clip, photos):
    monkeypatch.setenv("VISDEX_CPU_BACKEND", "bf16")
    emb = load_embedder(str(tiny_clip), device="cpu")
    assert uses_cpu_bf16(emb)
    pixels = _pixels(emb, photos)
    fast = emb.embed_pixels(pixels)
    with full_precision(emb):
        assert not uses_cpu_bf16(emb)
        exact = emb.embed_pixels(pixels)
    assert uses_cpu_bf16(emb)  # restored
    cos = np.sum(fast * exact, axis=1)
    assert not np.array_equal(fast, exact)  # bf16 really ran
    assert cos.min() >= 0.999, cos


def test_bf16_keeps_real_weights_neighbours_on_real_photos(monkeypatch, photos):
    """EfficientNet-Lite0's real weights (a CNN: the larger bf16 drift) on scikit-image's photos: every vector
    within a cosine of 0.99 of fp32 and every photo's nearest neighbour unchanged."""
    monkeypatch.setenv("VISDEX_CPU_BACKEND", "bf16")
    emb = load_embedder("effnet-lite0", device="cpu")
    pixels = _pixels(emb, photos, n=len(photos))
    fast = emb.embed_pixels(pixels)
    with full_precision(emb):
        exact = emb.embed_pixels(pixels)
    cos = np.sum(fast * exact, axis=1)
    assert not np.array_equal(fast, exact)
    assert cos.min() >= 0.99, cos

    def neighbours(v):
        sims = v @ v.T
        np.fill_diagonal(sims, -2)
        return sims.argmax(axis=1)

    assert (neighbours(fast) == neighbours(exact)).all()


def test_auto_keeps_the_offline_cnns_in_fp32(monkeypatch, tiny_clip, cpu_flags):
    """On an AMX CPU, auto runs transformers in bf16 but not the offline CNNs (their vectors drift more);
    forcing bf16 runs both."""
    from visdex.api import _cpu_onnx_wanted

    cpu_flags("amx_bf16")
    monkeypatch.setenv("VISDEX_CPU_BACKEND", "auto")
    cnn, vit = load_embedder("effnet-lite0", device="cpu"), load_embedder(str(tiny_clip), device="cpu")
    assert uses_cpu_bf16(vit) and not uses_cpu_bf16(cnn)
    assert _cpu_onnx_wanted("lite0-minilm", "cpu", 1000)  # its fp32 ONNX towers stay the fast path
    monkeypatch.setenv("VISDEX_CPU_BACKEND", "bf16")
    assert uses_cpu_bf16(cnn)
    with full_precision(cnn):
        assert not uses_cpu_bf16(cnn)


def test_auto_runs_timm_and_openclip_vits_in_bf16_and_their_cnns_in_fp32(monkeypatch, tmp_path, cpu_flags):
    from tinymodels import make_tiny_openclip, make_tiny_timm

    cpu_flags("amx_bf16")
    monkeypatch.setenv("VISDEX_CPU_BACKEND", "auto")
    vit = load_embedder(str(make_tiny_timm(tmp_path / "vit", arch="test_vit")), device="cpu")
    cnn = load_embedder(str(make_tiny_timm(tmp_path / "cnn", arch="test_resnet")), device="cpu")
    clip = load_embedder(str(make_tiny_openclip(tmp_path / "oc")), device="cpu")
    assert uses_cpu_bf16(vit) and not uses_cpu_bf16(cnn) and uses_cpu_bf16(clip)
