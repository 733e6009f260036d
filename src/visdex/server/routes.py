"""The ``/api`` routes. Each one calls the library (through :class:`~visdex.server.state.ServedIndex`)
and shapes its answer as JSON; none of them searches by itself.

Endpoints are plain ``def`` functions: FastAPI runs them in its thread pool, so a slow model
call never blocks the event loop and other requests go on meanwhile.

Every parameter is declared with its range here, so FastAPI refuses a bad value (422, naming
the field) before the library sees it, and the OpenAPI docs show the ranges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from .. import thumbs
from ..errors import BadQuery, NotFound
from . import queries
from .app import TOKEN_COOKIE, UNAUTHORIZED, token_matches

bearer = HTTPBearer(auto_error=False, description="The token given to `visdex serve --token`.")


def _check_token(request: Request, creds: HTTPAuthorizationCredentials | None, allow_query: bool) -> None:
    """The app's TokenGate middleware has checked already, before the body was read; this repeats it
    where the route is declared (and puts the scheme in the OpenAPI docs)."""
    expected = request.app.state.settings.token
    if not expected:
        return
    query_token = request.query_params.get("token") if allow_query else None
    cookie = request.cookies.get(TOKEN_COOKIE)
    if not token_matches(expected, request.headers.get("authorization"), query_token, cookie):
        raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


# async: a check this cheap would cost a hop through the thread pool per request as a plain def
async def require_token(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    _check_token(request, creds, allow_query=False)


async def require_token_or_query(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    _check_token(request, creds, allow_query=True)


router = APIRouter(prefix="/api")
api = APIRouter(dependencies=[Depends(require_token)])
files = APIRouter(dependencies=[Depends(require_token_or_query)], tags=["files"])

MAX_TEXT = 2000  # characters of a query or a filter: far past what anyone types, short of a denial of service
FINITE = {"allow_inf_nan": False}
K = Annotated[int, Query(ge=1, le=1000, description="How many results.")]
Where = Annotated[
    str | None,
    Query(max_length=MAX_TEXT, description='Filter, e.g. "taken >= 2023 and format = jpeg", "tag = beach".'),
]
MinScore = Annotated[float | None, Query(**FINITE, description="Drop hits scoring below this cosine.")]
Within = Annotated[float | None, Query(ge=0, **FINITE, description="Keep hits within this much of the top score.")]
Crop = Annotated[
    str | None, Query(max_length=100, description="Region of the image: x,y,w,h in pixels, or fractions <= 1.")
]
ImageWeight = Annotated[
    float, Query(gt=0, le=1000, **FINITE, description="Weight of the image term against the texts.")
]
Seed = Annotated[int, Query(ge=0, le=2**32 - 1, description="Random seed (same seed, same answer).")]
OFFSET_DOC = "Skip this many results (tiles, with collapse): the next page is at `next_offset`."
COLLAPSE_DOC = "Show a burst of near-copies as one result; the others are listed in its `collapsed`."
HUBNESS_DOC = "Re-rank the top candidates by CSLS hubness reduction (true / false; default: the model's)."
Hubness = Annotated[bool | None, Query(description=HUBNESS_DOC)]


def served(request: Request):
    return request.app.state.served


def _hits_response(request: Request, hits, took_ms: float | None = None) -> Response:
    """Search results, encoded here: FastAPI's validation and encoding of a returned dict cost more than the
    search on a hot path (the OpenAPI schema still comes from the route's annotation)."""
    return queries.json_response(
        {"count": len(hits), "results": queries.hits_json(served(request), hits), "took_ms": took_ms}
    )


# -- search ------------------------------------------------------------------------------
@api.get("/search", tags=["search"], summary="Search by text, by an indexed image, or both", response_model=dict)
def search_get(
    request: Request,
    q: Annotated[
        str, Query(max_length=MAX_TEXT, description="Composed query: \"beach + '2:at night' - people\".")
    ] = "",
    id: Annotated[int | None, Query(description="An indexed item as the image term.")] = None,
    crop: Crop = None,
    image_weight: ImageWeight = 1.0,
    where: Where = None,
    k: K = 20,
    min_score: MinScore = None,
    within: Within = None,
    offset: Annotated[int, Query(ge=0, le=4000, description=OFFSET_DOC)] = 0,
    collapse: Annotated[bool, Query(description=COLLAPSE_DOC)] = False,
    hubness: Hubness = None,
) -> dict | Response:
    """Text ("dog on a beach"), an indexed image (`id`), or both with `+` / `-` text modifiers and weights
    (`id=12&q=+ at night - people`), a `crop` region of the image, a `where` filter."""
    req = queries.SearchRequest(q, None, id, crop, image_weight, where, k, min_score, within, hubness)
    if offset or collapse:  # pages and tiles: see queries.search_page
        return queries.search_page(served(request), request.app.state.settings, req, offset, collapse)
    hits, took = queries.run_search(served(request), request.app.state.settings, req)
    return _hits_response(request, hits, took)


@api.post(
    "/search",
    tags=["search"],
    summary="Search by an uploaded image (multipart), optionally with text",
    response_model=dict,
)
def search_post(
    request: Request,
    image: Annotated[UploadFile | None, File(description="The query image (JPEG, PNG, WebP, HEIC, ...).")] = None,
    q: Annotated[str, Form(max_length=MAX_TEXT)] = "",
    id: Annotated[int | None, Form()] = None,
    crop: Annotated[str | None, Form(max_length=100)] = None,
    image_weight: Annotated[float, Form(gt=0, le=1000, **FINITE)] = 1.0,
    where: Annotated[str | None, Form(max_length=MAX_TEXT)] = None,
    k: Annotated[int, Form(ge=1, le=1000)] = 20,
    min_score: Annotated[float | None, Form(**FINITE)] = None,
    within: Annotated[float | None, Form(ge=0, **FINITE)] = None,
    offset: Annotated[int, Form(ge=0, le=4000, description=OFFSET_DOC)] = 0,
    collapse: Annotated[bool, Form(description=COLLAPSE_DOC)] = False,
    hubness: Annotated[bool | None, Form(description=HUBNESS_DOC)] = None,
) -> dict | Response:
    """The same as `GET /api/search`, with the image term uploaded as `image` (multipart/form-data)."""
    data = image.file.read() if image is not None else None
    req = queries.SearchRequest(q, data, id, crop or None, image_weight, where or None, k, min_score, within, hubness)
    if offset or collapse:
        return queries.search_page(served(request), request.app.state.settings, req, offset, collapse)
    hits, took = queries.run_search(served(request), request.app.state.settings, req)
    return _hits_response(request, hits, took)


@api.get("/similar/{item_id}", tags=["search"], summary="More like this indexed item", response_model=dict)
def similar(
    request: Request,
    item_id: int,
    where: Where = None,
    k: K = 20,
    min_score: MinScore = None,
    within: Within = None,
    hubness: Hubness = None,
) -> dict | Response:
    """The items most like an indexed one (itself left out)."""
    queries.known_id(item_id)
    queries.check_where(served(request), where)
    hits, took = queries.timed(
        lambda: served(request).call(
            lambda ix: ix.similar(item_id, k=k, where=where, min_score=min_score, within=within, hubness=hubness)
        )
    )
    return _hits_response(request, hits, took)


@api.get("/items/{item_id}", tags=["search"], summary="One indexed item: its metadata and tags")
def item(request: Request, item_id: int) -> dict:
    queries.known_id(item_id)
    return served(request).call(lambda ix: queries.item_json(ix, item_id))


# -- analyses: computed in the background, once per index state (see server/background.py) --
WAIT_DOC = "Seconds to wait for a result still being computed before answering 202 with its progress."
Wait = Annotated[float, Query(ge=0, le=60, **FINITE, description=WAIT_DOC)]
ANALYSIS_WAIT = 1.0  # a small index's analyses are ready within it: one request, no polling
PENDING: dict[int | str, dict[str, Any]] = {
    202: {
        "description": 'Still being computed: `{"status": "computing", "progress": 0.4}`; ask again.',
        "content": {"application/json": {"example": {"status": "computing", "progress": 0.4}}},
    }
}


def analysis(request: Request, made: tuple, wait: float):
    """The analysis's result, or a 202 response with its progress (``isinstance(x, Response)``)."""
    from .background import Pending

    key, job = made
    found = served(request).analysis(key, job, wait=wait)
    if isinstance(found, Pending):
        return JSONResponse(found.body(), status_code=202)  # with the step running, for a job of named steps
    return found


@api.get(
    "/duplicates",
    tags=["analysis"],
    summary="Groups of exact and near-duplicate images",
    responses=PENDING,
    response_model=dict,
)
def duplicates(
    request: Request,
    threshold: Annotated[
        float | None,
        # at or below 0 every image would be a candidate duplicate of every other: nothing to find, n^2 to check
        Query(gt=0, le=1, **FINITE, description="Cosine for near duplicates, in (0, 1] (default: the model's)."),
    ] = None,
    exact_only: Annotated[bool, Query(description="Only byte-identical files.")] = False,
    wait: Wait = ANALYSIS_WAIT,
) -> dict | Response:
    """Each group lists its members and the suggested keeper (the likely original: highest resolution of the
    shared picture, then EXIF date, then oldest). Computed in the background once per index state: 202 with
    `progress` until then."""
    from .background import dupes_job

    groups = analysis(request, dupes_job(threshold, exact_only), wait)
    if isinstance(groups, Response):
        return groups
    return {"count": len(groups), "groups": [queries.group_json(g) for g in groups]}


@api.get("/clusters", tags=["analysis"], summary="Clusters of similar images", responses=PENDING, response_model=dict)
def clusters(
    request: Request,
    k: Annotated[
        int | None,
        Query(ge=1, description="Number of clusters, at most the number of images (default: about sqrt(n/2))."),
    ] = None,
    seed: Seed = 0,
    wait: Wait = ANALYSIS_WAIT,
) -> dict | Response:
    """Computed in the background once per index state: 202 with `progress` until then."""
    from .background import clusters_job

    found = analysis(request, clusters_job(k, seed), wait)
    if isinstance(found, Response):
        return found
    return {"count": len(found), "clusters": [queries.to_dict(c) for c in found]}


@api.get("/map", tags=["analysis"], summary="2D map coordinates of every image", responses=PENDING, response_model=dict)
def map_points(
    request: Request,
    method: Annotated[Literal["auto", "umap", "tsne", "pca"], Query()] = "auto",
    seed: Seed = 0,
    wait: Wait = ANALYSIS_WAIT,
) -> dict | Response:
    """Points in [0, 1] x [0, 1]; near points look alike. Computed in the background once per index state
    (the default map right after start-up and after each indexing): 202 with `progress` until then."""
    from .background import map_job

    proj = analysis(request, map_job(method, seed), wait)
    if isinstance(proj, Response):
        return proj
    return queries.projection_json(proj, method)


@api.get("/analyses", tags=["analysis"], summary="The background analyses: which are ready, which computing")
def analyses(request: Request) -> dict:
    """`{"generation": n, "jobs": {"map auto 0": {"status": "computing", "progress": 0.4, "seconds": null}}}`."""
    return served(request).background.status()


@api.get("/tags", tags=["tags"], summary="Zero-shot labels in the index and how many images have each")
def tag_counts(request: Request) -> dict:
    return {"tags": served(request).call(queries.tag_counts)}


@api.post("/tags", tags=["tags"], summary="Label every image zero-shot with the best of the given labels")
def tag_images(
    request: Request,
    labels: Annotated[
        list[Annotated[str, Body(max_length=200)]],
        Body(min_length=2, max_length=1000, description='["beach", "mountain", "city"]'),
    ],
    top: Annotated[int, Body(ge=1, le=20)] = 3,
    min_score: Annotated[float | None, Body(ge=0, le=1, **FINITE)] = None,
    template: Annotated[str, Body(max_length=200, description="The prompt, with {} where the label goes.")] = (
        "a photo of {}"
    ),
) -> dict:
    """Then filter searches with `where=tag = beach`. Replaces earlier scores of the same labels."""
    from ..tags import tag_index

    names = queries.check_labels(labels)
    queries.check_template(template)
    report = served(request).call(lambda ix: tag_index(ix, names, top=top, min_score=min_score, template=template))
    return report.to_dict()


@api.get("/status", tags=["index"], summary="The index: model, counts, failures")
def status(request: Request) -> dict:
    st = served(request).call(lambda ix: ix.status(max_failures=50)).to_dict()
    settings = request.app.state.settings
    st["server"] = {
        "auth": bool(settings.token),
        "max_upload_bytes": settings.max_upload_bytes,
        "max_upload_pixels": settings.max_upload_pixels,
    }
    return st


# -- files: only by indexed id, never by a path from the request --------------------------
# GET and HEAD; each answer has an ETag, and a request whose If-None-Match holds it gets 304.
CACHE_CONTROL = "private, max-age=3600"


def _source(request: Request, item_id: int) -> thumbs.ThumbSource:
    queries.known_id(item_id)
    return served(request).files(lambda db: thumbs.source_in_db(db, item_id))


@files.get("/files/{item_id}/thumb", summary="Thumbnail of an indexed image (cached on disk)")
@files.head("/files/{item_id}/thumb", include_in_schema=False)
def thumbnail(
    request: Request,
    item_id: int,
    size: Annotated[int, Query(description=f"One of {', '.join(map(str, thumbs.SIZES))}.")] = 256,
    fmt: Annotated[Literal["jpeg", "webp"], Query(alias="format")] = "jpeg",
) -> Response:
    if size not in thumbs.SIZES:  # (a Literal of ints would refuse the string "256" of a query string)
        raise BadQuery(f"size must be one of {', '.join(map(str, thumbs.SIZES))}, not {size}", field="size")
    src = _source(request, item_id)
    # named by the content hash: known before the thumbnail is made, so a 304 costs no decoding
    headers = {"ETag": f'W/"{src.key}-{size}-{fmt}"', "Cache-Control": CACHE_CONTROL}
    if queries.not_modified(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    path = thumbs.render_thumbnail(src, served(request).path / thumbs.THUMBS_DIR, size, fmt)  # outside any lock
    return FileResponse(path, media_type=thumbs.FORMATS[fmt][2], headers=headers)


@files.get("/files/{item_id}/original", summary="The original file of an indexed image")
@files.head("/files/{item_id}/original", include_in_schema=False)
def original(request: Request, item_id: int) -> Response:
    src = _source(request, item_id)
    if thumbs.is_remote(src):  # a WebDataset sample or a URL: its bytes, tagged by content hash
        headers = {"ETag": f'"{src.key}"', "Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
        if queries.not_modified(request.headers.get("if-none-match"), headers["ETag"]):
            return Response(status_code=304, headers=headers)
        remote_media = queries.media_type(Path(src.path)) or "application/octet-stream"
        return Response(thumbs.remote_bytes(src), media_type=remote_media, headers=headers)
    path = thumbs.existing_file(src)
    media = queries.media_type(path)
    if media is None:
        raise NotFound(f"item {item_id} is not an image file")
    st = path.stat()
    headers = {
        "ETag": f'"{st.st_mtime_ns:x}-{st.st_size:x}"',  # the file as it is now, not as it was indexed
        "Cache-Control": CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
    }
    if queries.not_modified(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return FileResponse(
        path, media_type=media, filename=path.name, content_disposition_type="inline", headers=headers, stat_result=st
    )


router.include_router(api)
router.include_router(files)
