"""ONNX Runtime towers: the same models on CPU, faster, with int8 quantisation on request.

A backend is chosen by a prefix on the model name, so an index remembers it like it remembers
the model:

* ``onnx:<model>``      fp32 ONNX Runtime (vectors equal to torch's to float rounding);
* ``onnx-int8:<model>`` int8 weights (MatMul dynamic quantisation for transformers, static
  QOperator for the EfficientNet CNN), several times faster on CPU, slightly different vectors.

``<model>`` is anything :func:`visdex.models.load_embedder` takes: a catalog name, ``hf:<repo>``
or a local directory. The first use exports the model with torch (seconds to a minute) into
``<cache_dir>/onnx/<key>/``, where ``key`` hashes the model's source, weights revision and
preprocessing; later uses load that folder with onnxruntime and tokenizers only — no torch
import, which is most of a cold start.

An ONNX index has its own fingerprint (revision ``<weights>+onnx-int8``): its vectors are not
torch's. One exception, measured not assumed: an index built with the torch model may be
*searched* with an ONNX embedder when the export's recorded cosine to torch is at least
:data:`QUERY_MIN_COSINE` for every probe (see :func:`query_compatible`).

>>> split_backend("onnx-int8:clip-vit-b-32")
('onnx-int8', 'clip-vit-b-32')
>>> emb = load_onnx("effnet-lite0", "onnx-int8")           # doctest: +SKIP
>>> emb.fingerprint().revision[-10:]                       # doctest: +SKIP
'+onnx-int8'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import MissingDependency, ModelLoadError, UnknownModel, UnsupportedModality
from .base import Embedder, Fingerprint, Preprocess, l2_normalize

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_BACKENDS = ("onnx-int8", "onnx")  # longest prefix first
#: An ONNX embedder may answer queries on a torch-built index only if every probe vector of the
#: export stayed at least this close (cosine) to torch's.
QUERY_MIN_COSINE = 0.99
#: ONNX fp32 vectors at least this close to torch's on every probe (cosine) count as the model's own:
#: CPU indexing runs them by default (:func:`load_reference_onnx`) and the index stays the torch model's.
SAME_VECTORS_COSINE = 0.9999
#: The cache key of the fp32-only export (both towers, no int8) that CPU indexing makes.
FP32_VARIANT = {"towers": "fp32"}
_TEXT_BATCH = 64


def split_backend(name: str) -> tuple[str, str]:
    """``"onnx-int8:clip-vit-b-32"`` -> ``("onnx-int8", "clip-vit-b-32")``; no prefix -> ``("torch", name)``.

    >>> split_backend("hf:openai/clip-vit-base-patch32")
    ('torch', 'hf:openai/clip-vit-base-patch32')
    """
    for backend in (*ONNX_BACKENDS, "torch"):
        if name.startswith(backend + ":") and len(name) > len(backend) + 1:
            return backend, name[len(backend) + 1 :]
    return "torch", name


def with_backend(name: str, backend: str | None) -> str:
    """The model name that selects ``backend``; ``torch`` (or None) leaves the name as it is.

    >>> with_backend("effnet-lite0", "onnx-int8")
    'onnx-int8:effnet-lite0'
    """
    current, base = split_backend(name)
    backend = backend or current
    if backend not in BACKENDS:
        raise UnknownModel(f"{backend}:{base}", [f"{b}:<model>" for b in BACKENDS])
    return base if backend == "torch" else f"{backend}:{base}"


def require_onnxruntime():
    """Import onnxruntime, or say how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependency("onnxruntime", extra="onnx", purpose="the onnx and onnx-int8 backends") from exc
    return onnxruntime


# ---------------------------------------------------------------- tokenizer without transformers


