"""Metric learning on a labelled set for image models: a projection head, optionally the last blocks.

The frozen part of the network runs once per image (and per augmented view) and is cached (see
:mod:`visdex.train.features`); training then only runs the trained stages and the head, on
P x K batches (P classes, K images each) with one of the losses of :mod:`visdex.train.losses`.
Every epoch is scored on the held-out split (mAP@R, leave-one-out); the best epoch is saved as a
head directory that :func:`visdex.models.load_embedder` loads (format: :mod:`visdex.models.head`).
The run ends with :func:`visdex.evaluate.eval_labelled_folder` on the held-out images with the base
model and with the saved model: the before / after numbers are those ``visdex eval`` would report.

>>> res = finetune_labelled("effnet-lite0", "photos/", "runs/photos", val="val/", train_blocks=3)  # doctest: +SKIP
>>> res.change["map@r"]["relative"]                                                              # doctest: +SKIP
0.21
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..evaluate import eval_labelled_folder, metrics_from_labels, read_labelled
from .common import (
    FinetuneResult,
    Phase,
    RunDir,
    Timer,
    TrainProgress,
    TrainSetupError,
    check_labelled,
    check_least,
    epoch_rng,
    load_state,
    read_set,
    save_state,
    set_lr,
    split_by_group,
)
from .features import CachedFeatures, cached_features
from .losses import METRIC_LOSSES, make_metric_loss

K_PER_CLASS = 4  # images per class in a batch: enough positives for every loss, many classes per batch
SCORE = "map@r"  # what picks the best epoch: stricter than Recall@K, which saturates first
BACKBONE_LR_FACTOR = 0.1  # pretrained blocks move 10x slower than the new head
LOSS_LR_FACTOR = 10.0  # ArcFace class centres start random: let them catch up fast


def read_labelled_sets(
    data, val, val_fraction: float, test, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]] | None]:
    """(train, val, test) pairs; without ``val``, ``val_fraction`` of the classes is held out of ``data``."""
    train = read_set(read_labelled, data, "training")
    if val is not None:
        held = read_set(read_labelled, val, "held-out")
    else:
        check_labelled(train, "training", min_classes=3)  # two to train on, one held out
        train, held = split_by_group(train, val_fraction, seed)
    check_labelled(train, "training")
    check_labelled(held, "held-out", min_classes=1)
    tests = read_set(read_labelled, test, "test") if test is not None else None
    if tests is not None:
        check_labelled(tests, "test", min_classes=1)
    return train, held, tests


def _settings(model, data, val, val_fraction, test, loss, dim, train_blocks, augment, epochs, batch_size, lr, seed,
              device) -> dict:  # fmt: skip
    def where(p):
        return None if p is None else str(Path(p).expanduser().resolve())

    return {"kind": "labelled", "model": str(model), "data": where(data), "val": where(val),
            "val_fraction": None if val is not None else val_fraction, "test": where(test), "loss": loss,
            "dim": dim, "train_blocks": train_blocks, "augment": augment, "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "seed": seed, "device": device}  # fmt: skip


def _check_options(loss: str, dim: int, train_blocks: int, augment: int, epochs: int, batch_size: int) -> None:
    if loss not in METRIC_LOSSES:
        raise TrainSetupError(f"unknown loss {loss!r}; choose one of {', '.join(METRIC_LOSSES)}")
    check_least(dim=(dim, 0), train_blocks=(train_blocks, 0), augment=(augment, 0), epochs=(epochs, 1))
    if dim == 0 and train_blocks == 0:
        raise TrainSetupError("{field} 0 (no projection head) with train_blocks 0 leaves nothing to train", field="dim")
    if batch_size < 2 * K_PER_CLASS:
        raise TrainSetupError(f"{{field}} must be at least {2 * K_PER_CLASS} (2 classes x {K_PER_CLASS} images), "
                              f"not {batch_size}", field="batch_size")  # fmt: skip


def pk_batches(codes: np.ndarray, batch_size: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``steps`` batches of P classes x K items (row indices into ``codes``); only classes with 2+ items.

    >>> [len(b) for b in pk_batches(np.array([0, 0, 1, 1, 2, 2]), 8, 2, np.random.default_rng(0))]
    [8, 8]
    """
    by_class = [np.flatnonzero(codes == c) for c in np.unique(codes)]
    by_class = [rows for rows in by_class if len(rows) >= 2]
    p = max(2, min(len(by_class), batch_size // K_PER_CLASS))
    batches = []
    for _ in range(steps):
        chosen = rng.choice(len(by_class), size=p, replace=False)
        batches.append(np.concatenate([
            rng.choice(by_class[c], size=K_PER_CLASS, replace=len(by_class[c]) < K_PER_CLASS) for c in chosen
        ]))  # fmt: skip
    return batches


def _pca_rows(x: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """``dim`` orthonormal rows spanning the top principal directions of ``x`` (random beyond its rank):
    a head that starts close to the base vectors instead of a random projection."""
    _, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    rows = vt[:dim]
    if len(rows) < dim:
        extra = np.random.default_rng([seed, 11]).standard_normal((dim - len(rows), x.shape[1]))
        q, _ = np.linalg.qr(np.concatenate([rows, extra]).T)  # keeps the span of the principal rows first
        rows = q.T[:dim]
    return rows.astype(np.float32)


class _Model:
    """Backbone suffix + head, the trainable part, with a no-grad batch embedder for scoring."""

    def __init__(self, backbone, dim: int, in_dim: int):
        import torch

        self.backbone = backbone
        self.head = torch.nn.Linear(in_dim, dim, bias=False).to(backbone.device) if dim else None
        self.out_dim = dim or in_dim

    def __call__(self, x):
        import torch.nn.functional as F

        z = self.backbone.pooled(x)
        return z if self.head is None else F.normalize(self.head(z), dim=1)

    def embed(self, feats: np.ndarray, batch: int = 256) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for s in range(0, len(feats), batch):
                x = torch.from_numpy(feats[s : s + batch].astype(np.float32)).to(self.backbone.device)
                out.append(self(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.out_dim), np.float32)

    def pooled(self, feats: np.ndarray, batch: int = 256) -> np.ndarray:
        import torch

        with torch.no_grad():
            return np.concatenate([
                self.backbone.pooled(torch.from_numpy(feats[s : s + batch].astype(np.float32)).to(self.backbone.device))
                .float().cpu().numpy() for s in range(0, len(feats), batch)
            ])  # fmt: skip


def finetune_labelled(
    model: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    val: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    test: str | os.PathLike | None = None,
    loss: str = "supcon",
    dim: int = 128,
    train_blocks: int = 0,
    augment: int = 0,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    progress: TrainProgress | None = None,
) -> FinetuneResult:
    """Metric-learn a projection head (``dim``; 0 = none) and the last ``train_blocks`` blocks of ``model``
    on a labelled folder or CSV; the best epoch on the held-out split is saved in ``out`` as a model.

    ``val``: the held-out set that picks the best epoch (default: ``val_fraction`` of the classes of
    ``data``, by class). ``test``: where the before / after evaluation runs (default: ``val``).
    ``lr`` is the head's learning rate; trained blocks use a tenth of it. ``augment``: extra random
    views per training image, cached with the rest.

    >>> finetune_labelled("effnet-lite0", "train/", "runs/a", val="val/", dim=128).after["map@r"]  # doctest: +SKIP
    0.71
    """
    from ..models import load_embedder
    from ..models.head import HeadEmbedder

    progress = progress or TrainProgress()
    timer = Timer()
    _check_options(loss, dim, train_blocks, augment, epochs, batch_size)
    train_items, val_items, test_items = read_labelled_sets(data, val, val_fraction, test, seed)
    settings = _settings(model, data, val, val_fraction, test, loss, dim, train_blocks, augment, epochs, batch_size,
                         lr, seed, device)  # fmt: skip
    run = RunDir(out)
    run.prepare(resume)
    state = load_state(run, settings) if resume else None
    emb = load_embedder(model, device=device)
    if isinstance(emb, HeadEmbedder):
        raise TrainSetupError(f"{model} is already fine-tuned; fine-tune its base ({emb.config.get('base')}) instead")
    report_items = test_items or val_items
    before = state["before"] if state else _evaluate(emb, report_items, progress, "eval before")

    from .backbones import Backbone

    backbone = Backbone(emb, train_blocks)
    train_f = cached_features(backbone, [p for p, _ in train_items], views=1 + augment, seed=seed,
                              cache_dir=run.cache, progress=progress, label="caching train features")  # fmt: skip
    val_f = cached_features(backbone, [p for p, _ in val_items], cache_dir=run.cache, progress=progress,
                            label="caching held-out features")  # fmt: skip
    train_labels = [train_items[i][1] for i in train_f.kept]
    val_labels = [val_items[i][1] for i in val_f.kept]
    check_labelled([("", lab) for lab in train_labels], "readable training")
    check_labelled([("", lab) for lab in val_labels], "readable held-out", min_classes=1)

    trainer = _Trainer(backbone, train_f, train_labels, loss, dim, lr, seed)
    if state is not None:
        trainer.restore(state)
    else:
        trainer.history.append({"epoch": 0, "loss": None, "val": _score(trainer.net, val_f, val_labels)})
    start = trainer.epoch + 1
    head_info = {"base": loadable_name(model), "base_revision": emb.fingerprint().revision, "in_dim": int(emb.dim)}
    for epoch in range(start, epochs + 1):
        epoch_timer = Timer()
        mean_loss = trainer.train_epoch(epoch, epochs, batch_size, progress)
        scores = _score(trainer.net, val_f, val_labels)
        improved = scores[SCORE] > trainer.best_score
        if improved:
            trainer.best_epoch, trainer.best_score = epoch, scores[SCORE]
            _save_head_dir(
                run.root, trainer.net, {**head_info, "training": {**settings, "epoch": epoch, "val": scores}}
            )
        trainer.history.append(
            {"epoch": epoch, "loss": mean_loss, "val": scores, "seconds": round(epoch_timer.seconds, 3)}
        )
        save_state(run, {**trainer.state(), "settings": settings, "before": before})
        progress.epoch_done(epoch, epochs, mean_loss, scores[SCORE], improved)

    after = _evaluate(load_embedder(str(run.root), device=device), report_items, progress, "eval after")
    result = FinetuneResult(
        kind="labelled", model_dir=str(run.root), base=str(model), heldout="test" if test_items else "val",
        before=before, after=after, best_epoch=trainer.best_epoch, epochs=epochs, history=trainer.history,
        settings=settings, seconds=round(timer.seconds, 3), resumed_from=(start - 1) if state is not None else 0,
        failures=train_f.failures + val_f.failures,
    )  # fmt: skip
    run.write_run(result.to_dict())
    return result


class _Trainer:
    """The trainable model, its loss and optimiser over cached training features, and the run's bookkeeping."""

    def __init__(self, backbone, feats: CachedFeatures, labels: list[str], loss: str, dim: int, lr: float, seed: int):
        import torch

        self.backbone, self.feats, self.seed = backbone, feats, seed
        classes, self.codes = np.unique(np.asarray(labels), return_inverse=True)
        torch.manual_seed(seed)
        self.net = _Model(backbone, dim, in_dim=int(backbone.emb.dim))
        if self.net.head is not None:  # principal directions of the base vectors: starts close to the base
            self.net.head.weight.data.copy_(torch.from_numpy(_pca_rows(self.net.pooled(feats.view(0)), dim, seed)))
        self.loss = make_metric_loss(loss, dim=self.net.out_dim, n_classes=len(classes)).to(backbone.device)
        groups = [
            {"params": list(self.net.head.parameters()) if self.net.head is not None else [], "base_lr": lr},
            {"params": backbone.trainable_parameters(), "base_lr": lr * BACKBONE_LR_FACTOR},
            {"params": list(self.loss.parameters()), "base_lr": lr * LOSS_LR_FACTOR},
        ]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=1e-4)
        self.epoch, self.best_epoch, self.best_score = 0, 0, -math.inf
        self.history: list[dict] = []

    def train_epoch(self, epoch: int, epochs: int, batch_size: int, progress: TrainProgress) -> float:
        """One pass of P x K batches (a random cached view per item); returns the mean loss."""
        import torch

        feats, device = self.feats, self.backbone.device
        steps = max(1, math.ceil(feats.n / batch_size))
        rng = epoch_rng(self.seed, epoch)
        batches = pk_batches(self.codes, batch_size, steps, rng)
        views = rng.integers(0, feats.views, size=(steps, batch_size))
        progress.phase(f"epoch {epoch}/{epochs}", steps)
        losses = []
        for step, rows in enumerate(batches):
            set_lr(self.optimizer, (epoch - 1) * steps + step, epochs * steps, warmup=0)
            x = torch.from_numpy(feats.features[views[step, : len(rows)] * feats.n + rows].astype(np.float32))
            value = self.loss(self.net(x.to(device)), torch.from_numpy(self.codes[rows]).to(device))
            self.optimizer.zero_grad(set_to_none=True)
            value.backward()
            self.optimizer.step()
            losses.append(float(value.detach()))
            progress.advance(1)
        self.epoch = epoch
        return float(np.mean(losses))

    def state(self) -> dict:
        head = self.net.head.state_dict() if self.net.head is not None else None
        return {"epoch": self.epoch, "head": head, "backbone": self.backbone.trained_tensors(),
                "loss": self.loss.state_dict(), "optimizer": self.optimizer.state_dict(), "history": self.history,
                "best_epoch": self.best_epoch, "best_score": self.best_score}  # fmt: skip

    def restore(self, state: dict) -> None:
        if self.net.head is not None:
            self.net.head.load_state_dict(state["head"])
        self.backbone.load_trained(state["backbone"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.history = state["epoch"], state["history"]
        self.best_epoch, self.best_score = state["best_epoch"], state["best_score"]


def _evaluate(emb, items: Sequence[tuple[str, str]], progress: TrainProgress, label: str) -> dict:
    res = eval_labelled_folder(emb, list(items), progress=Phase(progress, label))
    return {**res.metrics.to_dict(), "images": res.images, "classes": res.classes}


def _score(net: _Model, feats: CachedFeatures, labels: list[str]) -> dict:
    return metrics_from_labels(net.embed(feats.view(0)), labels).to_dict()


def loadable_name(model: str) -> str:
    """The base as the head file names it: catalog and hf: names as they are, local folders absolute."""
    p = Path(model).expanduser()
    return str(p.resolve()) if not model.startswith("hf:") and p.is_dir() else model


def _save_head_dir(root: Path, net: _Model, config: dict) -> None:
    """The trained tensors (changed backbone tensors + the head) and their config, as a head directory."""
    from ..models.head import BACKBONE_PREFIX, PROJ_KEY
    from .common import write_head_dir

    tensors = {BACKBONE_PREFIX + k: v for k, v in net.backbone.trained_tensors().items()}
    if net.head is not None:
        tensors[PROJ_KEY] = net.head.weight.detach().cpu().contiguous()
    write_head_dir(root, tensors, {**config, "dim": net.head.out_features if net.head is not None else 0,
                                   "backbone_tensors": len(tensors) - (net.head is not None)})  # fmt: skip
