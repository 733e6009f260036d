"""Composed queries: terms joined by ``+`` and ``-``, each a text or an image path, with an
optional weight prefix ``2:``. One syntax for the CLI, the Python API and the HTTP API.

>>> [(t.kind, t.value, t.weight) for t in parse_query('"2:red dress" + "at night" - people').terms]
[('text', 'red dress', 2.0), ('text', 'at night', 1.0), ('text', 'people', -1.0)]
>>> parse_query(["breakfast", "drink"]).terms[0].value        # shell-split words with no operator: one text
'breakfast drink'

The query vector is the normalised weighted sum of the term vectors; negative terms subtract.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadQuery
from .files import IMAGE_EXTENSIONS

_WEIGHT = re.compile(r"^([^:\s/\\]+):(.*)$", re.S)


@dataclass(frozen=True)
class Crop:
    """A region of an image: pixels, or fractions of width/height when ``relative``."""

    x: float
    y: float
    w: float
    h: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> Crop:
        """``"x,y,w,h"`` in pixels, or all four <= 1 for fractions.

        >>> Crop.parse("0.5,0,0.5,1")
        Crop(x=0.5, y=0.0, w=0.5, h=1.0, relative=True)
        """
        parts = [p.strip() for p in str(text).split(",")]
        try:
            x, y, w, h = (float(p) for p in parts)
        except ValueError:
            raise BadQuery(f"--crop takes x,y,w,h (pixels, or fractions <= 1), not {text!r}") from None
        if min(x, y) < 0 or w <= 0 or h <= 0:
            raise BadQuery(f"crop {text!r}: x and y must be >= 0, width and height > 0")
        return cls(x, y, w, h, relative=max(x, y, w, h) <= 1.0)

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The crop as a PIL box within an image of that size; outside the image -> BadQuery."""
        x, y, w, h = (self.x * width, self.y * height, self.w * width, self.h * height) if self.relative else (
            self.x, self.y, self.w, self.h)  # fmt: skip
        left, top, right, bottom = round(x), round(y), round(x + w), round(y + h)
        if right > width + 1 or bottom > height + 1 or right - left < 1 or bottom - top < 1:
            raise BadQuery(f"crop {self} lies outside the {width}x{height} image")
        return left, top, min(right, width), min(bottom, height)


@dataclass(frozen=True)
class Term:
    kind: str  # "text" | "image"
    value: str
    weight: float = 1.0
    crop: Crop | None = None


@dataclass
class Query:
    terms: list[Term] = field(default_factory=list)

    @property
    def image_terms(self) -> list[Term]:
        return [t for t in self.terms if t.kind == "image"]


def is_image_ref(value: str) -> bool:
    """A term is an image if it names an existing image file, or looks like an image path
    (image extension and a directory separator, so a missing file is reported, not searched as text)."""
    if "\n" in value or len(value) > 4096:
        return False
    p = Path(value).expanduser()
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
        return False
    return p.is_file() or "/" in value or os.sep in value


def _tokens(query: str | Sequence[str]) -> list[str]:
    if not isinstance(query, str) and len(query) == 1:
        query = str(query[0])  # one CLI argument may hold a whole composed query: "beach.jpg + 'at night'"
    if isinstance(query, str):
        if is_image_ref(query.strip()):
            return [query.strip()]
        try:
            tokens = shlex.split(query)
        except ValueError as e:
            raise BadQuery(f"cannot parse the query {query!r}: {e}") from e
    else:
        tokens = [str(q) for q in query]
    out: list[str] = []
    for tok in tokens:
        # "-people" / "+blue" glued to a word is an operator and a term ("t-shirt" is not: no leading sign)
        if len(tok) > 1 and tok[0] in "+-" and not tok[1].isspace() and not is_image_ref(tok):
            out += [tok[0], tok[1:]]
        else:
            out.append(tok)
    return out


def _groups(tokens: list[str]) -> list[tuple[int, list[str]]]:
    """Split tokens at ``+`` / ``-`` operators into (sign, words) groups."""
    groups: list[tuple[int, list[str]]] = []
    sign, words = 1, []
    for i, tok in enumerate(tokens):
        if tok in ("+", "-"):
            if not words and (groups or i > 0 or tok == "+"):
                raise BadQuery(f"the query has an operator {tok!r} with no term before it (at word {i + 1})")
            if words:
                groups.append((sign, words))
            sign, words = (1 if tok == "+" else -1), []
        else:
            words.append(tok)
    if not words:
        raise BadQuery("the query ends with an operator and no term after it" if tokens else "empty query")
    groups.append((sign, words))
    return groups


def _term(sign: int, words: list[str]) -> Term:
    text = " ".join(words).strip()
    weight = 1.0
    m = _WEIGHT.match(text)
    if m and not Path(text).expanduser().is_file() and re.fullmatch(r"[-+]?[0-9.]+(e[-+]?\d+)?", m.group(1), re.I):
        try:
            weight = float(m.group(1))
        except ValueError:
            raise BadQuery(f"bad weight {m.group(1)!r} in term {text!r}") from None
        if not weight > 0:
            raise BadQuery(f"weight must be > 0 in term {text!r} (use '-' to subtract)")
        text = m.group(2).strip()
    if not text:
        raise BadQuery("the query has an empty term")
    kind = "image" if is_image_ref(text) else "text"
    if kind == "image" and not Path(text).expanduser().is_file():
        raise BadQuery(f"no such image file: {text}")
    return Term(kind, str(Path(text).expanduser()) if kind == "image" else text, sign * weight)


def parse_query(query: str | Sequence[str], crop: str | Crop | None = None) -> Query:
    """Parse a composed query. ``crop`` applies to the first image term (a crop with no image term is an error)."""
    groups = _groups(_tokens(query))
    terms = [_term(sign, words) for sign, words in groups]
    if not any(t.weight > 0 for t in terms):
        raise BadQuery("the query needs at least one positive term (negatives only subtract)")
    if crop is not None:
        crop = crop if isinstance(crop, Crop) else Crop.parse(crop)
        idx = next((i for i, t in enumerate(terms) if t.kind == "image"), None)
        if idx is None:
            raise BadQuery("--crop needs an image term in the query")
        t = terms[idx]
        terms[idx] = Term(t.kind, t.value, t.weight, crop)
    return Query(terms)
