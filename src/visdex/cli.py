"""The command line: a thin adapter over the library. The only module that prints for the
terminal; library errors become one-line messages and exit codes here.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

from . import __version__
from .errors import NotFound, VisdexError
from .progress import Progress
from .query import MAX_K

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

    from .api import Index

app = typer.Typer(
    name="visdex",
    help="Semantic image search: index a folder, then search it by text or by example image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _LazyConsole:
    """A Rich console made on first use: importing Rich costs a command that prints plain lines (a piped
    ``visdex search``) a tenth of its start-up. On first use the object becomes a real ``Console`` in
    place (its class is swapped), so modules that imported it and Rich itself (``Progress(console=err)``,
    ``with console:``) see a Console, not a proxy."""

    def __init__(self, **options):
        self._options = options

    def _become_console(self):
        from rich.console import Console

        options = self.__dict__.pop("_options")
        self.__class__ = Console
        Console.__init__(self, **options)
        return self

    def __getattr__(self, name: str):
        if name.startswith("__") or "_options" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self._become_console(), name)

    def __enter__(self):
        return self._become_console().__enter__()

    def __exit__(self, *exc):  # `with` looked this method up before __enter__ made the object a Console
        from rich.console import Console

        return Console.__exit__(self, *exc)


# soft_wrap: long paths and messages stay on one line when piped (grep, cut), not wrapped at 80 columns
# Typed as what they become on first use.
out = cast("Console", _LazyConsole(soft_wrap=True))
err = cast("Console", _LazyConsole(stderr=True, soft_wrap=True))


def escape(text: str) -> str:
    """Rich markup in ``text`` shown as it is (rich.markup.escape, imported when needed)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


#: The root command's options (``--index``, ``--traceback``), for the commands defined in visdex.commands.
root_options: dict[str, Any] = {"index": None, "traceback": False}

# No envvar=: without --index, the library reads VISDEX_INDEX through visdex.config, as for every setting.
IndexOpt = typer.Option(None, "--index", "-i", help="Index directory [env: VISDEX_INDEX].")


def _quietly(fn) -> None:
    """Run an optional speed-up; its failure is logged, never fatal (the command's work is done)."""
    import logging

    try:
        fn()
    except Exception as exc:  # noqa: BLE001 -- an export that fails only costs speed later
        logging.getLogger("visdex").debug("optional step failed: %s", exc)


def _version(value: bool) -> None:
    if value:
        out.print(f"visdex {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    index: Path | None = IndexOpt,
    traceback: bool = typer.Option(False, "--traceback", help="Show the full traceback on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    root_options["index"] = index
    root_options["traceback"] = traceback


def open_from_cli(
    index: Path | None,
    model: str | None = None,
    create: bool = False,
    device: str | None = None,
    ann: str | None = None,
    store: str | None = None,
) -> Index:
    """The index a command names with ``--index``, else the root command's ``--index``, else the default."""
    from .api import open_index

    return open_index(index or root_options["index"], model=model, device=device, create=create, ann=ann, store=store)


class BarProgress(Progress):
    """Draws ingest progress as a Rich bar with img/s and ETA; prints skipped files above it."""

    MAX_SKIP_LINES = 20

    def __init__(self, quiet: bool, label: str = "indexing"):
        self.quiet = quiet
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.skipped = 0
        self.bar = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn(), console=err, disable=quiet,
        )  # fmt: skip
        self.task: TaskID | None = None
        self.t0 = time.perf_counter()

    def start(self, total: int) -> None:
        self.t0 = time.perf_counter()
        self.bar.start()
        self.task = self.bar.add_task("index", total=total, rate="-")

    def advance(self, n: int = 1) -> None:
        if self.task is None:  # not started: nothing drawn yet
            return
        done = self.bar.tasks[0].completed + n
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.task, advance=n, rate=f"{rate:.1f}")

    def failed(self, path: str, reason: str) -> None:
        self.skipped += 1
        if not self.quiet and self.skipped <= self.MAX_SKIP_LINES:
            self.bar.console.print(f"[yellow]skipping[/] {escape(path)}: {escape(reason)}", highlight=False)

    def stop(self) -> None:
        self.bar.stop()


