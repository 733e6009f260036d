"""What both kinds of fine-tuning share: the run directory, checkpoints, resume, seeds, splits, results.

A run writes into one output directory, which is also the model directory:

```
OUT/                    the best checkpoint as a loadable model (head files, or save_pretrained files)
OUT/training/state.pt   the last finished epoch: trainable weights, optimiser, history (for --resume)
OUT/training/run.json   settings, per-epoch history, and the before / after evaluation
OUT/training/cache/     cached backbone features (derived data: delete freely)
```

Randomness is derived from ``(seed, epoch)`` at the start of every epoch, so a run resumed after
epoch k draws exactly what the uninterrupted run would have drawn: same seed, same result.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadDataset, VisdexError
from ..progress import TrainProgress

TRAIN_DIR = "training"
STATE_FILE = "state.pt"
RUN_FILE = "run.json"
# Settings that may differ between a run and its --resume without changing the result.
RESUME_FREE = ("device", "workers")


class TrainSetupError(VisdexError):
    """Options that cannot work together, an output directory in the way, or nothing to resume."""

    exit_code = 2
    http_status = 400


def check_least(**values: tuple[float | None, float]) -> None:
    """``name=(value, least)`` for each setting: a TrainSetupError naming the first whose value is under its least
    (None: not set, nothing to check).

    >>> check_least(epochs=(0, 1))
    Traceback (most recent call last):
    visdex.train.common.TrainSetupError: epochs must be at least 1, not 0
    """
    for name, (value, least) in values.items():
        if value is not None and value < least:
            raise TrainSetupError(f"{{field}} must be at least {least}, not {value}", field=name)


# -- progress ------------------------------------------------------------------------------------
class Phase:
    """A :class:`TrainProgress` seen as evaluate.py's embedding progress, under a fixed label."""

    def __init__(self, progress: TrainProgress, label: str):
        self.progress, self.label = progress, label

    def start(self, total: int) -> None:
        self.progress.phase(self.label, total)

    def advance(self, n: int = 1) -> None:
        self.progress.advance(n)

    def failed(self, path: str, reason: str) -> None:
        self.progress.failed(path, reason)


# -- results -------------------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    """A finished run: where the model is, what it was measured on, before and after."""

    kind: str
    model_dir: str
    base: str
    heldout: str
    before: dict
    after: dict
    best_epoch: int
    epochs: int
    history: list[dict]
    settings: dict
    seconds: float
    resumed_from: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def change(self) -> dict[str, dict[str, float]]:
        """Per metric: the absolute and the relative change from before to after."""
        return metric_change(self.before, self.after)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["change"] = self.change
        d["failures"] = [{"path": p, "reason": r} for p, r in self.failures]
        return d


_COUNTS = ("queries", "skipped", "images", "classes", "captions")


