"""The GPU indexing path: big fp16 batches, pinned uint8 transfers, normalisation on the GPU, and
JPEG decoding on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``) when that beats the CPU.

The CPU path never imports this module's torch parts unless the embedder runs on CUDA.

Why each piece:

* uint8 crops cross PCIe, not float32: 4x fewer bytes (a 256-image batch is 38 MB instead of
  154 MB); mean/std normalisation then runs on the GPU, in float32, as on the CPU.
* a pinned (page-locked) staging buffer makes the copy a real asynchronous DMA.
* nvJPEG decodes full-size camera JPEGs faster than a few CPU processes can with libjpeg's draft
  mode; with many CPU cores the CPU wins. :func:`choose_decoder` measures both on the first files.
* GPU decode resizes with torch (bicubic, antialiased), which is close to but not bit-identical
  with Pillow's resize: vectors differ from the CPU-decoded ones by a cosine of about 1e-3. The
  index fingerprint (same model, same preprocessing recipe) stays the same, as it does between
  two Pillow versions.

Nothing here has been measured on a GPU by its author: see the README, "Speed".

>>> batcher = GpuBatcher(load_embedder("clip-vit-b-32", device="cuda"), max_batch=256)   # doctest: +SKIP
>>> batcher(np.zeros((8, 224, 224, 3), np.uint8)).shape                                  # doctest: +SKIP
(8, 512)
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from . import config
from .files import FileInfo
from .models.base import Embedder, Preprocess
from .stages import Decoded, Loaded, decoded, init_worker, load

log = logging.getLogger(__name__)

GPU_BATCH = 256  # images per model batch on a GPU when the user did not choose
GPU_DECODE_BATCH = 64  # JPEGs per nvJPEG call
PROBE_FILES = 24  # files timed by choose_decoder


def is_cuda(embedder: Embedder) -> bool:
    return str(embedder.device).startswith("cuda")


def image_forward(emb: Embedder) -> tuple[Callable, Callable[[np.ndarray], np.ndarray]] | None:
    """(normalised CUDA batch -> raw features, raw features -> final vectors) for a torch embedder, else None.

    The embedder's family adapter supplies it, from the embedder's own forward, so the GPU path computes
    exactly what ``embed_pixels`` does.
    """
    from .models.families import adapter_for

    adapter = adapter_for(emb)
    return adapter.image_forward(emb) if adapter is not None else None


class GpuBatcher:
    """uint8 crops -> vectors on CUDA: pinned staging, async copy, normalise on the GPU, fp16 model.

    Accepts a numpy (n, H, W, 3) uint8 batch (CPU-decoded) or a list of CUDA (H, W, 3) uint8
    tensors (GPU-decoded). ``compile=True`` wraps the forward in ``torch.compile`` (slow first
    batch, faster after; worth it for long runs).
    """

    def __init__(self, embedder: Embedder, max_batch: int = GPU_BATCH, compile: bool = False):
        import torch

        fns = image_forward(embedder)
        if fns is None:
            raise TypeError(f"no GPU forward for {type(embedder).__name__}")
        self.forward, self.post = fns
        if compile:
            self.forward = torch.compile(self.forward, dynamic=False)
        self.embedder, self.device = embedder, torch.device(embedder.device)
        pre = embedder.preprocess
        self.scale = float(pre.rescale)
        self.mean = torch.tensor(pre.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, device=self.device).view(1, 3, 1, 1)
        self.dtype = getattr(embedder, "dtype", torch.float16)
        self.staging = torch.empty((max_batch, pre.size, pre.size, 3), dtype=torch.uint8).pin_memory()

    def __call__(self, batch) -> np.ndarray:
        import torch

        if isinstance(batch, np.ndarray):
            n = len(batch)
            if n > len(self.staging):
                return np.concatenate([self(batch[i : i + len(self.staging)])
                                       for i in range(0, n, len(self.staging))])  # fmt: skip
            self.staging[:n].numpy()[...] = batch
            x = self.staging[:n].to(self.device, non_blocking=True)
        else:
            x = torch.stack(list(batch))
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            x = x.permute(0, 3, 1, 2).float() * self.scale
            x = ((x - self.mean) / self.std).to(self.dtype).contiguous()
            out = self.forward(x).float().cpu().numpy()  # .cpu() waits: the staging buffer is free again
        return self.post(out)


# ---------------------------------------------------------------- JPEG decode on the GPU


def gpu_decode_available() -> bool:
    """torchvision with batched ``decode_jpeg(device="cuda")`` and a CUDA device."""
    try:
        import torch
        import torchvision.io as tio
    except ImportError:
        return False
    return torch.cuda.is_available() and hasattr(tio, "decode_jpeg")


def crop_like_preprocess(img, pre: Preprocess):
    """A decoded (3, H, W) uint8 tensor -> (size, size, 3) uint8, resized and cropped as :class:`Preprocess` does.

    Works on any device (tests run it on the CPU). Same integer size arithmetic as
    ``Preprocess.resize``; bicubic/bilinear with antialiasing, as Pillow filters when shrinking.
    """
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    mode = InterpolationMode.BICUBIC if pre.resample == "bicubic" else InterpolationMode.BILINEAR
    _, h, w = img.shape
    if pre.mode == "squash":
        out = F.resize(img, [pre.size, pre.size], interpolation=mode, antialias=True)
    else:
        nw, nh = (pre.resize_to, int(pre.resize_to * h / w)) if w <= h else (int(pre.resize_to * w / h), pre.resize_to)
        nw, nh = max(pre.size, nw), max(pre.size, nh)
        if (nw, nh) != (w, h):
            img = F.resize(img, [nh, nw], interpolation=mode, antialias=True)
        if getattr(pre, "crop", "floor") == "round":  # torchvision's CenterCrop (OpenCLIP, timm)
            top, left = int(round((nh - pre.size) / 2.0)), int(round((nw - pre.size) / 2.0))
        else:
            top, left = (nh - pre.size) // 2, (nw - pre.size) // 2
        out = img[:, top : top + pre.size, left : left + pre.size]
    return out.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def orient(img, orientation: int | None):
    """Apply an EXIF orientation (1-8) to a (3, H, W) tensor, as ``decode_image`` does with Pillow."""
    import torch

    if orientation == 2:  # FLIP_LEFT_RIGHT
        return img.flip(-1)
    if orientation == 3:  # ROTATE_180
        return img.flip(-1).flip(-2)
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return img.flip(-2)
    if orientation == 5:  # TRANSPOSE
        return img.transpose(-1, -2)
    if orientation == 6:  # ROTATE_270: 90 degrees clockwise
        return torch.rot90(img, -1, (-2, -1))
    if orientation == 7:  # TRANSVERSE = ROTATE_180 of TRANSPOSE
        return img.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:  # ROTATE_90: counter-clockwise
        return torch.rot90(img, 1, (-2, -1))
    return img


@dataclass(slots=True)
class _Head:
    """A JPEG read and parsed on the CPU (bytes, hash, header, EXIF), waiting for the GPU decoder."""

    info: FileInfo
    data: bytes
    hash: str
    width: int
    height: int
    orientation: int
    taken_at: str | None
    camera: str | None


def read_head(info: FileInfo, max_pixels: int | None) -> _Head | None:
    """A :class:`_Head` for a JPEG within ``max_pixels``; None for anything the CPU decoder should handle."""
    import io

    from PIL import Image

    from .decode import content_hash, exif_facts, read_file

    try:
        data = read_file(info.path)
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None
            w, h = im.size
            facts = exif_facts(im)
    except Exception:  # unreadable, a bomb, not an image: the CPU path words the reason
        return None
    if max_pixels is not None and w * h > max_pixels:
        return None
    width, height = (h, w) if facts.orientation in (5, 6, 7, 8) else (w, h)
    return _Head(info, data, content_hash(data), width, height, facts.orientation, facts.taken_at, facts.camera)


def decode_heads(heads: Sequence[_Head], device: str) -> list:
    """nvJPEG-decode many JPEGs in one call; per image a (3, H, W) uint8 tensor or the exception it raised."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [torch.frombuffer(bytearray(h.data), dtype=torch.uint8) for h in heads]
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders for TorchCodec's; they still work and need no extra package
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad file fails the batch call: decode one by one to find it
            out = []
            for r in raw:
                try:
                    out.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=device))
                except RuntimeError as exc:
                    out.append(exc)
            return out


