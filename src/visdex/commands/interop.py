"""``visdex export`` / ``visdex import``: embeddings in clip-retrieval's layout (img_emb/*.npy + metadata/*.parquet)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from ..cli import IndexOpt, app, err, out
from ..cli import open_from_cli as _open


@app.command()
def export(
    out_dir: Path = typer.Argument(..., metavar="OUT", help="A new (or empty) folder to write."),
    fmt: str = typer.Option("clip-retrieval", "--format", help="Output layout; clip-retrieval is the one there is."),
    index: Path | None = IndexOpt,
    shard_size: int = typer.Option(100_000, "--shard-size", min=1, help="Vectors per img_emb_N.npy file."),
    dtype: str = typer.Option("float16", "--dtype", help="float16 (as clip-retrieval writes) or float32."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write the index's vectors as img_emb/img_emb_N.npy + metadata/metadata_N.parquet (clip-retrieval's layout)."""
    from ..errors import BadQuery
    from ..interop import FORMAT, export_clip_retrieval

    if fmt != FORMAT:
        raise BadQuery(f"unknown --format {fmt!r}: the one there is is {FORMAT}", field="format")
    with _open(index) as ix:
        report = export_clip_retrieval(ix, out_dir, shard_size=shard_size, dtype=dtype)
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
        return
    out.print(f"[green]exported[/] {report.vectors} vectors ({report.dtype}) in {report.shards} shard(s) to "
              f"{escape(report.out)} in {report.seconds:.1f}s", highlight=False)  # fmt: skip


@app.command("import")
def import_(
    folder: Path = typer.Argument(..., metavar="DIR", help="A clip-retrieval output folder (img_emb/, metadata/)."),
    model: str = typer.Option(..., "--model", "-m", help="The model that made the vectors (see `visdex models`)."),
    index: Path | None = IndexOpt,
    image_root: Path | None = typer.Option(
        None, "--image-root", help="Relative image_path values start here (default: the current directory)."
    ),  # fmt: skip
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Add the vectors of a clip-retrieval folder to an index of the same model (created if need be); no image is
    decoded. Vectors of another dimension or another declared model are refused; importing twice adds nothing."""
    from ..interop import import_clip_retrieval

    def progress(done: int, total: int) -> None:
        if not (quiet or as_json):
            err.print(f"\rimported {done}/{total} rows", end="")

    with _open(index, model=model, create=True) as ix:
        report = import_clip_retrieval(ix, folder, image_root=image_root, progress=progress)
    if not (quiet or as_json) and report.rows:
        err.print()
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
        return
    out.print(f"[green]imported[/] {report.rows} rows from {report.shards} shard(s): {report.new} new, "
              f"{report.updated} updated, {report.skipped} skipped, in {report.seconds:.1f}s",
              highlight=False)  # fmt: skip
