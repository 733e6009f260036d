"""The GPU indexing path. Its decode/crop pieces run on any torch device, so they are tested on the
CPU here; the CUDA tests (``-m gpu``) check the whole path on a real GPU against the CPU path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visdex import config, gpu, ingest, open_index, stages
from visdex.decode import decode_image
from visdex.files import FileInfo
from visdex.models.base import HALF, Preprocess

from imagefactory import real_photos, write_bad_files, write_photo

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

PRE_SHORT = Preprocess(size=224, resize_to=256, mode="shortest", mean=HALF, std=HALF)
PRE_SQUASH = Preprocess(size=64, resize_to=64, mode="squash", mean=HALF, std=HALF, resample="bilinear")


def _chw(img: Image.Image):
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow(orientation):
    from visdex.decode import _ORIENTATION_FIX

    img = Image.fromarray(real_photos()["chelsea"][:120, :200])
    want = img.transpose(_ORIENTATION_FIX[orientation]) if orientation in _ORIENTATION_FIX else img
    got = gpu.orient(_chw(img), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, np.asarray(want))


@pytest.mark.parametrize("pre", [PRE_SHORT, PRE_SQUASH], ids=["shortest", "squash"])
def test_tensor_crop_is_close_to_pillow(pre):
    img = Image.fromarray(real_photos()["astronaut"][:400, :300])
    want = pre.to_uint8(img).astype(np.float32)
    got = gpu.crop_like_preprocess(_chw(img), pre).numpy()
    assert got.shape == (pre.size, pre.size, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(np.float32) - want).mean() < 2.0  # resize kernels differ slightly, not the geometry


def test_read_head_parses_header_and_exif(tmp_path):
    arr = real_photos()["coffee"][:200, :300]
    p = write_photo(tmp_path, "r", arr, exif_orientation=6, exif_datetime="2021-07-04T12:34:56", make="Canon",
                    model="EOS")  # fmt: skip
    info = FileInfo(str(p), str(tmp_path), p.stat().st_size, p.stat().st_mtime)
    head = gpu.read_head(info, max_pixels=None)
    dec = decode_image(p)
    assert (head.width, head.height) == (dec.width, dec.height) == (200, 300)
    assert head.orientation == 6 and head.taken_at == dec.taken_at and head.camera == dec.camera
    assert gpu.read_head(info, max_pixels=100) is None  # too big: left to the CPU decoder's message
    png = write_photo(tmp_path, "p", arr, fmt="PNG")
    assert gpu.read_head(FileInfo(str(png), str(tmp_path), 1, 0.0), None) is None


def test_tensor_decode_path_matches_the_cpu_path(tmp_path, tiny_clip):
    """The GPU decode route, run on the CPU device: same order, same failures, vectors within 1e-3."""
    from visdex.models import load_embedder

    arrays = list(real_photos().values())
    paths = [write_photo(tmp_path, f"img{i}", arrays[i], exif_orientation=1 + i % 8) for i in range(8)]
    paths += sorted(write_bad_files(tmp_path).values())
    infos = [FileInfo(str(p), str(tmp_path), 0, 0.0) for p in paths]
    emb = load_embedder(str(tiny_clip), device="cpu")
    cpu = list(stages.decoded(infos, emb.preprocess, 1))
    tensor = list(gpu._gpu_decoded(infos, emb.preprocess, 2, config.get("max_pixels"), "cpu"))
    assert [r.info.path for r in tensor] == [r.info.path for r in cpu]
    assert [type(r).__name__ for r in tensor] == [type(r).__name__ for r in cpu]
    pairs = [(a, b) for a, b in zip(cpu, tensor, strict=True) if isinstance(a, stages.Loaded)]
    for a, b in pairs:
        assert (a.width, a.height, a.hash, a.taken_at) == (b.width, b.height, b.hash, b.taken_at)
    va = emb.embed_pixels(emb.preprocess.normalize(np.stack([a.pixels for a, _ in pairs])))
    vb = emb.embed_pixels(emb.preprocess.normalize(np.stack([np.asarray(b.pixels) for _, b in pairs])))
    assert np.sum(va * vb, axis=1).min() > 0.99


def test_cpu_embedders_never_take_the_gpu_path(tiny_clip):
    from visdex.models import load_embedder

    emb = load_embedder(str(tiny_clip), device="cpu")
    assert gpu.gpu_stages(emb, None) is None
    cpu = ingest.stages_for(emb)
    assert isinstance(cpu, stages.CpuStages) and cpu.batch_size == config.get("batch_size")
    assert ingest.stages_for(emb, 7).batch_size == 7


# ---------------------------------------------------------------- on a CUDA GPU


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_gpu_ingest_matches_cpu_vectors(tmp_path, folder, tiny_clip, monkeypatch, decode):
    monkeypatch.setenv("VISDEX_GPU_DECODE", decode)
    vecs = {}
    for device in ("cpu", "cuda"):
        with open_index(tmp_path / device, model=str(tiny_clip), device=device) as ix:
            report = ix.add([folder])
            assert report.failed == 0
            rows = ix.db.conn.execute("SELECT path, id FROM files ORDER BY path").fetchall()
            vecs[device] = ix.store.get([i for _, i in rows])
    cos = np.sum(vecs["cpu"] * vecs["cuda"], axis=1)
    assert cos.min() > (0.999 if decode == "cpu" else 0.99)


@pytest.mark.gpu
@needs_cuda
def test_gpu_batcher_equals_embed_pixels(tiny_clip):
    from visdex.models import load_embedder

    emb = load_embedder(str(tiny_clip), device="cuda")
    crops = np.stack([emb.preprocess.to_uint8(Image.fromarray(a)) for a in real_photos().values()])
    got = gpu.GpuBatcher(emb, max_batch=4)(crops)  # more images than the staging buffer holds
    want = emb.embed_pixels(emb.preprocess.normalize(crops))
    assert got.shape == want.shape and np.sum(got * want, axis=1).min() > 0.999


@pytest.mark.gpu
@needs_cuda
def test_gpu_batches_are_large_unless_the_user_chose_a_size(tiny_clip, monkeypatch):
    from visdex.models import load_embedder

    emb = load_embedder(str(tiny_clip), device="cuda")
    monkeypatch.delenv("VISDEX_BATCH_SIZE", raising=False)
    assert gpu.gpu_stages(emb).batch_size == gpu.GPU_BATCH
    monkeypatch.setenv("VISDEX_BATCH_SIZE", "32")  # the setting's default, but chosen: it wins
    assert gpu.gpu_stages(emb).batch_size == 32
    assert gpu.gpu_stages(emb, 8).batch_size == 8