def gpu_stages(embedder: Embedder, batch_size: int | None = None) -> GpuStages | None:
    """The GPU path's ingest stages for a CUDA embedder whose family has a GPU forward; None otherwise.

    An explicit ``batch_size`` (``--batch-size``) or ``VISDEX_BATCH_SIZE`` wins; else the large batches a GPU
    wants (:data:`GPU_BATCH`).
    """
    if not is_cuda(embedder) or image_forward(embedder) is None:
        return None
    chosen = batch_size or (config.get("batch_size") if config.is_set("batch_size") else GPU_BATCH)
    return GpuStages(embedder, chosen, decode=config.get("gpu_decode"), compile=config.get("compile"))


class GpuStages:
    """The ingest stages (:class:`visdex.stages.Stages`) for an embedder on CUDA: optional GPU JPEG decode, and
    :class:`GpuBatcher`.

    ``decode``: ``"auto"`` (measure with :func:`choose_decoder`), ``"gpu"`` or ``"cpu"``.
    """

    def __init__(self, embedder: Embedder, batch_size: int, decode: str = "auto", compile: bool = False):
        self.embedder, self.batch_size = embedder, batch_size
        self.batcher = GpuBatcher(embedder, max_batch=batch_size, compile=compile)
        self.decode = decode if decode in ("gpu", "cpu") else "auto"
        self.chosen: str | None = None

    def embed(self, batch: Sequence[Decoded]) -> np.ndarray | None:
        loaded = [r for r in batch if isinstance(r, Loaded)]
        if not loaded:
            return None
        gpu = [r for r in loaded if not isinstance(r.pixels, np.ndarray)]
        if not gpu:
            return self.batcher(np.stack([r.pixels for r in loaded]))
        import torch

        tensors = [r.pixels if not isinstance(r.pixels, np.ndarray) else torch.from_numpy(r.pixels).to(
            self.batcher.device) for r in loaded]  # fmt: skip
        return self.batcher(tensors)

    def decoded(self, files: Sequence[FileInfo], workers: int) -> Iterator[Decoded]:
        preprocess = self.embedder.preprocess
        choice = self.decode
        if choice == "auto":
            choice = choose_decoder(files, preprocess, workers, str(self.batcher.device))
        self.chosen = choice if gpu_decode_available() else "cpu"
        if self.chosen == "cpu":
            yield from decoded(files, preprocess, workers)
            return
        yield from _gpu_decoded(files, preprocess, workers, config.get("max_pixels"), str(self.batcher.device))


