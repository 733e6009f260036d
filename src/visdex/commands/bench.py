"""``visdex bench``: how fast is visdex on this machine, with this model, on these photos."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..cli import app, err, out


@app.command()
def bench(
    folder: Path | None = typer.Argument(None, help="Photos to measure on. None: generated camera-sized JPEGs."),
    model: str = typer.Option("effnet-lite0", "--model", "-m", help="Model (onnx-int8:<model> for ONNX int8)."),
    suite: list[str] = typer.Option(
        [],
        "--suite",
        "-s",
        help="decode, model, ingest, naive, query, onnx (repeatable; default: all but naive and onnx).",
    ),
    images: int = typer.Option(64, "--images", "-n", min=1, help="Generated photos (without FOLDER)."),
    megapixels: float = typer.Option(6.0, "--megapixels", help="Size of the generated photos."),
    workers: int | None = typer.Option(None, "--workers", help="Decode processes (default: one per core)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per model batch."),
    model_images: int = typer.Option(128, "--model-images", help="Images pushed through the model-only test."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the JSON result to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON result."),
) -> None:
    """Measure decode-only, model-only and end-to-end indexing rates, the naive tutorial loop, query latency,
    and ONNX fp32/int8 against torch; records the machine with the numbers."""
    from .. import bench as b
    from ..errors import BadQuery

    suites = suite or ["decode", "model", "ingest", "query"]
    unknown = sorted(set(suites) - set(b.SUITES))
    if unknown:
        raise BadQuery(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(b.SUITES)}")
    if folder is None:
        from .. import config

        folder = Path(config.get("cache_dir")) / "bench" / f"{megapixels:g}mp-{images}"
        err.print(f"making {images} {megapixels:g}-megapixel JPEGs in {folder} (once)", highlight=False)
        b.make_photo_set(folder, images, megapixels=megapixels)
    elif not folder.is_dir():
        raise BadQuery(f"not a folder: {folder}")
    with err.status("benchmarking") as status:
        result = b.run_suite(
            folder,
            model,
            suites=suites,
            workers=workers,
            batch_size=batch_size,
            model_images=model_images,
            progress=lambda s: status.update(f"benchmarking: {s}"),
        )
    for skipped in result["skipped"][:20]:
        err.print(f"[yellow]skipping[/] {escape(skipped['path'])}: {escape(skipped['reason'])}", highlight=False)
    if len(result["skipped"]) > 20:
        err.print(f"... and {len(result['skipped']) - 20} more unreadable files (all listed in the JSON)")
    text = json.dumps(result, indent=1, sort_keys=True)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    if as_json:
        out.print_json(text)
        return
    _print_table(result)
    if output is not None:
        out.print(f"written to {output}", highlight=False)


def _print_table(result: dict) -> None:
    table = Table(box=None, title=f"{result['model']} on {result['machine']['cpu']} "
                                  f"({result['machine']['usable_cores']} cores)")  # fmt: skip
    table.add_column("benchmark")
    table.add_column("result", justify="right")
    for name, r in result["results"].items():
        if name == "query":
            table.add_row("query warm p50 / p99", f"{r['warm_p50_ms']} / {r['warm_p99_ms']} ms")
            table.add_row("query cold start", f"{r['cold_start_s']} s")
        elif name == "onnx":
            for backend, v in r["backends"].items():
                table.add_row(f"model {backend}", f"{v['img_per_s']} img/s (x{v['speedup_vs_torch']}, "
                                                  f"cos {v['cosine_mean']})")  # fmt: skip
        else:
            table.add_row(name, f"{r['img_per_s']} img/s")
    for name, value in result["ratios"].items():
        table.add_row(name.replace("_", " "), f"{value}")
    out.print(table)
