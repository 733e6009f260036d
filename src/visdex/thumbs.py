"""Thumbnails of indexed images, cached on disk under the index's ``thumbs/`` folder.

Thumbnails are derived data: deleting ``thumbs/`` only costs the time to make them again.
They are EXIF-rotated (the way a viewer shows the photo), fit in a ``size`` x ``size`` box
and are named by the file's content hash, so an edited file gets a new thumbnail and two
copies of one photo share one. An item that is no local file -- a sample inside a WebDataset
shard (``SHARD#MEMBER``) or an fsspec URL (``file://``, ``memory://``, ``s3://``) -- is read
through :mod:`visdex.sources` (:func:`is_remote`, :func:`remote_bytes`).

>>> from visdex.thumbs import thumbnail
>>> thumbnail(ix, 12, size=256)                                   # doctest: +SKIP
PosixPath('/home/me/.local/share/visdex/index/thumbs/256/3f2a...c1.jpg')
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from . import config
from .errors import BadImage, BadQuery, NotFound

#: The sizes served; any other is refused, so a client cannot fill the disk with variants.
SIZES = (64, 128, 256, 512, 1024)
FORMATS = {"jpeg": ("JPEG", ".jpg", "image/jpeg"), "webp": ("WEBP", ".webp", "image/webp")}
THUMBS_DIR = "thumbs"


@dataclass(frozen=True)
class ThumbSource:
    """Where an indexed item's picture is, and the cache key of its thumbnails."""

    id: int
    path: str
    key: str


def thumb_source(ix, file_id: int) -> ThumbSource:
    """The image file behind an indexed id (a catalog item: its first image); unknown id -> NotFound.

    Only reads the database, so a server can call it under its lock and decode outside it.
    """
    return source_in_db(ix.db, file_id)


def source_in_db(db, file_id: int) -> ThumbSource:
    """:func:`thumb_source` given the index's :class:`~visdex.store.db.IndexDB` alone (no model, no vectors)."""
    file_id = int(file_id)
    if db.kind == "catalog":
        item = db.items_by_ids([file_id]).get(file_id)
        if item is None or not item["images"]:
            raise NotFound(f"no item with id {file_id} in the index")
        path = item["images"][0]
        try:
            st = os.stat(path)
        except OSError:
            raise NotFound(f"the image of item {file_id} is no longer at {path}") from None
        # fsencode: a name that is not UTF-8 is a str with surrogate escapes, which .encode() refuses
        key = hashlib.blake2b(
            os.fsencode(path) + f":{st.st_size}:{st.st_mtime_ns}".encode(), digest_size=16
        ).hexdigest()
        return ThumbSource(file_id, path, key)
    row = db.files_by_ids([file_id]).get(file_id)
    if row is None or row.status != "ok":
        raise NotFound(f"no item with id {file_id} in the index")
    return ThumbSource(
        file_id, row.path, row.hash or hashlib.blake2b(os.fsencode(row.path), digest_size=16).hexdigest()
    )


def original_path(ix, file_id: int) -> Path:
    """The original file of an indexed id, checked to still exist; never a path from the caller."""
    return existing_file(source_in_db(ix.db, file_id))


def is_remote(src: ThumbSource) -> bool:
    """Whether ``src`` lives inside a WebDataset shard or behind a URL (its bytes come from :func:`remote_bytes`)."""
    from .sources import is_remote as remote

    return remote(src.path)


def remote_bytes(src: ThumbSource) -> bytes:
    """The bytes of a shard sample or URL item; NotFound when they cannot be read any more."""
    from .sources import read_bytes

    try:
        return read_bytes(src.path)
    except BadImage as e:
        raise NotFound(f"the image of item {src.id} cannot be read: {e}") from None


def existing_file(src: ThumbSource) -> Path:
    """The file behind ``src``; NotFound if it has gone since it was indexed."""
    p = Path(src.path)
    if not p.is_file():
        raise NotFound(f"the file of item {src.id} is no longer at {src.path}")
    return p


def render_thumbnail(src: ThumbSource, cache_dir: str | os.PathLike, size: int = 256, fmt: str = "jpeg") -> Path:
    """Make (or reuse) the thumbnail of ``src`` under ``cache_dir``; written atomically, safe in threads."""
    from .decode import decode_image

    if size not in SIZES:
        raise BadQuery(f"thumbnail size must be one of {', '.join(map(str, SIZES))}, not {size}")
    pil_format, suffix, _ = FORMATS[fmt]
    out = Path(cache_dir) / str(size) / f"{src.key}{suffix}"
    if out.is_file():
        return out
    data = remote_bytes(src) if is_remote(src) else existing_file(src)
    # draft_size: JPEGs decode at 1/2..1/8 scale straight away, so a 24 MP photo costs milliseconds
    img = decode_image(data, max_pixels=config.get("max_pixels"), draft_size=size).image
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, pil_format, quality=85)
        os.replace(tmp, out)  # readers see either no file or a whole one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def thumbnail(ix, file_id: int, size: int = 256, fmt: str = "jpeg") -> Path:
    """The cached thumbnail of an indexed image (made on first use): a JPEG (or WebP) at most ``size`` px.

    >>> thumbnail(ix, 12).name                                          # doctest: +SKIP
    '3f2a9d0e41b7c6a85e0f1d2c3b4a5968.jpg'
    """
    return render_thumbnail(thumb_source(ix, file_id), Path(ix.path) / THUMBS_DIR, size, fmt)
