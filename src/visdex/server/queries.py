"""HTTP requests -> library calls, library results -> JSON.

The query string syntax is :mod:`visdex.query`'s, with one difference that matters on a server:
image terms never come from a path in the request (that would read the server's own files).
The image term is an upload or an indexed id; the text may carry ``+`` / ``-`` terms and weights.
The two are joined into one composed query that :meth:`visdex.api.Index.search` runs as is.
"""

from __future__ import annotations

import os
import shlex
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BadImage, BadQuery, ImageTooLarge, NotFound, VisdexError
from ..query import Query, parse_query

T = TypeVar("T")

PATHS_REFUSED = (
    "image paths are not accepted over HTTP (they would name files on the server); upload the image "
    "(POST /api/search with 'image') or give an indexed id ('id')"
)
# Served inline only for raster formats a browser cannot run code from (no SVG, no HTML).
MEDIA_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".jpe": "image/jpeg", ".jfif": "image/jpeg", ".png": "image/png",
    ".webp": "image/webp", ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
    ".heic": "image/heic", ".heif": "image/heif", ".avif": "image/avif",
}  # fmt: skip


@dataclass
class SearchRequest:
    q: str
    image: bytes | None
    id: int | None
    crop: str | None
    image_weight: float
    where: str | None
    k: int
    min_score: float | None
    within: float | None
    hubness: bool | None = None  # None: the model's default (visdex.hubness)


INT64 = 2**63  # SQLite's integer range: an id outside it is in no index (and would overflow the query)


def known_id(item_id: int) -> int:
    """``item_id`` if an index could hold it; NotFound (404, as for any unknown id) otherwise."""
    if not -INT64 <= item_id < INT64:
        raise NotFound(f"no item with id {item_id} in the index")
    return item_id


