"""Contrastive image-text fine-tuning of CLIP / SigLIP / OpenCLIP models on ``(image, caption)`` pairs.

The model's family adapter says what can train (``Family.caption_training``: the towers, their blocks,
the forwards, the loss, how to save); this module only runs the loop. What trains: both towers (or
one, ``freeze``), the whole of each tower or only its last ``train_blocks`` encoder blocks with the
final norm and projection, or -- with ``lora`` -- only low-rank adapters on the Linear layers of that
region (:mod:`visdex.train.lora`). The learnt temperature (and SigLIP's bias) always trains. Loss:
CLIP's symmetric InfoNCE, or the sigmoid loss for models with a learnt logit bias (SigLIP). A batch
holds each image once (with one of its captions), so no image is its own negative.

Every epoch is scored on the held-out pairs (mean of text-to-image and image-to-text Recall@1/5/10);
the best epoch is saved in ``out`` (LoRA merged) in the family's own folder layout (``save_pretrained``
plus tokenizer and image processor config; OpenCLIP's ``open_clip_config.json`` + safetensors), so
``--model OUT`` loads it like any local model, and its weights hash is its fingerprint. The run ends
with :func:`visdex.evaluate.eval_captions`, before and after.

>>> res = finetune_captions("clip-vit-b-32", "pairs.csv", "runs/clip", lora=8)     # doctest: +SKIP
>>> res.change["t2i_recall@5"]                                                     # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import BadDataset, UnsupportedModality
from ..evaluate import eval_captions, metrics_from_labels, read_captions
from ..models.families.base import CaptionTraining
from .common import (
    FinetuneResult,
    Phase,
    RunDir,
    Timer,
    TrainProgress,
    TrainSetupError,
    check_least,
    epoch_rng,
    load_state,
    read_set,
    save_state,
    set_lr,
    split_by_group,
)
from .features import decode_for_training

TOWERS = ("image", "text")
SCORE = "mean_recall"
_KS = (1, 5, 10)


def needs_contrastive_model(name: str, why: str) -> UnsupportedModality:
    return UnsupportedModality(f"model {name!r} {why}; fine-tuning on captions needs a CLIP, SigLIP or OpenCLIP "
                               "model (clip-vit-b-32, siglip2-base, openclip-vit-b-32, mobileclip2-s0, hf:<repo>, "
                               "open_clip:<arch>/<tag>, or a local directory of one)")  # fmt: skip


def check_caption_model_name(name: str) -> None:
    """Refuse, before loading anything, a catalog model that cannot be fine-tuned on captions."""
    from ..models import get_spec, list_models
    from ..models.families import family

    if name not in {s.name for s in list_models()}:
        return
    spec = get_spec(name)
    if not spec.supports_text:
        raise needs_contrastive_model(name, "embeds images only (it has no text tower)")
    if family(spec.family).profile.contrastive_loss is None:  # the adapter's word: no captions loss
        raise needs_contrastive_model(name, "is not a trainable image-text model")


def read_caption_sets(data, val, val_fraction: float, test, seed: int):
    """(train, val, test) pairs; without ``val``, ``val_fraction`` of the images (with all their captions)."""
    train = read_set(read_captions, data, "training")
    if val is not None:
        held = read_set(read_captions, val, "held-out")
    else:
        _check_pairs(train, "training", 3)
        train, held = split_by_group(train, val_fraction, seed, key=0)
    _check_pairs(train, "training", 2)
    _check_pairs(held, "held-out", 2)
    tests = read_set(read_captions, test, "test") if test is not None else None
    if tests is not None:
        _check_pairs(tests, "test", 2)
    return train, held, tests


def _check_pairs(pairs: Sequence[tuple[str, str]], what: str, least: int) -> None:
    images = len({p for p, _ in pairs})
    if images < least:
        raise BadDataset(f"the {what} captions have {images} image(s); at least {least} are needed")


# -- which parameters train ---------------------------------------------------------------------------
def select_trainable(model, parts: CaptionTraining, freeze: Sequence[str], train_blocks: int | None, lora: int,
                     lora_alpha: float | None) -> list[str]:  # fmt: skip
    """Freeze everything, then open what the options ask for (in the towers ``parts`` lays out); returns the
    names of the trainable parameters."""
    import torch

    from .lora import add_lora

    for p in model.parameters():
        p.requires_grad_(False)
    region = []
    for tower in TOWERS:
        if tower in freeze:
            continue
        whole, layers, top = parts.towers[tower]
        if train_blocks is None:
            region += whole
        else:
            if train_blocks > len(layers):
                known = f"has {len(layers)} layers" if layers else "has no blocks visdex can pick (train it whole)"
                raise TrainSetupError(f"{{field}} {train_blocks}: the {tower} tower {known}", field="train_blocks")
            region += layers[len(layers) - train_blocks :] + top
    if lora:
        ids = {id(m) for r in region if isinstance(r, torch.nn.Module) for m in r.modules()}
        if not add_lora(model, lora, lora_alpha, where=lambda _, layer: id(layer) in ids):
            raise TrainSetupError("{field} found no Linear layer to adapt in the trained blocks", field="lora")
    else:
        for r in region:
            for p in [r] if isinstance(r, torch.nn.Parameter) else r.parameters():
                p.requires_grad_(True)
    for p in (parts.logit_scale, parts.logit_bias):
        if isinstance(p, torch.nn.Parameter):
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


# -- batches --------------------------------------------------------------------------------------------
class _Images:
    """Decodes images for training and scoring; a file that fails once is skipped from then on."""

    def __init__(self, emb, progress: TrainProgress):
        self.pre, self.progress = emb.preprocess, progress
        self.bad: dict[str, str] = {}
        self.pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))

    def load(self, paths: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """(n, 3, H, W) model-ready pixels of the readable ``paths`` and their positions."""
        decoded = list(self.pool.map(lambda p: self.bad.get(p) or decode_for_training(p, self.pre.draft_side), paths))
        ok = []
        for i, (path, img) in enumerate(zip(paths, decoded, strict=True)):
            if isinstance(img, str):
                if path not in self.bad:
                    self.bad[path] = img
                    self.progress.failed(path, img)
            else:
                ok.append(i)
        return self.pre.batch([decoded[i] for i in ok]), ok

    def close(self) -> None:
        self.pool.shutdown()


def _loss(parts: CaptionTraining, emb, pixels: np.ndarray, texts: list[str]):
    import torch

    from .losses import clip_loss, siglip_loss

    image = parts.image_features(torch.from_numpy(pixels).to(emb.device))
    text = parts.text_features(texts)
    if parts.logit_bias is not None:
        return siglip_loss(image, text, parts.logit_scale, parts.logit_bias)
    return clip_loss(image, text, parts.logit_scale)


def caption_metrics(image_vecs: np.ndarray, text_vecs: np.ndarray, owner: np.ndarray) -> dict:
    """Text-to-image and image-to-text Recall@1/5/10 and their mean, as :func:`eval_captions` computes them."""
    ids = np.arange(len(image_vecs))
    t2i = metrics_from_labels(text_vecs, owner, image_vecs, ids, ks=_KS).values
    i2t = metrics_from_labels(image_vecs, ids, text_vecs, owner, ks=_KS).values
    out = {f"t2i_recall@{k}": t2i[f"recall@{k}"] for k in _KS} | {f"i2t_recall@{k}": i2t[f"recall@{k}"] for k in _KS}
    out[SCORE] = float(np.mean(list(out.values())))
    return out


def _score(emb, images: _Images, pairs: Sequence[tuple[str, str]]) -> dict:
    paths = list(dict.fromkeys(p for p, _ in pairs))
    pixels, ok = images.load(paths)
    position = {paths[i]: n for n, i in enumerate(ok)}
    kept = [(position[p], c) for p, c in pairs if p in position]
    img = emb.embed_pixels(pixels)
    txt = emb.embed_texts([c for _, c in kept])
    return {k: round(v, 6) for k, v in caption_metrics(img, txt, np.array([i for i, _ in kept])).items()}


def _evaluate(emb, pairs, progress: TrainProgress, label: str) -> dict:
    res = eval_captions(emb, list(pairs), progress=Phase(progress, label))
    flat = caption_metrics_from_eval(res)
    return {**flat, "images": res.images, "captions": res.captions}


def caption_metrics_from_eval(res) -> dict:
    out = {f"t2i_recall@{k}": res.text_to_image[f"recall@{k}"] for k in _KS}
    out |= {f"i2t_recall@{k}": res.image_to_text[f"recall@{k}"] for k in _KS}
    out[SCORE] = float(np.mean(list(out.values())))
    return {k: round(v, 6) for k, v in out.items()}


# -- the run -------------------------------------------------------------------------------------------
def finetune_captions(
    model: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    val: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    test: str | os.PathLike | None = None,
    freeze: Sequence[str] = (),
    train_blocks: int | None = None,
    lora: int = 0,
    lora_alpha: float | None = None,
    epochs: int = 5,
    batch_size: int = 32,
    lr: float | None = None,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    progress: TrainProgress | None = None,
) -> FinetuneResult:
    """Fine-tune a CLIP / SigLIP model on image-caption pairs; the best epoch on the held-out pairs is saved
    in ``out`` as a ``save_pretrained`` model directory.

    ``freeze``: towers that do not train (``"image"``, ``"text"``). ``train_blocks``: only the last N
    encoder layers (+ final norm and projection) of each trained tower (None: the whole tower).
    ``lora``: rank of LoRA adapters on those layers' Linear weights instead of the weights themselves
    (0: off; ``lora_alpha`` defaults to the rank). ``lr`` defaults to 1e-4 with LoRA, 1e-5 without.

    >>> finetune_captions("clip-vit-b-32", "pairs.csv", "runs/c", freeze=["text"], train_blocks=2)  # doctest: +SKIP
    """
    import torch

    from ..models import load_embedder

    progress = progress or TrainProgress()
    timer = Timer()
    freeze = sorted(set(freeze))
    if set(freeze) - set(TOWERS) or len(freeze) == len(TOWERS):
        raise TrainSetupError(f"{{field}} takes image or text (not both: nothing would train), not {freeze}",
                              field="freeze")  # fmt: skip
    check_least(lora=(lora, 0), train_blocks=(train_blocks, 0), epochs=(epochs, 1), batch_size=(batch_size, 2))
    lr = lr if lr is not None else (1e-4 if lora else 1e-5)
    check_caption_model_name(model)
    train_pairs, val_pairs, test_pairs = read_caption_sets(data, val, val_fraction, test, seed)
    settings = {"kind": "captions", "model": str(model), "data": _where(data), "val": _where(val),
                "val_fraction": None if val is not None else val_fraction, "test": _where(test), "freeze": freeze,
                "train_blocks": train_blocks, "lora": lora, "lora_alpha": lora_alpha, "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "seed": seed, "device": device}  # fmt: skip
    run = RunDir(out)
    run.prepare(resume)
    state = load_state(run, settings) if resume else None
    emb, parts = _load_trainable(model, device)
    report_pairs = test_pairs or val_pairs
    before = state["before"] if state else _evaluate(emb, report_pairs, progress, "eval before")

    emb.model.float()
    emb.dtype = torch.float32  # train in float32 everywhere (the embedder uses float16 on CUDA for inference)
    torch.manual_seed(seed)  # LoRA's A matrices start random
    names = select_trainable(emb.model, parts, freeze, train_blocks, lora, lora_alpha)
    params = [p for _, p in emb.model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": params, "base_lr": lr}], lr=lr, weight_decay=0.01)
    images = _Images(emb, progress)
    history: list[dict] = []
    best_epoch, best_score, start = 0, -math.inf, 1
    if state is not None:
        _restore(emb.model, optimizer, state)
        history, best_epoch, best_score, start = (
            state["history"],
            state["best_epoch"],
            state["best_score"],
            state["epoch"] + 1,
        )
    else:
        history.append({"epoch": 0, "loss": None, "val": _score(emb, images, val_pairs)})
    by_image: dict[str, list[str]] = {}
    for p, c in train_pairs:
        by_image.setdefault(p, []).append(c)
    try:
        for epoch in range(start, epochs + 1):
            epoch_timer = Timer()
            mean_loss = _train_epoch(parts, emb, optimizer, images, by_image, epoch, epochs, batch_size, seed, progress)
            scores = _score(emb, images, val_pairs)
            improved = scores[SCORE] > best_score
            if improved:
                best_epoch, best_score = epoch, scores[SCORE]
                _save_model_dir(parts, emb, run.root)
            history.append({"epoch": epoch, "loss": mean_loss, "val": scores, "seconds": round(epoch_timer.seconds, 3)})
            trainable = {n: p.detach().cpu().clone() for n, p in emb.model.named_parameters() if p.requires_grad}
            save_state(run, {"epoch": epoch, "settings": settings, "trainable": trainable, "names": names,
                             "optimizer": optimizer.state_dict(), "history": history, "best_epoch": best_epoch,
                             "best_score": best_score, "before": before})  # fmt: skip
            progress.epoch_done(epoch, epochs, mean_loss, scores[SCORE], improved)
    finally:
        images.close()

    tuned = load_embedder(str(run.root), device=device)
    after = _evaluate(tuned, report_pairs, progress, "eval after")
    result = FinetuneResult(
        kind="captions", model_dir=str(run.root), base=str(model), heldout="test" if test_pairs else "val",
        before=before, after=after, best_epoch=best_epoch, epochs=epochs, history=history, settings=settings,
        seconds=round(timer.seconds, 3), resumed_from=(start - 1) if state is not None else 0,
        failures=sorted(images.bad.items()),
    )  # fmt: skip
    run.write_run(result.to_dict())
    return result


def _load_trainable(model: str, device: str) -> tuple:
    """(embedder, what its family trains), or a typed refusal."""
    from ..models import load_embedder
    from ..models.families import adapter_for

    emb = load_embedder(model, device=device)
    if not emb.supports_text:
        raise needs_contrastive_model(model, "embeds images only (it has no text tower)")
    adapter = adapter_for(emb)
    parts = adapter.caption_training(emb) if adapter is not None else None
    if parts is None:
        raise needs_contrastive_model(model, "is not a trainable image-text model")
    return emb, parts


def _restore(model, optimizer, state: dict) -> None:
    import torch

    current = dict(model.named_parameters())
    missing = sorted(set(state["trainable"]) - set(current))
    if missing:
        raise TrainSetupError(f"the checkpoint has weights this model does not: {', '.join(missing[:3])}")
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            current[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])


def _train_epoch(parts: CaptionTraining, emb, optimizer, images: _Images, by_image: dict[str, list[str]],
                 epoch: int, epochs: int, batch_size: int, seed: int, progress: TrainProgress) -> float:  # fmt: skip
    """One pass over the training images in a seeded order, each with one of its captions; the mean loss."""
    image_list = sorted(by_image)
    steps = max(1, math.ceil(len(image_list) / batch_size))
    rng = epoch_rng(seed, epoch)
    order = [image_list[i] for i in rng.permutation(len(image_list))]
    captions = [by_image[p][rng.integers(len(by_image[p]))] for p in order]
    progress.phase(f"epoch {epoch}/{epochs}", steps)
    losses = []
    for step in range(steps):
        set_lr(optimizer, (epoch - 1) * steps + step, epochs * steps, warmup=0)
        rows = range(step * batch_size, min(len(order), (step + 1) * batch_size))
        pixels, ok = images.load([order[r] for r in rows])
        if len(ok) >= 2:  # a contrastive batch needs a negative
            value = _loss(parts, emb, pixels, [captions[rows[i]] for i in ok])
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            losses.append(float(value.detach()))
        progress.advance(1)
    return float(np.mean(losses)) if losses else float("nan")


def _where(p) -> str | None:
    return None if p is None else str(Path(p).expanduser().resolve())


def _save_model_dir(parts: CaptionTraining, emb, root: Path) -> None:
    """The family's save of a LoRA-merged copy, written to a temp folder beside ``root`` and moved in file by
    file (the ``training/`` folder is left alone)."""
    from .lora import merge_lora

    merged = merge_lora(copy.deepcopy(emb.model)).eval()
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".save-"))
    try:
        parts.save(merged, tmp)
        for f in tmp.iterdir():
            os.replace(f, root / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