@app.command()
def index(
    paths: list[str] = typer.Argument(
        None,
        help="Folders, image files, tar shards ('s/{00000..00099}.tar'), "
        "URLs (file://, s3://). None: re-scan the index's folders.",
    ),
    index: Path | None = IndexOpt,
    model: str | None = typer.Option(None, "--model", "-m", help="Model for a new index (see `visdex models`)."),
    include: list[str] = typer.Option([], "--include", help="Only files matching this glob (repeatable)."),
    exclude: list[str] = typer.Option([], "--exclude", help="Skip files matching this glob (repeatable)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per model batch."),
    workers: int | None = typer.Option(None, "--workers", help="Decode processes (default: one per core)."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, mps."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Drop all vectors and re-embed every file with --model."),
    no_prune: bool = typer.Option(False, "--no-prune", help="Keep entries of files that no longer exist."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    catalog: Path | None = typer.Option(None, "--catalog", help="A CSV / JSONL catalog: one vector per item."),
    text_weight: float = typer.Option(0.0, "--text-weight", help="Catalog: blend of the title text (0..1)."),
    id_column: str | None = typer.Option(None, "--id-column", help="Catalog: the item id column."),
    image_column: str | None = typer.Option(None, "--image-column", help="Catalog: the image(s) column."),
    title_column: str | None = typer.Option(None, "--title-column", help="Catalog: the title column."),
    ann: str | None = typer.Option(
        None,
        "--ann",
        help="Vector index: auto (flat, HNSW from 100k), flat, hnsw, ivfpq (compressed); "
        "-fp16 / -sq8 after auto|flat|hnsw keeps float16 / int8 vectors in memory (e.g. hnsw-sq8).",
    ),
    store: str | None = typer.Option(
        None,
        "--store",
        help="Where a new index keeps its vectors: local (default), milvus:./vectors.db (milvus-lite), "
        "milvus://host:19530 (a Milvus server) [env: VISDEX_STORE]. Remembered; move with `visdex migrate`.",
    ),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (Ray Data on a cluster)."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray: auto, ray://host:10001; default RAY_ADDRESS, else a local cluster."
    ),
    gpus_per_worker: float | None = typer.Option(
        None,
        "--gpus-per-worker",
        help="Ray: GPUs per model actor (0: CPU actors; default 1 when the cluster has GPUs).",
    ),
) -> None:
    """Index images: new and changed files are embedded, moved files keep their vectors, deleted ones leave.

    With --catalog, index a product catalog instead: one pooled vector per item; results are items."""
    ix = open_from_cli(index, None if rebuild else model, create=True, device=device, ann=ann, store=store)
    rebuilt = None
    try:
        ix.db.hold_writer()  # one writer at a time: a second run stops here with "index busy"
        if rebuild:  # re-embedded aside and swapped in at the end: the index stays searchable until then
            from . import config

            rbar = BarProgress(quiet or as_json, label="re-embedding")
            try:
                rebuilt = ix.rebuild(model or ix.model_name or config.get("model"), progress=rbar, workers=workers,
                                     batch_size=batch_size)  # fmt: skip
            finally:
                rbar.stop()
            rebuilt_with = ix.fingerprint.short() if ix.fingerprint is not None else ix.model_name
    except BaseException:
        ix.close()
        raise
    targets = list(paths or []) or ([] if catalog else ix.db.roots())
    if not targets and not catalog:
        ix.close()
        raise typer.BadParameter("give at least one folder or image to index", param_hint="PATHS")
    bar, runner = BarProgress(quiet or as_json), None
    try:
        if engine not in ("local", "ray") or (engine == "ray" and catalog):
            raise typer.BadParameter("local or ray (a catalog: local)", param_hint="--engine")
        if engine == "ray":
            from .engines.ray_data import RayEngine, default_address

            runner = RayEngine(ray_address or default_address(), gpus_per_worker=gpus_per_worker)
        if catalog:
            report = ix.add_catalog(
                catalog,
                text_weight=text_weight,
                id_column=id_column,
                image_column=image_column,
                title_column=title_column,
                progress=bar,
                workers=workers,
                prune=not no_prune,
            )
        else:
            report = ix.add(
                targets,
                include=include,
                exclude=exclude,
                progress=bar,
                batch_size=batch_size,
                workers=workers,
                prune=not no_prune,
                engine=runner,
            )
        bar.stop()
        if ix.model_loaded:  # the model is in memory now: export its text tower once for fast text queries
            from .models.textquery import has_fast_text

            if not has_fast_text(ix.model_name, ready=True):
                with (
                    err.status("preparing fast text queries (once)", spinner="dots")
                    if not (quiet or as_json)
                    else contextlib.nullcontext()
                ):
                    _quietly(ix.prepare_text_queries)
    finally:
        bar.stop()
        ix.close()
        if runner is not None:
            runner.close()
            if runner.log_path is not None and not quiet:  # Ray's own log lines went there, not to the terminal
                err.print(f"[dim]Ray's log: {escape(str(runner.log_path))}[/]", highlight=False)
    if as_json:
        out.print_json(json.dumps({**report.as_dict(), **({"rebuild": rebuilt.as_dict()} if rebuilt else {})}))
        return
    if rebuilt is not None:
        out.print(f"rebuilt with {escape(rebuilt_with)}: {rebuilt.embedded} re-embedded, {rebuilt.resumed} "
                  f"kept from an interrupted rebuild, {rebuilt.failed} failed", highlight=False)  # fmt: skip
    rate = report.embedded / report.seconds if report.seconds else 0.0
    moved = f"{report.moved} moved, " if hasattr(report, "moved") else ""
    out.print(
        f"[green]done[/] in {report.seconds:.1f}s: {report.new} new, {report.updated} updated, {moved}"
        f"{report.removed} removed, {report.failed} failed, {report.unchanged} unchanged ({rate:.1f} img/s)"
    )
    if report.failed:
        out.print(f"{report.failed} file(s) could not be read; `visdex status` lists them with reasons.")


