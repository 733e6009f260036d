"""The FastAPI app: JSON API under ``/api``, the web UI at ``/``, OpenAPI docs at ``/docs``.

A thin adapter: it calls the library and turns its typed errors into HTTP statuses, all in one
JSON shape ``{"error": "...", "status": 422, "field": "k"}`` (``field``: the request field at fault, or null).

In front of the app, outermost first: the Host check (DNS rebinding), CORS (only with
``cors_origins``), the token check (only with ``token``; it answers before the body is read) and
the upload limit (counts the body as it arrives).

>>> from visdex.server import create_app                                    # doctest: +SKIP
>>> app = create_app("~/.local/share/visdex/index", token="s3cret")          # doctest: +SKIP
>>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8765)            # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
from collections.abc import Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from ..errors import MissingDependency, VisdexError

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_UPLOAD_PIXELS = 50_000_000
STATIC_DIR = Path(__file__).parent / "static"
UNAUTHORIZED = "missing or wrong token: send 'Authorization: Bearer <token>'"
TOKEN_COOKIE = "visdex_token"  # set by POST /api/login: HttpOnly, SameSite=Strict (the web UI's session)
OPEN_PATHS = ("/api/login", "/api/logout")  # reachable without the token: they are how one gets or drops it


def require_fastapi():
    """Import FastAPI, or say which extra to install."""
    try:
        import fastapi
        import fastapi_offline  # noqa: F401  (the docs pages' scripts, served locally)
        import python_multipart  # noqa: F401  (form uploads)
    except ImportError as e:
        raise MissingDependency(e.name or "fastapi", extra="server", purpose="visdex serve") from e
    return fastapi


@dataclass(frozen=True)
class ServerSettings:
    token: str | None
    max_upload_bytes: int
    max_upload_pixels: int
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()


def error_body(message: str, status: int, field: str | None = None) -> dict:
    """The one error shape of the API: ``field`` names the request field at fault (null when none is)."""
    return {"error": message, "status": status, "field": field}


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def token_matches(
    expected: str, authorization: str | None, query_token: str | None = None, cookie_token: str | None = None
) -> bool:
    """Whether a request carries ``expected``: as ``Authorization: Bearer``, else as ``query_token``
    (``?token=``, which only file URLs accept), else in the login cookie (:data:`TOKEN_COOKIE`)."""
    scheme, _, bearer = (authorization or "").partition(" ")
    given = bearer.strip() if scheme.lower() == "bearer" else (query_token or cookie_token)
    if not given:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def cookie_value(cookie_header: str | None, name: str = TOKEN_COOKIE) -> str | None:
    """The value of one cookie in a ``Cookie`` header (None when absent or unreadable)."""
    from http.cookies import CookieError, SimpleCookie

    if not cookie_header:
        return None
    jar = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    return jar[name].value if name in jar else None


def create_app(
    index_dir: str | os.PathLike,
    *,
    token: str | None = None,
    model: str | None = None,
    device: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    allowed_hosts: Iterable[str] = (),
    cors_origins: Iterable[str] = (),
):
    """A FastAPI app serving the index at ``index_dir`` (which must exist: IndexNotFound otherwise).

    The index is opened here and its model loaded at start-up (or by calling
    ``app.state.served.warm()`` beforehand), never by the first query. ``token`` turns on
    bearer-token auth for every ``/api`` route. Requests must name the server as loopback
    (``127.0.0.1``, ``localhost``, ``[::1]``) or as one of ``allowed_hosts`` in their Host header
    (``"*"``: any name; ``"0.0.0.0"`` or ``"::"``: any IP address). ``cors_origins`` (``"*"``: any)
    may call the API from their pages; without them no CORS header is sent.

    >>> from fastapi.testclient import TestClient                              # doctest: +SKIP
    >>> with TestClient(create_app("my-index"), base_url="http://127.0.0.1") as client:  # doctest: +SKIP
    ...     client.get("/api/search", params={"q": "a cat"}).json()["results"][0]["path"]
    '/photos/cat.jpg'
    """
    require_fastapi()
    from fastapi_offline import FastAPIOffline  # /docs and /redoc with their scripts served locally: work offline
    from starlette.concurrency import run_in_threadpool
    from starlette.staticfiles import StaticFiles

    from .routes import router
    from .routes_library import router as library_router
    from .routes_library import session as session_router
    from .routes_trash import router as trash_router
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

    app = FastAPIOffline(
        title="visdex", version=__version__, lifespan=lifespan,
        description="Semantic image search over one index: text, image, composed and region queries, "
        "filters, duplicates, clusters, a 2D map, zero-shot tags. Errors are "
        '`{"error": ..., "status": ..., "field": ...}`; `field` names the parameter at fault (422) or is null.',
    )  # fmt: skip
    hosts = tuple(dict.fromkeys(_host_name(h) for h in allowed_hosts if h.strip()))
    origins = tuple(dict.fromkeys(o.strip().rstrip("/") for o in cors_origins if o.strip()))
    settings = ServerSettings(token or None, int(max_upload_bytes), int(max_upload_pixels), hosts, origins)
    app.state.served = served
    app.state.settings = settings
    _install_error_handlers(app)
    # add_middleware wraps what is there: the last one added sees a request first
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    if settings.token:
        app.add_middleware(TokenGate, token=settings.token)
    if origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Authorization", "Content-Type", "If-None-Match"],
            expose_headers=["ETag"],
        )
    app.add_middleware(HostCheck, allowed=hosts)
    app.include_router(router)
    app.include_router(trash_router)
    app.include_router(library_router)
    app.include_router(session_router)
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
        headers, field = None, None
        if isinstance(exc, VisdexError):
            status, message, field = exc.http_status, str(exc), getattr(exc, "field", None)
            if field is not None and status == 400:  # a bad value of a named field: 422, as FastAPI's own checks
                status = 422
        elif isinstance(exc, RequestValidationError):
            status = 422
            field, message = _validation_error(exc)
        elif isinstance(exc, HTTPException):
            status, message, headers = exc.status_code, str(exc.detail), exc.headers
        else:  # a bug: log it with its traceback, tell the client only that it happened
            log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
            status, message = 500, f"internal error ({type(exc).__name__}); see the server log"
        return JSONResponse(error_body(message, status, field), status_code=status, headers=headers)

    for exc_type in (VisdexError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(exc_type, respond)


def _validation_error(exc) -> tuple[str | None, str]:
    """(the first field at fault, a message naming each one) for FastAPI's validation errors."""
    fields, parts = [], []
    for e in exc.errors()[:5]:
        loc = [x for x in e.get("loc", ()) if x not in ("query", "body", "path", "form", "header")]
        named = bool(loc) and isinstance(loc[0], str)  # not a position in an unreadable JSON body
        if named:
            fields.append(loc[0])
        where = ".".join(map(str, loc)) if named else "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return (fields[0] if fields else None), "; ".join(parts)