class FastTokenizer:
    """Tokenise like the model's transformers tokenizer, with the ``tokenizers`` library alone.

    ``settings`` come from the export's manifest: max_length, padding ("longest" or
    "max_length"), pad id/token, lowercase, and which arrays the graph takes. The export checks
    this gives the same ids as transformers on probe texts before it is used.
    """

    def __init__(self, path: Path, settings: dict):
        from tokenizers import Tokenizer

        self.settings = settings
        self.tok = Tokenizer.from_file(str(path))
        self.tok.no_padding()
        self.tok.no_truncation()
        self.tok.enable_truncation(max_length=int(settings["max_length"]))
        fixed = int(settings["max_length"]) if settings["padding"] == "max_length" else None
        self.tok.enable_padding(pad_id=int(settings["pad_id"]), pad_token=settings["pad_token"], length=fixed)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        texts = [t.lower() for t in texts] if self.settings["lowercase"] else list(texts)
        encs = self.tok.encode_batch(texts)
        arrays = {
            "input_ids": [e.ids for e in encs],
            "attention_mask": [e.attention_mask for e in encs],
            "token_type_ids": [e.type_ids for e in encs],
        }
        return {k: np.asarray(arrays[k], np.int64) for k in self.settings["inputs"]}


class HFTokenizer:
    """Fallback when ``tokenizers`` alone tokenises differently: the saved transformers tokenizer."""

    def __init__(self, folder: Path, settings: dict):
        from transformers import AutoTokenizer

        self.settings = settings
        self.tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        s = self.settings
        texts = [t.lower() for t in texts] if s["lowercase"] else list(texts)
        batch = self.tok(texts, padding="max_length" if s["padding"] == "max_length" else True, truncation=True,
                         max_length=s["max_length"], return_tensors="np")  # fmt: skip
        return {k: np.asarray(batch[k], np.int64) for k in s["inputs"]}


# ---------------------------------------------------------------- the embedder