def _label(hit) -> str:
    """A file hit shows its path; a catalog item its id and title."""
    return hit.path if hit.key is None else f"{hit.key}  {hit.title or ''}".rstrip()


def _stdout_is_terminal() -> bool:
    """Rich's answer (which honours FORCE_COLOR, TTY_COMPATIBLE...), asked only when it may differ from isatty's,
    so that a piped search never imports Rich."""
    import os

    try:
        tty = sys.stdout.isatty()
    except ValueError:  # closed
        return False
    return out.is_terminal if tty or "FORCE_COLOR" in os.environ or "TTY_COMPATIBLE" in os.environ else False


def _print_hits(hits, as_json: bool) -> None:
    if as_json:
        for h in hits:
            row = {"path": h.path, "score": round(h.score, 6), "id": h.id}
            if h.key is not None:
                row.update(key=h.key, title=h.title, attrs=h.attrs, images=h.images)
            sys.stdout.write(json.dumps(row) + "\n")
        return
    if not hits:
        out.print("no results")
        return
    if not _stdout_is_terminal():  # piped: whole paths on one line each, easy to grep and cut
        for rank, h in enumerate(hits, 1):
            sys.stdout.write(f"{rank:>3}  {h.score:.3f}  {_label(h)}\n")
        return
    from rich.table import Table

    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("score", justify="right")
    table.add_column("path", overflow="fold")
    for rank, h in enumerate(hits, 1):
        table.add_row(str(rank), f"{h.score:.3f}", escape(_label(h)))
    out.print(table, highlight=False)


WhereOpt = typer.Option(None, "--where", "-w", help='Filter, e.g. "taken >= 2023 and format = jpeg".')
MinScoreOpt = typer.Option(None, "--min-score", help="Drop hits scoring below this cosine.")
TopOpt = typer.Option(10, "-n", "--top", "-k", min=1, max=MAX_K, help=f"How many results (at most {MAX_K:,}).")
WithinOpt = typer.Option(None, "--within", help="Keep hits within this much of the top score (e.g. 0.05).")
HubnessOpt = typer.Option(None, "--hubness/--no-hubness", help="Re-rank the top candidates by CSLS hubness "
                          "reduction (default: the model's; off for all models measured so far).")  # fmt: skip


# "-people" is a negative term, not an unknown option
@app.command(context_settings={"ignore_unknown_options": True})
def search(
    query: list[str] = typer.Argument(..., help="Text, image, or terms joined by + and -: a.jpg + 'blue' - people"),
    index: Path | None = IndexOpt,
    k: int = TopOpt,
    model: str | None = typer.Option(None, "--model", "-m", help="Must match the index's model if given."),
    where: str | None = WhereOpt,
    crop: str | None = typer.Option(None, "--crop", help="Region of the image term: x,y,w,h in pixels or fractions."),
    min_score: float | None = MinScoreOpt,
    within: float | None = WithinOpt,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line: path, score, id."),
    hubness: bool | None = HubnessOpt,
) -> None:
    """Search by text ("dog on a beach"), by an example image (photo.jpg), or both: beach.jpg + "at night" - people."""
    with open_from_cli(index, model) as ix:
        ix.one_shot = True
        hits = ix.search(query, k=k, where=where, crop=crop, min_score=min_score, within=within, hubness=hubness)
        _print_hits(hits, as_json)
        if ix.model_loaded:  # this query needed the whole model: make the next one fast, without waiting for it
            ix.prepare_text_queries(background=True)


