"""A near-duplicate test set from real photos (scikit-image's bundled ones).

Each *source* photo is written with edited **copies** (same capture, edited): resized, JPEG q=40, cropped 5% per
side, EXIF-rotated, brighter and less saturated, and the harder ones: a 30% crop, a 3 degree rotation (straightened
and cropped, as photo editors do), a caption bar, a screenshot-like rescale with a border, a watermark.

Sources that are different captures of one scene are **similar shots** of one another, never copies: windows of one
large photo shifted by a third, "bursts" made by moving a crop window slowly (12% of its width a frame) across a large
photo, and a real stereo pair (``motorcycle_left`` / ``motorcycle_right``: parallax).

File names: ``<scene>~<frame>__<edit>.jpg``; :func:`source_of` is the capture, :func:`scene_of` the scene.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data as sd
from PIL import Image, ImageDraw, ImageEnhance

from imagefactory import real_photos, write_photo

EASY_EDITS = ("resized", "q40", "crop", "rot", "color")
HARD_EDITS = ("crop30", "rot3", "caption", "screenshot", "watermark")
EDITS = EASY_EDITS + HARD_EDITS


def _windows(a: np.ndarray, offsets: list[tuple[float, float]], size: float) -> list[np.ndarray]:
    h, w = a.shape[:2]
    ww, wh = int(w * size), int(h * size)
    return [np.ascontiguousarray(a[int(dy * h) : int(dy * h) + wh, int(dx * w) : int(dx * w) + ww])
            for dx, dy in offsets]  # fmt: skip


def sources(hard: bool = True) -> dict[str, np.ndarray]:
    """name -> RGB array. ``hard=False``: the original set (third-shifted windows and three single photos)."""
    big = {
        "hubble": sd.hubble_deep_field(), "retina": sd.retina(), "astronaut": sd.astronaut(), "coffee": sd.coffee(),
        "rocket": sd.rocket(), "chelsea": sd.chelsea(), "ihc": sd.immunohistochemistry(),
    }  # fmt: skip
    burst = {"astronaut-burst": big.pop("astronaut"), "coffee-burst": big.pop("coffee")} if hard else {}
    out = {}
    for name, a in big.items():
        h, w = a.shape[:2]
        ww, wh = int(w * 0.6), int(h * 0.6)
        off = int(ww * 0.33)
        out[f"{name}~A"] = np.ascontiguousarray(a[:wh, :ww])
        out[f"{name}~B"] = np.ascontiguousarray(a[h - wh :, off : off + ww])
    photos = real_photos()
    for name in ("camera", "coins", "moon"):
        out[f"{name}~0"] = photos[name]
    if hard:
        # bursts (photos not used above): a 70% window panning 12% of its width a frame, drifting down 3%
        for name, a in burst.items():
            frames = _windows(a, [(0.0, 0.0), (0.12 * 0.7, 0.03), (0.24 * 0.7, 0.06)], 0.7)
            for i, f in enumerate(frames):
                out[f"{name}~{i}"] = f
        left, right, _ = sd.stereo_motorcycle()
        out["motorcycle~left"], out["motorcycle~right"] = left, right
    return out


def _rot3(img: Image.Image) -> Image.Image:
    """Straighten by 3 degrees and crop to the largest upright rectangle inside (no fill in the corners)."""
    w, h = img.size
    t = np.radians(3.0)
    c, s = np.cos(t), np.sin(t)
    # inner rectangle of a w x h frame rotated by t, same aspect ratio (small angles)
    k = 1.0 / (c + s * max(w / h, h / w))
    r = img.rotate(3.0, resample=Image.Resampling.BICUBIC)
    iw, ih = int(w * k), int(h * k)
    return r.crop(((w - iw) // 2, (h - ih) // 2, (w - iw) // 2 + iw, (h - ih) // 2 + ih))


def _caption(img: Image.Image) -> Image.Image:
    w, h = img.size
    bar = max(24, h // 8)
    out = Image.new("RGB", (w, h + bar), "white")
    out.paste(img, (0, 0))
    ImageDraw.Draw(out).text((10, h + bar // 3), "Holiday 2021 - look at this one!", fill="black")
    return out


def _screenshot(img: Image.Image) -> Image.Image:
    """Shown at 80% in a viewer window: a dark frame, a title bar, an uneven border."""
    w, h = img.size
    small = img.resize((int(w * 0.8), int(h * 0.8)), Image.Resampling.BILINEAR)
    out = Image.new("RGB", (int(w * 0.8) + 60, int(h * 0.8) + 90), (40, 40, 44))
    d = ImageDraw.Draw(out)
    d.rectangle((0, 0, out.width, 30), fill=(210, 210, 215))
    d.text((8, 8), "IMG_0042.JPG - Photos", fill="black")
    out.paste(small, (25, 55))
    return out


def _watermark(img: Image.Image) -> Image.Image:
    out = img.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    w, h = out.size
    for y in range(h // 6, h, h // 3):
        d.text((w // 5, y), "(c) STOCK PHOTO  (c) STOCK PHOTO", fill=(255, 255, 255, 140))
    d.rectangle((w - w // 4, h - h // 10, w - 8, h - 8), fill=(255, 255, 255, 110))
    return Image.alpha_composite(out, layer).convert("RGB")


def _edits(a: np.ndarray, hard: bool = True, frame: bool = False):
    img = Image.fromarray(a)
    w, h = img.size
    yield "resized", np.asarray(img.resize((w // 2, h // 2))), {}
    yield "q40", a, {"quality": 40}
    cx, cy = int(w * 0.05), int(h * 0.05)
    yield "crop", np.asarray(img.crop((cx, cy, w - cx, h - cy))), {}
    yield "rot", np.asarray(img.transpose(Image.Transpose.ROTATE_90)), {"exif_orientation": 6}
    yield "color", np.asarray(ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(1.15)).enhance(0.85)), {}
    if not hard:
        return
    if not frame:  # a 30% crop of one burst frame lies inside its neighbour: no geometry tells which frame it came from
        yield "crop30", np.asarray(img.crop((int(w * 0.2), int(h * 0.1), int(w * 0.9), int(h * 0.8)))), {}
    yield "rot3", np.asarray(_rot3(img)), {}
    yield "caption", np.asarray(_caption(img)), {}
    yield "screenshot", np.asarray(_screenshot(img)), {"quality": 75}
    yield "watermark", np.asarray(_watermark(img)), {}


def build(d: Path, limit: int | None = None, hard: bool = True, scenes: tuple[str, ...] | None = None
          ) -> dict[str, list[Path]]:  # fmt: skip
    """Write the set into ``d``; source name -> [original, *edited copies]. ``scenes``: only these scenes."""
    d.mkdir(parents=True, exist_ok=True)
    groups = {}
    chosen = [(n, a) for n, a in sources(hard).items() if scenes is None or n.split("~")[0] in scenes]
    for name, a in chosen[:limit]:
        frame = "burst" in name or "motorcycle" in name
        groups[name] = [write_photo(d, name, a)] + [
            write_photo(d, f"{name}__{t}", e, **kw) for t, e, kw in _edits(a, hard, frame)
        ]
    return groups


def source_of(path: str) -> str:
    """The capture a file was made from (its copies share it)."""
    return Path(path).name.split(".")[0].split("__")[0]


def scene_of(path: str) -> str:
    """The scene a file shows (similar shots share it; so do copies)."""
    return source_of(path).split("~")[0]


# -- which copy is the original: the keeper ------------------------------------------------------------------------
_DAY = 86400.0
_T0 = 1.6e9  # 2020-09-13: file times are set relative to it


def build_keeper_set(d: Path) -> dict[str, Path]:
    """Three scenes whose original is not the file an older rule ("largest first, then oldest") would keep; a name
    -> path map, the originals named ``original``. Copies carry no EXIF, as editors and messengers often strip it.

    - ``coffee``: the original (EXIF date and camera, the oldest) and its edits: a caption bar (more pixels than the
      original, no more detail), a screenshot of it, half size, re-saved at quality 40, colour changed.
    - ``rocket``: the original stored twice unchanged (``a/`` and a backup folder, the same bytes, both newer) and a
      colour edit of the same size with an older file time.
    - ``chelsea``: the original with a camera name in EXIF (no date), newer than a re-save at quality 40 without EXIF.
    """
    import os
    import shutil

    d.mkdir(parents=True, exist_ok=True)
    photos = real_photos()
    out: dict[str, Path] = {}

    def put(key: str, path: Path, days: float) -> None:
        os.utime(path, (_T0 + days * _DAY, _T0 + days * _DAY))
        out[key] = path

    coffee = photos["coffee"]
    put("coffee/original", write_photo(d, "coffee", coffee, exif_datetime="2019-05-01T10:00:00", make="Canon",
                                       model="EOS 80D"), 0)  # fmt: skip
    img = Image.fromarray(coffee)
    put("coffee/caption", write_photo(d, "shared-coffee-caption", np.asarray(_caption(img))), 30)
    put("coffee/screenshot", write_photo(d, "Screenshot 2020-10-01", np.asarray(_screenshot(img)), quality=75), 31)
    half = np.asarray(img.resize((img.width // 2, img.height // 2)))
    put("coffee/resized", write_photo(d, "coffee-small", half), 32)
    put("coffee/q40", write_photo(d, "coffee-q40", coffee, quality=40), 33)
    colour = np.asarray(ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(1.15)).enhance(0.85))
    put("coffee/color", write_photo(d, "coffee-edit", colour), 34)

    rocket = photos["rocket"]
    (d / "a").mkdir(exist_ok=True)
    (d / "backup" / "2021").mkdir(parents=True, exist_ok=True)
    put("rocket/original", write_photo(d / "a", "rocket", rocket), 400)
    twin = d / "backup" / "2021" / "rocket.jpg"
    shutil.copyfile(out["rocket/original"], twin)
    put("rocket/twin", twin, 401)
    r = Image.fromarray(rocket)
    put("rocket/color", write_photo(d, "rocket-warm", np.asarray(ImageEnhance.Color(r).enhance(1.3))), 10)

    cat = photos["chelsea"]
    put("chelsea/original", write_photo(d, "chelsea", cat, make="Nikon", model="D750"), 500)
    put("chelsea/q40", write_photo(d, "chelsea-q40", cat, quality=40), 20)
    return out
