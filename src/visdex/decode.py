"""Bytes or a path in, an RGB :class:`PIL.Image.Image` out, robustly.

Every way an image file can be wrong (empty, truncated, corrupt, not an image, too many
pixels, unreadable) ends as a :class:`~visdex.errors.BadImage` with a short reason, so ingest can
record it and go on. Formats are recognised by content, never by extension.

What decoding does, in order:

1. open without blocking and read regular files only (a FIFO or a device named like an image
   would hang the run), and no file larger than an image within ``max_pixels`` can be;
2. check the pixel count in the header against ``max_pixels`` before any pixel is decoded;
3. with ``draft_size``, let libjpeg decode JPEGs at 1/2, 1/4 or 1/8 scale, and shrink other
   formats with a box filter, always keeping the short side >= ``draft_size``;
4. crop an image longer than ``max_aspect`` times its width (or the reverse) to its centre
   ``max_aspect``:1 part: a model resizes the short side up to its input size, so a 164-byte
   1x20000 PNG would become a 256x5120000 image (4 GB); a centre-crop model only looks at the
   centre square anyway;
5. take the first frame of animations, composite alpha on white, map palette, CMYK, 16-bit
   and float modes to 8-bit RGB;
6. apply the EXIF orientation, so width and height are the ones a viewer shows.

Everything here is a plain module-level function so it can run in worker processes.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import os
import stat
import threading
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import config
from .errors import BadImage, ImageTooLarge, MissingDependency, VisdexError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_ASPECT",
    "DecodedImage",
    "ExifFacts",
    "content_hash",
    "decode_image",
    "exif_facts",
    "hash_file",
    "read_and_decode",
    "read_file",
]

#: Largest image (width x height) decoded by default: twice Pillow's own warning threshold,
#: i.e. the point where Pillow itself refuses. ``VISDEX_MAX_PIXELS`` overrides it in the CLI.
DEFAULT_MAX_PIXELS: int = config.default("max_pixels")

#: Longest side over shortest side beyond which the image is cropped to its centre part of this shape.
#: A panorama is 4-12:1, a phone's scrolling screenshot 20-30:1; at 32:1 a 518 px model input is 26 MB.
MAX_ASPECT = 32

# Bytes per pixel of the widest uncompressed image we decode (float32 RGBA TIFF), plus room for metadata: a
# file larger than this for max_pixels cannot be an image we would decode, so it is refused before it is read.
_MAX_BYTES_PER_PIXEL, _MAX_METADATA_BYTES = 16, 64 << 20

_CHUNK = 1 << 20  # 1 MiB: large enough for fast sequential reads, small enough to not matter

# EXIF orientation -> the transpose that undoes it (same table as PIL.ImageOps.exif_transpose).
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_TAG_ORIENTATION, _TAG_MAKE, _TAG_MODEL, _TAG_DATETIME = 274, 271, 272, 306
_TAG_EXIF_IFD, _TAG_DATETIME_ORIGINAL = 0x8769, 36867

# Magic numbers, only to word the error for a file that starts like an image but is cut short.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

_pil_guard_lock = threading.Lock()


@dataclass
class DecodedImage:
    """A decoded image and what the file says about it.

    ``width`` and ``height`` are the full-resolution size after EXIF orientation, even when
    ``image`` itself was decoded smaller (``draft_size``).
    """

    image: Image.Image
    width: int
    height: int
    format: str
    taken_at: str | None = None
    camera: str | None = None


# -- hashing --------------------------------------------------------------------------------
def content_hash(data: bytes) -> str:
    """The content hash visdex uses to recognise moved and duplicate files (32 hex digits).

    >>> content_hash(b"")
    'cae66941d9efbd404e4d88758ea67670'
    """
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def hash_file(path: str | os.PathLike) -> str:
    """:func:`content_hash` of a file's bytes, streamed in 1 MiB chunks (raises ``OSError``).

    >>> hash_file("photo.jpg") == content_hash(open("photo.jpg", "rb").read())  # doctest: +SKIP
    True
    """
    h = hashlib.blake2b(digest_size=16)
    with _open_regular(path) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# -- public decode --------------------------------------------------------------------------
def decode_image(
    src: str | os.PathLike | bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    max_aspect: float | None = MAX_ASPECT,
) -> DecodedImage:
    """Decode a file path or in-memory bytes to an RGB image with EXIF orientation applied.

    ``max_pixels`` (None: no limit) is checked against the header before decoding;
    ``draft_size`` allows decoding smaller, with the short side kept >= ``draft_size``;
    ``max_aspect`` (None: no limit) crops a longer image to its centre part of that shape.
    Raises :class:`BadImage` (:class:`ImageTooLarge` for bombs) and nothing else, except
    :class:`MissingDependency` for a HEIC file without pillow-heif.

    >>> dec = decode_image("IMG_0001.HEIC", draft_size=224)  # doctest: +SKIP
    >>> dec.image.mode, dec.format, (dec.width, dec.height)  # doctest: +SKIP
    ('RGB', 'HEIF', (3024, 4032))
    """
    data = bytes(src) if isinstance(src, (bytes, bytearray, memoryview)) else read_file(src, max_pixels)
    return _decode_bytes(data, max_pixels, draft_size, max_aspect)


def read_and_decode(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    max_aspect: float | None = MAX_ASPECT,
) -> tuple[str, DecodedImage]:
    """Read a file once; return its :func:`content_hash` and the decoded image.

    >>> digest, dec = read_and_decode("cat.jpg", draft_size=224)  # doctest: +SKIP
    """
    data = read_file(path, max_pixels)
    return content_hash(data), _decode_bytes(data, max_pixels, draft_size, max_aspect)


def read_file(path: str | os.PathLike, max_pixels: int | None = None) -> bytes:
    """A regular file's bytes, as the decoder reads them: never blocks on a FIFO or device, and refuses a file
    too large to be an image within ``max_pixels``. Raises :class:`BadImage` (the reason) and nothing else.

    >>> read_file("/dev/zero")  # doctest: +SKIP
    BadImage: cannot read file: it is a character device, not an image file
    """
    try:
        with _open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if max_pixels is not None and size > max_pixels * _MAX_BYTES_PER_PIXEL + _MAX_METADATA_BYTES:
                raise ImageTooLarge(
                    f"file is {_sci(size)} bytes, more than an image within the pixel limit of {_sci(max_pixels)} "
                    f"can be (set VISDEX_MAX_PIXELS to raise it)"
                )
            return f.read()
    except OSError as e:  # missing, permission denied, a directory, a FIFO, I/O error
        raise BadImage(f"cannot read file: {_os_reason(path, e)}") from e


_FILE_TYPES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip


_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # absent on Windows, where FIFOs have no names in the file system


def _open_regular(path: str | os.PathLike) -> io.BufferedReader:
    """Open a regular file for reading; anything else raises ``OSError`` at once.

    O_NONBLOCK: opening a FIFO without a writer would otherwise wait forever (a file can be
    swapped for one after the folder was listed), and a signal does not end that wait. The
    type is checked on the open descriptor, so no swap can come between check and read.
    O_NONBLOCK has no effect on reading a regular file.
    """
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_TYPES if test(mode)), "a special file")
            raise OSError(errno.EINVAL, f"not a regular file but {kind}", os.fspath(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _os_reason(path: str | os.PathLike, e: OSError) -> str:
    if e.errno == errno.ENOENT and os.path.islink(path):
        return "broken symbolic link"
    return e.strerror or str(e)


# -- the decoder ----------------------------------------------------------------------------
def _decode_bytes(data: bytes, max_pixels: int | None, draft_size: int | None,
                  max_aspect: float | None = MAX_ASPECT) -> DecodedImage:  # fmt: skip
    if not data:
        raise BadImage("empty file")
    if draft_size is not None and draft_size < 1:
        raise ValueError(f"draft_size must be >= 1, got {draft_size}")
    if max_aspect is not None and max_aspect < 1:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
    try:
        return _decode_guarded(data, max_pixels, draft_size, max_aspect)
    except Image.DecompressionBombError:
        # Pillow's own process-wide guard fired. Our max_pixels is the authority (it may be
        # higher, or None), so decode again with Pillow's guard off; our check still runs.
        # The switch is global, hence the lock; it is only flipped for files over Pillow's
        # refusal threshold, which our own check has normally refused already.
        with _pil_guard_lock:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                return _decode_guarded(data, max_pixels, draft_size, max_aspect)
            finally:
                Image.MAX_IMAGE_PIXELS = saved


def _decode_guarded(data: bytes, max_pixels: int | None, draft_size: int | None,
                    max_aspect: float | None) -> DecodedImage:  # fmt: skip
    """Decode, turning every decoder failure into BadImage (Pillow's bomb error passes through)."""
    with warnings.catch_warnings():
        # Pillow warns about corrupt EXIF and large images; the BadImage reasons and our own
        # pixel limit carry that information, and a warning per file would flood a big run.
        warnings.simplefilter("ignore")
        try:
            return _decode_unguarded(data, max_pixels, draft_size, max_aspect)
        except (VisdexError, Image.DecompressionBombError):
            raise
        except UnidentifiedImageError as e:
            raise BadImage(_unidentified_reason(data)) from e
        except (OSError, EOFError, SyntaxError, ValueError) as e:
            raise BadImage(_load_failure_reason(e)) from e
        except MemoryError as e:
            raise BadImage("not enough memory to decode the image") from e
        except Exception as e:  # plugins raise struct.error, IndexError, RuntimeError, ...
            raise BadImage(f"corrupt image data ({type(e).__name__}: {e})") from e


def _decode_unguarded(data: bytes, max_pixels: int | None, draft_size: int | None,
                      max_aspect: float | None) -> DecodedImage:  # fmt: skip
    heif_missing = _looks_like_heif(data) and not _heif_opener_registered()
    img: Image.Image  # an ImageFile until it is cropped or converted
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if heif_missing:
            raise MissingDependency("pillow-heif", extra="heif", purpose="HEIC/AVIF images") from None
        raise
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {_sci(width * height)} pixels, which exceeds the limit of "
            f"{_sci(max_pixels)} (set VISDEX_MAX_PIXELS to raise it)",
            size=(width, height),
        )
    fmt = "JPEG" if img.format == "MPO" else (img.format or "unknown")  # MPO: a JPEG with extras
    if draft_size and fmt == "JPEG":
        # JpegImageFile.draft picks scale = largest of 8/4/2/1 <= min(W // s, H // s), so the
        # decoded short side, ceil(short / scale), stays >= draft_size.
        img.draft("RGB", (draft_size, draft_size))
    img.load()  # pixel errors (truncation, corrupt streams) surface here, not in open()
    facts = exif_facts(img)
    orientation = facts.orientation
    if max_aspect is not None:
        img = _crop_aspect(img, max_aspect)
    rgb = _to_rgb(img)
    if draft_size:
        rgb = _shrink(rgb, draft_size)
    if orientation in _ORIENTATION_FIX:
        rgb = rgb.transpose(_ORIENTATION_FIX[orientation])
        if orientation >= 5:  # 5..8 turn the image by 90 degrees
            width, height = height, width
    return DecodedImage(rgb, width, height, fmt, facts.taken_at, facts.camera)


