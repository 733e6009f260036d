"""``visdex trash list|undo`` and the move behind ``visdex dupes --trash / --move-to DIR``: duplicates moved
out of the way as one batch each, with an undo (see :mod:`visdex.trash`)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..cli import IndexOpt, app, err, out
from ..cli import open_from_cli as _open

trash_app = typer.Typer(help="Files moved by `visdex dupes --trash`: list the batches, undo one.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(trash_app, name="trash")


SHOWN_SKIPS = 20


def files(n: int) -> str:
    return f"{n:,} file" + ("" if n == 1 else "s")


def human_bytes(n: int) -> str:
    size: float = n
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def move_duplicates(ix, groups, move_to: Path | None, *, apply: bool, yes: bool, as_json: bool) -> None:
    """The dry run (default) or the move of every group's copies, keepers kept; prints what moves where."""
    from ..trash import TRASH_DIR_NAME, check_trash, move_to_trash, plan_from_groups

    plan = plan_from_groups(ix, groups)
    where = check_trash(ix, move_to) if move_to is not None else f"{TRASH_DIR_NAME} in the indexed folder"
    summary = f"{files(plan.files)}, {human_bytes(plan.bytes)}"
    if not apply:
        if as_json:
            sys.stdout.write(json.dumps({"dry_run": True, "trash": where, **plan.to_dict()}) + "\n")
            return
        for m in plan.moves:
            out.print(f"  {escape(m.path)} -> {escape(m.keeper_path)}", highlight=False)
        for path, why in plan.skipped[:SHOWN_SKIPS]:
            out.print(f"  [yellow]stays[/] {escape(path)}: {escape(why)}", highlight=False)
        if len(plan.skipped) > SHOWN_SKIPS:
            out.print(f"  ... and {len(plan.skipped) - SHOWN_SKIPS} more that stay (--json lists them all)")
        out.print(f"dry run: would move {summary} to {escape(where)}; run again with --apply to move them",
                  highlight=False)  # fmt: skip
        return
    if not plan.moves:
        out.print("nothing to move")
        return
    if not yes and sys.stdin.isatty() and not as_json:
        typer.confirm(f"move {summary} to {where}?", abort=True, err=True)
    report = move_to_trash(ix, plan, move_to)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        return
    for path, why in report.failed:
        err.print(f"[yellow]not moved[/] {escape(path)}: {escape(why)}", highlight=False)
    dirs = sorted({dst.split(f"{os.sep}{report.batch}{os.sep}")[0] for _, dst in report.moved})  # the trash folders
    shown = dirs[0] if len(dirs) == 1 else f"{len(dirs)} trash folders ({dirs[0]}, ...)"
    out.print(f"moved {files(len(report.moved))}, {human_bytes(report.bytes)} to {escape(shown)} (batch "
              f"{report.batch}); undo with: visdex trash undo {report.batch}", highlight=False)  # fmt: skip


@trash_app.command("list")
def list_(
    index: Path | None = IndexOpt,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per batch."),
) -> None:
    """The batches of moved files, newest first: files still in the trash, their size, where they are."""
    from ..trash import list_batches

    with _open(index) as ix:
        batches = list_batches(ix)
    if as_json:
        for b in batches:
            sys.stdout.write(json.dumps(b.to_dict()) + "\n")
        return
    if not batches:
        out.print("the trash is empty")
        return
    table = Table(box=None)
    for col in ("batch", "when", "state", "in the trash", "where"):
        # a batch id is copied whole; a long folder wraps
        table.add_column(col, no_wrap=col != "where", overflow="fold", min_width=20 if col == "where" else None)
    for b in batches:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(b.created_at))
        size = f"{files(b.files)}, {human_bytes(b.bytes)}" + (f" ({b.restored} restored)" if b.restored else "")
        table.add_row(b.id, when, b.state, size, escape(", ".join(b.trash)))
    out.print(table)


@trash_app.command()
def undo(
    batch: str | None = typer.Argument(None, help="A batch id (or its start); default: the latest batch."),
    index: Path | None = IndexOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Move a batch's files back where they were, and back into the index with their vectors."""
    from ..trash import undo as undo_batch

    with _open(index) as ix:
        report = undo_batch(ix, batch)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        return
    for path, why in report.conflicts:
        err.print(f"[yellow]not restored[/] {escape(path)}: {escape(why)}", highlight=False)
    back = len(report.restored) + len(report.reindex)
    out.print(f"restored {files(back)}, {human_bytes(report.bytes)} (batch {report.batch})", highlight=False)
    if report.reindex:
        out.print(f"{len(report.reindex)} of them changed in the trash: `visdex index` embeds them again")
