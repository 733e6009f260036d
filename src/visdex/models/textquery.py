"""Fast text queries: the text tower alone, on ONNX Runtime, without importing torch or transformers.

A text search needs the tokenizer and the text tower, nothing else; importing torch and
transformers and building the whole model is most of a cold ``visdex search`` (seconds to a
minute on a laptop). So a text-capable model's text tower is exported once to ONNX (fp32: the
vectors equal torch's to float rounding, and the export records that cosine on probe texts) and
cached by the model's identity (source, weights hash, preprocessing) under
``<cache_dir>/onnx/``; later queries load it with ``tokenizers`` + ``onnxruntime`` only.

The export happens where the model is loaded anyway: at the end of ``visdex index`` (see
:meth:`visdex.api.Index.prepare_text_queries`) or, for an index made before this existed, in the
background after the first text search that had to load torch. Without the ``onnx`` extra, or
with ``VISDEX_QUERY_EXPORT=off``, text queries simply use the model itself.

A one-shot process (``visdex search``) would still spend half a second making the ONNX Runtime
session: parsing 250 MB of weights out of the protobuf, optimising the graph, re-packing the MatMul
weights. So each text graph also gets a query-ready copy (:func:`query_graph`, made once, next to
the export): optimised once, its weights in an external file that ONNX Runtime maps instead of
copying. A one-shot session loads it with no optimisation and no re-packing, on one thread: about
0.03 s of CPU instead of 0.55 s, the same vectors (checked when the copy is made).

>>> emb = fast_text_embedder("clip-vit-b-32", index.fingerprint)    # doctest: +SKIP
>>> emb.embed_texts(["a dog on a beach"]).shape                     # doctest: +SKIP
(1, 512)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from ..errors import VisdexError
from .base import Embedder, Fingerprint
from .onnx import OnnxEmbedder

log = logging.getLogger(__name__)

#: The key that separates a text-only export's cache folder from the full ``onnx:`` export's.
TEXT_ONLY = {"towers": "text"}


def _onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "tokenizers"))


def _export_tools_available() -> bool:
    import importlib.util

    return _onnx_available() and all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))


def _base_and_backend(model_name: str) -> tuple[str, str]:
    from .onnx import split_backend

    return split_backend(model_name)


def _candidates(model_name: str) -> list[tuple[Path, dict, str]]:
    """(folder, identity, backend) of the exports that could answer text queries for ``model_name``, best first."""
    from .onnx import FP32_VARIANT, export_folder, model_identity

    backend, base = _base_and_backend(model_name)
    identity = model_identity(base)
    if identity["revision"] == "unknown":  # a hub model never downloaded here: nothing was exported either
        return []
    full = (export_folder(identity), identity, "onnx" if backend == "torch" else backend)
    if backend != "torch":  # an onnx / onnx-int8 index: its own export's text tower, whatever it is
        return [full]
    fp32, text = {**identity, **FP32_VARIANT}, {**identity, **TEXT_ONLY}  # CPU indexing's export has a text tower
    return [full, (export_folder(fp32), fp32, "onnx"), (export_folder(text), text, "onnx")]


def _text_exports(model_name: str):
    """(folder, manifest, backend) of each cached export whose text tower could answer ``model_name``'s queries,
    best first (reads manifests, loads nothing)."""
    from .onnx import read_manifest

    for folder, identity, backend in _candidates(model_name):
        manifest = read_manifest(folder, identity)
        if manifest is not None and backend in manifest.get("towers", {}).get("text", {}).get("files", {}):
            yield folder, manifest, backend


def fast_text_embedder(model_name: str, fp: Fingerprint | None, *, one_shot: bool = False) -> Embedder | None:
    """The cached ONNX text tower of ``model_name`` if one was exported and may answer queries on an index
    made by ``fp``; ``None`` otherwise (the caller loads the model itself). Never imports torch.

    ``one_shot``: tuned for a process that answers a query or two and exits (the CLI): the session starts in
    a few hundredths of a second, each forward pass is a little slower (weights not re-packed, one thread)."""
    from .. import config

    if fp is None or "text" not in fp.modalities or config.get("query_export") != "auto" or not _onnx_available():
        return None
    from .onnx import query_compatible

    try:
        exports = list(_text_exports(model_name))
    except (VisdexError, OSError) as exc:
        log.debug("no fast text path for %s: %s", model_name, exc)
        return None
    for folder, manifest, backend in exports:
        name = f"{backend}:{_base_and_backend(model_name)[1]}"
        emb = QueryTextEmbedder(folder, manifest, backend=backend, name=name, one_shot=one_shot)
        if query_compatible(emb, fp):
            return emb
    return None


def has_fast_text(model_name: str, *, ready: bool = False) -> bool:
    """Whether a text-tower export for ``model_name`` is cached (cheap: reads manifests, loads nothing);
    ``ready``: and its query-ready copy (:func:`query_graph`) is made too."""
    try:
        for folder, manifest, backend in _text_exports(model_name):
            return not ready or query_graph(folder, _text_graph_file(manifest, backend), make=False) is not None
    except (VisdexError, OSError):
        pass
    return False


def prepare_query_graph(model_name: str) -> Path | None:
    """Make the query-ready copy of the text graph that ``model_name``'s text queries will use (once)."""
    try:
        for folder, manifest, backend in _text_exports(model_name):
            return query_graph(folder, _text_graph_file(manifest, backend))
    except (VisdexError, OSError):
        pass
    return None