def _sci(n: int) -> str:
    """1600000000 -> "1.6e9": short, and exact enough to compare with a limit."""
    mantissa, exponent = f"{n:.3g}".partition("e")[::2]
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def _unidentified_reason(data: bytes) -> str:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return f"truncated image data (an incomplete {fmt} header)"
    return "not a recognised image format"


def _load_failure_reason(e: BaseException) -> str:
    msg = str(e)
    low = msg.lower()
    if isinstance(e, EOFError) or "truncated" in low or "end of file" in low or "not enough data" in low:
        return "truncated image data"
    return f"corrupt image data ({msg})" if msg else f"corrupt image data ({type(e).__name__})"


# -- HEIC / AVIF ----------------------------------------------------------------------------
def _looks_like_heif(data: bytes) -> bool:
    """ISO base media files (HEIC, HEIF, AVIF) start with an ``ftyp`` box."""
    return data[4:8] == b"ftyp"


@functools.cache
def _heif_opener_registered() -> bool:
    """Register pillow-heif's opener once, on the first ISO-BMFF file; False if not installed.

    Lazy so that the common JPEG/PNG path never pays for importing libheif. Pillow >= 11.3
    reads AVIF itself, so a missing pillow-heif only matters when Pillow cannot open the file.
    """
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


# -- pixels ---------------------------------------------------------------------------------
def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode; transparency composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("PA", "La", "RGBa"):
        img = img.convert("RGBA")
    elif mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _high_depth_to_l(img)
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    try:
        return img.convert("RGB")
    except ValueError as e:  # e.g. LAB, which needs a colour profile to convert
        raise BadImage(f"unsupported colour mode {img.mode}") from e


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit integer and float greyscale to 8-bit; Pillow's convert would clip, not scale."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64))
        top = 1.0 if arr.size and arr.max() <= 1.0 else 255.0  # float images are 0..1 or 0..255
        arr = arr * (255.0 / top)
    elif arr.size and arr.max() > 255:  # 16-bit data (stored as uint16 or int32)
        arr = arr.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def _crop_aspect(img: Image.Image, max_aspect: float) -> Image.Image:
    """The centre part of an image longer than ``max_aspect``:1 (either way), of exactly that shape.

    Centred on both axes, so it commutes with the EXIF transposes applied after it.
    """
    w, h = img.size
    if max(w, h) <= max_aspect * min(w, h):
        return img
    if w > h:
        keep = max(1, int(max_aspect * h))
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    keep = max(1, int(max_aspect * w))
    top = (h - keep) // 2
    return img.crop((0, top, w, top + keep))


