"""Real test images, written on demand: photos from scikit-image's bundled data set (no
network), with real EXIF, and a set of broken files for the error paths.

Not a test module; tests import it (``from imagefactory import write_photo``). Images are
kept small (<= 512 px) so that writing a folder of them takes milliseconds.

>>> from imagefactory import real_photos, write_photo
>>> path = write_photo(tmp_path, "cat", real_photos()["chelsea"], exif_orientation=6)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["BOMB_SIZE", "PHOTO_NAMES", "real_photos", "write_bad_files", "write_photo"]

#: scikit-image images that ship inside the wheel (no pooch download), and are photos of
#: distinct things, so a search test can tell them apart. Grey ones are expanded to RGB.
#: Left out: ``cat`` (the same photo as ``chelsea``), textures (brick, grass, gravel) and
#: synthetic images (colorwheel, logo, checkerboard, text).
PHOTO_NAMES = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
)

#: Width and height that the decompression-bomb PNG declares (900 megapixels, ~110 kB on disk).
BOMB_SIZE = (30000, 30000)

_EXTENSIONS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "HEIF": ".heic",
    "AVIF": ".avif",
}


@functools.cache
def _load_photos() -> dict[str, np.ndarray]:
    import skimage.data

    out = {}
    for name in PHOTO_NAMES:
        arr = getattr(skimage.data, name)()
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        while max(arr.shape[:2]) > 640:  # hubble (1000 px) and retina (1411 px): keep tests fast
            arr = arr[::2, ::2]
        out[name] = np.ascontiguousarray(arr[..., :3], dtype=np.uint8)
    return out


def real_photos() -> dict[str, np.ndarray]:
    """name -> RGB uint8 array (H, W, 3), loaded offline from scikit-image; fresh copies.

    >>> sorted(real_photos())[:3]
    ['astronaut', 'camera', 'chelsea']
    """
    return {name: arr.copy() for name, arr in _load_photos().items()}


def _exif_date(value: str) -> str:
    """Accept "2021-07-04T12:34:56" or the EXIF form "2021:07:04 12:34:56"."""
    return value.replace("T", " ").replace("-", ":") if "T" in value else value


def write_photo(
    dir: str | Path,
    name: str,
    array: np.ndarray,
    fmt: str = "JPEG",
    quality: int = 90,
    exif_orientation: int | None = None,
    exif_datetime: str | None = None,
    make: str | None = None,
    model: str | None = None,
) -> Path:
    """Write ``array`` as ``dir/name.<ext>`` (ext from ``fmt`` unless ``name`` has one) with
    real EXIF: Orientation, Make, Model in IFD0 and DateTimeOriginal in the Exif IFD.

    >>> write_photo(tmp_path, "cat", real_photos()["chelsea"], exif_datetime="2021-07-04T12:34:56")  # doctest: +SKIP
    PosixPath('.../cat.jpg')
    """
    fmt = fmt.upper()
    path = Path(dir) / (name if Path(name).suffix else name + _EXTENSIONS[fmt])
    img = Image.fromarray(np.ascontiguousarray(array))
    exif = Image.Exif()
    if exif_orientation is not None:
        exif[274] = exif_orientation
    if make is not None:
        exif[271] = make
    if model is not None:
        exif[272] = model
    if exif_datetime is not None:
        exif.get_ifd(0x8769)[36867] = _exif_date(exif_datetime)
    kwargs: dict = {"exif": exif.tobytes()} if len(exif) or exif_datetime else {}
    if fmt in ("JPEG", "WEBP", "HEIF", "AVIF"):
        kwargs["quality"] = quality
    if fmt == "HEIF":
        _register_heif()
    img.save(path, format=fmt, **kwargs)
    return path


def write_shots(root: str | Path, shots: dict) -> Path:
    """A photo folder with metadata: ``shots`` maps a name to (scikit-image photo, subfolder, EXIF date or
    None, (make, model) or None, format); each is written under ``root/subfolder``. Returns ``root``."""
    photos = real_photos()
    for name, (photo, sub, date, cam, fmt) in shots.items():
        (Path(root) / sub).mkdir(parents=True, exist_ok=True)
        make, model = cam or (None, None)
        write_photo(Path(root) / sub, name, photos[photo], fmt=fmt, exif_datetime=date, make=make, model=model)
    return Path(root)


def _register_heif() -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def _bomb_png() -> bytes:
    """A valid 1-bit greyscale PNG of BOMB_SIZE, all black: ~110 kB that would decode to 900 MB."""
    width, height = BOMB_SIZE
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed bits
    z = zlib.compressobj(9)
    rows_per_chunk = 256  # stream it: never hold the 112 MB of raw rows at once
    idat = [z.compress(row * min(rows_per_chunk, height - y)) for y in range(0, height, rows_per_chunk)]
    idat.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(idat))
        + _png_chunk(b"IEND", b"")
    )


def _encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write_bad_files(dir: str | Path) -> dict[str, Path]:
    """Write files that exercise decode's error and edge paths; kind -> path.

    Undecodable: ``empty``, ``truncated_jpeg``, ``truncated_png``, ``random_bytes``,
    ``text_as_jpg``, ``corrupt_png``, ``bomb`` (too many pixels). Decodable, but only when
    the decoder is right: ``mislabelled_png`` (PNG bytes in a .jpg), ``heic``, and
    ``exif_rotated`` (stored 320x200 with a red top-left corner, orientation 6 so it shows as
    200x320 with the red corner top-right).
    """
    d = Path(dir)
    photos = _load_photos()
    coffee = photos["coffee"][::2, ::2]  # 200x300
    jpeg, png = _encode(coffee, "JPEG", quality=90), _encode(coffee, "PNG")
    rng = np.random.default_rng(0)
    files = {
        "empty": ("empty.jpg", b""),
        "truncated_jpeg": ("truncated.jpg", jpeg[: len(jpeg) // 2]),
        "truncated_png": ("truncated.png", png[: len(png) // 2]),
        "random_bytes": ("random.png", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        "text_as_jpg": ("notes.jpg", b"shopping list: milk, eggs, bread\n" * 20),
        # a real PNG signature and header, then a deflate stream of noise
        "corrupt_png": ("corrupt.png", png[:33] + _png_chunk(b"IDAT", rng.bytes(2048)) + _png_chunk(b"IEND", b"")),
        "mislabelled_png": ("mislabelled.jpg", png),
        "bomb": ("bomb.png", _bomb_png()),
    }
    out = {}
    for kind, (name, data) in files.items():
        out[kind] = d / name
        out[kind].write_bytes(data)
    out["heic"] = write_photo(d, "phone.heic", coffee, fmt="HEIF", quality=80)
    rotated = photos["chelsea"][50:250, 60:380].copy()  # 200 high x 320 wide
    rotated[:40, :40] = (255, 0, 0)
    out["exif_rotated"] = write_photo(d, "rotated.jpg", rotated, exif_orientation=6)
    return out