def metric_change(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """``{"map@r": {"before": .5, "after": .6, "delta": .1, "relative": .2}, ...}`` for the shared numeric keys."""
    out = {}
    for key, b in before.items():
        a = after.get(key)
        if isinstance(b, (int, float)) and isinstance(a, (int, float)) and key not in _COUNTS:
            rel = (a - b) / b if b else float("nan")
            out[key] = {
                "before": round(b, 6),
                "after": round(a, 6),
                "delta": round(a - b, 6),
                "relative": round(rel, 6),
            }
    return out


# -- run directory ---------------------------------------------------------------------------------
class RunDir:
    """The output directory of one training run (see the module docstring)."""

    def __init__(self, out: str | os.PathLike):
        self.root = Path(out).expanduser().resolve()
        self.train = self.root / TRAIN_DIR
        self.state = self.train / STATE_FILE
        self.cache = self.train / "cache"

    def prepare(self, resume: bool) -> None:
        """Check the directory suits a new run (empty or missing) or a resume (has a checkpoint)."""
        if resume:
            if not self.state.is_file():
                raise TrainSetupError(f"nothing to resume in {self.root}: no {TRAIN_DIR}/{STATE_FILE} (start without "
                                      "{field})", field="resume")  # fmt: skip
            return
        if self.state.is_file():
            raise TrainSetupError(f"{self.root} holds a training run already; add {{field}} to continue it, "
                                  "or choose another output directory", field="resume")  # fmt: skip
        if self.root.exists() and (not self.root.is_dir() or any(p.name != TRAIN_DIR for p in self.root.iterdir())):
            raise TrainSetupError(f"{{field}} {self.root} exists and is not empty; give a new or empty directory",
                                  field="out")  # fmt: skip
        self.cache.mkdir(parents=True, exist_ok=True)

    def write_run(self, data: dict) -> None:
        write_text_atomic(self.train / RUN_FILE, json.dumps(data, indent=2, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_head_dir(root: Path, tensors: dict, config: dict) -> None:
    """A head directory (see :mod:`visdex.models.head`): ``head.safetensors`` first, then ``visdex_head.json``
    (format and version added), each written to a temp file and renamed into place."""
    from safetensors.torch import save_file

    from ..models.head import FORMAT, HEAD_FILE, VERSION, WEIGHTS_FILE

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{WEIGHTS_FILE}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, root / WEIGHTS_FILE)
    write_text_atomic(root / HEAD_FILE, json.dumps({"format": FORMAT, "version": VERSION, **config}, indent=2,
                                                   default=str))  # fmt: skip


def save_state(run: RunDir, state: dict) -> None:
    """The epoch checkpoint, written to a temp file and renamed: a crash keeps the previous one whole."""
    import torch

    run.train.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=run.train, prefix=STATE_FILE, suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, run.state)


def load_state(run: RunDir, settings: dict) -> dict:
    """The last epoch checkpoint, refused when it was made with other settings (a different run)."""
    import torch

    try:
        state = torch.load(run.state, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged checkpoint: say so, do not guess
        raise TrainSetupError(f"cannot read the checkpoint {run.state}: {exc}") from exc
    old = state.get("settings", {})
    differ = sorted(k for k in set(old) | set(settings) if k not in RESUME_FREE and old.get(k) != settings.get(k))
    if differ:
        what = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in differ)
        raise TrainSetupError(f"{{field}} needs the settings of the run in {run.root}; these differ: {what}",
                              field="resume")  # fmt: skip
    return state


# -- randomness and schedules ------------------------------------------------------------------------
def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The data-order generator of one epoch, and torch / random seeded from the same pair."""
    import torch

    torch.manual_seed(seed * 100_003 + epoch)
    random.seed(seed * 100_003 + epoch)
    return np.random.default_rng([seed, epoch])


def cosine_lr(step: int, total: int, base: float, warmup: int = 0) -> float:
    """Linear warm-up, then cosine decay to 0 over ``total`` steps; a pure function of the step."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer, step: int, total: int, warmup: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = cosine_lr(step, total, group["base_lr"], warmup)


# -- data splits -------------------------------------------------------------------------------------
def split_by_group(
    items: Sequence[tuple[str, str]], fraction: float, seed: int, key: int = 1
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Hold out ``fraction`` of the groups (labels with ``key=1``, images with ``key=0``), all their rows
    together, so nothing held out was seen in training.

    >>> tr, ho = split_by_group([("a", "x"), ("b", "x"), ("c", "y"), ("d", "y"), ("e", "z"), ("f", "z")], 0.34, 0)
    >>> sorted({lab for _, lab in ho}) != sorted({lab for _, lab in tr})
    True
    """
    if not 0 < fraction < 1:
        # named as the fine-tuning functions call it: their val_fraction is this fraction
        raise TrainSetupError(f"{{field}} must be between 0 and 1 (exclusive), not {fraction}", field="val_fraction")
    groups = sorted({row[key] for row in items})
    rng = np.random.default_rng([seed, 7])
    n_out = min(len(groups) - 1, max(1, round(len(groups) * fraction)))
    held = {groups[i] for i in rng.permutation(len(groups))[:n_out]}
    return [r for r in items if r[key] not in held], [r for r in items if r[key] in held]


def read_set(reader, source, what: str) -> list[tuple[str, str]]:
    """``reader(source)`` (evaluate.py's :func:`read_labelled` or :func:`read_captions`), with a binary
    file where a CSV / JSONL was expected reported as a :class:`BadDataset`, not a decoding traceback."""
    try:
        return reader(source)
    except UnicodeDecodeError as exc:
        raise BadDataset(f"the {what} set {source} is not a UTF-8 CSV or JSONL file ({exc.reason})") from exc


def check_labelled(items: Sequence[tuple[str, str]], what: str, min_classes: int = 2) -> None:
    """A labelled split must have ``min_classes`` labels with two or more images each."""
    counts: dict[str, int] = {}
    for _, label in items:
        counts[label] = counts.get(label, 0) + 1
    usable = sum(1 for c in counts.values() if c >= 2)
    if usable < min_classes:
        raise BadDataset(
            f"the {what} set has {len(items)} images in {len(counts)} class(es), {usable} of them with 2 or more "
            f"images; it needs at least {min_classes} such classes"
            + (" (metric learning learns what tells classes apart)" if min_classes > 1 else "")
        )


def file_signature(paths: Sequence[str]) -> str:
    """sha256 over (path, size, mtime) of every file: cached features are reused only for the same files."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0
