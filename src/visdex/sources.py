"""Where images come from, past local folders: WebDataset tar shards and fsspec URLs.

``visdex index`` takes, besides folders and image files:

- WebDataset tar shards as img2dataset writes them, with brace expansion
  (``'shards/{00000..00099}.tar'``): every sample (``KEY.jpg`` + ``KEY.txt`` / ``KEY.json``) is one indexed
  image, named ``SHARD#KEY.jpg``; its caption (``.txt``, else the JSON's ``caption``), URL and JSON record
  ride along as attributes (:meth:`visdex.store.db.IndexDB.file_attrs`).
- fsspec URLs for folders and shards: ``file://``, ``memory://``, and ``s3://`` / ``gs://`` with the user's
  s3fs / gcsfs installed.

Every item is a :class:`~visdex.files.FileInfo` (``path`` is the key, ``root`` the shard or URL given), so
planning, incremental runs and crash safety are those of a folder. A moved sample is re-embedded (moves are
recognised by the hash of a local file only).

>>> [i.path for i in scan_roots(expand_roots(["shards/{00000..00001}.tar"]))][:1]   # doctest: +SKIP
['/data/shards/00000.tar#000000000.jpg']
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .decode import DecodedImage, content_hash, decode_image, read_and_decode
from .errors import BadImage, MissingDependency
from .files import FileInfo, Globs, is_image_name, scan

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
SHARD_SUFFIXES = (".tar",)
MEMBER = "#"  # SHARD#MEMBER: a sample inside a tar shard
CAPTION_EXTS = ("txt", "caption")
# Open shards' member tables kept per process (a decode worker reads many samples of one shard in a row).
TAR_CACHE = 8


@dataclass(frozen=True)
class SourceItem(FileInfo):
    """A sample of a shard or a remote file; ``attrs`` (caption, url, key, json) is stored with it."""

    attrs: dict | None = field(default=None, compare=False, hash=False)


def is_url(spec: str) -> bool:
    return bool(URL.match(spec))


def is_shard(spec: str) -> bool:
    return spec.lower().endswith(SHARD_SUFFIXES)


def is_remote(path: str) -> bool:
    """Whether ``path`` (an indexed item's key) is read through this module rather than as a local file."""
    return is_url(path) or MEMBER in path and is_shard(path.rsplit(MEMBER, 1)[0])


def expand_braces(spec: str) -> list[str]:
    """``{00000..00002}`` (zero padding kept) and ``{a,b}`` expanded, as a shell and webdataset do.

    >>> expand_braces("s/{000..002}.tar")
    ['s/000.tar', 's/001.tar', 's/002.tar']
    >>> expand_braces("{a,b}-{1..2}")
    ['a-1', 'a-2', 'b-1', 'b-2']
    """
    m = re.search(r"\{([^{}]*)\}", spec)
    if m is None:
        return [spec]
    body, head, tail = m.group(1), spec[: m.start()], spec[m.end() :]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        a, b = rng.groups()
        width = len(a) if a.startswith("0") or b.startswith("0") else 0
        step = 1 if int(b) >= int(a) else -1
        parts = [str(i).zfill(width) for i in range(int(a), int(b) + step, step)]
    elif "," in body:
        parts = body.split(",")
    else:
        return [head + "{" + body + "}" + t for t in expand_braces(tail)]
    return [head + p + t for p in parts for t in expand_braces(tail)]


def expand_roots(roots: Sequence[str | os.PathLike]) -> list[str]:
    """What ``visdex index`` was given, as the roots an index records: braces expanded, local paths
    absolute with symlinks resolved (as before), URLs as given without a trailing slash."""
    out: list[str] = []
    for r in roots:
        for spec in expand_braces(os.fspath(r)):
            if is_url(spec):
                out.append(spec if spec.endswith("://") else spec.rstrip("/"))
            else:
                out.append(str(Path(spec).expanduser().resolve()))
    return out


def scan_roots(roots: Sequence[str], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Iterator[FileInfo]:
    """Every image under ``roots`` (from :func:`expand_roots`): folders and files through
    :func:`visdex.files.scan`, shards sample by sample, URLs through fsspec."""
    local = [r for r in roots if not is_url(r) and not is_shard(r)]
    for r in roots:  # a missing root stops the run before anything is written, as scan does
        if not is_url(r) and not os.path.exists(r):
            raise FileNotFoundError(f"no such file or directory: {r}")
    if local:
        yield from scan(local, include=include, exclude=exclude)
    inc, exc = Globs(include), Globs(exclude)
    for r in roots:
        if is_shard(r):
            items = _scan_shard(r)
        elif is_url(r):
            items = _scan_url(r)
        else:
            continue
        for item in items:
            rel = item.path[len(item.root) + 1 :]
            if (inc and not inc.match(rel)) or exc.match(rel):
                continue
            yield item


def load(path: str, *, max_pixels: int | None, draft_size: int | None) -> tuple[str, DecodedImage]:
    """(content hash, decoded image) of an indexed item: a local file, a shard's sample or a URL."""
    if not is_remote(path):
        return read_and_decode(path, max_pixels=max_pixels, draft_size=draft_size)
    data = read_bytes(path)
    return content_hash(data), decode_image(data, max_pixels=max_pixels, draft_size=draft_size)


def read_bytes(path: str) -> bytes:
    """The bytes of a shard sample (``SHARD#MEMBER``) or of a URL; :class:`BadImage` when they cannot be read."""
    try:
        if MEMBER in path and is_shard(path.rsplit(MEMBER, 1)[0]):
            shard, member = path.rsplit(MEMBER, 1)
            return _Shards.get().read(shard, member)
        with _open(path) as f:
            return f.read()
    except (OSError, KeyError, tarfile.TarError) as e:
        raise BadImage(f"cannot read {path}: {type(e).__name__}: {e}") from e


# -- fsspec ---------------------------------------------------------------------------------
def _fsspec():
    try:
        import fsspec
    except ImportError as e:
        raise MissingDependency("fsspec", "sources", "URLs as sources") from e
    return fsspec


def _open(spec: str):
    if is_url(spec):
        return _fsspec().open(spec, "rb").open()
    return open(spec, "rb")


def _scan_url(root: str) -> Iterator[FileInfo]:
    fs, base = _fsspec().core.url_to_fs(root)
    if not fs.exists(base):
        raise FileNotFoundError(f"no such file or directory: {root}")
    if fs.isfile(base):
        info = fs.info(base)
        yield SourceItem(root, root.rsplit("/", 1)[0], int(info.get("size") or 0), _mtime(info))
        return
    base = base.rstrip("/")
    for p, info in sorted(fs.find(base, detail=True).items()):
        rel = p[len(base) :].lstrip("/")
        name = rel.rsplit("/", 1)[-1]
        if info.get("type") != "file" or name.startswith(".") or not is_image_name(name):
            continue
        yield SourceItem(f"{root}/{rel}", root, int(info.get("size") or 0), _mtime(info))


def _mtime(info: dict) -> float:
    """fsspec file systems name the time differently (local: mtime, memory: created, s3: LastModified)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(key)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return float(v.timestamp())
        try:
            return float(v)
        except (TypeError, ValueError):
            continue
    return 0.0


# -- tar shards -----------------------------------------------------------------------------
def _split_key(member: str) -> tuple[str, str]:
    """WebDataset: the key is the name up to the first dot of its last component; the rest is the field."""
    folder, _, name = member.rpartition("/")
    stem, _, ext = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _scan_shard(shard: str) -> Iterator[FileInfo]:
    if is_url(shard):
        fs, p = _fsspec().core.url_to_fs(shard)
        if not fs.exists(p):
            raise FileNotFoundError(f"no such file or directory: {shard}")
    samples: dict[str, dict] = {}
    with _open(shard) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, ext = _split_key(m.name)
            s = samples.setdefault(key, {})
            if is_image_name(m.name) and "image" not in s:
                s["image"] = m
            elif ext in CAPTION_EXTS or ext == "json":
                f_member = tar.extractfile(m)
                s[ext] = f_member.read() if f_member is not None else b""
    for key, s in samples.items():
        image = s.get("image")
        if image is None:
            continue
        yield SourceItem(f"{shard}{MEMBER}{image.name}", shard, image.size, float(image.mtime), _attrs(key, s))


def _attrs(key: str, sample: dict) -> dict:
    record: dict = {}
    if "json" in sample:
        try:
            record = json.loads(sample["json"])
        except ValueError:
            record = {}
        record = record if isinstance(record, dict) else {}
    caption = next((sample[e].decode("utf-8", "replace").strip() for e in CAPTION_EXTS if e in sample), None)
    caption = caption if caption is not None else record.get("caption")
    url = record.get("url")
    return {"key": key, "caption": caption if isinstance(caption, str) else None,
            "url": url if isinstance(url, str) else None, "json": record or None}  # fmt: skip


class _Shards:
    """Per process: each open shard's member table (name -> data offset, size), so reading one sample is a
    seek and a read, not a walk through the tar."""

    _local = threading.local()

    def __init__(self) -> None:
        self.tables: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()

    @classmethod
    def get(cls) -> _Shards:
        if not hasattr(cls._local, "shards"):
            cls._local.shards = cls()
        return cls._local.shards

    def read(self, shard: str, member: str) -> bytes:
        table = self.tables.get(shard)
        if table is None:
            with _open(shard) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                table = {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}
            self.tables[shard] = table
            while len(self.tables) > TAR_CACHE:
                self.tables.popitem(last=False)
        self.tables.move_to_end(shard)
        offset, size = table[member]
        with _open(shard) as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise OSError(f"{member}: shard ends early ({len(data)} of {size} bytes)")
        return data


def write_shard(path: str | os.PathLike, samples: Sequence[dict]) -> None:
    """Write a WebDataset tar the way img2dataset does (``KEY.jpg``, ``KEY.txt``, ``KEY.json`` per sample):
    for tests and examples. ``samples``: dicts with ``key``, ``jpg`` (bytes), optional ``txt`` / ``json``."""
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for ext in ("jpg", "txt", "json"):
                if ext not in s:
                    continue
                value = s[ext]
                data = value if isinstance(value, bytes) else (json.dumps(value) if ext == "json" else value).encode()
                info = tarfile.TarInfo(f"{s['key']}.{ext}")
                info.size, info.mtime = len(data), s.get("mtime", 1_700_000_000)
                tar.addfile(info, io.BytesIO(data))
