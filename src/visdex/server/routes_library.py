"""The ``/api`` routes of the library views: browsing without a query, facet counts, one image's EXIF facts
and its duplicates. Browsing and facets run on the file-lookup connection, so they never wait behind a search.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Path, Query, Request, Response
from pydantic import BaseModel, Field

from .. import browse as browsing
from .. import foldertree, itemfacts
from ..store import library_sql
from . import queries
from .routes import MAX_TEXT, Where, require_token

router = APIRouter(prefix="/api", dependencies=[Depends(require_token)], tags=["library"])
session = APIRouter(prefix="/api", tags=["session"])  # no token needed: this is how the web UI gets and drops it


class BrowseItem(BaseModel):
    id: int
    name: str
    path: str | None = None
    key: str | None = None
    size: int | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    taken_at: str | None = None
    camera: str | None = None
    mtime: float | None = None
    date: str | None = Field(None, description="When taken (EXIF), else when last modified; ISO 8601.")
    date_source: str | None = Field(None, description='"taken" or "modified" (null in a catalog).')
    thumb: str
    original: str


class BrowsePage(BaseModel):
    items: list[BrowseItem]
    total: int = Field(description="How many items match in all.")
    offset: int
    next_offset: int | None = Field(description="The offset of the next page (paging by offset); null at the end.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class FacetValue(BaseModel):
    value: str
    count: int
    where: str = Field(description='The filter clause that selects this value, e.g. `camera = "Canon EOS R5"`.')


class Facets(BaseModel):
    total: int = Field(description="How many items the filter selects.")
    folder: list[FacetValue]
    year: list[FacetValue] = Field(description="Years taken (EXIF), newest first.")
    month: list[FacetValue] = Field(description="Months taken (EXIF, YYYY-MM), newest first.")
    camera: list[FacetValue]
    format: list[FacetValue]
    tag: list[FacetValue]


class FolderNode(BaseModel):
    name: str
    path: str
    count: int = Field(description="Images in this folder and in the folders below it.")
    files: int = Field(description="Images directly in this folder.")
    where: str = Field(description='The filter clause that selects it and everything below it: `folder = "/photos"`.')
    children: list[FolderNode] = Field(description="Its sub-folders that hold images, by name.")


class FolderTree(BaseModel):
    total: int = Field(description="Images the filter selects (the root's count).")
    root: FolderNode | None = Field(description="The deepest folder above every image; null when none (or a catalog).")


class TagCount(BaseModel):
    label: str
    count: int = Field(description="Images whose best tag this is.")


class BestTags(BaseModel):
    labels: list[TagCount] = Field(description="Most common first.")
    items: list[tuple[int, int]] = Field(description="`[image id, index into labels]` for every tagged image.")


class ExifFacts(BaseModel):
    id: int
    facts: dict[str, Any] = Field(
        description="camera make/model, lens, aperture, exposure, iso, focal_length, taken, gps {lat, lon}, ..."
    )


class DuplicateMember(BaseModel):
    id: int
    path: str
    name: str
    score: float = Field(description="Cosine similarity to the item.")
    kind: str = Field(description='"exact" (same bytes) or "near" (cosine and pixels agree).')
    thumb: str
    original: str


class DuplicatesOf(BaseModel):
    id: int
    threshold: float | None
    count: int
    duplicates: list[DuplicateMember]


@router.get("/browse", summary="The library without a query: newest first (taken, else modified), a page at a time")
def browse(
    request: Request,
    where: Where = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="Skip this many items.")] = 0,
    cursor: Annotated[
        str | None, Query(max_length=100, description="`next_cursor` of the page before (wins over `offset`).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=browsing.MAX_LIMIT, description="Items per page.")] = 100,
) -> BrowsePage:
    """Endless scrolling: ask again with `cursor=next_cursor` until it is null. `where` filters as in search."""
    served = request.app.state.served
    with queries.about("where"):  # the filter's errors name the field
        page = served.files(
            lambda db: browsing.browse(db, where=where or None, offset=offset, limit=limit, cursor=cursor)
        )
    for item in page.items:
        item.update(queries.file_urls(item["id"]))
    return BrowsePage(**page.to_dict())


@router.get(
    "/clusters/{cluster_id}",
    summary="The images of one cluster, newest first, a page at a time",
    response_model=BrowsePage,  # (or the 202 below, a Response of its own)
    responses={202: {"description": 'The clusters are still being computed: `{"status": "computing", ...}`.'}},
)
def cluster_members(
    request: Request,
    cluster_id: Annotated[int, Path(ge=0, le=10_000, description="`id` of a cluster of `GET /api/clusters`.")],
    k: Annotated[int | None, Query(ge=1, description="As in `GET /api/clusters` (the same k and seed).")] = None,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1)] = 0,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=browsing.MAX_LIMIT)] = 100,
) -> BrowsePage | Response:
    """Pages as `GET /api/browse` does; the clusters are computed once per index state and kept."""
    from ..errors import NotFound
    from .background import clusters_job
    from .routes import ANALYSIS_WAIT, analysis

    served = request.app.state.served
    found = analysis(request, clusters_job(k, seed), ANALYSIS_WAIT)
    if isinstance(found, Response):  # still being computed: 202 with its progress
        return found
    chosen = next((c for c in found if c.id == cluster_id), None)
    if chosen is None:
        raise NotFound(f"no cluster {cluster_id} (there are {len(found)})")
    members = [int(i) for i in chosen.member_ids]
    page = served.files(lambda db: browsing.browse(db, ids=members, limit=limit, cursor=cursor))
    for item in page.items:
        item.update(queries.file_urls(item["id"]))
    return BrowsePage(**page.to_dict())


@router.get("/facets", summary="Counts of folder, year, month, camera, format and tag values")
def facets(
    request: Request,
    where: Where = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Values per field, most common first.")] = 50,
) -> Facets:
    """Among the items `where` selects; each value carries the `where` clause that selects it."""
    served = request.app.state.served
    with queries.about("where"):
        found = served.files(lambda db: browsing.facets(db, where=where or None, limit=limit))
    return Facets(**found.to_dict())


@router.get("/folders", summary="The indexed folders as a tree, with how many images each holds")
def folders(request: Request, where: Where = None) -> FolderTree:
    """Among the items `where` selects (the web UI leaves its folder clause out, so the tree stays whole);
    a node's `where` selects it with everything below it, so its `count` is what that filter shows."""
    served = request.app.state.served
    with queries.about("where"):
        root = served.files(lambda db: foldertree.folder_tree(db, where=where or None))
    return FolderTree(total=root.count if root else 0, root=FolderNode(**root.to_dict()) if root else None)


