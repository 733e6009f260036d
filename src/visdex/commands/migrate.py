"""``visdex migrate``: move an index's vectors to another store (local <-> Milvus), in place."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from ..cli import IndexOpt, app, err, out
from ..cli import open_from_cli as _open


@app.command()
def migrate(
    to: str = typer.Option(
        ...,
        "--to",
        help="The new store: local, milvus:./vectors.db (milvus-lite), milvus://host:19530 (a Milvus server).",
    ),  # fmt: skip
    index: Path | None = IndexOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Move the index's vectors to another store; files, tags and settings stay, later commands follow it."""
    from ..migrate import migrate_store

    def progress(done: int, total: int) -> None:
        if not (quiet or as_json):
            err.print(f"\rcopied {done}/{total} vectors", end="")

    with _open(index) as ix:
        report = migrate_store(ix, to, progress=progress)
    if not (quiet or as_json) and report.vectors:
        err.print()
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
        return
    out.print(f"[green]moved[/] {report.vectors} vectors from {escape(report.source)} to {escape(report.target)} "
              f"in {report.seconds:.1f}s; later commands use it without --store", highlight=False)  # fmt: skip
    for note in report.notes:
        out.print(f"note: {escape(note)}", highlight=False)