@app.command()
def similar(
    image: str = typer.Argument(..., help="An image file (indexed or not) or an indexed item id."),
    index: Path | None = IndexOpt,
    k: int = TopOpt,
    where: str | None = WhereOpt,
    min_score: float | None = MinScoreOpt,
    within: float | None = WithinOpt,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line: path, score, id."),
    hubness: bool | None = HubnessOpt,
) -> None:
    """Images that look like IMAGE (itself left out)."""
    path = Path(image)
    item: int | Path = path
    if image.isascii() and image.isdigit() and not path.exists():
        item = int(image)
        if item >= 2**63:  # ids are SQLite integers (int64)
            raise NotFound(f"no item with id {image} in the index")
    with open_from_cli(index) as ix:
        ix.one_shot = True
        _print_hits(ix.similar(item, k=k, where=where, min_score=min_score, within=within, hubness=hubness), as_json)


@app.command()
def status(
    index: Path | None = IndexOpt,
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    failures: int = typer.Option(50, "--failures", help="How many failed files to list."),
) -> None:
    """Where the index is, its model, counts, and the files that failed with their reasons."""
    with open_from_cli(index) as ix:
        st = ix.status(max_failures=failures)
    if as_json:
        out.print_json(json.dumps(st.to_dict()))
        return
    out.print(f"index     {st.path}")
    out.print(f"model     {st.fingerprint.short() if st.fingerprint else '(none yet)'}")
    out.print(f"schema    v{st.schema_version}")
    if st.kind == "catalog":
        out.print(f"items     {st.items_ok} indexed, {st.items_failed} failed; {st.vectors} vectors (a catalog)")
    else:
        out.print(f"files     {st.files_ok} indexed, {st.files_failed} failed; {st.vectors} vectors")
    if st.store:
        dead = st.store.get("dead_nodes")
        if dead:
            from .store.local import HNSW_MAX_DEAD

            extra = f", {dead} dead graph nodes (rebuilt at {HNSW_MAX_DEAD:.0%})"
        else:
            extra = ""
        out.print(f"store     {escape(str(st.store.get('backend', '?')))}{extra}", highlight=False)
    for r in st.roots:
        out.print(f"root      {escape(r)}", highlight=False)
    if st.failures:
        out.print("[bold]failed[/]")
        for p, reason in st.failures:
            out.print(f"  {escape(p)}: {escape(reason)}", highlight=False)


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The models visdex knows (any hf:<repo-id> of these families or a local directory works too)."""
    from .models import DEFAULT_MODEL, list_models

    specs = list_models()
    if as_json:
        rows = [
            {
                "name": s.name,
                "source": s.source,
                "dim": s.dim,
                "modalities": list(s.modalities),
                "license": s.license,
                "notes": s.notes,
            }
            for s in specs
        ]
        out.print_json(json.dumps(rows))
        return
    from rich.table import Table

    table = Table(box=None)
    for col in ("name", "dim", "queries", "source", "notes"):
        table.add_column(col)
    for s in specs:
        name = s.name + (" (default)" if s.name == DEFAULT_MODEL else "")
        queries = "text+image" if "text" in s.modalities else "image"
        table.add_row(name, str(s.dim), queries, s.source, s.notes)
    out.print(table)


def _load_command_modules() -> None:
    import importlib
    import pkgutil

    from . import commands

    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"{commands.__name__}.{mod}")


#: The commands defined in this module: running one of them needs none of the command modules.
CORE_COMMANDS = ("index", "search", "similar", "status", "models")
#: Commands whose plain command lines skip Typer's parsing (see :mod:`visdex.quickcli`): they start in a blink.
QUICK_COMMANDS = ("search", "similar", "status")


def _command_at(argv: list[str]) -> int | None:
    """Where in ``argv`` the command it runs is named (the first word after the root options), None for none."""
    args = enumerate(argv)
    for i, arg in args:
        if arg in ("--index", "-i"):
            next(args, None)  # the root option's value
        elif not arg.startswith("-"):
            return i
    return None


def _command_name(argv: list[str]) -> str | None:
    """The command ``argv`` runs (the first word after the root options), None for none (root --help)."""
    at = _command_at(argv)
    return None if at is None else argv[at]


def _cli_name(field: str, argv: list[str]) -> str:
    """How the command line ``argv`` spells the library's argument ``field``: the longest ``--name`` of the
    option of the command it ran (or of a group above it: the root's ``--index``) whose parameter is ``field``
    (``--top``), a positional argument's metavar (``FOLDER``); ``--field-name`` when none is called that."""
    import typer.main
    from typer.core import TyperArgument, TyperGroup  # Typer's own classes: it may vendor Click (0.29 does)

    cmd = typer.main.get_command(app)
    ctx = typer.Context(cmd, info_name="visdex")
    params = list(cmd.params)
    at = _command_at(argv)
    while isinstance(cmd, TyperGroup) and at is not None:
        sub = cmd.get_command(ctx, argv[at])
        if sub is None:
            break
        cmd = sub
        params = [*cmd.params, *params]  # the command's own parameters first
        at = next((i for i in range(at + 1, len(argv)) if not argv[i].startswith("-")), None)  # a group's command
    for p in params:
        if p.name == field:
            if isinstance(p, TyperArgument):
                return p.metavar or p.name.upper()
            return max([o for o in p.opts if o.startswith("--")] or p.opts, key=len)
    return "--" + field.replace("_", "-")


def error_message(e: VisdexError, argv: list[str]) -> str:
    """``e``'s message as the command line ``argv`` says it: the argument it names (``e.field``) spelled as the
    command's flag (``--top must be at least 1``, where the library says ``top must be at least 1``)."""
    if e.field is None:
        return str(e)
    try:
        name = _cli_name(e.field, argv)
    except Exception:  # noqa: BLE001 -- only a name in a message: the field's own spelling will do
        name = "--" + e.field.replace("_", "-")
    return e.named(name)


def _needs_command_modules(argv: list[str]) -> bool:
    """Whether ``argv`` may run (or list, in --help) a command of :mod:`visdex.commands`: each module imports
    what its commands need, which a ``visdex search`` should not pay for."""
    return _command_name(argv) not in CORE_COMMANDS


INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped with Ctrl-C


def _interrupted() -> None:
    err.print("interrupted; everything committed so far is kept — run the same command again to resume")
    sys.exit(INTERRUPTED)


def _print_any_file_name() -> None:
    # A file name that is not UTF-8 arrives from os.fsdecode with surrogates, which a strict stream cannot encode
    # (stdout under LANG=en_US.UTF-8 or PYTHONIOENCODING=utf-8). The process's own stdout writes it back as the
    # bytes it was, as ls does; stderr and captured streams, which must stay text, escape it as stderr does.
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape" if stream is sys.__stdout__ else "backslashreplace")


def main() -> None:
    """Console entry point: runs the app and turns library errors into messages and exit codes
    (0 ok, 1 unexpected error, 2 bad input, 3 model, 4 missing extra, 5 unreadable index, 6 index busy,
    7 disk full, 130 Ctrl-C)."""
    _print_any_file_name()
    try:
        call = None
        if _needs_command_modules(sys.argv[1:]):
            _load_command_modules()
        else:
            from .quickcli import quick_call

            call = quick_call(app, sys.argv[1:], QUICK_COMMANDS)
        # standalone_mode=False hands back, as the return value, the code of a typer.Exit -- including
        # the Exit(130) that typer makes of a KeyboardInterrupt; our commands themselves return None
        code = call() if call is not None else app(standalone_mode=False)
    except VisdexError as e:
        if root_options["traceback"]:
            raise
        err.print(f"[red]error:[/] {escape(error_message(e, sys.argv[1:]))}", highlight=False)
        sys.exit(e.exit_code)
    except FileNotFoundError as e:
        if root_options["traceback"]:
            raise
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:  # usage errors (Click's, vendored by Typer) come here in non-standalone mode
        show, exit_code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        if root_options["traceback"]:
            raise
        # a bug, not the user's input: one line that says so, the traceback on request
        err.print(f"[red]error:[/] unexpected {type(e).__name__}: {escape(str(e)[:500])} (a bug in visdex; run "
                  "again with --traceback for the details, and please report it)", highlight=False)  # fmt: skip
        sys.exit(1)
    if code == INTERRUPTED:
        _interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)