def _shrink(img: Image.Image, draft_size: int) -> Image.Image:
    """Box-reduce by an integer factor when the short side is over twice ``draft_size``.

    ``reduce(f)`` gives ceil(side / f); with f = short // draft_size that is >= draft_size.
    """
    factor = min(img.size) // draft_size
    return img.reduce(factor) if factor >= 2 else img


# -- metadata -------------------------------------------------------------------------------
class ExifFacts(NamedTuple):
    """What visdex reads from an image's EXIF: orientation (1-8; 1 when absent), capture time, camera."""

    orientation: int
    taken_at: str | None
    camera: str | None


def exif_facts(img: Image.Image) -> ExifFacts:
    """The EXIF facts of an opened image; garbled EXIF gives the defaults, never an error.

    >>> exif_facts(Image.open("IMG_0001.jpg"))  # doctest: +SKIP
    ExifFacts(orientation=6, taken_at='2021-07-04T12:34:56', camera='Canon EOS R5')
    """
    exif = _safe_exif(img)
    raw = exif.get(_TAG_ORIENTATION) if exif is not None else None
    orientation = raw if isinstance(raw, int) and 1 <= raw <= 8 else 1
    return ExifFacts(orientation, _taken_at(exif), _camera(exif))


def _safe_exif(img: Image.Image) -> Image.Exif | None:
    try:
        return img.getexif()
    except Exception:  # garbled EXIF must not cost us the pixels
        return None