def _gpu_decoded(files: Sequence[FileInfo], pre: Preprocess, workers: int, max_pixels: int | None,
                 device: str) -> Iterator[Decoded]:  # fmt: skip
    """Read + parse on CPU threads one chunk ahead; decode, orient, resize and crop on the GPU."""
    from concurrent.futures import ThreadPoolExecutor

    init_worker(pre, max_pixels)  # for the CPU fallback of non-JPEG files, in this process
    chunks = [list(files[i : i + GPU_DECODE_BATCH]) for i in range(0, len(files), GPU_DECODE_BATCH)]
    with ThreadPoolExecutor(max(2, workers), thread_name_prefix="visdex-read") as readers:
        ahead = readers.map(lambda c: [read_head(f, max_pixels) for f in c], chunks)
        for chunk, heads in zip(chunks, ahead, strict=True):
            jpegs = [h for h in heads if h is not None]
            images = dict(zip((id(h) for h in jpegs), decode_heads(jpegs, device), strict=True)) if jpegs else {}
            for info, head in zip(chunk, heads, strict=True):
                img = images.get(id(head)) if head is not None else None
                if head is None or img is None or isinstance(img, Exception):
                    yield load(info)  # not a JPEG nvJPEG can take: the CPU decoder, with its error messages
                    continue
                pixels = crop_like_preprocess(orient(img, head.orientation), pre)
                yield Loaded(info, head.hash, head.width, head.height, "JPEG", head.taken_at, head.camera, pixels)


def choose_decoder(files: Sequence[FileInfo], pre: Preprocess, workers: int, device: str) -> str:
    """``"gpu"`` if nvJPEG decodes the first JPEGs faster than ``workers`` CPU processes would, else ``"cpu"``.

    The CPU rate is one in-process decoder times ``workers`` (an optimistic estimate for the CPU,
    so the GPU is chosen only when it is clearly faster).
    """
    if not gpu_decode_available():
        return "cpu"
    max_pixels = config.get("max_pixels")
    jpegs = [f for f in files[: 4 * PROBE_FILES] if f.path.lower().endswith((".jpg", ".jpeg"))][:PROBE_FILES]
    if len(jpegs) < 8:
        return "cpu"
    init_worker(pre, max_pixels)
    t0 = time.perf_counter()
    for f in jpegs[:8]:
        load(f)
    cpu_rate = 8 * max(1, workers) / (time.perf_counter() - t0)
    list(_gpu_decoded(jpegs[:2], pre, 1, max_pixels, device))  # warm-up: nvJPEG handles, kernels
    t0 = time.perf_counter()
    n = sum(1 for _ in _gpu_decoded(jpegs, pre, workers, max_pixels, device))
    gpu_rate = n / (time.perf_counter() - t0)
    log.info("decode probe: cpu ~%.0f img/s (%d workers), gpu %.0f img/s", cpu_rate, workers, gpu_rate)
    return "gpu" if gpu_rate > cpu_rate else "cpu"
