"""One model, two tools: a CLIP ViT-B/32 at 256 px as a visdex model folder and as an rclip data dir.

rclip 3.x runs ``ViT-B-32-256-datacomp_s34b_b86k`` from ONNX files it downloads from the hub;
hub downloads are impossible here, so both tools get the *same* random-weight model of that
architecture (CLIP ViT-B/32 sizes, 256 px input, GELU), with the real CLIP BPE tokenizer:

* :func:`build_clip_b32_256` writes a ``save_pretrained`` folder visdex loads
  (``visdex index --model FOLDER``), tokenizer included (CLIPTokenizer built from the BPE file);
* :func:`export_rclip_datadir` exports that model's two towers with ``torch.onnx.export`` into
  the layout rclip reads from ``$RCLIP_DATADIR``: ``ViT-B-32-256-datacomp_s34b_b86k/visual.onnx``
  (``input`` float32 [N,3,256,256] -> ``output``), ``textual.onnx`` (``input`` int64 [N,77] ->
  ``output``) and ``tokenizer/bpe_simple_vocab_16e6.txt.gz``.

The BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``) ships inside the ``open_clip_torch`` wheel;
:func:`find_bpe_vocab` takes it from ``$CLIP_BPE_VOCAB``, an installed ``open_clip``, a cached
copy, or ``pip download --no-deps open_clip_torch`` (PyPI, not the model hub).

    python benchmarks/peer_models.py --work /tmp/visdex-peers    # build both, print the sanity check

Random weights give honest *speed* numbers for the architecture, nothing about quality.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RCLIP_MODEL_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77
IMAGE_SIZE = 256
# CLIP's BPE keeps the first 49152 - 256 - 2 merges (OpenAI's and open_clip's SimpleTokenizer).
N_MERGES = 49152 - 256 - 2


# ---------------------------------------------------------------- the CLIP BPE tokenizer


def find_bpe_vocab(cache: Path | None = None) -> Path:
    """The CLIP BPE merges file (gz): ``$CLIP_BPE_VOCAB``, an installed open_clip, ``cache``, else PyPI."""
    env = os.environ.get("CLIP_BPE_VOCAB")
    if env and Path(env).is_file():
        return Path(env)
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / BPE_NAME
        if path.is_file():
            return path
    if cache is None:
        raise FileNotFoundError(f"{BPE_NAME} not found: set CLIP_BPE_VOCAB or pass a cache folder")
    target = Path(cache) / BPE_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # the wheel is ~1.5 MB; only the vocabulary is kept
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        "open_clip_torch", "-d", tmp, "-q"], check=True)  # fmt: skip
        (wheel,) = Path(tmp).glob("open_clip_torch-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            target.write_bytes(zf.read(f"open_clip/{BPE_NAME}"))
    return target


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP's byte -> printable unicode map (the byte-level alphabet of its BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clip_vocab_and_merges(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """vocab.json / merges.txt contents built from the gz exactly as CLIP's SimpleTokenizer numbers tokens:
    256 byte chars, the same with ``</w>``, one token per merge, then ``<|startoftext|>``, ``<|endoftext|>``."""
    with gzip.open(bpe_gz) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [m for m in lines[1 : N_MERGES + 1] if m.strip()]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_bpe_tokenizer(bpe_gz: Path, max_length: int = CONTEXT_LENGTH):
    """A transformers CLIP tokenizer (tokenizers-backed) with CLIP's own vocabulary and merges."""
    from transformers import CLIPTokenizerFast

    vocab, merges = clip_vocab_and_merges(bpe_gz)
    try:  # transformers 5: the vocabulary and merges themselves
        return CLIPTokenizerFast(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=max_length)
    except TypeError:  # transformers 4: only files
        pass
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = CLIPTokenizerFast(vocab_file=str(Path(tmp) / "vocab.json"), merges_file=str(Path(tmp) / "merges.txt"),
                                model_max_length=max_length)  # fmt: skip
        tok.backend_tokenizer  # noqa: B018  built while the files exist
    return tok