def _exif_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", " ").strip()
    return text or None


def _taken_at(exif: Image.Exif | None) -> str | None:
    """DateTimeOriginal (else DateTime) as ISO 8601; None when absent or not a real date."""
    if exif is None:
        return None
    try:
        original = exif.get_ifd(_TAG_EXIF_IFD).get(_TAG_DATETIME_ORIGINAL)
    except Exception:
        original = None
    for raw in (original, exif.get(_TAG_DATETIME)):
        text = _exif_text(raw)
        if not text:
            continue
        try:  # cameras write "YYYY:MM:DD HH:MM:SS"; unset clocks write zeros or blanks
            return datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S").isoformat()
        except ValueError:
            continue
    return None


def _camera(exif: Image.Exif | None) -> str | None:
    """ "Make Model", without repeating the make: ("Canon", "Canon EOS R5") -> "Canon EOS R5",
    and ("NIKON CORPORATION", "NIKON D750") -> "NIKON D750"."""
    if exif is None:
        return None
    make, model = _exif_text(exif.get(_TAG_MAKE)), _exif_text(exif.get(_TAG_MODEL))
    if make and model:
        same_brand = model.lower().startswith(make.lower()) or model.split()[0].lower() == make.split()[0].lower()
        return model if same_brand else f"{make} {model}"
    return make or model
