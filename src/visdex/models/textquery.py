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

>>> emb = fast_text_embedder("clip-vit-b-32", index.fingerprint)    # doctest: +SKIP
>>> emb.embed_texts(["a dog on a beach"]).shape                     # doctest: +SKIP
(1, 512)
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from ..errors import VisdexError
from .base import Embedder, Fingerprint

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


def fast_text_embedder(model_name: str, fp: Fingerprint | None) -> Embedder | None:
    """The cached ONNX text tower of ``model_name`` if one was exported and may answer queries on an index
    made by ``fp``; ``None`` otherwise (the caller loads the model itself). Never imports torch."""
    from .. import config

    if fp is None or "text" not in fp.modalities or config.get("query_export") != "auto" or not _onnx_available():
        return None
    from .onnx import OnnxEmbedder, _read_manifest, query_compatible

    try:
        candidates = _candidates(model_name)
    except (VisdexError, OSError) as exc:
        log.debug("no fast text path for %s: %s", model_name, exc)
        return None
    for folder, identity, backend in candidates:
        manifest = _read_manifest(folder, identity)
        if manifest is None or "text" not in manifest.get("towers", {}):
            continue
        if backend not in manifest["towers"]["text"]["files"]:
            continue
        emb = OnnxEmbedder(folder, manifest, backend=backend, name=f"{backend}:{_base_and_backend(model_name)[1]}",
                           towers=("text",))  # fmt: skip
        if query_compatible(emb, fp):
            return emb
    return None


def has_fast_text(model_name: str) -> bool:
    """Whether a text-tower export for ``model_name`` is cached (cheap: reads manifests, loads nothing)."""
    from .onnx import _read_manifest

    try:
        return any(
            (m := _read_manifest(folder, identity)) is not None and "text" in m.get("towers", {})
            for folder, identity, _ in _candidates(model_name)
        )
    except (VisdexError, OSError):
        return False


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
    from .onnx import OnnxEmbedder, _read_manifest, export_folder, model_identity
    from .onnx_export import export_onnx

    identity = {**model_identity(base), **TEXT_ONLY}
    folder = export_folder(identity)
    if has_fast_text(model_name):
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
    return folder if _read_manifest(folder, identity) is not None else None


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
    try:
        export_text_tower(argv[0])
    except VisdexError as exc:
        log.debug("text tower export of %s failed: %s", argv[0], exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
