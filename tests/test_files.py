"""files.scan: what counts as an image to index, in which order, and what is skipped."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from visdex.files import IMAGE_EXTENSIONS, FileInfo, is_image_name, scan

needs_symlinks = pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")


def _touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (len(rel) + 1))  # contents do not matter: scan never decodes


def _rels(root: Path, **kwargs) -> list[str]:
    base = os.path.realpath(root)
    return [os.path.relpath(f.path, base).replace(os.sep, "/") for f in scan([root], **kwargs)]


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "photos"
    _touch(
        root,
        "b.jpg", "a.JPG", "c.Png", "d.jpeg", "e.heic", "f.AVIF", "g.webp", "h.gif", "i.bmp", "j.tiff", "k.tif",
        "l.jpe", "m.jfif", "n.heif",
        "notes.txt", "movie.mp4", "raw.CR2", "noext",
        "2023/summer/beach.jpg", "2023/summer/raw/beach.jpg", "2023/winter/snow.png",
        "2024/x.jpg", "2024/raw/y.jpg",
    )  # fmt: skip
    return root


def test_only_image_extensions_in_any_case_sorted_depth_first(tree):
    assert _rels(tree) == [
        "2023/summer/beach.jpg", "2023/summer/raw/beach.jpg", "2023/winter/snow.png", "2024/raw/y.jpg", "2024/x.jpg",
        "a.JPG", "b.jpg", "c.Png", "d.jpeg", "e.heic", "f.AVIF", "g.webp", "h.gif", "i.bmp", "j.tiff", "k.tif",
        "l.jpe", "m.jfif", "n.heif",
    ]  # fmt: skip
    assert {".jpg", ".png", ".heic", ".avif", ".webp", ".tif"} <= IMAGE_EXTENSIONS
    assert is_image_name("X.JPEG") and not is_image_name("x.jpg.txt") and not is_image_name("jpg")


def test_file_info_fields(tree):
    infos = list(scan([str(tree)]))
    first = infos[0]
    assert isinstance(first, FileInfo) and os.path.isabs(first.path) and first.root == os.path.realpath(tree)
    st = os.stat(first.path)
    assert first.size == st.st_size and first.mtime == st.st_mtime
    with pytest.raises(AttributeError):
        first.size = 1  # frozen: safe as a dict key and across processes


def test_order_is_deterministic_whatever_the_creation_order(tmp_path):
    names = ["z.jpg", "m/a.jpg", "a.jpg", "m/b.jpg", "B.jpg", "k.jpg"]
    one, two = tmp_path / "one", tmp_path / "two"
    _touch(one, *names)
    _touch(two, *reversed(names))
    assert _rels(one) == _rels(two) == ["B.jpg", "a.jpg", "k.jpg", "m/a.jpg", "m/b.jpg", "z.jpg"]


def test_hidden_and_os_junk_are_skipped(tmp_path):
    root = tmp_path / "r"
    _touch(
        root,
        "keep.jpg", ".hidden.jpg", "._keep.jpg", ".DS_Store", "Thumbs.db", "desktop.ini",
        ".hiddendir/a.jpg", "@eaDir/keep.jpg/SYNOPHOTO_THUMB_XL.jpg", ".Spotlight-V100/a.jpg", ".Trashes/a.jpg",
        ".fseventsd/a.jpg", "$RECYCLE.BIN/a.jpg", "System Volume Information/a.jpg", "__MACOSX/._keep.jpg",
        "__MACOSX/keep.jpg", "sub/.thumb.jpg", "sub/ok.png",
    )  # fmt: skip
    assert _rels(root) == ["keep.jpg", "sub/ok.png"]


def test_a_hidden_root_given_explicitly_is_scanned(tmp_path):
    root = tmp_path / ".photos"
    _touch(root, "a.jpg")
    assert _rels(root) == ["a.jpg"]


def test_exclude_patterns(tree):
    assert _rels(tree, exclude=["**/raw/**", "*.png"]) == [
        "2023/summer/beach.jpg", "2024/x.jpg", "a.JPG", "b.jpg", "d.jpeg", "e.heic", "f.AVIF", "g.webp", "h.gif",
        "i.bmp", "j.tiff", "k.tif", "l.jpe", "m.jfif", "n.heif",
    ]  # fmt: skip
    # a bare folder name prunes that folder anywhere; globs are case-insensitive; ? is one character
    assert _rels(tree, exclude=["raw", "20??", "[a-m].*"]) == ["n.heif"]


def test_include_patterns_and_exclude_wins(tree):
    assert _rels(tree, include=["2023/**"]) == [
        "2023/summer/beach.jpg",
        "2023/summer/raw/beach.jpg",
        "2023/winter/snow.png",
    ]
    # the bare-name match: *.png finds PNGs at any depth, not only at the top
    assert _rels(tree, include=["*.png"]) == ["2023/winter/snow.png", "c.Png"]
    assert _rels(tree, include=["2023/**", "2024/*.jpg"], exclude=["**/raw/**"]) == [
        "2023/summer/beach.jpg", "2023/winter/snow.png", "2024/x.jpg"]  # fmt: skip
    # * does not cross folders, ** does
    assert _rels(tree, include=["2023/*.jpg"]) == []
    assert _rels(tree, include=["2023/**.jpg"]) == ["2023/summer/beach.jpg", "2023/summer/raw/beach.jpg"]
    assert _rels(tree, include=["**/beach.jpg"]) == ["2023/summer/beach.jpg", "2023/summer/raw/beach.jpg"]
    assert _rels(tree, include=["**/2024/*.jpg"]) == ["2024/x.jpg"]  # a leading **/ may match no folder at all
    assert _rels(tree, include=["beach.jpg"], exclude=["beach.jpg"]) == []


def test_single_file_root(tree, tmp_path):
    f = tree / "2023" / "summer" / "beach.jpg"
    (info,) = scan([f])
    assert info.path == info.root == os.path.realpath(f) and info.size == f.stat().st_size
    assert list(scan([f], exclude=["*.jpg"])) == []


def test_missing_root_raises_before_yielding(tree, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="no such file or directory: .*nope"):
        scan([tree, missing])  # raised by the call itself, not on first iteration


def test_several_roots_and_overlaps_yield_each_file_once(tree):
    infos = list(scan([tree / "2024", tree, tree / "2024"]))
    paths = [i.path for i in infos]
    assert len(paths) == len(set(paths)) == 19
    assert {i.root for i in infos if "/2024/" in i.path.replace(os.sep, "/")} == {os.path.realpath(tree / "2024")}


@needs_symlinks
def test_symlink_loops_end_and_linked_files_come_once(tmp_path):
    root = tmp_path / "r"
    _touch(root, "a/x.jpg", "b/y.jpg")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # a cycle back to the root
    (root / "b" / "self").symlink_to(root / "b", target_is_directory=True)
    (root / "c").symlink_to(root / "a", target_is_directory=True)  # a second way into a/
    (root / "z.jpg").symlink_to(root / "a" / "x.jpg")  # a second name for a/x.jpg
    # in a thread, so that a regression fails this test instead of hanging the run
    found: list[list[str]] = []
    worker = threading.Thread(target=lambda: found.append(_rels(root)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "scan did not finish: a symlink cycle was followed"
    assert found == [["a/x.jpg", "b/y.jpg"]]


@needs_symlinks
def test_symlinked_folder_outside_the_root_is_followed_with_real_paths(tmp_path):
    outside = tmp_path / "elsewhere"
    _touch(outside, "o.jpg")
    root = tmp_path / "r"
    _touch(root, "a.jpg")
    (root / "link").symlink_to(outside, target_is_directory=True)
    infos = list(scan([root]))
    assert [i.path for i in infos] == [os.path.realpath(root / "a.jpg"), os.path.realpath(outside / "o.jpg")]
    assert {i.root for i in infos} == {os.path.realpath(root)}


@needs_symlinks
def test_broken_links_and_link_loops_are_yielded_under_their_own_names(tmp_path):
    # yielded, not dropped: ingest then records why each cannot be read ("visdex status" lists it)
    root = tmp_path / "r"
    _touch(root, "a.jpg")
    (root / "gone.jpg").symlink_to(tmp_path / "nothing.jpg")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    (root / "ping.jpg").symlink_to(root / "pong.jpg")
    (root / "pong.jpg").symlink_to(root / "ping.jpg")
    errors: list[tuple[str, str]] = []
    infos = list(scan([root], on_error=lambda p, why: errors.append((p, why))))
    base = os.path.realpath(root)
    assert [i.path for i in infos] == [os.path.join(base, n) for n in ("a.jpg", "gone.jpg", "loop.jpg", "ping.jpg",
                                                                          "pong.jpg")]  # fmt: skip
    assert errors == []
    gone = infos[1]
    assert gone.size == os.lstat(root / "gone.jpg").st_size and gone.root == base


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_named_like_an_image_is_yielded_and_a_folder_so_named_is_walked(tmp_path):
    root = tmp_path / "r"
    _touch(root, "x.jpg/inside.png", "z.jpg")
    os.mkfifo(root / "pipe.jpg")
    assert _rels(root) == ["pipe.jpg", "x.jpg/inside.png", "z.jpg"]


def test_unusual_names_round_trip(tmp_path):
    root = tmp_path / "r"
    names = ["with space.jpg", "üñíçødé 写真.jpg", "new\nline.jpg", "tab\tand'quote\".jpg"]
    if sys.platform == "linux":  # a name that is not UTF-8: os.fsdecode hands it over with surrogates
        names.append(os.fsdecode(b"bad_\xff\xfe.jpg"))
    _touch(root, *names)
    infos = list(scan([root]))
    assert sorted(os.path.basename(i.path) for i in infos) == sorted(names)
    assert all(os.path.exists(i.path) for i in infos)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder_is_reported_and_skipped(tmp_path):
    root = tmp_path / "r"
    _touch(root, "a.jpg", "locked/b.jpg", "z.jpg")
    (root / "locked").chmod(0)
    errors: list[tuple[str, str]] = []
    try:
        assert _rels(root, on_error=lambda p, why: errors.append((p, why))) == ["a.jpg", "z.jpg"]
    finally:
        (root / "locked").chmod(0o755)
    assert errors == [(os.path.join(os.path.realpath(root), "locked"), "Permission denied")]


def test_unreadable_folder_via_scandir_failure(tmp_path, monkeypatch):
    """The same as above, where tests run as root: scandir fails for one folder."""
    root = tmp_path / "r"
    _touch(root, "a.jpg", "locked/b.jpg", "z.jpg")
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    errors: list[tuple[str, str]] = []
    assert _rels(root, on_error=lambda p, why: errors.append((p, why))) == ["a.jpg", "z.jpg"]
    assert errors == [(os.path.join(os.path.realpath(root), "locked"), "Permission denied")]
