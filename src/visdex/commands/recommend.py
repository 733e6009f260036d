"""``visdex recommend``: the architecture advisor. Flags in, or questions when run bare in a terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.prompt import Confirm, FloatPrompt, IntPrompt, Prompt
from rich.table import Table

from ..cli import app, out
from ..recommend import (
    DOMAINS,
    HARDWARE,
    LABEL_KINDS,
    QUERY_TYPES,
    Constraints,
    Domain,
    Hardware,
    LabelKind,
    QueryKind,
    Recommendation,
)
from ..sizing import format_bytes, parse_bytes, parse_count


def _ask_parsed(console: Console, question: str, default: str, parse, stream: TextIO | None):
    """Ask until the answer parses (catalog sizes like 10M, memory like 4GB)."""
    while True:
        answer = Prompt.ask(question, default=default, console=console, stream=stream)
        try:
            return parse(answer)
        except ValueError as e:
            console.print(f"[red]{escape(str(e))}[/]")


def prompt_constraints(console: Console, stream: TextIO | None = None) -> Constraints:
    """Ask for every constraint, with the defaults offered; ``stream`` replaces stdin (tests)."""
    d = Constraints()
    query = Prompt.ask("Queries by [b]text[/], by example image ([b]visual[/]), or [b]both[/]?",
                       choices=list(QUERY_TYPES), default=d.query, console=console, stream=stream)  # fmt: skip
    multilingual = query != "visual" and Confirm.ask(
        "Queries in languages other than English?", default=False, console=console, stream=stream
    )
    size = _ask_parsed(console, "How many images (e.g. 50000, 2M, 1e8)?", "100k", parse_count, stream)
    latency = FloatPrompt.ask("Latency budget per query, in ms?", default=d.latency_ms, console=console, stream=stream)
    hardware = Prompt.ask("Hardware for queries and indexing?", choices=list(HARDWARE), default=d.hardware,
                          console=console, stream=stream)  # fmt: skip
    domain = Prompt.ask("What are the images?", choices=list(DOMAINS), default=d.domain, console=console,
                        stream=stream)  # fmt: skip
    labels = Prompt.ask("Labelled data: [b]none[/], (image, text) [b]pairs[/], or [b]classes[/]?",
                        choices=list(LABEL_KINDS), default=d.labels, console=console, stream=stream)  # fmt: skip
    labelled = classes = 0
    if labels != "none":
        labelled = _ask_parsed(console, "How many labelled pairs / images?", "1000", parse_count, stream)
        if labels == "classes":
            classes = IntPrompt.ask("How many classes?", default=10, console=console, stream=stream)
    memory = _ask_parsed(console, "Memory for the vector index (e.g. 2GB, 512MB; 'none' = no limit)?", "none",
                         lambda s: None if s.strip().lower() in ("none", "") else parse_bytes(s), stream)  # fmt: skip
    return Constraints(query, size, latency, hardware, domain, labels, labelled, classes, memory, multilingual)


def _why(lines: list[str]) -> None:
    for line in lines:
        out.print(f"    [dim]why[/] {escape(line)}", highlight=False)


def _section(title: str, body: str) -> None:
    out.print(f"[bold cyan]{title:<10}[/] {body}", highlight=False)


def print_report(rec: Recommendation) -> None:
    """The readable report: each decision, its numbers, and the reasons under it."""
    c, m, t, s, lat = rec.constraints, rec.model, rec.training, rec.store, rec.latency
    limit = c.memory_bytes
    memory = "no memory limit" if limit is None else f"{format_bytes(limit)} for the index"
    count = f"{c.labelled:,}" if c.labelled else "some"
    if c.labels == "none":
        labels = "no labels"
    elif c.labels == "classes":
        labels = f"{count} labelled images" + (f" in {c.classes:,} classes" if c.classes else "")
    else:
        labels = f"{count} labelled pairs"
    lang = " (multilingual)" if c.multilingual else ""
    out.print(f"[bold]Recommendation[/] for {c.query} queries{lang} over {c.catalog_size:,} images ({c.domain}), "
              f"{c.latency_ms:g} ms, {c.hardware.upper()}, {labels}, {memory}\n", highlight=False)  # fmt: skip
    _section("model", f"[bold]{m.name}[/] ({m.arch}, {m.params_m:g} M params, {m.dim}-d) with {m.runtime}: "
                      f"~{m.query_ms:g} ms per query, ~{m.img_per_s:g} img/s to index")  # fmt: skip
    _why(m.why)
    loss = f", loss: {t.loss}" if t.loss else ""
    _section("training", f"[bold]{t.strategy}[/]{escape(loss)}; {escape(t.scope)}")
    _why(t.why)
    params = ", ".join(f"{k}={v}" for k, v in s.params.items() if k != "reduce")
    index = {"flat": "flat (exact)", "hnsw": "HNSW", "ivfpq": "IVF-PQ"}.get(s.index, s.index)
    reduce = f", reduced {s.params['reduce']}" if "reduce" in s.params else ""
    _section("store", f"[bold]{s.backend}[/], {index} index{f' ({escape(params)})' if params else ''}, {s.codec} "
                      f"vectors{escape(reduce)}: {s.memory} in RAM, ~{s.search_ms:.2g} ms per search")  # fmt: skip
    _why(s.why)
    ok = "[green]fits[/]" if lat["fits"] else "[red]over budget[/]"
    mem_ok = "" if c.memory_gb is None else (" [green]fits[/]" if s.fits_memory else " [red]over budget[/]")
    _section("estimates", f"query {lat['total_ms']:.3g} ms (embed {lat['query_embed_ms']:.3g} + search "
                          f"{lat['search_ms']:.2g}) of {c.latency_ms:g} ms {ok}; index memory {s.memory}{mem_ok}; "
                          f"embedding the catalog ~{_duration(rec.index_hours)}")  # fmt: skip
    if m.alternatives:
        table = Table(box=None, padding=(0, 2), title="  alternatives considered", title_justify="left")
        for col in ("model", "runtime", "query ms", "why not"):
            table.add_column(col, justify="right" if col == "query ms" else "left")
        for a in m.alternatives:
            table.add_row(a["model"], a["runtime"], f"{a['total_ms']:g}", a["reason"])
        out.print(table)
    for note in rec.notes:
        _section("note", escape(note))
    out.print("\n[bold]next steps[/]")
    for cmd in rec.commands:
        out.print(f"  {escape(cmd)}", highlight=False)
    out.print(f"[dim]speeds: {escape('; '.join(rec.sources))}[/]", highlight=False)


def _duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def _flag(value, parse, name: str):
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=name) from None


@app.command("recommend")
def recommend_cmd(
    query: QueryKind | None = typer.Option(None, "--query", help="What users search with."),
    size: str | None = typer.Option(None, "--size", "-n", help="Catalog size: 50000, 250k, 10M, 1e8."),
    latency: float | None = typer.Option(None, "--latency", min=0.1, help="Latency budget per query in ms."),
    hardware: Hardware | None = typer.Option(None, "--hardware", help="Where the model runs."),
    domain: Domain | None = typer.Option(None, "--domain", help="What the images are."),
    labels: LabelKind | None = typer.Option(None, "--labels", help="Labelled data you have."),
    labelled: str | None = typer.Option(None, "--labelled", help="How many labelled pairs / images (e.g. 5k)."),
    classes: int | None = typer.Option(None, "--classes", min=0, help="How many classes the labelled images have."),
    memory: str | None = typer.Option(None, "--memory", help="RAM for the vector index: 512MB, 4GB, 1TB."),
    multilingual: bool | None = typer.Option(None, "--multilingual/--english", help="Query languages."),
    benchmarks: Path | None = typer.Option(None, "--benchmarks", help="Folder of benchmark JSON to take speeds from."),
    interactive: bool | None = typer.Option(
        None,
        "--interactive/--no-interactive",
        help="Ask for each constraint [default: when no flag is given and stdin is a terminal].",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the recommendation as JSON."),
) -> None:
    """Recommend a model, a training strategy and a vector store for your constraints, with the reasons
    and estimated memory and latency."""
    from ..recommend import recommend

    given = [query, size, latency, hardware, domain, labels, labelled, classes, memory, multilingual]
    ask = interactive if interactive is not None else (all(v is None for v in given) and sys.stdin.isatty())
    if ask:
        constraints = prompt_constraints(Console(stderr=True))
    else:
        d = Constraints()
        fields = dict(query=query.value if query else d.query, catalog_size=_flag(size, parse_count, "--size"),
                      latency_ms=latency, hardware=hardware.value if hardware else None,
                      domain=domain.value if domain else None, labels=labels.value if labels else None,
                      labelled=_flag(labelled, parse_count, "--labelled"), classes=classes,
                      memory_gb=_flag(memory, parse_bytes, "--memory"), multilingual=multilingual)  # fmt: skip
        fields = {k: v for k, v in fields.items() if v is not None}
        if labels is None and fields.get("labelled"):
            fields["labels"] = "classes" if classes else "pairs"
        try:
            constraints = Constraints(**fields)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
    rec = recommend(constraints, str(benchmarks) if benchmarks else None)
    if as_json:
        out.print_json(json.dumps(rec.to_dict()))
    else:
        print_report(rec)
