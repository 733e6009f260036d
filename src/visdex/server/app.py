"""The FastAPI app: JSON API under ``/api``, the web UI at ``/``, OpenAPI docs at ``/docs``.

A thin adapter: it calls the library and turns its typed errors into HTTP statuses, all in one
JSON shape ``{"error": "...", "status": 400}``.

>>> from visdex.server import create_app                                    # doctest: +SKIP
>>> app = create_app("~/.local/share/visdex/index", token="s3cret")          # doctest: +SKIP
>>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8765)            # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingDependency, VisdexError

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_UPLOAD_PIXELS = 50_000_000
STATIC_DIR = Path(__file__).parent / "static"


def require_fastapi():
    """Import FastAPI, or say which extra to install."""
    try:
        import fastapi
        import python_multipart  # noqa: F401  (form uploads)
    except ImportError as e:
        raise MissingDependency(e.name or "fastapi", extra="server", purpose="visdex serve") from e
    return fastapi


@dataclass(frozen=True)
class ServerSettings:
    token: str | None
    max_upload_bytes: int
    max_upload_pixels: int


def error_body(message: str, status: int) -> dict:
    """The one error shape of the API."""
    return {"error": message, "status": status}


def create_app(
    index_dir: str | os.PathLike,
    *,
    token: str | None = None,
    model: str | None = None,
    device: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
):
    """A FastAPI app serving the index at ``index_dir`` (which must exist: IndexNotFound otherwise).

    The index is opened here and its model loaded at start-up (or by calling
    ``app.state.served.warm()`` beforehand), never by the first query. ``token`` turns on
    bearer-token auth for every ``/api`` route.

    >>> from fastapi.testclient import TestClient                              # doctest: +SKIP
    >>> with TestClient(create_app("my-index")) as client:                     # doctest: +SKIP
    ...     client.get("/api/search", params={"q": "a cat"}).json()["results"][0]["path"]
    '/photos/cat.jpg'
    """
    fastapi = require_fastapi()
    from starlette.concurrency import run_in_threadpool
    from starlette.staticfiles import StaticFiles

    from .routes import router
    from .state import ServedIndex

    served = ServedIndex(index_dir, model=model, device=device)  # fails fast on a missing index

    @asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(served.warm)
        try:
            yield
        finally:
            await run_in_threadpool(served.close)

    from .. import __version__

    app = fastapi.FastAPI(
        title="visdex", version=__version__, lifespan=lifespan,
        description="Semantic image search over one index: text, image, composed and region queries, "
        "filters, duplicates, clusters, a 2D map, zero-shot tags. Errors are `{\"error\": ..., \"status\": ...}`.",
    )  # fmt: skip
    app.state.served = served
    app.state.settings = ServerSettings(token or None, int(max_upload_bytes), int(max_upload_pixels))
    _install_error_handlers(app)
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_bytes))
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_ui_route(app)
    return app


def _add_ui_route(app) -> None:
    from fastapi.responses import FileResponse

    headers = {
        # the UI loads only its own files; images come from the API or are local blobs
        "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer",
    }

    @app.get("/", include_in_schema=False)
    def ui() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=headers)


def _install_error_handlers(app) -> None:
    """Every error leaves as ``{"error": message, "status": code}``: library errors by their
    ``http_status``, request validation as 422, routing / auth errors as their status."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def respond(request, exc: Exception) -> JSONResponse:
        headers = None
        if isinstance(exc, VisdexError):
            status, message = exc.http_status, str(exc)
        elif isinstance(exc, RequestValidationError):
            status, message = 422, _validation_message(exc)
        elif isinstance(exc, HTTPException):
            status, message, headers = exc.status_code, str(exc.detail), exc.headers
        else:  # a bug: log it with its traceback, tell the client only that it happened
            log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
            status, message = 500, f"internal error ({type(exc).__name__}); see the server log"
        return JSONResponse(error_body(message, status), status_code=status, headers=headers)

    for exc_type in (VisdexError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(exc_type, respond)


def _validation_message(exc) -> str:
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body", "path", "form"))
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid"))
    return "invalid request: " + "; ".join(parts)


class UploadLimit:
    """Refuses request bodies over ``max_bytes`` with 413 before the app parses them.

    Plain ASGI so the body is counted as it arrives (a client can lie in, or leave out,
    Content-Length); a body under the limit is replayed to the app unchanged.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(send)
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect, as Starlette expects
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        mb = self.max_bytes / (1024 * 1024)
        body = json.dumps(
            error_body(
                f"upload too large: this server accepts at most {mb:g} MiB per request (visdex serve --max-upload-mb)",
                413,
            )
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
