"""Thumbnails and originals of items that are not plain UTF-8-named local files.

Files whose names are not UTF-8 (Linux allows any bytes but ``/`` and NUL):
Python hands such a name around as a str with surrogate escapes (``os.fsdecode``); ``str.encode()``
refuses those, so the thumbnail cache key of a catalog item with such an image raised
UnicodeEncodeError (a 500 from the server) until it took ``os.fsencode``.

Samples inside WebDataset shards (``SHARD#member``) and fsspec URLs: served over HTTP from their bytes (the file
route answered 404 for them, as no local file has such a path).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys

import pytest
from PIL import Image

from visdex import open_index
from visdex.catalog import ingest_catalog
from visdex.thumbs import original_path, thumbnail

from imagefactory import real_photos, write_photo

MODEL = "effnet-lite0"  # real weights from a pip package, no download

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="other systems refuse names that are not UTF-8")


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory):
    """A folder with one photo named ok.jpg and one named with a \\xff byte; (folder, the odd path)."""
    root = tmp_path_factory.mktemp("names")
    d = root / "d"
    d.mkdir()
    write_photo(d, "ok", real_photos()["coffee"])
    bad = os.path.join(os.fsdecode(os.fsencode(d)), os.fsdecode(b"bad_\xff.jpg"))
    shutil.move(write_photo(root, "rocket", real_photos()["rocket"]), bad)
    return root, d, bad


def _looks_like_a_thumb(path, size: int) -> None:
    with Image.open(path) as im:
        assert im.format == "JPEG" and max(im.size) == size


def test_thumbnail_of_a_file_named_with_a_non_utf8_byte(odd_names):
    root, d, bad = odd_names
    with open_index(root / "ix-files", model=MODEL) as ix:
        assert ix.add([d]).new == 2
        row = ix.db.file_by_path(os.path.realpath(bad))
        _looks_like_a_thumb(thumbnail(ix, row.id, size=128), 128)
        assert os.fsencode(original_path(ix, row.id)).endswith(b"/bad_\xff.jpg")


def test_thumbnail_of_a_catalog_item_whose_image_is_named_with_a_non_utf8_byte(odd_names):
    root, d, bad = odd_names
    catalog = root / "items.jsonl"
    # JSON writes the surrogate escape as \udcff; json.loads gives back the same str, so the same bytes on disk
    catalog.write_text("\n".join(json.dumps(r) for r in [{"id": "a", "image": bad}, {"id": "b", "image": "d/ok.jpg"}]))
    with open_index(root / "ix-catalog", model=MODEL) as ix:
        assert ingest_catalog(ix, catalog).new == 2
        ids = sorted(ix.db.items_by_ids(list(range(1, 10))))
        paths = [thumbnail(ix, i, size=128) for i in ids]  # UnicodeEncodeError before os.fsencode
        for p in paths:
            _looks_like_a_thumb(p, 128)
        assert len(set(paths)) == 2
        assert any(os.fsencode(original_path(ix, i)).endswith(b"/bad_\xff.jpg") for i in ids)


# -- items that are no local file: WebDataset samples and fsspec URLs, served over HTTP ---------------------------
def test_thumbnails_and_originals_of_shard_samples_and_urls_over_http(tmp_path, photos, tiny_clip):
    """/api/files/{id}/thumb and /original for a sample inside a tar shard (SHARD#member), a file:// URL and a
    memory:// URL: the thumbnail is made from the sample's bytes, the original is those bytes."""
    fsspec = pytest.importorskip("fsspec")
    httpx = pytest.importorskip("httpx")
    from visdex.server import create_app
    from visdex.sources import write_shard

    from serverhelp import LiveServer

    files = sorted(photos.values())
    write_shard(tmp_path / "00000.tar", [{"key": f"{i:09d}", "jpg": p.read_bytes(), "txt": p.stem}
                                         for i, p in enumerate(files[:2])])  # fmt: skip
    (tmp_path / "web").mkdir()
    shutil.copy(files[2], tmp_path / "web" / files[2].name)
    mem = fsspec.filesystem("memory")
    mem.pipe(f"/thumbs-test/{files[3].name}", files[3].read_bytes())
    want = {
        f"{tmp_path / '00000.tar'}#000000000.jpg": files[0],
        f"{tmp_path / '00000.tar'}#000000001.jpg": files[1],
        f"file://{tmp_path}/web/{files[2].name}": files[2],
        f"memory://thumbs-test/{files[3].name}": files[3],
    }
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([str(tmp_path / "00000.tar"), f"file://{tmp_path}/web", "memory://thumbs-test"])
        ids = {path: ix.db.file_by_path(path).id for path in want}
    with LiveServer(create_app(tmp_path / "ix")) as server:
        for path, photo in want.items():
            base = f"{server.url}/api/files/{ids[path]}"
            r = httpx.get(f"{base}/thumb", params={"size": 128})
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", (path, r.text)
            with Image.open(io.BytesIO(r.content)) as im:
                assert im.format == "JPEG" and max(im.size) == 128
            r = httpx.get(f"{base}/original")
            assert r.status_code == 200 and r.content == photo.read_bytes(), path
            assert r.headers["content-type"] == "image/jpeg"
            assert httpx.get(f"{base}/original", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
        mem.rm(f"/thumbs-test/{files[3].name}")  # gone since it was indexed: 404, not a 500
        r = httpx.get(f"{server.url}/api/files/{ids[f'memory://thumbs-test/{files[3].name}']}/original")
        assert r.status_code == 404
