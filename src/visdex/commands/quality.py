"""``visdex eval``: measure and compare models on the user's own labelled or captioned images."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..cli import BarProgress, app, err, out


class EvalKind(str, Enum):
    labelled = "labelled"
    captions = "captions"


@dataclass
class _Unsupported:
    """A model that cannot do the task (captions on an image-only model): a row of the report, not a failure."""

    model: str
    reason: str

    def to_dict(self) -> dict:
        return {"model": self.model, "unsupported": self.reason}


def _check_model_name(name: str, needs_text: bool) -> _Unsupported | None:
    """Before any model loads: an unknown name fails; an image-only catalog model for captions is reported."""
    from ..errors import UnknownModel
    from ..evaluate import needs_text_model
    from ..models import get_spec, list_models

    known = {s.name for s in list_models()}
    if name in known:
        if needs_text and not get_spec(name).supports_text:
            return _Unsupported(name, str(needs_text_model(name)))
        return None
    if (name.startswith("hf:") and len(name) > 3) or Path(name).expanduser().is_dir():
        return None
    raise UnknownModel(name, sorted(known))


def _fmt(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.3f}"


def _best(values: list[float]) -> float:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return max(clean) if clean else float("nan")


def _add_metric_columns(table: Table, rows: list[list[float]], columns: list[str]) -> list[list[str]]:
    """Format metric cells, bolding the best value of each column so the winner stands out."""
    for c in columns:
        table.add_column(c, justify="right")
    best = [_best([r[j] for r in rows]) for j in range(len(columns))]
    return [[f"[bold green]{_fmt(v)}[/]" if len(rows) > 1 and v == best[j] else _fmt(v) for j, v in enumerate(r)]
            for r in rows]  # fmt: skip


def _labelled_table(results) -> Table:
    table = Table(box=None, title="image-to-image retrieval (leave-one-out)", title_justify="left")
    for c in ("model", "dim", "images"):
        table.add_column(c, justify="left" if c == "model" else "right")
    keys = ["recall@1", "recall@5", "recall@10", "map@r", "ndcg@10"]
    rows = [[r.metrics.values.get(k, float("nan")) for k in keys] for r in results]
    cells = _add_metric_columns(table, rows, ["R@1", "R@5", "R@10", "mAP@R", "nDCG@10"])
    table.add_column("img/s", justify="right")
    for r, cell in zip(results, cells, strict=True):
        table.add_row(escape(r.model), str(r.dim), str(r.images), *cell, f"{r.images_per_second:.1f}")
    return table


def _captions_table(results) -> Table:
    table = Table(box=None, title="text-to-image (T→I) and image-to-text (I→T) retrieval", title_justify="left")
    for c in ("model", "dim", "images", "captions"):
        table.add_column(c, justify="left" if c == "model" else "right")
    ks = ["recall@1", "recall@5", "recall@10"]
    nan = [float("nan")] * 2 * len(ks)
    rows = [
        nan
        if isinstance(r, _Unsupported)
        else [r.text_to_image.values[k] for k in ks] + [r.image_to_text.values[k] for k in ks]
        for r in results
    ]
    cells = _add_metric_columns(table, rows, [f"{d} R@{k}" for d in ("T→I", "I→T") for k in (1, 5, 10)])
    table.add_column("img/s", justify="right")
    for r, cell in zip(results, cells, strict=True):
        if isinstance(r, _Unsupported):
            table.add_row(escape(r.model), "-", "-", "-", *cell, "[yellow]unsupported[/]")
        else:
            table.add_row(escape(r.model), str(r.dim), str(r.images), str(r.captions), *cell,
                          f"{r.images_per_second:.1f}")  # fmt: skip
    return table


@app.command("eval")
def eval_models(
    kind: EvalKind = typer.Argument(
        ..., help="labelled: one subfolder per class, or a CSV of path,label. captions: a CSV/JSONL of image,caption."
    ),
    path: Path = typer.Argument(..., help="The folder or file with the evaluation set."),
    model: list[str] = typer.Option([], "--model", "-m", help="Model to evaluate; repeat to compare several."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per model batch."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, mps."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    hubness: bool | None = typer.Option(
        None,
        "--hubness/--no-hubness",
        help="Rank by CSLS hubness reduction (text->image for captions), or not; default: as search does for "
        "each model (visdex.hubness.DEFAULT_ON). Run both to compare.",
    ),  # fmt: skip
) -> None:
    """Measure retrieval quality and speed of one or more models on your own labelled or captioned images.

    labelled: every image queries all others (leave-one-out); Recall@1/5/10, mAP@R, nDCG@10.
    captions: captions find their image and images their captions; Recall@1/5/10 both ways."""
    from .. import config
    from ..errors import UnsupportedModality
    from ..evaluate import eval_captions, eval_labelled_folder, read_captions, read_labelled
    from ..hubness import default_on
    from ..models import load_embedder

    names = list(dict.fromkeys(model)) or [config.get("model")]
    captions = kind is EvalKind.captions
    checked = {name: _check_model_name(name, captions) for name in names}  # all before the first (slow) load
    data = read_captions(path) if captions else read_labelled(path)  # read once, shared by all models
    run = eval_captions if captions else eval_labelled_folder
    results: list = []
    for n, name in enumerate(names):
        if checked[name] is not None:
            results.append(checked[name])
            continue
        embedder = load_embedder(name, device=device or config.get("device"))
        bar = BarProgress(quiet or as_json, label=f"{name} ({n + 1}/{len(names)})")
        if any(not isinstance(r, _Unsupported) for r in results):
            bar.MAX_SKIP_LINES = 0  # the same unreadable files: list them once, for the first model
        try:
            on = default_on(name) if hubness is None else hubness
            results.append(run(embedder, data, batch_size=batch_size, progress=bar, hubness=on))
        except UnsupportedModality as e:  # a hf: or local model found image-only once loaded
            results.append(_Unsupported(name, str(e)))
        finally:
            bar.stop()
        del embedder  # one model in memory at a time
    _print_results(kind, path, results, as_json)
    unsupported = [r for r in results if isinstance(r, _Unsupported)]
    if len(unsupported) == len(results):  # nothing measured: say so with the exit code too
        raise UnsupportedModality(unsupported[0].reason)


def _print_results(kind: EvalKind, path: Path, results: list, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps({"task": kind.value, "data": str(path), "results": [r.to_dict() for r in results]}))
        return
    table = _captions_table(results) if kind is EvalKind.captions else _labelled_table(results)
    # piped: a console as wide as the table needs, so no header or model path is folded or cut
    (out if out.is_terminal else Console(file=out.file, width=1000, soft_wrap=True)).print(table)
    for r in results:
        if isinstance(r, _Unsupported):
            out.print(f"{escape(r.model)}: unsupported: {escape(r.reason)}", highlight=False)
    measured = [r for r in results if not isinstance(r, _Unsupported)]
    if not measured:
        return
    first, results = measured[0], measured
    if kind is EvalKind.labelled:
        what = f"{first.images} images in {first.classes} classes"
    else:
        what = f"{first.images} images, {first.captions} captions"
    note = f"; {first.failed} unreadable file(s) skipped" if first.failed else ""
    out.print(f"{what}{note}. img/s = model throughput on this data (decoding excluded).", highlight=False)
    if first.failed and not any(r.failed != first.failed for r in results):
        err.print("run with --json to list the unreadable files and their reasons", style="dim")
