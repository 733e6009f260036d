"""Walking roots: which files under a folder are images visdex should index.

``scan`` is ``os.scandir`` based, yields in a deterministic order (sorted by name within
each directory, depth first), skips hidden files and OS junk, filters by extension and by
include/exclude globs, follows directory symlinks at most once, and never raises for an
unreadable directory (it reports it through ``on_error`` instead).

An entry named like an image that is not a regular file (a FIFO, a device, a broken link, a link
loop) is yielded all the same, so that ingest records why it cannot be read (decoding says) rather
than it vanishing without a word.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["IMAGE_EXTENSIONS", "JUNK_NAMES", "FileInfo", "is_image_name", "scan"]

#: Extensions scanned for (lower case; matching is case-insensitive).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)

#: Files and folders that operating systems and NAS boxes leave around (lower case).
#: Names starting with "." (``.DS_Store``, ``._*``, ``.Trashes``, ...) are skipped as hidden.
JUNK_NAMES = frozenset(
    {"@eadir", "thumbs.db", "desktop.ini", "$recycle.bin", "system volume information", "__macosx", "#recycle"}
)

OnError = Callable[[str, str], None]


@dataclass(frozen=True)
class FileInfo:
    """One image file found by :func:`scan`.

    ``path`` is absolute with symlinks resolved (a link that does not resolve, broken or a
    loop, keeps its own name); ``root`` is the (resolved) root it was found under; ``mtime``
    is seconds since the epoch. ``size`` and ``mtime`` come from ``lstat`` when ``stat`` fails.
    """

    path: str
    root: str
    size: int
    mtime: float


def is_image_name(name: str) -> bool:
    """True for a file name with an image extension, in any case.

    >>> is_image_name("IMG_0001.HEIC"), is_image_name("notes.txt")
    (True, False)
    """
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _skipped_name(name: str) -> bool:
    return name.startswith(".") or name.lower() in JUNK_NAMES


# -- globs ----------------------------------------------------------------------------------
def _glob_to_regex(pattern: str) -> str:
    """``*`` and ``?`` stay within one path segment, ``**`` crosses them, ``**/`` may be empty."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body[0] in "!^" else body
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


class Globs:
    """Compiled include/exclude patterns, case-insensitive (photo folders come from
    case-insensitive file systems more often than not)."""

    def __init__(self, patterns: Sequence[str]):
        cleaned = [p.replace("\\", "/").strip() for p in patterns]
        cleaned = [p[2:] if p.startswith("./") else p for p in cleaned if p]
        self.regex = re.compile("|".join(f"(?:{_glob_to_regex(p)})" for p in cleaned), re.I) if cleaned else None

    def __bool__(self) -> bool:
        return self.regex is not None

    def match(self, rel: str) -> bool:
        """Against the path relative to the root and against the bare name."""
        if self.regex is None:
            return False
        return bool(self.regex.fullmatch(rel) or self.regex.fullmatch(rel.rpartition("/")[2]))

    def match_dir(self, rel: str) -> bool:
        """A directory whose path (with or without a trailing slash) matches is pruned whole."""
        return self.match(rel) or bool(self.regex and self.regex.fullmatch(rel + "/"))


# -- scanning -------------------------------------------------------------------------------
def scan(
    roots: Sequence[str | os.PathLike],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    on_error: OnError | None = None,
) -> Iterator[FileInfo]:
    """Yield every image file under ``roots`` (folders, or single image files).

    ``include``/``exclude`` are globs matched, case-insensitively, against the path relative
    to its root (``/`` separators) and against the bare file name; ``*`` stays within a
    folder, ``**`` crosses folders. With ``include``, a file must match one of them; a match
    in ``exclude`` always wins, and an exclude that matches a folder skips the whole folder.
    Hidden names (leading ".") and OS junk (``JUNK_NAMES``) are skipped, except a root named
    explicitly. A file is yielded once even when reachable through several symlinks.

    Unreadable folders are passed to ``on_error(path, reason)`` and skipped. Files named like
    images that cannot be read as images (FIFOs, devices, broken links, link loops) are
    yielded, for the decoder to refuse with a reason.
    A root that does not exist raises ``FileNotFoundError`` (before anything is yielded).

    >>> for f in scan(["~/Pictures"], include=["2023/**"], exclude=["**/raw/**", "*.png"]):  # doctest: +SKIP
    ...     print(f.path, f.size)
    """
    checked = []
    for root in roots:
        resolved = os.path.realpath(os.path.expanduser(os.fspath(root)))
        if not os.path.exists(resolved):
            raise FileNotFoundError(f"no such file or directory: {root}")
        checked.append(resolved)
    return _Scan(Globs(include), Globs(exclude), on_error).run(checked)


