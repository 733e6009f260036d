"""``visdex finetune``: fine-tune a model on the user's labelled or captioned images, and show what it changed."""

from __future__ import annotations

import json
import math
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..cli import app, err, out
from ..progress import TrainProgress

if TYPE_CHECKING:
    from rich.progress import TaskID


class TuneKind(str, Enum):
    labelled = "labelled"
    captions = "captions"
    pca = "pca"


class Tower(str, Enum):
    image = "image"
    text = "text"


class _RichTrainProgress(TrainProgress):
    """Rich bars for the phases of a run (feature caching, epochs, evaluations) and one line per epoch."""

    MAX_SKIP_LINES = 20

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.skipped = 0
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err, disable=quiet,
        )  # fmt: skip
        self.task: TaskID | None = None
        self.t0 = time.perf_counter()
        self.label = ""

    def phase(self, label: str, total: int) -> None:
        if not self.bar.live.is_started:
            self.bar.start()
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.label, self.t0 = label, time.perf_counter()
        self.task = self.bar.add_task(label, total=total, rate="")

    def start(self, total: int) -> None:
        self.phase(self.label or "working", total)

    def advance(self, n: int = 1) -> None:
        if self.task is None:
            return
        done = self.bar.tasks[-1].completed + n
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.task, advance=n, rate=f"{rate:.1f}/s")

    def failed(self, path: str, reason: str) -> None:
        self.skipped += 1
        if not self.quiet and self.skipped <= self.MAX_SKIP_LINES:
            self.bar.console.print(f"[yellow]skipping[/] {escape(path)}: {escape(reason)}", highlight=False)

    def epoch_done(self, epoch: int, epochs: int, loss: float, score: float, best: bool) -> None:
        if not self.quiet:
            mark = "  [green]best, saved[/]" if best else ""
            self.bar.console.print(f"epoch {epoch}/{epochs}  loss {loss:.4f}  held-out {score:.4f}{mark}",
                                   highlight=False)  # fmt: skip

    def stop(self) -> None:
        self.bar.stop()


def _check_options(kind: TuneKind, model: str, freeze: list[Tower], lora: int, lora_alpha, loss, dim, augment) -> None:
    """Options of the other kind are a mistake, not something to ignore silently."""
    from ..models import get_spec, list_models
    from ..train.common import TrainSetupError

    if kind is TuneKind.captions:
        wrong = [n for n, v in (("--loss", loss), ("--dim", dim), ("--augment", augment)) if v is not None]
    else:
        wrong = [n for n, v in (("--freeze", freeze), ("--lora", lora), ("--lora-alpha", lora_alpha)) if v]
        if kind is TuneKind.pca:
            wrong += [n for n, v in (("--loss", loss), ("--augment", augment)) if v is not None]
    if wrong:
        raise TrainSetupError(f"{', '.join(wrong)} do(es) not apply to `visdex finetune {kind.value}`")
    if kind is TuneKind.captions:
        from ..train.contrastive import check_caption_model_name

        check_caption_model_name(model)
    elif model not in {s.name for s in list_models()} and not (model.startswith("hf:") or Path(model).is_dir()):
        get_spec(model)  # UnknownModel, with the known names


