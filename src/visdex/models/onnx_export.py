"""Export a torch embedder's towers to ONNX, quantise them to int8, and measure what that costs.

The torch side of :mod:`visdex.models.onnx`: it runs once per model (and per weights version),
writes a folder the ONNX runtime side reads without importing torch, and records in that
folder's ``manifest.json`` how close the ONNX vectors are to the torch ones.

What goes where, and why:

* exporter: ``torch.onnx.export(dynamo=True)`` first. It keeps the batch axis symbolic and
  everything else static, so shape arithmetic (TF-style "SAME" padding in EfficientNet) folds
  to constants, which ONNX Runtime needs to fuse Conv + Clip and which int8 static quantisation
  needs to be correct at all. A model the dynamo exporter cannot trace falls back to the
  TorchScript exporter; every export is checked against torch at batch sizes it was not traced
  with, so a baked-in batch size fails here, not later.
* int8 for transformers (CLIP, SigLIP, DINOv2, MiniLM): dynamic quantisation of the MatMul
  weights only, per output channel. Per-tensor weights took MiniLM's text vectors down to a
  mean cosine of 0.967 (0.994 per channel); quantising the patch-embedding Conv or the token
  embedding Gather made it slower or less accurate for no gain.
* int8 for the EfficientNet CNN: dynamic quantisation is 3-7x *slower* there (ConvInteger)
  and far off (cosine 0.81), so it is static (QOperator, per-channel weights, percentile
  calibration on synthetic images). The stem and the first block stay float: quantising them
  cost most of the accuracy (mean cosine 0.98 -> 0.995 on real photos).

>>> folder = export_onnx("effnet-lite0", Path("/tmp/onnx/x"), identity={})      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import logging
import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from .base import Embedder, l2_normalize
from .families.base import Family, full_precision

log = logging.getLogger(__name__)

# 2: 7-bit int8 weights where kernels saturate (reduce_range); 3: the int8 quality gate; 4: opset 20;
# 5: the manifest carries the family's JPEG draft_scale (the offline family decodes at 2x)
FORMAT_VERSION = 5
# An int8 tower is used only if its vectors stay this close to torch's on the export's probes (mean, min);
# otherwise ``onnx-int8:`` runs that tower in fp32 and the manifest says why (see _gate_int8).
INT8_GATE = (0.99, 0.98)
# 20: GELU is one Gelu node that ONNX Runtime fuses (BiasGelu); at 18 it is Erf/Div/Mul/Add and stays unfused,
# which made the CLIP image tower ~20% slower than the same weights exported by rclip (benchmarks/peers.py)
OPSET = 20
OUTPUT = "visdex_output"  # a name no model uses inside its graph ("embedding" clashed with a layer)
EXPORT_BATCH = 2  # traced with 2, checked at 1 and 3: a batch size baked into the graph shows up
CNN_FLOAT_CONVS = 3  # stem conv + first block (depthwise, pointwise) stay float32 in the int8 CNN
CALIBRATION_IMAGES = 32
PROBE_IMAGES = 16
PROBE_TEXTS = (
    "a dog running on a beach at sunset",
    "a cat sleeping on a red sofa",
    "a cup of coffee on a wooden table",
    "a rocket launching into the night sky",
    "a portrait of a woman smiling",
    "two children playing football in a park",
    "a plate of spaghetti with tomato sauce",
    "snow covered mountains under a blue sky",
    "a busy street in tokyo at night with neon signs",
    "an old man reading a newspaper",
    "a close-up photo of a yellow flower",
    "a red sports car parked on the street",
    "a bowl of fruit: apples, bananas and grapes",
    "a black and white photo of a city skyline",
    "a diagram of a circuit board",
    "people",
    "beach",
    "astronaut",
    "a blurry photo",
    "the view from an airplane window over the clouds",
    "a birthday cake with candles",
    "a group of friends at a wedding, dancing",
    "an x-ray image of a hand",
    "a handwritten receipt from a restaurant",
    "a horse grazing in a green field next to a fence",
    "coins on a table",
    "the moon",
    "a brick wall",
    "ein Hund am Strand",
    "un chat noir sur un toit",
    "a very long description of a scene with many objects, colours, people, animals, buildings, "
    "cars, trees, rivers, mountains and clouds, longer than most text towers accept at once " * 3,
    "",
)


# ---------------------------------------------------------------- inputs that need no dataset


def synthetic_images(n: int, seed: int = 0, size: tuple[int, int] = (320, 256)) -> list:
    """``n`` deterministic photo-like RGB images: smooth colour fields, shapes, blur and sensor noise.

    Used to calibrate int8 activations and to probe export accuracy, so exporting needs no
    dataset. Calibrating on these gave the same accuracy on real photos as calibrating on real
    photos (mean cosine 0.995 vs 0.996 for EfficientNet-Lite0).

    >>> [im.size for im in synthetic_images(2)]
    [(320, 256), (320, 256)]
    """
    from PIL import Image, ImageDraw, ImageFilter

    out = []
    w, h = size
    for i in range(n):
        r = np.random.default_rng(seed * 100_003 + i)
        base = r.random((int(r.integers(2, 9)), int(r.integers(2, 9)), 3))
        img = Image.fromarray((base * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(int(r.integers(3, 12))):
            x0, y0 = int(r.integers(0, w - 20)), int(r.integers(0, h - 16))
            bw, bh = (int(v) for v in r.integers(10, w // 2, 2))
            colour = tuple(int(c) for c in r.integers(0, 256, 3))
            (draw.ellipse if r.random() < 0.5 else draw.rectangle)((x0, y0, x0 + bw, y0 + bh), fill=colour)
        arr = np.asarray(img.filter(ImageFilter.GaussianBlur(float(r.random()) * 2))).astype(np.float32)
        arr += r.normal(0, float(r.random()) * 12, arr.shape)
        out.append(Image.fromarray(arr.clip(0, 255).astype(np.uint8)))
    return out


# ---------------------------------------------------------------- towers: what each graph computes


def _towers(emb: Embedder) -> dict:
    """name -> (module, example inputs, input names, "transformer"|"cnn") for each tower of ``emb``: its adapter's."""
    import torch

    from .families import adapter_for

    adapter = adapter_for(emb)
    if adapter is None:
        raise ModelLoadError(f"the ONNX backend cannot export {type(emb).__name__} ({emb.name})")
    return adapter.onnx_towers(emb, torch.zeros(EXPORT_BATCH, 3, emb.preprocess.size, emb.preprocess.size))