class _Scan:
    """State of one scan: filters, and what was already seen (so cycles and overlaps end)."""

    def __init__(self, include: Globs, exclude: Globs, on_error: OnError | None):
        self.include, self.exclude = include, exclude
        self.on_error = on_error or (lambda path, reason: None)
        self.seen_dirs: set[tuple[int, int]] = set()  # (st_dev, st_ino) of every folder entered
        self.seen_files: set[str] = set()  # resolved paths already yielded

    def run(self, roots: list[str]) -> Iterator[FileInfo]:
        for root in roots:
            if os.path.isdir(root):
                yield from self._walk(root)
            else:
                # An explicitly named file is taken whatever its name or extension (decoding
                # goes by content); only include/exclude still apply, to its name.
                if self._wanted(os.path.basename(root)):
                    info = self._file_info(root, root, None, resolve=False)
                    if info is not None:
                        yield info

    def _walk(self, root: str) -> Iterator[FileInfo]:
        if not self._enter(root):
            return
        # An explicit stack of sorted entry iterators: depth first, deterministic, and no
        # recursion limit however deep the tree. ``linked`` marks folders reached through a
        # symlink, whose entries' paths need resolving (elsewhere they are already real).
        stack = [(iter(self._entries(root)), "", False)]
        while stack:
            entry_iter, rel_dir, linked = stack[-1]
            entry = next(entry_iter, None)
            if entry is None:
                stack.pop()
                continue
            if _skipped_name(entry.name):
                continue
            rel = f"{rel_dir}{entry.name}"
            if self._is_dir(entry):
                if not self.exclude.match_dir(rel) and self._enter(entry.path):
                    stack.append((iter(self._entries(entry.path)), rel + "/", linked or entry.is_symlink()))
            elif is_image_name(entry.name) and self._wanted(rel):
                info = self._file_info(entry.path, root, entry, resolve=linked or entry.is_symlink())
                if info is not None:
                    yield info

    def _wanted(self, rel: str) -> bool:
        if self.exclude.match(rel):
            return False
        return not self.include or self.include.match(rel)

    def _entries(self, path: str) -> list[os.DirEntry]:
        try:
            with os.scandir(path) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as e:
            self.on_error(path, e.strerror or str(e))
            return []

    def _is_dir(self, entry: os.DirEntry) -> bool:
        try:
            return entry.is_dir(follow_symlinks=True)
        except OSError:
            return False

    def _enter(self, path: str) -> bool:
        """True the first time a folder (by device and inode) is reached; symlink loops end here."""
        try:
            st = os.stat(path)
        except OSError as e:
            self.on_error(path, e.strerror or str(e))
            return False
        key = (st.st_dev, st.st_ino)
        if key in self.seen_dirs:
            return False
        self.seen_dirs.add(key)
        return True

    def _file_info(self, path: str, root: str, entry: os.DirEntry | None, resolve: bool) -> FileInfo | None:
        try:
            st = entry.stat(follow_symlinks=True) if entry is not None else os.stat(path)
            real = os.path.realpath(path) if resolve else path
        except OSError:
            try:  # a broken link or a link loop: yielded under its own name, the decoder says why it fails
                st = os.lstat(path)
            except OSError as e:  # gone since the folder was listed
                self.on_error(path, e.strerror or str(e))
                return None
            head, name = os.path.split(path)
            real = os.path.join(os.path.realpath(head), name) if resolve else path
        if real in self.seen_files:  # a second link to a file already yielded
            return None
        self.seen_files.add(real)
        return FileInfo(path=real, root=root, size=st.st_size, mtime=st.st_mtime)