class OnnxEmbedder(Embedder):
    """One model's towers in ONNX Runtime (CPU), fp32 or int8. Build it with :func:`load_onnx`.

    >>> emb = load_onnx("lite0-minilm", "onnx-int8")           # doctest: +SKIP
    >>> emb.embed_texts(["a kitten"]).shape                    # doctest: +SKIP
    (1, 384)
    """

    def __init__(self, folder: Path, manifest: dict, *, backend: str, name: str, batch_size: int | None = None,
                 threads: int = 0, raw_int8: bool = False, towers: Sequence[str] | None = None):  # fmt: skip
        ort = require_onnxruntime()
        if backend not in ONNX_BACKENDS:
            raise ValueError(f"not an ONNX backend: {backend!r}")
        self.folder, self.manifest, self.backend = Path(folder), manifest, backend
        # raw_int8: every tower in int8, even one the export's quality gate keeps in fp32 (for benchmarks)
        self.raw_int8 = raw_int8 and backend == "onnx-int8"
        self.name = name if split_backend(name)[0] == backend else f"{backend}:{name}"
        self.base_fingerprint = Fingerprint(**manifest["base_fingerprint"])
        self.family = manifest.get("family", "")
        self.dim = int(manifest["dim"])
        self.modalities = frozenset(manifest["modalities"])
        p = dict(manifest["preprocess"])
        p["mean"], p["std"] = tuple(p["mean"]), tuple(p["std"])
        self.preprocess = Preprocess(**p, draft_scale=float(manifest.get("draft_scale", 1.0)))
        self.device = "cpu"
        self.batch_size = batch_size or 32
        self.same_as_model = False  # set by load_reference_onnx: the fingerprint is the torch model's
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = int(threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Text passes are short and come one query at a time: threads that spin-wait between them burn about as
        # much CPU as the pass itself (measured 10 vs 5 ms a query), which a busy server takes from other requests.
        text_so = ort.SessionOptions()
        text_so.log_severity_level, text_so.intra_op_num_threads = 3, int(threads)
        text_so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        text_so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Image batches (threads=0): one single-threaded pass per core, each on its share of the batch, rather than
        # one pass whose ops are split across cores. Same vectors; measured 101-108 vs 125-145 ms CPU an image
        # (CLIP B/32, 2 cores, batch 32): no threads spin-waiting at each op's barrier, which on a machine
        # shared with decode workers (or other jobs) costs CPU and stalls when one thread is descheduled.
        self._lanes = max(1, min(os.cpu_count() or 1, 8)) if int(threads) == 0 else 1
        image_so = so
        if self._lanes > 1:
            image_so = ort.SessionOptions()
            image_so.log_severity_level, image_so.intra_op_num_threads = 3, 1
            image_so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._pool: ThreadPoolExecutor | None = None  # the lanes' threads, made on the first batch that needs them
        self._sessions = {}
        for tower, info in manifest["towers"].items():
            if towers is not None and tower not in towers:  # a text query needs the text tower alone
                continue
            path = self.folder / info["files"]["int8" if self.raw_int8 and "int8" in info["files"] else backend]
            self._sessions[tower] = ort.InferenceSession(str(path), text_so if tower == "text" else image_so,
                                                         providers=["CPUExecutionProvider"])  # fmt: skip
        self._classes = np.load(self.folder / "classes.npy") if (self.folder / "classes.npy").is_file() else None
        self.tokenizer: FastTokenizer | HFTokenizer | None = None
        if "text" in self._sessions:
            settings = manifest["tokenizer"]
            if settings.get("backend") == "tokenizers":
                self.tokenizer = FastTokenizer(self.folder / "tokenizer.json", settings)
            else:
                self.tokenizer = HFTokenizer(self.folder / "tokenizer", settings)

    @property
    def quality(self) -> dict:
        """Cosine of this backend's vectors to torch's on the export's probes: {modality: {mean, min, n}}."""
        quality = self.manifest.get("quality", {})
        return quality.get(self.backend, {}) | (quality.get("int8-raw", {}) if self.raw_int8 else {})

    @property
    def gated(self) -> dict:
        """Towers that ``onnx-int8`` runs in fp32 because int8 drifted too far on the probes: {tower: why}."""
        if self.backend != "onnx-int8" or self.raw_int8:
            return {}
        return {t: info["int8_gate"] for t, info in self.manifest["towers"].items() if info.get("int8_gate")}

    def _run(self, tower: str, feeds: dict) -> np.ndarray:
        return self._sessions[tower].run(None, feeds)[0]

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        name = self.manifest["towers"]["image"]["inputs"][0]
        outs = [self._run_lanes(name, pixels[i : i + self.batch_size]) for i in range(0, len(pixels), self.batch_size)]
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        out = np.concatenate(outs).astype(np.float32)
        return self._conse(out) if self._classes is not None else l2_normalize(out)

    def _run_lanes(self, name: str, batch: np.ndarray) -> np.ndarray:
        """One batch through the image tower, split across the lanes (ONNX Runtime runs a session from several
        threads at once, without the GIL)."""
        lanes = min(self._lanes, len(batch))
        if lanes <= 1:
            return self._run("image", {name: batch})
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self._lanes, thread_name_prefix="visdex-onnx-lane")
        parts = np.array_split(batch, lanes)
        pool = self._pool
        return np.concatenate(list(pool.map(lambda part: self._run("image", {name: part}), parts)))

    def _conse(self, probs: np.ndarray) -> np.ndarray:
        m, classes = self.manifest, self._classes
        if classes is None:
            raise ModelLoadError(f"{self.name}: the ONNX export has no classes.npy for ConSE")
        return conse(probs, classes, int(m.get("conse_top_k", 10)), float(m.get("conse_temperature", 1.0)))

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        step, tokenizer = _TEXT_BATCH, self.tokenizer
        if tokenizer is None:
            raise UnsupportedModality(f"{self.name}: the ONNX export has no text tower")
        outs = [self._run("text", tokenizer(texts[i : i + step])) for i in range(0, len(texts), step)]
        return np.concatenate(outs).astype(np.float32)

    def fingerprint(self) -> Fingerprint:
        base = self.base_fingerprint
        if self.same_as_model:  # measured equal to torch's vectors: the same index, portable to a GPU
            return base
        return Fingerprint(name=self.name, source=base.source, revision=f"{base.revision}+{self.backend}", dim=self.dim,
                           preprocessing=base.preprocessing, modalities=base.modalities)  # fmt: skip