@router.get("/tags/best", summary="The best tag of every tagged image (the map colours images by it)")
def best_tags(request: Request) -> BestTags:
    served = request.app.state.served
    rows = served.files(lambda db: library_sql.best_tags(db) if db.kind != "catalog" else [])
    counts: dict[str, int] = {}
    for _, label in rows:
        counts[label] = counts.get(label, 0) + 1
    labels = sorted(counts, key=lambda t: (-counts[t], t))
    index = {t: i for i, t in enumerate(labels)}
    return BestTags(labels=[TagCount(label=t, count=counts[t]) for t in labels],
                    items=[(i, index[t]) for i, t in rows])  # fmt: skip


@router.get("/items/{item_id}/exif", summary="The EXIF facts of one indexed image")
def exif(request: Request, item_id: int) -> ExifFacts:
    served = request.app.state.served
    queries.known_id(item_id)
    path = served.files(lambda db: _path_of(db, item_id))
    return ExifFacts(id=item_id, facts=itemfacts.exif_facts(path))


def _path_of(db, item_id: int) -> str:
    from ..errors import NotFound

    row = db.files_by_ids([item_id]).get(item_id) if db.kind != "catalog" else None
    if row is None:
        raise NotFound(f"no image file with id {item_id} in the index")
    return row.path


@router.get("/items/{item_id}/duplicates", summary="The copies of one indexed image")
def duplicates_of(
    request: Request,
    item_id: int,
    threshold: Annotated[
        float | None, Query(gt=0, le=1, allow_inf_nan=False, description="Cosine (default: the model's).")
    ] = None,
) -> DuplicatesOf:
    """Files with the same bytes, or near copies: cosine at or above the threshold and pixels that line up."""
    from pathlib import Path as FilePath

    served = request.app.state.served
    queries.known_id(item_id)
    found = served.call(lambda ix: itemfacts.duplicates_of(ix, item_id, threshold=threshold))
    members = [DuplicateMember(**d.to_dict(), name=FilePath(d.path).name, **queries.file_urls(d.id)) for d in found]
    return DuplicatesOf(id=item_id, threshold=threshold, count=len(members), duplicates=members)


__all__ = ["router", "MAX_TEXT"]


class Session(BaseModel):
    auth: bool = Field(description="Whether this server asks for a token at all.")
    signed_in: bool


@session.post("/login", summary="Sign in: the token, checked, comes back as an HttpOnly, SameSite=Strict cookie")
def login(
    request: Request, response: Response, token: Annotated[str, Form(max_length=1000, description="The token.")]
) -> Session:
    """For the web UI: afterwards the browser sends the token as a cookie, which page scripts cannot read,
    other sites cannot make it send, and image / link URLs never carry. API clients send the Bearer header."""
    from starlette.exceptions import HTTPException

    from .app import TOKEN_COOKIE, UNAUTHORIZED, token_matches

    expected = request.app.state.settings.token
    if not expected:
        return Session(auth=False, signed_in=True)
    if not token_matches(expected, None, token):
        raise HTTPException(401, UNAUTHORIZED)
    secure = request.url.scheme == "https"
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/", secure=secure)
    return Session(auth=True, signed_in=True)


@session.post("/logout", summary="Sign out: the login cookie is cleared")
def logout(request: Request, response: Response) -> Session:
    from .app import TOKEN_COOKIE

    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict")
    return Session(auth=bool(request.app.state.settings.token), signed_in=False)