async def send_error(send, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """An error response from plain ASGI middleware, in the API's one shape."""
    body = json.dumps(error_body(message, status)).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return None


def _has_body(scope) -> bool:
    length = _header(scope, b"content-length")
    return _header(scope, b"transfer-encoding") is not None or (length is not None and length.strip() not in ("", "0"))


def _host_name(host: str) -> str:
    """The name part of a Host header or --host value: no port, no IPv6 brackets, lower case, no final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class HostCheck:
    """Answers 400 to a request whose Host header names this server by a name it was not given.

    DNS rebinding: a page on evil.example re-points its own name to 127.0.0.1 and then reads
    this server as if it were its own site; its requests carry ``Host: evil.example``. Loopback
    names and addresses always pass; so do the ``allowed`` names (the bound ``--host`` among
    them; ``*``: any; a wildcard bind ``0.0.0.0`` / ``::``: any IP address, which no rebinding
    page can use, since its pages would have that address as their own origin).
    """

    def __init__(self, app, allowed: Iterable[str]):
        self.app = app
        self.names = {_host_name(h) for h in allowed} | {"localhost"}
        self.any_name = "*" in self.names
        self.any_ip = bool(self.names & {"0.0.0.0", "::"})

    def allows(self, host: str) -> bool:
        name = _host_name(host)
        if self.any_name or name in self.names:
            return True
        ip = _ip(name)
        return ip is not None and (ip.is_loopback or self.any_ip)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = _header(scope, b"host")
        if host is not None and self.allows(host):
            return await self.app(scope, receive, send)
        shown = _host_name(host or "")[:100] or "(none)"
        await send_error(
            send,
            400,
            f"this server does not answer to the host name {shown!r} (a guard against DNS rebinding); "
            f"its operator can allow it with visdex serve --allow-host {shown} or VISDEX_ALLOWED_HOSTS",
            [(b"connection", b"close")] if _has_body(scope) else [],
        )


class TokenGate:
    """Answers 401 to an ``/api`` request without the server's token, before its body is read.

    Plain ASGI, outside the upload limit: an unauthenticated client cannot make the server take
    in (and buffer) an upload; the connection is closed after the answer instead of draining it.
    File URLs also take ``?token=``, and every route the login cookie (see :func:`token_matches`).
    """

    def __init__(self, app, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/api" or path.startswith("/api/")) or path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        query_token = None
        if path.startswith("/api/files/"):
            query_token = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("token")
        cookie = cookie_value(_header(scope, b"cookie"))
        if token_matches(self.token, _header(scope, b"authorization"), query_token, cookie):
            return await self.app(scope, receive, send)
        headers = [(b"www-authenticate", b"Bearer")]
        await send_error(send, 401, UNAUTHORIZED, headers + ([(b"connection", b"close")] if _has_body(scope) else []))


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
        message = f"upload too large: this server accepts at most {mb:g} MiB per request (visdex serve --max-upload-mb)"
        await send_error(send, 413, message, [(b"connection", b"close")])