def conse(probs: np.ndarray, class_embeddings: np.ndarray, top_k: int, temperature: float = 1.0) -> np.ndarray:
    """lite0-minilm's image vectors: the probability-weighted mean of the top-k classes' MiniLM vectors.

    ``temperature`` > 1 flattens the weights (``p ** (1 / T)``, i.e. softmax(logits / T), renormalised over the
    top k); 1.0 is plain ConSE. One rule for ``Lite0MiniLMEmbedder.embed_pixels`` and the runtimes that compute
    the class probabilities elsewhere (ONNX, the GPU path).

    >>> conse(np.array([[0.8, 0.2]], np.float32), np.eye(2, dtype=np.float32), top_k=2, temperature=2.0).round(3)
    array([[0.894, 0.447]], dtype=float32)
    """
    k = min(int(top_k), probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    weights = np.take_along_axis(probs, top, axis=1)
    if temperature != 1.0:
        weights = weights ** (1.0 / float(temperature))
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)  # ConSE renormalises over the top k
    return l2_normalize(np.einsum("nk,nkd->nd", weights, class_embeddings[top]))


def query_compatible(emb: Embedder, fp: Fingerprint) -> bool:
    """May ``emb`` answer queries on an index whose vectors were made by ``fp``?

    True when ``emb`` makes those very vectors (same fingerprint), or when it is an ONNX export of
    that model whose every recorded probe cosine to torch is at least :data:`QUERY_MIN_COSINE`.
    Never enough to *add* vectors to such an index: those must come from the index's own model.

    >>> query_compatible(load_onnx("clip-vit-b-32", "onnx-int8"), index.fingerprint)   # doctest: +SKIP
    True
    """
    if emb.fingerprint().compatible(fp):
        return True
    if not isinstance(emb, OnnxEmbedder) or not emb.base_fingerprint.compatible(fp):
        return False
    quality = emb.quality
    return bool(quality) and all(q["min"] >= QUERY_MIN_COSINE for q in quality.values())


def quality_note(emb: Embedder) -> str:
    """One line saying how close an ONNX embedder's vectors are to torch's, for error messages and logs."""
    if not isinstance(emb, OnnxEmbedder) or not emb.quality:
        return ""
    parts = [f"{m} cosine mean {q['mean']:.4f}, min {q['min']:.4f}" for m, q in sorted(emb.quality.items())]
    return f"{emb.backend} vs torch on the export's probes: " + "; ".join(parts)


# ---------------------------------------------------------------- where an export lives


def model_identity(base_name: str) -> dict:
    """Source, weights revision and preprocessing inputs of a model, without loading it (and without torch).

    ``revision`` is ``"unknown"`` for a hub model not downloaded yet. The model's family adapter decides.
    """
    from . import resolve_family

    adapter, ref = resolve_family(base_name)
    return adapter.identity(ref)


def export_folder(identity: dict) -> Path:
    """``<cache_dir>/onnx/<key>``: the key hashes the identity and the export format version."""
    from .hf import cache_dir
    from .onnx_export import FORMAT_VERSION

    key = hashlib.sha256(json.dumps({**identity, "format": FORMAT_VERSION}, sort_keys=True).encode()).hexdigest()
    return cache_dir() / "onnx" / key[:20]