def _text_graph_file(manifest: dict, backend: str) -> str:
    return manifest["towers"]["text"]["files"][backend]


def _new_session(ort, path: Path, *, optimised: bool, one_shot: bool):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if optimised
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)  # fmt: skip
    if one_shot:
        # Re-packing the MatMul weights costs ~0.18 s of CPU at start to save ~0.02 s a forward pass; and a
        # thread pool (whose threads spin between ops) costs more than it saves on one short query.
        so.add_session_config_entry("session.disable_prepacking", "1")
        so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class QueryTextEmbedder(OnnxEmbedder):
    """An export's text tower alone, for queries, loaded from its query-ready copy (:func:`query_graph`)
    when it can be made, else from the export itself."""

    def __init__(self, folder: Path, manifest: dict, *, backend: str, name: str, one_shot: bool = False):
        from .onnx import require_onnxruntime

        super().__init__(folder, manifest, backend=backend, name=name, towers=())  # the text session is ours
        ort = require_onnxruntime()
        self.tokenizer = _tokenizer(self.folder, manifest)
        original = self.folder / _text_graph_file(manifest, backend)
        graph = query_graph(self.folder, original.name, tokenizer=self.tokenizer)
        self._sessions["text"] = _new_session(ort, graph or original, optimised=graph is not None,
                                              one_shot=one_shot)  # fmt: skip
        self.query_graph = graph


def _tokenizer(folder: Path, manifest: dict):
    from .onnx import FastTokenizer, HFTokenizer

    settings = manifest["tokenizer"]
    if settings.get("backend") == "tokenizers":
        return FastTokenizer(folder / "tokenizer.json", settings)
    return HFTokenizer(folder / "tokenizer", settings)


#: The query-ready copies of an export's text graphs: ``<export>/query/<graph stem>-ort<version>/``.
QUERY_DIR = "query"
#: A query-ready copy is used only if its outputs equal the export's to this cosine on probe inputs.
QUERY_GRAPH_MIN_COSINE = 0.99999


def query_graph(folder: Path, file: str, *, make: bool = True, tokenizer=None) -> Path | None:
    """The query-ready copy of the ONNX graph ``folder/file``: graph optimisations applied once (the portable
    level, ``ORT_ENABLE_EXTENDED``) and every weight in an external file, which ONNX Runtime maps into memory
    rather than parsing it out of the protobuf. Made on first use (a second or two; ``make=False``: never),
    kept only if it gives the export's outputs; ``None`` when it cannot be made (a read-only cache, an
    ONNX Runtime error). Keyed by the ONNX Runtime version, whose fused operators it may contain.
    ``tokenizer``: the export's (made from its manifest when not given), for the probe texts."""
    from .onnx import require_onnxruntime

    version = require_onnxruntime().__version__  # (importlib.metadata would scan every installed package)
    target = folder / QUERY_DIR / f"{Path(file).stem}-ort{version}"
    graph = target / "graph.onnx"
    if graph.is_file() or not make:
        return graph if graph.is_file() else None
    try:
        if tokenizer is None:
            tokenizer = _tokenizer(folder, json.loads((folder / "manifest.json").read_text()))
        return _make_query_graph(folder / file, target, [tokenizer(texts) for texts in PROBE_TEXTS])
    except Exception as exc:  # noqa: BLE001 -- an optional speed-up: the export itself still answers
        log.debug("no query-ready copy of %s: %s", folder / file, exc)
        return None