@app.command("finetune")
def finetune(
    kind: TuneKind = typer.Argument(
        ...,
        help="labelled: one subfolder per class, or a CSV of path,label. captions: a CSV/JSONL of image,caption. "
        "pca: a folder of images (or an index built with the model): fewer dimensions, no labels.",
    ),
    data: Path = typer.Argument(..., help="The training set (folder or file; pca: folder or index)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output directory: becomes the fine-tuned model."),
    model: str | None = typer.Option(None, "--model", "-m", help="The model to start from (see `visdex models`)."),
    val: Path | None = typer.Option(None, "--val", help="Held-out set that picks the best epoch (same format)."),
    val_fraction: float = typer.Option(
        0.2, "--val-fraction", help="Without --val: share of classes / images held out."
    ),
    test: Path | None = typer.Option(None, "--test", help="Set for the before/after evaluation (default: --val)."),
    epochs: int = typer.Option(10, "--epochs", min=1, help="Passes over the training set."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=2, help="Items per step (default: labelled 64, captions 32)."
    ),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="Learning rate (default: labelled 1e-3 for the head, trained blocks 1/10 of it; "
        "captions 1e-5, with --lora 1e-4).",
    ),
    train_blocks: int | None = typer.Option(
        None,
        "--train-blocks",
        min=0,
        help="Train the last N blocks too (default: labelled 0 = head only; captions: whole towers).",
    ),
    loss: str | None = typer.Option(None, "--loss", help="labelled: triplet, ms, supcon or arcface (default: supcon)."),
    dim: int | None = typer.Option(
        None,
        "--dim",
        min=0,
        help="labelled: output dimension of the head; 0 = no head, keep the base's (default: 128). "
        "pca: dimensions kept (default: 128).",
    ),
    sample: int = typer.Option(20_000, "--sample", min=100, help="pca: images (or vectors) to fit on, at most."),
    augment: int | None = typer.Option(
        None, "--augment", min=0, help="labelled: extra random views per training image, cached (default: 0)."
    ),
    freeze: list[Tower] = typer.Option([], "--freeze", help="captions: a tower that does not train (repeatable)."),
    lora: int = typer.Option(0, "--lora", min=0, help="captions: train rank-R LoRA adapters instead of the weights."),
    lora_alpha: float | None = typer.Option(
        None, "--lora-alpha", help="captions: LoRA scale numerator (default: the rank)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for splits, batches and initialisation: same seed, same model."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last finished epoch."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, mps."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fine-tune a model on your images; the best epoch on held-out data is saved in --out as a model.

    labelled: metric learning (projection head, optionally the last blocks) for image search.
    captions: contrastive image-text training of a CLIP / SigLIP / OpenCLIP model (towers, last blocks or LoRA).
    pca: no labels, fewer dimensions (--dim) for a memory budget; reports what the reduction keeps.
    labelled and captions end with the held-out evaluation of `visdex eval`, before and after. Use the result with
    `visdex index PHOTOS --model OUT`."""
    from .. import config

    name = model or config.get("model")
    _check_options(kind, name, freeze, lora, lora_alpha, loss, dim, augment)
    bar = _RichTrainProgress(quiet or as_json)
    if kind is TuneKind.pca:
        from ..train.pca import fit_pca

        try:
            pca = fit_pca(name, data, out_dir, dim=128 if dim is None else dim, sample=sample, seed=seed,
                          device=device or config.get("device"), progress=bar)  # fmt: skip
        finally:
            bar.stop()
        _print_pca(pca, as_json)
        return
    common: dict[str, Any] = dict(val=val, val_fraction=val_fraction, test=test, epochs=epochs, lr=lr, seed=seed,
                                  resume=resume, device=device or config.get("device"), progress=bar)  # fmt: skip
    try:
        if kind is TuneKind.labelled:
            from ..train.metric import finetune_labelled

            result = finetune_labelled(name, data, out_dir, loss=loss or "supcon", dim=128 if dim is None else dim,
                                       train_blocks=train_blocks or 0, augment=augment or 0,
                                       batch_size=batch_size or 64, **{**common, "lr": lr or 1e-3})  # fmt: skip
        else:
            from ..train.contrastive import finetune_captions

            towers = [t.value for t in freeze]
            result = finetune_captions(name, data, out_dir, freeze=towers, train_blocks=train_blocks, lora=lora,
                                       lora_alpha=lora_alpha, batch_size=batch_size or 32, **common)  # fmt: skip
    finally:
        bar.stop()
    _print_result(result, as_json)


def _print_pca(result, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(result.to_dict(), default=str))
        return
    out.print(f"PCA {result.in_dim} -> {result.dim} dimensions, fitted on {result.fitted_on} images "
              f"({result.failed} unreadable skipped) in {result.seconds:.1f}s", highlight=False)  # fmt: skip
    out.print(f"variance kept           {result.variance_kept:.1%}", highlight=False)
    out.print(f"neighbours kept (R@10)  {result.neighbour_recall_at_10:.3f}  (of each held-out image's 10 nearest at "
              f"{result.in_dim}-d, the share still among its 10 nearest at {result.dim}-d; {result.heldout} images)",
              highlight=False)  # fmt: skip
    out.print(f"model saved in {escape(result.model_dir)}; use it with: visdex index PHOTOS --model "
              f"{escape(result.model_dir)}", highlight=False)  # fmt: skip


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _print_result(result, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(result.to_dict(), default=str))
        return
    where = "test set" if result.heldout == "test" else "held-out set (it also picked the epoch)"
    table = Table(box=None, title=f"before / after on the {where}", title_justify="left")
    for c in ("metric", "before", "after", "change"):
        table.add_column(c, justify="left" if c == "metric" else "right")
    for metric, ch in result.change.items():
        rel = ch["relative"]
        pct = "" if rel is None or math.isnan(rel) else f" ({rel:+.1%})"
        colour = "green" if ch["delta"] > 0 else "red" if ch["delta"] < 0 else "dim"
        table.add_row(metric, _fmt(ch["before"]), _fmt(ch["after"]), f"[{colour}]{ch['delta']:+.3f}{pct}[/]")
    (out if out.is_terminal else Console(file=out.file, width=1000, soft_wrap=True)).print(table)
    resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from else ""
    out.print(f"best epoch {result.best_epoch} of {result.epochs}{resumed}; {result.seconds:.1f}s", highlight=False)
    out.print(f"model saved in {escape(result.model_dir)}; use it with: visdex index PHOTOS --model "
              f"{escape(result.model_dir)}", highlight=False)  # fmt: skip
    if result.failures:
        err.print(f"{len(result.failures)} unreadable file(s) skipped; --json lists them", style="dim")