# ---------------------------------------------------------------- the model, as visdex loads it


def clip_config(tiny: bool = False, vocab_size: int = 49408):
    """CLIP ViT-B/32 at 256 px (CLIPConfig defaults otherwise; GELU as open_clip's datacomp models);
    ``tiny``: 2 layers, 32 wide, the same input and vocabulary, for tests."""
    from transformers import CLIPConfig

    text = dict(vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=1,
                hidden_act="gelu", max_position_embeddings=CONTEXT_LENGTH)  # fmt: skip
    vision = dict(image_size=IMAGE_SIZE, patch_size=32, hidden_act="gelu")
    if tiny:
        small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        text, vision = {**text, **small}, {**vision, **small}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16 if tiny else 512)


def build_clip_b32_256(folder: Path, bpe_gz: Path, tiny: bool = False, seed: int = 0) -> Path:
    """A random-weight CLIP (ViT-B/32 at 256 px, or ``tiny``) saved with its processor and CLIP BPE tokenizer."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    tok = clip_bpe_tokenizer(bpe_gz)
    torch.manual_seed(seed)
    model = CLIPModel(clip_config(tiny, vocab_size=len(tok)))
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(folder)
    # open_clip's 256 px transform: shortest side 256 (bicubic), centre crop 256, OpenAI mean/std
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                       resample=3).save_pretrained(folder)  # fmt: skip
    tok.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- the same model, as rclip loads it


def _towers(model):
    import torch

    class Visual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, pixels):
            return self.m.visual_projection(self.m.vision_model(pixel_values=pixels).pooler_output)

    class Textual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, ids):  # no mask: CLIP's causal attention keeps padding out of the EOT position
            return self.m.text_projection(self.m.text_model(input_ids=ids).pooler_output)

    return Visual().eval(), Textual().eval()


def _onnx_export(module, example, path: Path) -> str:
    """``input`` -> ``output`` with a dynamic batch axis: the dynamo exporter (as visdex's own export), else
    the TorchScript one. Returns the exporter used."""
    import torch

    try:
        from torch.export import Dim

        torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=["output"],
                          dynamo=True, external_data=False, dynamic_shapes={"pixels" if example.dtype == torch.float32
                          else "ids": {0: Dim("batch", min=1, max=4096)}}, verbose=False)  # fmt: skip
        return "dynamo"
    except Exception as exc:  # exporter failures come in many types; the fallback is the older exporter
        print(f"dynamo export failed ({type(exc).__name__}: {str(exc)[:200]}); using TorchScript", file=sys.stderr)
    torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=["output"], dynamo=False,
                      opset_version=17, dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})  # fmt: skip
    return "torchscript"


def export_rclip_datadir(model_folder: Path, datadir: Path, bpe_gz: Path) -> dict:
    """rclip's model files for ``model_folder``'s weights under ``datadir`` (made once); returns what was made."""
    datadir = Path(datadir)
    sub = datadir / RCLIP_MODEL_SUBDIR
    done = sub / "export.json"
    if done.is_file():
        return json.loads(done.read_text())
    import torch
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(model_folder).eval()
    visual, textual = _towers(model)
    sub.mkdir(parents=True, exist_ok=True)
    (datadir / "tokenizer").mkdir(exist_ok=True)
    shutil.copyfile(bpe_gz, datadir / "tokenizer" / BPE_NAME)
    with torch.inference_mode(False), torch.no_grad():
        info = {
            "visual": _onnx_export(visual, torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE), sub / "visual.onnx"),
            "textual": _onnx_export(textual, torch.zeros(2, CONTEXT_LENGTH, dtype=torch.int64), sub / "textual.onnx"),
        }
    info["source"] = str(Path(model_folder).resolve())
    done.write_text(json.dumps(info))
    return info


def link_rclip_models(template: Path, datadir: Path) -> Path:
    """A fresh rclip data dir (its own database) that shares the template's model files by symlink."""
    datadir = Path(datadir)
    datadir.mkdir(parents=True, exist_ok=True)
    for name in (RCLIP_MODEL_SUBDIR, "tokenizer"):
        link = datadir / name
        if not link.exists():
            link.symlink_to(Path(template).resolve() / name, target_is_directory=True)
    return datadir


# ---------------------------------------------------------------- rclip's own code, from its interpreter


def rclip_python(rclip_bin: str | None = None) -> str | None:
    """The interpreter rclip is installed in: ``$RCLIP_PYTHON``, this one if it imports rclip, or the
    shebang of the ``rclip`` script (``rclip_bin`` or the one on PATH)."""
    env = os.environ.get("RCLIP_PYTHON")
    if env and Path(env).is_file():
        return env
    if importlib.util.find_spec("rclip") is not None:
        return sys.executable
    script = rclip_bin or shutil.which("rclip")
    if script and Path(script).is_file():
        first = Path(script).read_text(errors="replace").splitlines()[0]
        if first.startswith("#!") and Path(first[2:].strip()).is_file():
            return first[2:].strip()
    return None


_RCLIP_PROBE = r"""
import json, sys
import numpy as np
args = json.loads(sys.stdin.read())
from rclip.utils.tokenizer import SimpleTokenizer
out = {"ids": SimpleTokenizer(bpe_path=args["bpe"])(args["texts"]).tolist()}
if args.get("datadir"):
    from PIL import Image
    from rclip import model
    m = model.Model()
    out["text"] = m.compute_text_features(args["texts"]).tolist()
    if args["images"]:
        out["image"] = m.compute_image_features([Image.open(p) for p in args["images"]]).tolist()
print(json.dumps(out))
"""


def rclip_probe(python: str, bpe_gz: Path, texts: list[str], datadir: Path | None = None,
                images: list[str] = ()) -> dict:  # fmt: skip
    """rclip's token ids for ``texts`` and, with ``datadir``, its unit vectors for ``texts`` and ``images``."""
    env = {**os.environ, "RCLIP_DATADIR": str(datadir or tempfile.gettempdir())}
    payload = json.dumps({"bpe": str(bpe_gz), "texts": texts, "datadir": str(datadir or ""), "images": list(images)})
    done = subprocess.run([python, "-c", _RCLIP_PROBE], input=payload, capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"rclip probe failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- running both tools, timed


def visdex_bin() -> str:
    """The ``visdex`` console script of this interpreter's environment (what a user types)."""
    here = Path(sys.executable).parent / "visdex"
    return str(here) if here.is_file() else shutil.which("visdex") or "visdex"


def use_bytecode_cache(folder: Path) -> None:
    """Both tools' child processes read and write compiled bytecode under ``folder``.

    An installed package has its ``.pyc`` files; a source checkout under ``PYTHONDONTWRITEBYTECODE``
    (set on this machine) recompiles every visdex module at every start (~0.1 s CPU per command):
    not what a user runs. The first (untimed) run of each command fills the cache for both tools."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(folder)


def clean_env(**extra: str) -> dict:
    """This environment, offline for the hub, plus ``extra``; the same base for both tools."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VISDEX_", "RCLIP_"))}
    return {**env, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", **extra}


def cpu_pressure() -> str | None:
    """Linux PSI for the CPU (``some avg10=.. avg60=.. avg300=..``): the share of time tasks waited for a CPU."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None


def git_state() -> dict:
    """The commit the numbers were measured at, and whether src/ had uncommitted changes (others edit it)."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"), "src_dirty": bool(git("status", "--porcelain", "src"))}