@contextmanager
def about(field: str) -> Iterator[None]:
    """Errors raised inside (400s that name no field) are about the request field ``field``."""
    try:
        yield
    except VisdexError as e:
        if getattr(e, "field", None) is None and e.http_status == 400:
            e.field = field
        raise


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header holds ``etag`` (weak comparison, as RFC 9110 asks) or is ``*``."""
    if not if_none_match:
        return False
    given = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in given or etag.removeprefix("W/") in given


def check_where(served, where: str | None) -> None:
    """Read the filter before the search does, so that its errors name the field ``where``
    (parsing takes microseconds; the search parses it again). An empty one is no filter, as in the library."""
    if not where:
        return
    from ..filters import parse_where

    catalog = served.call(lambda ix: ix.db.kind == "catalog")
    with about("where"):
        parse_where(where, catalog=catalog)


def check_labels(labels: Sequence[str]) -> list[str]:
    """The labels of a tagging request, stripped, blanks and repeats dropped; fewer than two -> 422."""
    names = list(dict.fromkeys(x.strip() for x in labels if x.strip()))
    if len(names) < 2:
        raise BadQuery("labels: give at least two different labels", field="labels")
    return names


def check_template(template: str) -> None:
    """A prompt template holds one ``{}`` for the label (or none: the label goes after it) and no other braces."""
    if template.count("{}") > 1 or any(c in template.replace("{}", "") for c in "{}"):
        raise BadQuery("template: give one {} where the label goes (or none), and no other braces", field="template")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, round((time.perf_counter() - t0) * 1000, 2)


def check_query(query: str, image_path: str | None = None) -> Query:
    """Parse ``query`` with the library's parser and refuse every image term other than ``image_path``
    (the server's own upload or indexed file) with one message, whether or not the named file
    exists, so the answer says nothing about the server's files."""
    try:
        parsed = parse_query(query)
    except BadQuery as e:
        if getattr(e, "path", None) is not None:  # a missing image file: refused like an existing one
            raise BadQuery(PATHS_REFUSED, field="q") from None
        raise BadQuery(str(e), field="q") from None
    if any(t.value != image_path for t in parsed.image_terms) or len(parsed.image_terms) > (image_path is not None):
        raise BadQuery(PATHS_REFUSED, field="q")
    if image_path is not None and not parsed.image_terms:  # e.g. a catalog image with an unusual extension
        raise BadQuery("this item's image cannot be combined with text (its file type is not recognised)", field="q")
    return parsed


def compose(image_path: str, image_weight: float, text: str) -> str:
    """One composed query: the image term, then the request's text (``"+ at night - people"``,
    or ``"at night"``, which adds)."""
    head = shlex.quote(f"{image_weight:g}:{image_path}")
    text = text.strip()
    if not text:
        return head
    return f"{head} {text}" if text[0] in "+-" else f"{head} + {text}"


def decode_upload(data: bytes, max_pixels: int):
    """The uploaded bytes as an RGB image, within the server's pixel limit (ImageTooLarge -> 413)."""
    from ..decode import decode_image

    if not data:
        raise BadImage("the uploaded image is empty", field="image")
    try:
        return decode_image(data, max_pixels=max_pixels).image
    except ImageTooLarge as e:
        size = getattr(e, "size", None)
        shown = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "more pixels"
        raise ImageTooLarge(
            f"the uploaded image has {shown}: more than this server accepts ({max_pixels:,} pixels; "
            "visdex serve --max-upload-pixels)",
            field="image",
        ) from None
    except BadImage as e:
        raise BadImage(f"the upload is not an image visdex can read: {e}", field="image") from None


def run_search(served, settings, req: SearchRequest) -> tuple[list, float]:
    """Run one search request; returns (hits, milliseconds spent in the library)."""
    q = (req.q or "").strip()
    if req.id is not None:
        known_id(req.id)
    if served.call(lambda ix: ix.fingerprint is None):  # nothing indexed yet: no model to load, nothing to find
        return [], 0.0
    opts = {"where": req.where, "min_score": req.min_score, "within": req.within, "hubness": req.hubness}
    check_where(served, req.where)
    if req.image is not None and req.id is not None:
        raise BadQuery("give an uploaded image or an indexed id as the image term, not both", field="id")
    if req.image is None and req.id is None:
        if not q:
            raise BadQuery(
                "empty query: give a text (q), upload an image (image) or give an indexed id (id)", field="q"
            )
        if req.crop:
            raise BadQuery("a crop needs an image: upload one or give an indexed id", field="crop")
        check_query(q)
        return timed(lambda: served.search(q, k=req.k, **opts))
    if req.image is not None:
        if len(req.image) > settings.max_upload_bytes:  # the middleware refuses these first; belt and braces
            raise ImageTooLarge("upload too large", field="image")
        image = decode_upload(req.image, settings.max_upload_pixels)
        if not q:  # a weight alone means nothing: the vector is normalised
            return timed(lambda: served.search(image, k=req.k, crop=req.crop, **opts))  # embedded outside the lock
        return _search_with_upload(served, req, req.image, q, opts)
    item_id = req.id
    assert item_id is not None  # an upload, or neither an upload nor an id, returned above
    if not q and not req.crop:
        return timed(lambda: served.call(lambda ix: ix.similar(item_id, k=req.k, **opts)))
    from ..thumbs import thumb_source

    path = served.call(lambda ix: thumb_source(ix, item_id)).path  # a path from the index, not the request
    query = compose(path, req.image_weight, q)
    check_query(query, path)
    hits, took = timed(lambda: served.search(query, k=req.k + 1, crop=req.crop, **opts))
    return [h for h in hits if h.id != req.id][: req.k], took  # "more like this" leaves the item itself out


def _search_with_upload(served, req: SearchRequest, data: bytes, text: str, opts: dict) -> tuple[list, float]:
    # The composed-query syntax names images by path, so the upload lives in a private temp file
    # for the duration of the query (mkstemp: mode 0600, a name nobody else can guess).
    fd, tmp = tempfile.mkstemp(prefix="visdex-upload-", suffix=".jpg")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        query = compose(tmp, req.image_weight, text)
        check_query(query, tmp)
        return timed(lambda: served.search(query, k=req.k, crop=req.crop, **opts))
    finally:
        Path(tmp).unlink(missing_ok=True)


def json_response(body: dict):
    """``body`` as a JSON response: orjson when installed (the server extra), else the standard library.
    Paths that are not valid UTF-8 (kept as surrogates) go through the standard library's escaping."""
    from starlette.responses import JSONResponse, Response

    try:
        import orjson

        return Response(orjson.dumps(body), media_type="application/json")
    except (ImportError, TypeError):
        return JSONResponse(body)


def file_urls(item_id: int) -> dict:
    return {"thumb": f"api/files/{item_id}/thumb", "original": f"api/files/{item_id}/original"}


def hits_json(served, hits) -> list[dict]:
    """Hits as JSON rows: the library's fields, a display name, the file URLs and the item's tags."""
    # on the file-lookup connection: the search lock is not taken a second time per request
    tags = served.files(lambda db: _db_tags(db, [h.id for h in hits])) if hits else {}
    rows = []
    for h in hits:
        d = h.to_dict()
        d["score"] = round(float(h.score), 6)
        d["name"] = (h.title or h.key) if h.key is not None else Path(h.path).name
        d["tags"] = [label for label, _ in tags.get(h.id, [])]
        d.update(file_urls(h.id))
        rows.append(d)
    return rows


def _tags_of(ix, ids: list[int]) -> dict:
    return _db_tags(ix.db, ids)


def _db_tags(db, ids: list[int]) -> dict:
    if db.kind == "catalog":
        return {}
    from ..tags import tags_for

    return tags_for(db, ids)


def item_json(ix, item_id: int) -> dict:
    """Everything the index knows about one item."""
    if ix.db.kind == "catalog":
        it = ix.db.items_by_ids([item_id]).get(item_id)
        if it is None:
            raise NotFound(f"no item with id {item_id} in the index")
        return {"id": item_id, **it, "name": it["title"] or it["key"], **file_urls(item_id)}
    row = ix.db.files_by_ids([item_id]).get(item_id)
    if row is None:
        raise NotFound(f"no item with id {item_id} in the index")
    d = dict(row.__dict__)
    d["name"] = Path(row.path).name
    d["tags"] = [{"label": lb, "score": round(s, 4)} for lb, s in _tags_of(ix, [item_id]).get(item_id, [])]
    d.update(file_urls(item_id))
    return d


def tag_counts(ix) -> list[dict]:
    if ix.db.kind == "catalog":
        return []
    return [{"label": label, "count": n} for label, n in ix.db.tag_counts()]


def to_dict(obj: Any) -> dict:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return dict(obj.__dict__)


def group_json(group) -> dict:
    """A duplicate group with file URLs on every member."""
    d = to_dict(group)
    for m in d.get("members", []):
        m.update(file_urls(m["id"]))
        m.setdefault("name", Path(m.get("path") or "").name)
    return d


def projection_json(proj, method: str) -> dict:
    """A 2D projection as points {id, x, y, name, thumb} in [0, 1]^2."""
    points = [
        {"id": int(i), "x": round(float(x), 5), "y": round(float(y), 5), "name": Path(p).name,
         **file_urls(int(i))}
        for i, (x, y), p in zip(proj.ids, proj.xy, proj.paths, strict=True)
    ]  # fmt: skip
    return {"count": len(points), "method": getattr(proj, "method", method), "points": points}


def media_type(path: Path) -> str | None:
    return MEDIA_TYPES.get(path.suffix.lower())


# -- pages of results and near-duplicate collapsing ----------------------------------------
MAX_FETCH = 5000  # hits fetched at most to fill one page (offset + k, more when collapsing)
COLLAPSE_FLOOR = 0.9  # a burst of copies, not merely a similar scene, even for a model with a low dupes threshold


def collapse_threshold(served) -> float:
    """The cosine at or above which two results are shown as one tile: the model's duplicate threshold,
    at least :data:`COLLAPSE_FLOOR`."""
    from ..dupes import default_threshold

    return max(COLLAPSE_FLOOR, default_threshold(served.call(lambda ix: ix.model_name)))


def collapse_hits(served, hits: list, threshold: float) -> list[tuple[Any, list]]:
    """``[(leader, members)]``: each hit joins the first better-ranked leader it has cosine >= ``threshold``
    with, or leads a tile of its own. Hits are in rank order, so a leader is its group's best hit."""
    import numpy as np

    if not hits:
        return []
    vecs = served.call(lambda ix: ix.store.get([h.id for h in hits]))
    leaders: list[int] = []
    groups: list[tuple[Any, list]] = []
    for i, h in enumerate(hits):
        if leaders:
            sims = vecs[leaders] @ vecs[i]
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                groups[j][1].append(h)
                continue
        leaders.append(i)
        groups.append((h, []))
    return groups


def search_page(served, settings, req: SearchRequest, offset: int, collapse: bool) -> dict:
    """One page of a search: ``req.k`` results (tiles, when ``collapse``) after the first ``offset``,
    and ``next_offset`` (None at the end). Each page searches ``offset + k`` deep (plus some when collapsing)."""
    from dataclasses import replace

    want = offset + req.k
    fetch = min(MAX_FETCH, want + 1 if not collapse else max(want * 3, want + 20))
    threshold = collapse_threshold(served) if collapse else None
    took_total = 0.0
    while True:
        hits, took = run_search(served, settings, replace(req, k=fetch))
        took_total += took
        groups = collapse_hits(served, hits, threshold) if threshold is not None else [(h, []) for h in hits]
        exhausted = len(hits) < fetch or fetch >= MAX_FETCH
        if len(groups) > want or exhausted:
            break
        fetch = min(MAX_FETCH, fetch * 3)
    page = groups[offset:want]
    rows = hits_json(served, [g[0] for g in page])
    for row, (_, members) in zip(rows, page, strict=True):
        if collapse:
            row["collapsed"] = [
                {"id": m.id, "name": Path(m.path).name if m.key is None else (m.title or m.key),
                 "score": round(float(m.score), 6), **file_urls(m.id)}
                for m in members
            ]  # fmt: skip
    more = len(groups) > want
    return {
        "count": len(rows),
        "results": rows,
        "took_ms": round(took_total, 2),
        "offset": offset,
        "next_offset": want if more and rows else None,
        "total": None if more else offset + len(rows),
        "collapse_threshold": threshold,
    }