# ---------------------------------------------------------------- export, check, quantise


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warn a lot; library code does not print."""
    sink = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # onnxruntime.quantization logs to the root logger
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _export_with(exporter: str, module, example: tuple, names: list[str], path: Path, text: bool) -> None:
    import torch

    if exporter == "dynamo":
        import onnxscript  # noqa: F401  the dynamo exporter needs it; ImportError -> the TorchScript exporter
        from torch.export import Dim

        batch, seq = Dim("batch", min=1, max=1 << 16), Dim("seq", min=1, max=1 << 12)
        axes = {0: batch, 1: seq} if text else {0: batch}
        torch.onnx.export(
            module, example, str(path), input_names=names, output_names=[OUTPUT], opset_version=OPSET,
            dynamo=True, external_data=False, dynamic_shapes={n: dict(axes) for n in names}, verbose=False,
        )  # fmt: skip
        return
    dyn = {n: ({0: "batch", 1: "seq"} if text else {0: "batch"}) for n in names}
    torch.onnx.export(
        module, example, str(path), input_names=names, output_names=[OUTPUT], opset_version=17, dynamo=False,
        dynamic_axes={**dyn, OUTPUT: {0: "batch"}},
    )  # fmt: skip


def _export(module, example: tuple, names: list[str], path: Path, text: bool) -> str:
    """fp32 ONNX with a symbolic batch axis (and sequence axis for text), checked against torch.

    Returns the exporter that worked: ``dynamo``, else ``torchscript``.
    """
    module = module.eval()
    errors = []
    for exporter in ("dynamo", "torchscript"):
        try:
            with _quiet():
                _export_with(exporter, module, example, names, path, text)
            _check_export(module, path, example, names)
            return exporter
        except Exception as exc:  # exporters raise many types; the message below lists each failure
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            errors.append(f"{exporter}: {type(exc).__name__}: {first}")
            log.info("ONNX export with %s failed: %s", exporter, errors[-1])
    raise ModelLoadError("could not export the model to ONNX (" + "; ".join(errors) + "); use the torch backend")


def _session(path: Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _check_export(module, path: Path, example: tuple, names: list[str]) -> None:
    """ONNX == torch (to float tolerance) at batch sizes the graph was not traced with."""
    import torch

    sess = _session(path)
    for n in (1, 3):
        inputs = tuple(_resize_batch(t, n) for t in example)
        with torch.inference_mode():
            want = module(*inputs).float().numpy()
        got = sess.run(None, {k: v.numpy() for k, v in zip(names, inputs, strict=True)})[0]
        if got.shape != want.shape or not np.allclose(got, want, atol=1e-3 * max(1.0, float(np.abs(want).max()))):
            diff = float(np.abs(got - want).max()) if got.shape == want.shape else f"shape {got.shape} != {want.shape}"
            raise ModelLoadError(f"the ONNX export of this model does not match torch at batch {n} ({diff}); "
                                 "use the torch backend")  # fmt: skip


def _resize_batch(t, n: int):
    """A batch of n from an example batch: rows repeated, and pixels varied so rows differ."""
    import torch

    reps = (n + t.shape[0] - 1) // t.shape[0]
    out = t.repeat((reps,) + (1,) * (t.dim() - 1))[:n].clone()
    if out.is_floating_point():
        out += torch.linspace(-0.5, 0.5, n).view(n, *([1] * (t.dim() - 1)))
    return out


def int8_saturates() -> bool:
    """Whether this CPU's int8 kernels can saturate with full-range weights: x86 without VNNI.

    >>> isinstance(int8_saturates(), bool)
    True
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False  # ARM's dot-product kernels accumulate in int32
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return True  # not Linux: assume the worst, 7-bit weights cost little
    return not any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _quantise(src: Path, dst: Path, kind: str, preprocess, input_name: str) -> str:
    """int8 copy of ``src``; returns a short description of the method for the manifest.

    Weights use a 7-bit range (``reduce_range``) where it matters: on x86 CPUs without VNNI (AVX2 only),
    ONNX Runtime's u8 x s8 kernels add pairs of products in int16 and saturate with full 8-bit weights.
    Measured on a 2-core AVX2 EPYC without VNNI, mean cosine to torch: tiny CLIP image vectors 0.969
    (8-bit) -> 0.9999 (7-bit); EfficientNet-Lite0 0.980 -> 0.983; real MiniLM text 0.994 either way.
    Transformers always get the 7-bit range (no measurable cost); the CNN only on CPUs without VNNI,
    where an earlier run with full 8-bit weights measured 0.993. The export is cached per machine, and
    exports cached by an older format are redone (``FORMAT_VERSION``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if kind == "transformer":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=True, reduce_range=True, extra_options={"MatMulConstBOnly": True})  # fmt: skip
        return "dynamic int8 (MatMul weights, per-channel, 7-bit range)"
    import onnx

    convs = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv"]
    narrow = int8_saturates()
    batch = preprocess.batch(synthetic_images(CALIBRATION_IMAGES, seed=7))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(batch[i : i + 1] for i in range(len(batch)))

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {input_name: row}

    quantize_static(
        str(src), str(dst), Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=narrow,
        nodes_to_exclude=convs[:CNN_FLOAT_CONVS],
        calibrate_method=CalibrationMethod.Percentile, extra_options={"CalibPercentile": 99.99},
    )  # fmt: skip
    return (f"static int8 (QOperator, per-channel, {7 if narrow else 8}-bit weight range, percentile 99.99 "
            f"on synthetic images, first {CNN_FLOAT_CONVS} convs fp32)")  # fmt: skip


# ---------------------------------------------------------------- tokenizer for the torch-free side


def _adapter(emb: Embedder) -> Family:
    from .families import adapter_for

    adapter = adapter_for(emb)
    if adapter is None:
        raise ModelLoadError(f"{emb.name}: no model family knows how to export its text tower")
    return adapter


def _export_tokenizer(emb: Embedder):
    """The transformers tokenizer the exported text tower is fed by (the family's adapter may supply one)."""
    return _adapter(emb).export_tokenizer(emb)


def _tokenizer_settings(emb: Embedder, names: list[str]) -> dict:
    tok = _export_tokenizer(emb)
    wanted = _adapter(emb).tokenizer_settings(emb)
    return {
        "inputs": names, "max_length": int(wanted["max_length"]), "padding": wanted["padding"],
        "lowercase": bool(wanted["lowercase"]),
        "pad_id": int(tok.pad_token_id if tok.pad_token_id is not None else 0), "pad_token": str(tok.pad_token or ""),
    }  # fmt: skip


def _hf_tokenize(emb: Embedder, settings: dict, texts: list[str]) -> dict:
    texts = [t.lower() for t in texts] if settings["lowercase"] else texts
    batch = _export_tokenizer(emb)(texts, padding="max_length" if settings["padding"] == "max_length" else True,
                          truncation=True, max_length=settings["max_length"], return_tensors="np")  # fmt: skip
    return {k: np.asarray(batch[k], np.int64) for k in settings["inputs"]}


def _save_tokenizer(emb: Embedder, folder: Path, settings: dict) -> str:
    """Write ``tokenizer.json`` and check the fast path tokenises like transformers; else keep transformers."""
    from .onnx import FastTokenizer

    tokenizer = _export_tokenizer(emb)
    tokenizer.save_pretrained(folder / "tokenizer")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "transformers"
    backend.save(str(folder / "tokenizer.json"))
    fast = FastTokenizer(folder / "tokenizer.json", settings)
    probes = list(PROBE_TEXTS)
    want, got = _hf_tokenize(emb, settings, probes), fast(probes)
    same = all(np.array_equal(want[k], got[k]) for k in settings["inputs"])
    if not same:
        log.info("tokenizers-only tokenisation differs from transformers for %s; queries will use transformers",
                 emb.name)  # fmt: skip
    return "tokenizers" if same else "transformers"


# ---------------------------------------------------------------- quality: ONNX vs torch vectors


def _cosines(a: np.ndarray, b: np.ndarray) -> dict:
    cos = np.sum(l2_normalize(a) * l2_normalize(b), axis=1)
    return {"mean": round(float(cos.mean()), 6), "min": round(float(cos.min()), 6), "n": int(len(cos))}


def _quality(emb: Embedder, folder: Path, manifest: dict) -> dict:
    """Cosine of ONNX fp32 / int8 vectors to torch fp32 vectors on probe images and texts (the towers exported)."""
    from .onnx import OnnxEmbedder

    towers = manifest["towers"]
    texts = [t for t in PROBE_TEXTS if t]
    pixels = emb.preprocess.batch(synthetic_images(PROBE_IMAGES, seed=1)) if "image" in towers else None
    with full_precision(emb):  # the reference is torch fp32, whatever the CPU's default precision
        ref_img = emb.embed_pixels(pixels) if pixels is not None else None
    ref_txt = emb.embed_texts(texts) if "text" in towers else None
    out: dict[str, dict] = {}
    for backend in sorted({b for info in towers.values() for b in info["files"] if b in ("onnx", "onnx-int8")}):
        onnx_emb = OnnxEmbedder(folder, manifest, backend=backend, name=emb.name)
        out[backend] = {}
        if ref_img is not None and pixels is not None:
            out[backend]["image"] = _cosines(onnx_emb.embed_pixels(pixels), ref_img)
        if ref_txt is not None:
            out[backend]["text"] = _cosines(onnx_emb.embed_texts(texts), ref_txt)
    return out


def _gate_int8(manifest: dict) -> None:
    """Keep a tower in fp32 under ``onnx-int8:`` when its int8 vectors drift from torch's on the probes.

    int8 accuracy depends on the model and on the CPU (see :func:`_quantise`): ``lite0-minilm``'s image
    vectors (a softmax over 1000 classes) lose the most. A gated tower's ``onnx-int8`` file is its fp32
    file, its measured int8 quality moves to ``quality["int8-raw"]``, and ``int8_gate`` says why.
    """
    lo_mean, lo_min = INT8_GATE
    measured = dict(manifest["quality"]["onnx-int8"])
    for tower, info in manifest["towers"].items():
        q = measured.get(tower)
        if q is None or (q["mean"] >= lo_mean and q["min"] >= lo_min):
            continue
        info["files"]["onnx-int8"] = info["files"]["onnx"]
        info["int8_gate"] = (f"fp32: int8 vectors measured cosine mean {q['mean']:.4f}, min {q['min']:.4f} to torch "
                             f"on the probes (needs >= {lo_mean} / {lo_min})")  # fmt: skip
        manifest["quality"].setdefault("int8-raw", {})[tower] = q
        manifest["quality"]["onnx-int8"][tower] = manifest["quality"]["onnx"][tower]
        log.warning("%s: the int8 %s tower drifts from torch (cosine mean %.4f, min %.4f); onnx-int8 runs it in "
                    "fp32", manifest["base_fingerprint"].get("name", "?"), tower, q["mean"], q["min"])  # fmt: skip


# ---------------------------------------------------------------- the whole export


def versions() -> dict:
    """Library versions that made (or run) an export, for manifests and benchmark records."""
    import onnxruntime

    out = {"onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    for mod in ("torch", "onnx", "transformers", "timm"):
        with contextlib.suppress(Exception):  # a missing optional module is simply not listed
            out[mod] = __import__(mod).__version__
    return out


def export_onnx(base_name: str, folder: Path, identity: dict, emb: Embedder | None = None,
                text_only: bool = False, int8: bool = True) -> dict:  # fmt: skip
    """Export ``base_name``'s towers into ``folder`` (fp32 + int8 + tokenizer + manifest); returns the manifest.

    ``text_only``: the text tower in fp32 alone -- what a text query needs (:mod:`visdex.models.textquery`),
    a fraction of the full export's time. ``int8=False``: fp32 towers only (what CPU indexing runs by
    default, see :func:`visdex.models.onnx.load_reference_onnx`), no quantisation.

    Written into a temporary sibling folder and renamed into place, so a crash never leaves a
    half export that looks complete, and two processes exporting at once both end up with one.
    """
    from . import load_embedder

    emb = emb if emb is not None else load_embedder(base_name, device="cpu")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp-"))
    try:
        manifest = _export_into(emb, tmp, identity, text_only=text_only, int8=int8 and not text_only)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: use its export
            shutil.rmtree(tmp, ignore_errors=True)
            return json.loads((folder / "manifest.json").read_text())
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _export_into(emb: Embedder, tmp: Path, identity: dict, text_only: bool = False, int8: bool = True) -> dict:
    fp = emb.fingerprint()
    manifest: dict = {
        "format": FORMAT_VERSION, "identity": identity, "base_fingerprint": json.loads(fp.to_json()),
        "family": emb.family, "dim": emb.dim,
        "preprocess": emb.preprocess.to_dict(), "draft_scale": emb.preprocess.draft_scale, "towers": {},
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    towers = _towers(emb)
    # what the export can embed: a family may export fewer towers than its torch model has
    manifest["modalities"] = sorted(emb.modalities & set(towers))
    for name, (module, example, names, kind) in towers.items():
        text = name == "text"
        if text_only and not text:
            continue
        fp32, int8_path = tmp / f"{name}.onnx", tmp / f"{name}.int8.onnx"
        exporter = _export(module, example, names, fp32, text)
        if not int8:
            manifest["towers"][name] = {"inputs": names, "exporter": exporter, "int8": None,
                                        "files": {"onnx": fp32.name}}  # fmt: skip
        else:
            with _quiet():
                method = _quantise(fp32, int8_path, kind, emb.preprocess, names[0])
            files = {"onnx": fp32.name, "onnx-int8": int8_path.name, "int8": int8_path.name}  # "int8": kept if gated
            manifest["towers"][name] = {"inputs": names, "exporter": exporter, "int8": method, "files": files}
        if text:
            settings = _tokenizer_settings(emb, names)
            settings["backend"] = _save_tokenizer(emb, tmp, settings)
            manifest["tokenizer"] = settings
    if not manifest["towers"]:
        raise ModelLoadError(f"{emb.name} has no text tower to export")
    from .offline import Lite0MiniLMEmbedder

    if isinstance(emb, Lite0MiniLMEmbedder):  # ConSE needs the class texts' MiniLM vectors (fp32)
        np.save(tmp / "classes.npy", np.asarray(emb.class_embeddings, np.float32))
        manifest["conse_top_k"] = int(emb.top_k)
        manifest["conse_temperature"] = float(emb.temperature or 1.0)  # None only for image-only models
    manifest["quality"] = _quality(emb, tmp, manifest)
    if int8:
        _gate_int8(manifest)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest
