"""``visdex serve``: the HTTP API and the web UI over one index (needs ``visdex[server]``)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..cli import IndexOpt, app, err, out
from ..cli import root_options as _state
from ..server.app import (  # light: the server's heavy imports wait for create_app
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_MAX_UPLOAD_PIXELS,
    is_loopback,
)

__all__ = ["is_loopback", "serve"]


@app.command()
def serve(
    index: Path | None = IndexOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes it to the network."),
    port: int = typer.Option(8765, "--port", "-p", min=0, max=65535, help="Port to listen on."),
    token: str | None = typer.Option(
        None, "--token", help="Require 'Authorization: Bearer TOKEN' on every API request. [env: VISDEX_TOKEN]"
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, mps."),
    max_upload_mb: float = typer.Option(
        DEFAULT_MAX_UPLOAD_BYTES / 2**20, "--max-upload-mb", min=0.001, help="Largest request body accepted."
    ),
    max_upload_pixels: int = typer.Option(
        DEFAULT_MAX_UPLOAD_PIXELS, "--max-upload-pixels", min=1, help="Largest uploaded image."
    ),
    allow_host: list[str] | None = typer.Option(
        None,
        "--allow-host",
        metavar="NAME",
        help="Another name clients may use in the Host header (besides loopback and --host); repeatable; '*' for any. "
        "[env: VISDEX_ALLOWED_HOSTS, comma-separated]",
    ),
    cors: list[str] | None = typer.Option(
        None,
        "--cors",
        metavar="ORIGIN",
        help="Let pages from ORIGIN (e.g. http://localhost:3000) call the API from a browser; repeatable; '*' for any. "
        "Without it, no CORS headers are sent.",
    ),
) -> None:
    """Serve the index over HTTP: a web UI at / and a JSON API under /api (docs at /docs)."""
    from .. import config
    from ..server import create_app, require_fastapi

    require_fastapi()
    try:
        import uvicorn
    except ImportError as e:
        from ..errors import MissingDependency

        raise MissingDependency("uvicorn", extra="server", purpose="visdex serve") from e
    token = token or config.get("token")  # the environment's, read once in config
    for origin in cors or ():
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise typer.BadParameter(f"{origin!r} is not an origin: give scheme://host[:port]", param_hint="--cors")
    if not token and not is_loopback(host):
        err.print(
            f"[yellow]warning:[/] serving on {host} without a token: anyone who can reach this address can "
            "search your images and download them. Set --token (or VISDEX_TOKEN).",
            highlight=False,
        )
    application = create_app(
        index or _state["index"] or config.get("index"),
        token=token,
        device=device,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_upload_pixels=max_upload_pixels,
        allowed_hosts=[host, *(allow_host or ()), *config.get("allowed_hosts")],
        cors_origins=cors or (),
    )
    with err.status("loading the model"):
        application.state.served.warm()  # errors here are visdex errors: one line, an exit code
    shown = f"[{host}]" if ":" in host else host
    out.print(
        f"visdex serving {application.state.served.path} on http://{shown}:{port}/  (API docs: /docs)"
        + ("  [auth: bearer token]" if token else ""),
        highlight=False,
    )
    uvicorn.run(application, host=host, port=port, log_level="warning")