def _make_query_graph(source: Path, target: Path, probes: list[dict]) -> Path | None:
    import shutil
    import tempfile

    from .onnx import require_onnxruntime

    ort = require_onnxruntime()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(tmp / "graph.onnx")
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "graph.onnx.data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        reference = ort.InferenceSession(str(source), so, providers=["CPUExecutionProvider"])
        copy = _new_session(ort, tmp / "graph.onnx", optimised=True, one_shot=True)
        cosine = _agreement(reference, copy, probes)
        if cosine < QUERY_GRAPH_MIN_COSINE:
            log.warning("the query-ready copy of %s drifted (cosine %.6f): not used", source, cosine)
            return None
        del reference, copy
        with contextlib.suppress(OSError):  # another process made it first: use its copy
            os.replace(tmp, target)
        for old in target.parent.iterdir():  # copies for other ONNX Runtime versions: no longer loadable here
            if old.is_dir() and old.name != target.name and old.name.startswith(source.stem + "-ort"):
                shutil.rmtree(old, ignore_errors=True)
        return target / "graph.onnx" if (target / "graph.onnx").is_file() else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: Batches of probe texts for a query-ready copy's check: short, long, padded.
PROBE_TEXTS = [["a dog on a beach"], ["x", "two cats sleeping on a red sofa in the afternoon sun, 2021"],
               ["snow-covered mountains at sunset " * 12]]  # fmt: skip


def _agreement(a, b, probes: list[dict]) -> float:
    """The lowest cosine between two text sessions' outputs on the probe batches (tokenised feeds)."""
    import numpy as np

    worst = 1.0
    for feeds in probes:
        x, y = a.run(None, feeds)[0], b.run(None, feeds)[0]
        x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
        cos = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-30)
        worst = min(worst, float(cos.min()))
    return worst


def export_text_tower(model_name: str, emb: Embedder | None = None) -> Path | None:
    """Export ``model_name``'s text tower (fp32 ONNX + tokenizer) into the cache, once; returns its folder.

    ``emb``: the model already loaded (saves loading it again). ``None`` when the model has no text tower,
    is already exported, or the ONNX tools are not installed.
    """
    backend, base = _base_and_backend(model_name)
    if backend != "torch" or not _export_tools_available():
        return None  # an onnx: model's own export (made when it was loaded) has its text tower already
    if emb is not None and not emb.supports_text:
        return None
    from .onnx import OnnxEmbedder, export_folder, model_identity, read_manifest
    from .onnx_export import export_onnx

    identity = {**model_identity(base), **TEXT_ONLY}
    folder = export_folder(identity)
    if has_fast_text(model_name):
        prepare_query_graph(model_name)  # an export made before query-ready copies existed: copied now
        return None
    if isinstance(emb, OnnxEmbedder):
        emb = None  # the export traces the torch model
    if emb is None:
        from . import load_embedder

        emb = load_embedder(base, device="cpu")
        if not emb.supports_text:
            return None
    if emb.device != "cpu":
        from . import load_embedder

        emb = load_embedder(base, device="cpu")  # the export traces on the CPU
    export_onnx(base, folder, identity, emb=emb, text_only=True)
    if read_manifest(folder, identity) is None:
        return None
    prepare_query_graph(model_name)
    return folder


def export_in_background(model_name: str) -> subprocess.Popen | None:
    """Start ``python -m visdex.models.textquery MODEL`` detached, at low priority, so that the next text
    query is fast; the current command does not wait for it. ``None`` when switched off or not possible."""
    from .. import config

    if config.get("query_export") != "auto" or not _export_tools_available():
        return None
    if _base_and_backend(model_name)[0] != "torch" or has_fast_text(model_name):
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "visdex.models.textquery", model_name],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal does not reach it; it outlives this command
            env={**os.environ, "VISDEX_QUERY_EXPORT": "off"},
        )  # fmt: skip
    except OSError as exc:
        log.debug("could not start the text tower export: %s", exc)
        return None


def _main(argv: list[str]) -> int:
    """``python -m visdex.models.textquery MODEL``: the background export (quiet, low priority)."""
    if len(argv) != 1:
        sys.stderr.write("usage: python -m visdex.models.textquery MODEL\n")
        return 2
    with contextlib.suppress(OSError):  # lower priority: the user's next command comes first
        os.nice(10)
    with _export_lock(argv[0]) as mine:
        if not mine:  # searches made while an export runs each start one: the first does the work
            return 0
        try:
            export_text_tower(argv[0])
        except VisdexError as exc:
            log.debug("text tower export of %s failed: %s", argv[0], exc)
            return 1
    return 0


@contextlib.contextmanager
def _export_lock(model_name: str):
    """Yields whether this process holds the background export lock of ``model_name`` (an flock, released
    when the process dies); True when no lock file can be made (the export then simply runs)."""
    import hashlib

    from .hf import cache_dir

    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): the export simply runs
        yield True
        return
    path = cache_dir() / "onnx" / f".export-{hashlib.sha256(model_name.encode()).hexdigest()[:16]}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