def timed(cmd: list[str], env: dict, cwd: Path | None = None, timeout: float = 3600) -> dict:
    """Run ``cmd`` to its exit: wall seconds, CPU seconds (user + sys, its waited-for children included),
    peak RSS (MB), stdout and stderr. A failure raises with the tail of its output."""
    import time

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            raise
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {stdout[-1500:]}{stderr[-3000:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "peak_rss_mb": round(ru.ru_maxrss / 1024), "stdout": stdout, "stderr": stderr}  # fmt: skip


def processes_with(needle: str, env_value: str) -> list[int]:
    """Pids whose command line contains ``needle`` and whose environment contains ``env_value`` (Linux /proc):
    finds *our* background exports, not another engineer's."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle.encode() in (d / "cmdline").read_bytes() and env_value.encode() in (d / "environ").read_bytes():
                pids.append(int(d.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def summary(values: list[float]) -> dict:
    """Median, p90 (nearest rank), min, max of ``values``."""
    import math
    import statistics

    v = sorted(values)
    return {"median": round(statistics.median(v), 3), "p90": round(v[max(0, math.ceil(0.9 * len(v)) - 1)], 3),
            "min": round(v[0], 3), "max": round(v[-1], 3), "n": len(v)}  # fmt: skip


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


SANITY_TEXTS = ["a dog on a beach", "A photo of a CAT!", "two cats sleeping on a red sofa, 2021",
                "café au lait & croissant", "snow-covered mountains at sunset"]  # fmt: skip


def sanity_check(model_folder: Path, datadir: Path, bpe_gz: Path, images: list[Path], python: str) -> dict:
    """Same text -> same ids in both tokenizers; cosine of visdex's and rclip's vectors for texts and images."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "src"))
    from visdex.models import load_embedder

    got = rclip_probe(python, bpe_gz, SANITY_TEXTS, datadir=datadir, images=[str(p) for p in images])
    emb = load_embedder(str(model_folder), device="cpu")
    ours = emb.tokenizer(SANITY_TEXTS, padding="max_length", truncation=True, max_length=CONTEXT_LENGTH)["input_ids"]
    rclip_ids = [[t for t in row if t] for row in got["ids"]]  # rclip pads with 0, transformers with <|endoftext|>
    ours_ids = [row[: len(r)] for row, r in zip(ours, rclip_ids, strict=True)]
    text_cos = np.sum(emb.embed_texts(SANITY_TEXTS) * np.asarray(got["text"], np.float32), axis=1)
    from visdex.decode import decode_image

    # decoded as `visdex index` decodes (JPEG draft down to the resize target)
    decoded = [decode_image(str(p), draft_size=emb.preprocess.resize_to).image for p in images]
    ours_img, theirs_img = (emb.embed_images(decoded), np.asarray(got["image"], np.float32)) if images else (None, None)
    img_cos = np.sum(ours_img * theirs_img, axis=1) if images else np.zeros(0)
    # random weights map every image near one direction: the check means something only if the same image's
    # two vectors are closer than two different images' vectors
    cross = (ours_img @ theirs_img.T)[~np.eye(len(images), dtype=bool)] if len(images) > 1 else np.zeros(0)
    return {
        "token_ids_equal": ours_ids == rclip_ids,
        "texts": len(SANITY_TEXTS),
        "text_cosine_min": round(float(text_cos.min()), 5),
        "images": len(images),
        "image_cosine_mean": round(float(img_cos.mean()), 6) if len(img_cos) else None,
        "image_cosine_min": round(float(img_cos.min()), 6) if len(img_cos) else None,
        "different_images_cosine_max": round(float(cross.max()), 6) if len(cross) else None,
        "passed": bool(
            ours_ids == rclip_ids
            and text_cos.min() > 0.99
            and (not len(img_cos) or img_cos.min() > max(0.99, cross.max() if len(cross) else 0))
        ),
        "note": "random weights; image preprocessing differs (visdex: JPEG draft decode + its resize; rclip: full "
        "decode + PIL bicubic), so image vectors are close, not equal",
    }


def photo_folders(work: Path, quick: bool) -> dict[str, Path]:
    """name -> folder of JPEGs (made once; a folder per count so a quick run never sees extra files)."""
    sys.path.insert(0, str(ROOT / "src"))
    from visdex import bench

    n6, nv = (40, 200) if quick else (200, 1000)
    folders = {f"6mp-{n6}": (work / f"photos-6mp-{n6}", n6, 6.0, 0),
               f"0.3mp-{nv}": (work / f"photos-0.3mp-{nv}", nv, 0.3072, 1)}  # fmt: skip
    for folder, n, mp, seed in folders.values():
        bench.make_photo_set(folder, n, megapixels=mp, seed=seed)  # 0.3072 MP: 640x480's pixels, 3:2
    return {name: v[0] for name, v in folders.items()}


def add_common_args(ap: argparse.ArgumentParser, rounds: int, quick_rounds: int) -> None:
    """The options every side-by-side script takes: work folder, rclip, rounds, --quick, output folder."""
    ap.add_argument("--work", default="/tmp/visdex-peers")
    ap.add_argument("--rclip", default="/tmp/rclip-venv/bin/rclip")
    ap.add_argument(
        "--rounds", type=int, default=None, help=f"timed rounds (default {rounds}; --quick: {quick_rounds})"
    )
    ap.add_argument("--quick", action="store_true", help=f"40 and 200 files, {quick_rounds} rounds")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))