def read_manifest(folder: Path, identity: dict) -> dict | None:
    """The manifest of the export in ``folder`` when it was made from ``identity``; None if absent or stale."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("identity") == json.loads(json.dumps(identity)) else None


def load_onnx(base_name: str, backend: str = "onnx-int8", device: str = "auto", batch_size: int | None = None,
              threads: int = 0) -> OnnxEmbedder:  # fmt: skip
    """``base_name`` (catalog name, ``hf:<repo>`` or a local directory) on ONNX Runtime, exporting it once.

    >>> load_onnx("effnet-lite0", "onnx-int8").dim               # doctest: +SKIP
    1280
    """
    require_onnxruntime()
    if device not in ("auto", "cpu"):
        raise ModelLoadError(f"the {backend} backend runs on the CPU, not {device!r}; on a GPU use the torch backend "
                             f"(model name without the '{backend}:' prefix)")  # fmt: skip
    identity = model_identity(base_name)
    emb = None
    if identity["revision"] == "unknown":  # a hub model not downloaded yet: load it (downloads), then key it
        from . import load_embedder

        emb = load_embedder(base_name, device="cpu")
        identity = model_identity(base_name)
    folder = export_folder(identity)
    manifest = read_manifest(folder, identity)
    if manifest is None:
        _require_export_tools()
        from .onnx_export import export_onnx

        log.info("exporting %s to ONNX into %s (once)", base_name, folder)
        manifest = export_onnx(base_name, folder, identity, emb=emb)
    return OnnxEmbedder(folder, manifest, backend=backend, name=f"{backend}:{base_name}", batch_size=batch_size,
                        threads=threads)  # fmt: skip


def load_reference_onnx(base_name: str, emb: Embedder | None = None, *, export: bool = True,
                        batch_size: int | None = None) -> OnnxEmbedder | None:  # fmt: skip
    """``base_name``'s towers in fp32 ONNX Runtime, standing in for the torch model: same fingerprint, vectors
    equal to torch's (checked: every probe's cosine >= :data:`SAME_VECTORS_COSINE`), faster on a CPU.

    Uses a cached export (full or fp32-only); else, with ``export``, makes the fp32-only one (``emb``: the
    torch model if it is loaded). ``None`` when there is none, or when the export's vectors are not close
    enough -- the caller then runs the torch model.

    >>> ref = load_reference_onnx("clip-vit-b-32")                                    # doctest: +SKIP
    >>> ref.fingerprint() == load_embedder("clip-vit-b-32").fingerprint()              # doctest: +SKIP
    True
    """
    require_onnxruntime()
    identity = model_identity(base_name)
    if identity["revision"] == "unknown":
        return None
    found = None
    for ident in (identity, {**identity, **FP32_VARIANT}):
        manifest = read_manifest(export_folder(ident), ident)
        if manifest is not None and "image" in manifest.get("towers", {}):
            found = (export_folder(ident), manifest)
            break
    if found is None:
        if not export:
            return None
        _require_export_tools()
        from .onnx_export import export_onnx

        ident = {**identity, **FP32_VARIANT}
        log.info("exporting %s to ONNX (fp32) into %s (once)", base_name, export_folder(ident))
        found = (export_folder(ident), export_onnx(base_name, export_folder(ident), ident, emb=emb, int8=False))
    onnx_emb = OnnxEmbedder(found[0], found[1], backend="onnx", name=base_name, batch_size=batch_size)
    quality = onnx_emb.quality
    if not quality or any(q["min"] < SAME_VECTORS_COSINE for q in quality.values()):
        log.info("%s: ONNX fp32 vectors differ from torch's (%s); indexing runs torch", base_name,
                 quality_note(onnx_emb))  # fmt: skip
        return None
    onnx_emb.same_as_model = True
    return onnx_emb


def _require_export_tools() -> None:
    for module, package in (("onnx", "onnx"), ("onnxscript", "onnxscript")):
        try:
            __import__(module)
        except ImportError as exc:
            raise MissingDependency(package, extra="onnx", purpose="exporting models to ONNX") from exc
