"""``visdex tag``: zero-shot labels per image, stored as metadata usable in ``--where 'tag = beach'``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..cli import BarProgress as _BarProgress
from ..cli import IndexOpt, app, out
from ..cli import open_from_cli as _open


@app.command()
def tag(
    labels: str | None = typer.Option(None, "--labels", "-l", help='Comma-separated labels: "beach,mountain,city".'),
    labels_file: Path | None = typer.Option(None, "--labels-file", help="A file with one label per line."),
    index: Path | None = IndexOpt,
    top: int = typer.Option(3, "--top", min=1, help="Labels kept per image."),
    min_score: float | None = typer.Option(None, "--min-score", help="Keep labels scoring >= this (default 1/N)."),
    template: str = typer.Option("a photo of {}", "--template", help="Prompt around each label."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the tags of every image as JSON lines."),
) -> None:
    """Label every image zero-shot with the best of LABELS; then filter with --where 'tag = beach'."""
    from ..tags import parse_labels, tag_index, tags_for

    names = parse_labels(labels, str(labels_file) if labels_file else None)
    with _open(index) as ix:
        ix.db.hold_writer()  # one writer at a time (IndexBusy while `visdex index` runs)
        bar = _BarProgress(quiet or as_json, label="tagging")
        try:
            report = tag_index(ix, names, top=top, min_score=min_score, template=template, progress=bar)
        finally:
            bar.stop()
        if as_json:
            ids = ix.store.ids().tolist()
            paths = {i: r.path for i, r in ix.db.files_by_ids(ids).items()}
            for fid, tags in tags_for(ix.db, ids).items():
                scored = [{"label": lb, "score": round(s, 4)} for lb, s in tags]
                out.file.write(json.dumps({"id": fid, "path": paths.get(fid), "tags": scored}) + "\n")
            return
    table = Table(box=None)
    table.add_column("label")
    table.add_column("images", justify="right")
    for name in names:
        table.add_row(name, str(report.counts[name]))
    out.print(table)
    out.print(f"tagged {report.images} images; filter with: visdex search ... --where 'tag = {names[0]}'")
