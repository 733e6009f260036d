"""What there is to know about one indexed image: its EXIF facts, and its duplicates.

>>> exif_facts("/photos/cat.jpg")                                      # doctest: +SKIP
{'camera': 'Canon EOS R5', 'lens': 'RF24-105mm F4 L IS USM', 'aperture': 'f/4', 'exposure': '1/250 s', ...}
>>> [m.path for m in duplicates_of(ix, 12)]                             # doctest: +SKIP
['/photos/cat-copy.jpg']
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from .errors import BadQuery, NotFound

# EXIF tag numbers (IFD0 and the Exif sub-IFD) shown to a person, with how to write each value
_IFD0 = {271: "make", 272: "model", 305: "software", 306: "modified", 315: "artist", 33432: "copyright"}
_EXIF = {
    36867: "taken", 42036: "lens", 33437: "aperture", 33434: "exposure", 34855: "iso", 37386: "focal_length",
    41989: "focal_length_35mm", 37385: "flash", 40962: "pixel_width", 40963: "pixel_height",
}  # fmt: skip
_GPS_IFD, _EXIF_IFD = 0x8825, 0x8769


def _num(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _shown(name: str, v) -> str | int | float | None:
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v.strip("\x00 ").strip() or None
    x = _num(v)
    if x is None:
        return None
    if name == "aperture":
        return f"f/{x:.1f}".replace(".0", "")
    if name == "exposure":
        return f"1/{round(1 / x)} s" if 0 < x < 0.5 else f"{x:g} s"
    if name in ("focal_length", "focal_length_35mm"):
        return f"{x:g} mm"
    if name == "flash":
        return "fired" if int(x) & 1 else "did not fire"
    return int(x) if x == int(x) else round(x, 4)


def _degrees(dms, ref) -> float | None:
    try:
        d, m, s = (float(Fraction(str(x))) if not isinstance(x, (int, float)) else float(x) for x in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    value = d + m / 60 + s / 3600
    return round(-value if str(ref).upper() in ("S", "W") else value, 6)


def exif_facts(path: str | Path) -> dict:
    """The EXIF facts of an image file a person cares about (camera, lens, exposure, date, GPS), as display
    strings or numbers; ``{}`` for a file without EXIF. NotFound when the file is gone."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise NotFound(f"the file {p.name} is not there any more")
    try:
        with Image.open(p) as img:
            exif = img.getexif()
    except (UnidentifiedImageError, OSError):
        return {}
    facts: dict = {}
    for tag, name in _IFD0.items():
        if (v := _shown(name, exif.get(tag))) is not None:
            facts[name] = v
    sub = exif.get_ifd(_EXIF_IFD)
    for tag, name in _EXIF.items():
        if (v := _shown(name, sub.get(tag))) is not None:
            facts[name] = v
    gps = exif.get_ifd(_GPS_IFD)
    if gps.get(2) and gps.get(4):
        lat, lon = _degrees(gps[2], gps.get(1)), _degrees(gps[4], gps.get(3))
        if lat is not None and lon is not None:
            facts["gps"] = {"lat": lat, "lon": lon}
    return facts


@dataclass
class DuplicateOf:
    """An image found to be a copy of another: ``kind`` is "exact" (same bytes) or "near" (cosine and pixels)."""

    id: int
    path: str
    score: float
    kind: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def duplicates_of(ix, item_id: int, *, threshold: float | None = None, k: int = 50) -> list[DuplicateOf]:
    """The copies of one indexed file: same bytes, or cosine >= ``threshold`` (default: the model's duplicate
    threshold) and pixels that line up (the check :func:`visdex.dupes.find_duplicates` makes)."""
    from .dupes import VERIFY_THRESHOLD, default_threshold, pixel_similarity, signature

    if ix.db.kind == "catalog":
        raise BadQuery("duplicates are found among files; this index holds a catalog")
    row = ix.db.files_by_ids([item_id]).get(item_id)
    if row is None or row.status != "ok":
        raise NotFound(f"no item with id {item_id} in the index")
    t = default_threshold(ix.model_name) if threshold is None else threshold
    hits = ix.similar(item_id, k=k, min_score=t)
    rows = ix.db.files_by_ids([h.id for h in hits])
    mine = signature(row.path)
    out = []
    for h in hits:
        other = rows.get(h.id)
        if other is None:
            continue
        if row.hash and other.hash == row.hash:
            out.append(DuplicateOf(h.id, other.path, round(float(h.score), 6), "exact"))
            continue
        sig = signature(other.path) if mine is not None else None
        if mine is not None and sig is not None and pixel_similarity(mine, sig) >= VERIFY_THRESHOLD:
            out.append(DuplicateOf(h.id, other.path, round(float(h.score), 6), "near"))
    return out
