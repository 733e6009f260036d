"""``visdex eval``: measure and compare models on the user's own labelled or captioned images."""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..cli import _BarProgress, app, err, out


class EvalKind(str, Enum):
    labelled = "labelled"
    captions = "captions"


def _check_model_name(name: str, needs_text: bool) -> None:
    """Fail before any model loads: an unknown name, or an image-only catalog model for captions."""
    from ..errors import UnknownModel
    from ..evaluate import needs_text_model
    from ..models import get_spec, list_models

    known = {s.name for s in list_models()}
    if name in known:
        if needs_text and not get_spec(name).supports_text:
            raise needs_text_model(name)
        return
    if (name.startswith("hf:") and len(name) > 3) or Path(name).expanduser().is_dir():
        return
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
    for r, c in zip(results, cells, strict=True):
        table.add_row(escape(r.model), str(r.dim), str(r.images), *c, f"{r.images_per_second:.1f}")
    return table


def _captions_table(results) -> Table:
    table = Table(box=None, title="text-to-image (T→I) and image-to-text (I→T) retrieval", title_justify="left")
    for c in ("model", "dim", "images", "captions"):
        table.add_column(c, justify="left" if c == "model" else "right")
    ks = ["recall@1", "recall@5", "recall@10"]
    rows = [[r.text_to_image.values[k] for k in ks] + [r.image_to_text.values[k] for k in ks] for r in results]
    cells = _add_metric_columns(table, rows, [f"{d} R@{k}" for d in ("T→I", "I→T") for k in (1, 5, 10)])
    table.add_column("img/s", justify="right")
    for r, c in zip(results, cells, strict=True):
        table.add_row(escape(r.model), str(r.dim), str(r.images), str(r.captions), *c, f"{r.images_per_second:.1f}")
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
) -> None:
    """Measure retrieval quality and speed of one or more models on your own labelled or captioned images.

    labelled: every image queries all others (leave-one-out); Recall@1/5/10, mAP@R, nDCG@10.
    captions: captions find their image and images their captions; Recall@1/5/10 both ways."""
    from .. import config
    from ..evaluate import eval_captions, eval_labelled_folder, read_captions, read_labelled
    from ..models import load_embedder

    names = list(dict.fromkeys(model)) or [config.get("model")]
    captions = kind is EvalKind.captions
    for name in names:  # every name checked before the first (slow) model load
        _check_model_name(name, captions)
    data = read_captions(path) if captions else read_labelled(path)  # read once, shared by all models
    run = eval_captions if captions else eval_labelled_folder
    results = []
    for n, name in enumerate(names):
        embedder = load_embedder(name, device=device or config.get("device"))
        bar = _BarProgress(quiet or as_json, label=f"{name} ({n + 1}/{len(names)})")
        if n:
            bar.MAX_SKIP_LINES = 0  # the same unreadable files: list them once, for the first model
        try:
            results.append(run(embedder, data, batch_size=batch_size, progress=bar))
        finally:
            bar.stop()
        del embedder  # one model in memory at a time
    _print_results(kind, path, results, as_json)


def _print_results(kind: EvalKind, path: Path, results: list, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps({"task": kind.value, "data": str(path), "results": [r.to_dict() for r in results]}))
        return
    table = _captions_table(results) if kind is EvalKind.captions else _labelled_table(results)
    # piped: a console as wide as the table needs, so no header or model path is folded or cut
    (out if out.is_terminal else Console(file=out.file, width=1000, soft_wrap=True)).print(table)
    first = results[0]
    if kind is EvalKind.labelled:
        what = f"{first.images} images in {first.classes} classes"
    else:
        what = f"{first.images} images, {first.captions} captions"
    note = f"; {first.failed} unreadable file(s) skipped" if first.failed else ""
    out.print(f"{what}{note}. img/s = model throughput on this data (decoding excluded).", highlight=False)
    if first.failed and not any(r.failed != first.failed for r in results):
        err.print("run with --json to list the unreadable files and their reasons", style="dim")
