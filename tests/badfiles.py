"""A corpus of bad, odd and hostile files for end-to-end robustness tests of ``visdex index``.

Not a test module; tests import it. :func:`write_badfiles` fills a folder and returns one
:class:`BadFile` per entry: its name (relative to the folder, as ``os.fsdecode`` gives it),
its kind, and what indexing must do with it:

- ``"indexed"``: decoded and embedded;
- ``"failed: <text>"``: recorded as failed, the reason containing ``<text>`` (case-insensitive);
- ``"absent"``: no row at all (a folder named like an image, a link to a folder already walked).

Some kinds only happen while a run is under way (a file deleted, or swapped for a FIFO, after
the folder was listed); :func:`after_listing` does that, and a test calls it from its
``Progress.start``, which ingest calls between listing and decoding.

Everything is generated (no downloads) and small: the folder is ~5 MB on disk (plus one sparse
3 GB file that takes no space), written in about a second.

>>> cases = write_badfiles(tmp_path / "bad")           # doctest: +SKIP
>>> len(cases), cases[0]                                # doctest: +SKIP
(77, BadFile(name='empty.jpg', kind='zero-byte', expectation='failed: empty file'))
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from imagefactory import real_photos, write_photo

__all__ = ["ORIENTED", "BadFile", "after_listing", "upright_image", "write_badfiles"]

#: EXIF orientation -> how the stored pixels are made from the upright image (the EXIF spec's
#: definitions, written independently of visdex.decode's table): a viewer applies the inverse.
ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transposed (mirror + 90 degrees)
    6: lambda a: np.rot90(a, 1),  # camera held turned right: stored 90 degrees counter-clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse
    8: lambda a: np.rot90(a, -1),  # stored 90 degrees clockwise
}


class BadFile(NamedTuple):
    name: str
    kind: str
    expectation: str


def upright_image() -> np.ndarray:
    """A 96x64 (w x h) photo crop with a red marker top-left: asymmetric, so every orientation differs."""
    arr = real_photos()["chelsea"][60:124, 100:196].copy()
    arr[:12, :12] = (255, 0, 0)
    return np.ascontiguousarray(arr)


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, raw_rows: bytes, depth: int = 8, colour: int = 2, extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = zlib.compress(raw_rows, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _png_bomb(width: int, height: int) -> bytes:
    """A 1-bit all-black PNG of that size, compressed row by row (never the whole raw image in memory)."""
    row = bytes(1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    idat = [z.compress(row * min(256, height - y)) for y in range(0, height, 256)] + [z.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(idat)) + _chunk(b"IEND", b"")


def _jpeg_bomb(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) claims another size: libjpeg would allocate for it."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


def _gif_bomb() -> bytes:
    """A GIF whose logical screen is 65535x65535, with one 1x1 frame."""
    header = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b"\x3b"


def _exif_app1(payload: bytes) -> bytes:
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def _with_app1(jpeg: bytes, payload: bytes) -> bytes:
    return jpeg[:2] + _exif_app1(payload) + jpeg[2:]  # right after SOI


def _huge_exif_ifd() -> bytes:
    """A TIFF header whose IFD0 claims 65535 entries and a 60 kB UserComment-like blob: the most one APP1 can hold."""
    entries = b"".join(struct.pack(">HHII", 0x9286 + i, 7, 60000, 8) for i in range(64))
    body = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 65535) + entries
    return b"Exif\x00\x00" + body + b"\xab" * (65000 - len(body))


def _gif_frames(n: int) -> bytes:
    palette = [v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)]
    frames = [Image.new("P", (16, 16), i % 256) for i in range(n)]
    for f in frames:
        f.putpalette(palette)
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10, loop=0)


def write_badfiles(folder: str | Path) -> list[BadFile]:
    """Write the corpus into ``folder`` (created if needed); see the module doc for the expectations."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    photos = real_photos()
    coffee = photos["coffee"][::2, ::2]  # 200 high x 300 wide
    jpeg = _encode(Image.fromarray(coffee), "JPEG", quality=90)
    png = _encode(Image.fromarray(coffee), "PNG")
    small_coffee = Image.fromarray(coffee[::2, ::2])  # 150x100: for the slow encoders
    gif = _encode(small_coffee.quantize(64), "GIF")
    rng = np.random.default_rng(7)
    cases: list[BadFile] = []

    def put(name: str, kind: str, expectation: str, data: bytes) -> None:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
        cases.append(BadFile(name, kind, expectation))

    # -- broken bytes -----------------------------------------------------------------------
    put("empty.jpg", "zero-byte", "failed: empty file", b"")
    put("trunc_header.jpg", "JPEG cut in its header", "failed: truncated", jpeg[:12])
    put("trunc_middle.jpg", "JPEG cut in the middle", "failed: truncated", jpeg[: len(jpeg) // 2])
    # strict: Pillow calls a JPEG without its end marker truncated, and a cut-off photo is not embedded half grey
    put("trunc_last_bytes.jpg", "JPEG without its last 2 bytes (no EOI)", "failed: truncated", jpeg[:-2])
    put("trunc_header.png", "PNG cut in its header", "failed: truncated", png[:20])
    put("trunc_middle.png", "PNG cut in the middle", "failed: truncated", png[: len(png) // 2])
    put("trunc_last_bytes.png", "PNG without its last 8 bytes (no IEND)", "indexed", png[:-8])
    put("trunc_middle.gif", "GIF cut in the middle", "failed: truncated", gif[: len(gif) // 2])
    put("soi_eoi.jpg", "JPEG markers with nothing between", "failed: ", b"\xff\xd8\xff\xd9")
    put("random.jpg", "random bytes", "failed: not a recognised image format", rng.bytes(4096))
    put("random_jpeg_magic.jpg", "JPEG magic then random bytes", "failed: ", b"\xff\xd8\xff\xe0" + rng.bytes(4096))
    bad_crc = png[:29] + b"\x00\x00\x00\x00" + png[33:]  # IHDR's CRC zeroed
    put("bad_crc.png", "PNG with a wrong header CRC", "failed: ", bad_crc)
    noisy = png[:33] + _chunk(b"IDAT", rng.bytes(2048)) + _chunk(b"IEND", b"")
    put("noise_idat.png", "PNG header then a deflate stream of noise", "failed: corrupt image data", noisy)
    bmp = bytearray(_encode(Image.fromarray(coffee), "BMP"))
    bmp[18:26] = struct.pack("<ii", 0x7FFFFFFF, 0x7FFFFFFF)
    put("bad_size.bmp", "BMP header claiming 2^31 x 2^31", "failed: ", bytes(bmp))
    tiff = bytearray(_encode(Image.fromarray(coffee), "TIFF"))
    tiff[4:8] = struct.pack("<I", 0x7FFFFFF0)  # IFD offset far past the end
    put("bad_offset.tif", "TIFF whose first IFD is past the end", "failed: ", bytes(tiff))
    put("trailing_garbage.jpg", "JPEG with 64 kB of garbage after EOI", "indexed", jpeg + rng.bytes(65536))

    # -- wrong extension --------------------------------------------------------------------
    put("png_named.jpg", "PNG named .jpg", "indexed", png)
    put("jpeg_named.png", "JPEG named .png", "indexed", jpeg)
    put("text_named.jpg", "text named .jpg", "failed: not a recognised image format", b"milk, eggs, bread\n" * 40)
    put("html_named.png", "an HTML error page named .png", "failed: not a recognised image format",
        b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n")  # fmt: skip

    # -- bombs and limits -------------------------------------------------------------------
    put("bomb.png", "PNG bomb (20000x20000 in 50 kB)", "failed: exceeds the limit", _png_bomb(20000, 20000))
    put("bomb.jpg", "JPEG bomb (header claims 65500x65500)", "failed: exceeds the limit",
        _jpeg_bomb(jpeg, 65500, 65500))  # fmt: skip
    put("bomb.gif", "GIF bomb (65535x65535 screen)", "failed: exceeds the limit", _gif_bomb())
    huge = d / "huge_sparse.jpg"
    with open(huge, "wb") as f:  # sparse: no disk space, but reading it would take 3 GB of memory
        f.truncate(3 << 30)
    cases.append(BadFile(huge.name, "3 GB file of zeros (sparse)", "failed: more than an image"))
    put("frames_1000.gif", "GIF with 1000 frames", "indexed", _gif_frames(1000))
    put("one_by_one.png", "1x1 PNG", "indexed", _encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"))
    for w, h in ((20000, 10), (1, 20000), (1, 100000)):
        img = Image.new("RGB", (w, h), (200, 30, 30))
        put(f"strip_{w}x{h}.png", f"{w}x{h} PNG", "indexed", _encode(img, "PNG", optimize=True))

    # -- modes and formats ------------------------------------------------------------------
    rgb16 = (coffee.astype(">u2") * 257)[:64, :64]
    rows = b"".join(b"\x00" + r.tobytes() for r in rgb16)
    put("rgb_16bit.png", "16-bit RGB PNG", "indexed", _png(64, 64, rows, depth=16, colour=2))
    grey16 = Image.fromarray(coffee[..., 0].astype(np.uint16) * 257)  # mode I;16
    put("grey_16bit.png", "16-bit greyscale PNG", "indexed", _encode(grey16, "PNG"))
    put("cmyk.jpg", "CMYK JPEG", "indexed", _encode(Image.fromarray(coffee).convert("CMYK"), "JPEG"))
    pal = small_coffee.quantize(16)
    put("palette_alpha.png", "palette PNG with transparency", "indexed", _encode(pal, "PNG", transparency=0))
    put("grey_alpha.png", "greyscale + alpha PNG", "indexed", _encode(Image.fromarray(coffee).convert("LA"), "PNG"))
    put("one_bit.png", "1-bit PNG", "indexed", _encode(Image.fromarray(coffee).convert("1"), "PNG"))
    floats = Image.fromarray(coffee[..., 1].astype(np.float32) / 255.0, "F")
    put("float.tif", "32-bit float TIFF", "indexed", _encode(floats, "TIFF"))
    pages = [Image.fromarray(coffee), Image.fromarray(coffee[::-1])]
    put("pages.tif", "2-page TIFF", "indexed", _encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    anim = [Image.fromarray(coffee), Image.fromarray(coffee[:, ::-1])]
    put("animated.webp", "animated WebP", "indexed", _encode(anim[0], "WEBP", save_all=True, append_images=anim[1:]))
    put("photo.bmp", "BMP", "indexed", _encode(Image.fromarray(coffee), "BMP"))
    try:
        write_photo(d, "phone.heic", coffee[::2, ::2], fmt="HEIF", quality=70)
        cases.append(BadFile("phone.heic", "HEIC (pillow-heif)", "indexed"))
    except (ImportError, OSError, ValueError):
        pass  # pillow-heif missing or without an encoder: nothing to test
    with contextlib.suppress(KeyError, OSError, ValueError):  # a Pillow built without AVIF
        put("photo.avif", "AVIF", "indexed", _encode(small_coffee, "AVIF", quality=60, speed=10))

    # -- EXIF -------------------------------------------------------------------------------
    garbled = _with_app1(jpeg, b"Exif\x00\x00" + rng.bytes(300))
    put("exif_garbled.jpg", "JPEG with a garbled EXIF block", "indexed", garbled)
    put("exif_huge.jpg", "JPEG with a 64 kB EXIF claiming 65535 entries", "indexed", _with_app1(jpeg, _huge_exif_ifd()))
    big_exif = _chunk(b"eXIf", b"MM\x00*\x00\x00\x00\x08" + b"\x00\x01" + rng.bytes(4 << 20))
    put("exif_huge.png", "PNG with a 4 MB eXIf chunk", "indexed", png[:33] + big_exif + png[33:])
    exif = Image.Exif()
    exif[274] = 9
    put("exif_orientation_9.jpg", "EXIF orientation 9 (no such value)", "indexed",
        _encode(Image.fromarray(coffee), "JPEG", exif=exif.tobytes()))  # fmt: skip
    upright = upright_image()
    put("oriented/upright.png", "the upright reference image", "indexed", _encode(Image.fromarray(upright), "PNG"))
    for o, make in ORIENTED.items():
        exif = Image.Exif()
        exif[274] = o
        stored = Image.fromarray(np.ascontiguousarray(make(upright)))
        put(f"oriented/o{o}.png", f"EXIF orientation {o} (PNG, lossless)", "indexed",
            _encode(stored, "PNG", exif=exif.tobytes()))  # fmt: skip
        tagged = _encode(stored, "JPEG", quality=95, exif=exif.tobytes())
        put(f"oriented/o{o}.jpg", f"EXIF orientation {o} (JPEG)", "indexed", tagged)
        # the physically rotated copy: Pillow's own exif_transpose of the decoded JPEG, saved losslessly
        rotated = ImageOps.exif_transpose(Image.open(io.BytesIO(tagged)))
        put(f"oriented/o{o}_rotated.png", f"orientation {o}, rotated copy", "indexed", _encode(rotated, "PNG"))
    stored6 = Image.fromarray(np.ascontiguousarray(ORIENTED[6](upright)))
    put("oriented/o6_untagged.png", "orientation 6's pixels without the tag (control)", "indexed",
        _encode(stored6, "PNG"))  # fmt: skip

    # -- names ------------------------------------------------------------------------------
    small = _encode(Image.fromarray(photos["rocket"][::4, ::4]), "JPEG", quality=85)
    put("with spaces  twice.jpg", "name with spaces", "indexed", small)
    put("ünïcødé 写真 🐈.jpg", "unicode name", "indexed", small)
    put("new\nline.jpg", "name with a newline", "indexed", small)
    put("tab\tquote'\"back\\slash.jpg", "name with tab, quotes, backslash", "indexed", small)
    put("-starts-with-dash.jpg", "name starting with a dash", "indexed", small)
    put("LOUD.JPG", "upper-case extension", "indexed", small)
    put("x" * 240 + ".jpg", "244-byte name", "indexed", small)
    if sys.platform == "linux":  # most other systems refuse names that are not UTF-8
        put(os.fsdecode(b"bad_\xff\xfe.jpg"), "name with invalid UTF-8 bytes", "indexed", small)
        put(os.fsdecode(b"latin1_caf\xe9.jpg"), "Latin-1 name", "indexed", small)
        put(os.fsdecode(b"cut_\xff.jpg"), "broken file with a non-UTF-8 name", "failed: truncated", small[:300])

    # -- the file system --------------------------------------------------------------------
    if hasattr(os, "symlink"):
        outside = d.parent / f"{d.name}-outside"
        outside.mkdir(exist_ok=True)
        (outside / "elsewhere.jpg").write_bytes(small)
        (outside / "dir").mkdir(exist_ok=True)
        (outside / "dir" / "inside.jpg").write_bytes(jpeg)
        links = {
            "loop_self.jpg": ("loop_self.jpg", "symlink to itself", "failed: symbolic link"),
            "loop_a.jpg": ("loop_b.jpg", "symlink loop a -> b -> a", "failed: symbolic link"),
            "loop_b.jpg": ("loop_a.jpg", "symlink loop b -> a -> b", "failed: symbolic link"),
            "broken.jpg": ("no-such-file.jpg", "broken symlink", "failed: broken symbolic link"),
            "link_out.jpg": (outside / "elsewhere.jpg", "symlink to a file out of the root", "indexed"),
            "link_out_dir": (outside / "dir", "symlink to a folder out of the root", "absent"),
            "loop_dir": (".", "symlink to the root itself (a folder loop)", "absent"),
        }
        for name, (target, kind, expectation) in links.items():
            os.symlink(target, d / name)
            cases.append(BadFile(name, kind, expectation))
        cases.append(BadFile("link_out_dir/inside.jpg", "a file in a linked folder out of the root", "indexed"))
    if hasattr(os, "mkfifo"):
        os.mkfifo(d / "fifo.jpg")
        cases.append(BadFile("fifo.jpg", "FIFO named x.jpg", "failed: FIFO"))
    (d / "folder.jpg").mkdir()
    (d / "folder.jpg" / "inner.jpg").write_bytes(small)
    cases.append(BadFile("folder.jpg", "directory named x.jpg", "absent"))
    cases.append(BadFile("folder.jpg/inner.jpg", "a photo inside it", "indexed"))
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads anything
        put("locked.jpg", "no read permission", "failed: permission denied", small)
        (d / "locked.jpg").chmod(0)

    # -- changed between listing and decoding (see after_listing) ---------------------------
    put("deleted_after_listing.jpg", "deleted between listing and decoding", "failed: no such file", small)
    if hasattr(os, "mkfifo"):
        put("fifo_after_listing.jpg", "replaced by a FIFO after listing", "failed: FIFO", small)
    put("dir_after_listing.jpg", "replaced by a directory after listing", "failed: directory", small)
    put("truncated_after_listing.jpg", "emptied after listing", "failed: empty file", small)
    return cases


def after_listing(folder: str | Path) -> None:
    """The changes that happen while a run is under way: call it between listing and decoding."""
    d = Path(folder)
    (d / "deleted_after_listing.jpg").unlink()
    if hasattr(os, "mkfifo"):
        (d / "fifo_after_listing.jpg").unlink()
        os.mkfifo(d / "fifo_after_listing.jpg")
    (d / "dir_after_listing.jpg").unlink()
    (d / "dir_after_listing.jpg").mkdir()
    (d / "truncated_after_listing.jpg").write_bytes(b"")