def machine_state() -> dict:
    """Load average and CPU pressure now (recorded at the start and the end of a run)."""
    return {"load_average": loadavg(), "cpu_pressure": cpu_pressure()}


def shared_result_fields(prep: dict, images: list[Path], start: dict) -> dict:
    """What every side-by-side result records past its own numbers: the two tools' agreement on ``images``,
    the machine's load at ``start`` (:func:`machine_state`) and now, the commit, the machine."""
    sys.path.insert(0, str(ROOT / "src"))
    from visdex import bench

    end = machine_state()
    return {
        "sanity_check": sanity_check(prep["model_folder"], prep["rclip_template"], prep["bpe"], images,
                                     prep["rclip_python"]),
        "load_average_start": start["load_average"],
        "load_average_end": end["load_average"],
        "cpu_pressure_start": start["cpu_pressure"],
        "cpu_pressure_end": end["cpu_pressure"],
        "git": git_state(),
        "load_note": "shared machine: other engineers' jobs ran at the same time (see load and CPU pressure); "
                     "compare ratios, not seconds; CPU-time ratios are the steadier ones",
        "machine": bench.machine_info(),
    }  # fmt: skip


def prepare(work: Path, rclip_bin: str | None = None) -> dict:
    """Model folder, rclip template data dir and vocabulary under ``work`` (each made once)."""
    work = Path(work)
    use_bytecode_cache(work / "pycache")
    bpe = find_bpe_vocab(work / "vocab")
    folder = build_clip_b32_256(work / "models" / "clip-b32-256", bpe)
    template = work / "rclip-template"
    exported = export_rclip_datadir(folder, template, bpe)
    return {"bpe": bpe, "model_folder": folder, "rclip_template": template, "exporters": exported,
            "rclip_python": rclip_python(rclip_bin)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/visdex-peers")
    ap.add_argument("--rclip", default="/tmp/rclip-venv/bin/rclip")
    args = ap.parse_args()
    p = prepare(Path(args.work), args.rclip)
    print({k: str(v) for k, v in p.items()})
    if p["rclip_python"]:
        sys.path.insert(0, str(ROOT / "src"))
        from visdex import bench

        images = bench.make_photo_set(Path(args.work) / "sanity", 4, megapixels=1.0, seed=5)
        print(sanity_check(p["model_folder"], p["rclip_template"], p["bpe"], images, p["rclip_python"]))


if __name__ == "__main__":
    main()
