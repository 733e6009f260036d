"""``visdex dupes``, ``cluster``, ``map``, ``matrix``: looking at a collection as a whole."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..cli import BarProgress as _BarProgress
from ..cli import IndexOpt, app, out
from ..cli import open_from_cli as _open


@app.command()
def dupes(
    index: Path | None = IndexOpt,
    threshold: float | None = typer.Option(None, "--threshold", help="Candidate cosine (default: the model's)."),
    exact_only: bool = typer.Option(False, "--exact-only", help="Only byte-identical files (content hash)."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Trust embeddings alone (no pixel check)."),
    out_csv: Path | None = typer.Option(None, "--out", help="Write the groups to a CSV file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per group."),
    device: str | None = typer.Option(
        None, "--device", help="Find candidates by exact k-NN on a torch device (cuda, cuda:1) instead of the index."
    ),
    move_to: Path | None = typer.Option(
        None,
        "--move-to",
        help="Move every group's copies to this folder "
        "(a dry run unless --apply); the keepers stay. Undo: visdex trash undo.",
    ),
    trash: bool = typer.Option(False, "--trash", help="Like --move-to, into .visdex-trash in the indexed folder."),
    apply: bool = typer.Option(False, "--apply", help="With --move-to / --trash: move the files (default: dry run)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="With --apply: do not ask for confirmation."),
) -> None:
    """Exact and near-duplicate images in groups, each with a suggested keeper (the likely original).

    With --trash or --move-to DIR: move the copies out of the way (a dry run first; --apply to do it)."""
    from ..dupes import find_duplicates

    if apply and not (move_to or trash):
        raise typer.BadParameter("--apply needs --move-to DIR or --trash", param_hint="--apply")
    if move_to and trash:
        raise typer.BadParameter("give --move-to DIR or --trash, not both", param_hint="--trash")

    with _open(index) as ix:
        bar = _BarProgress(quiet or as_json, label="comparing")
        try:
            groups = find_duplicates(ix, threshold=threshold, exact_only=exact_only, verify=not no_verify, progress=bar,
                                     device=device)  # fmt: skip
        finally:
            bar.stop()
        if move_to or trash:  # the move (or its dry run) is listed instead of the groups
            from .trash import move_duplicates

            move_duplicates(ix, groups, move_to, apply=apply, yes=yes, as_json=as_json)
    if out_csv:
        with open(out_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["group", "kind", "keeper", "path", "width", "height", "bytes", "score"])
            for n, g in enumerate(groups, 1):
                for m in g.members:
                    w.writerow([n, g.kind, int(m.id == g.keeper_id), m.path, m.width, m.height, m.size, m.score])
    if move_to or trash:
        return
    if as_json:
        for g in groups:
            sys.stdout.write(json.dumps(g.to_dict()) + "\n")
        return
    if not groups:
        out.print("no duplicates found")
        return
    dupes_, shots = [g for g in groups if g.kind != "similar shot"], [g for g in groups if g.kind == "similar shot"]
    for n, g in enumerate(groups, 1):
        if g is (shots[0] if shots else None):
            out.print("[bold]similar shots[/] (different captures of one scene: nothing here is offered for removal)")
        out.print(f"[bold]group {n}[/] ({g.kind}, {len(g.members)} images)")
        for m in g.members:
            mark = "[green]keep[/]" if m.id == g.keeper_id and g.kind != "similar shot" else "    "
            kind = "" if m.id == g.keeper_id or g.kind == "similar shot" else f" {m.kind}"
            out.print(f"  {mark} {m.score:.3f} {m.width}x{m.height}{kind}  {escape(m.path)}", highlight=False)
    extra = sum(m.removable for g in dupes_ for m in g.members)
    out.print(f"{len(dupes_)} groups; {extra} files could go; {len(shots)} groups of similar shots"
              + (f"; written to {out_csv}" if out_csv else ""))  # fmt: skip


@app.command()
def cluster(
    index: Path | None = IndexOpt,
    k: int | None = typer.Option(None, "-k", help="Number of clusters (default: sqrt(n/2), 2..64)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per cluster."),
) -> None:
    """Group the collection into clusters; shows each one's size and most central images."""
    from ..cluster import cluster_index

    with _open(index) as ix:
        clusters = cluster_index(ix, k, seed=seed)
    if as_json:
        for c in clusters:
            sys.stdout.write(json.dumps(c.to_dict()) + "\n")
        return
    table = Table(box=None)
    for col in ("#", "size", "most central images"):
        table.add_column(col)
    for c in clusters:
        table.add_row(str(c.id), str(c.size), escape("\n".join(p for _, p, _ in c.central[:3])))
    out.print(table)


@app.command("map")
def map_(
    out_path: Path = typer.Option(..., "--out", "-o", help="map.png or map.html"),
    index: Path | None = IndexOpt,
    method: str = typer.Option("auto", "--method", help="auto, umap, tsne or pca."),
    coords: Path | None = typer.Option(None, "--coords", help="Also write the 2D coordinates as JSON."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """A 2D map of the collection with thumbnails: a PNG, or a zoomable HTML page."""
    from ..viz import project_2d, render_map_html, render_map_png

    if out_path.suffix.lower() not in (".png", ".html", ".htm"):
        raise typer.BadParameter("--out must end in .png or .html", param_hint="--out")
    with _open(index) as ix:
        proj = project_2d(ix, method, seed=seed)
    if coords:
        coords.write_text(json.dumps(proj.to_dict()))
    drawn = (render_map_png if out_path.suffix.lower() == ".png" else render_map_html)(proj, out_path)
    note = f" (a sample of {drawn} of {len(proj.ids)})" if drawn < len(proj.ids) else ""
    out.print(f"wrote {out_path}: {drawn} images placed by {proj.method}{note}")


@app.command()
def matrix(
    images: list[Path] = typer.Argument(..., help="Two or more image files."),
    out_path: Path | None = typer.Option(None, "--out", "-o", help="Write the heatmap to this PNG."),
    index: Path | None = IndexOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the labels and the matrix as JSON."),
) -> None:
    """Cosine similarity of every pair of IMAGES as a labelled heatmap (and numbers)."""
    from ..viz import render_matrix_png, similarity_matrix

    with _open(index) as ix:
        labels, m = similarity_matrix(ix, [str(p) for p in images])
    if out_path:
        render_matrix_png(labels, m, out_path, images=[str(p) for p in images])
    if as_json:
        sys.stdout.write(json.dumps({"labels": labels, "matrix": [[round(float(v), 4) for v in r] for r in m]}) + "\n")
        return
    table = Table(box=None)
    table.add_column("")
    for lb in labels:
        table.add_column(escape(lb), justify="right")
    for lb, row in zip(labels, m, strict=True):
        table.add_row(escape(lb), *(f"{v:.2f}" for v in row))
    out.print(table)
    if out_path:
        out.print(f"wrote {out_path}")
