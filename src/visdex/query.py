"""Composed queries: terms joined by ``+`` and ``-``, each a text or an image path, with an
optional weight prefix ``2:``. One syntax for the CLI, the Python API and the HTTP API.

>>> [(t.kind, t.value, t.weight) for t in parse_query('"2:red dress" + "at night" - people').terms]
[('text', 'red dress', 2.0), ('text', 'at night', 1.0), ('text', 'people', -1.0)]
>>> parse_query(["breakfast", "drink"]).terms[0].value        # shell-split words with no operator: one text
'breakfast drink'
>>> parse_query("a dog's toy").terms[0].value                 # an apostrophe inside a word is text
"a dog's toy"

Quoting: a word that starts with ``"`` or ``'`` runs to the matching quote that ends a word; it is
one term, taken as written (``"-5 degrees"`` is text, not a negative term). A quote anywhere else,
or a ``'`` that is never closed (``'90s``), is part of the text. An unclosed ``"`` is an error.

The query vector is the normalised weighted sum of the term vectors; negative terms subtract.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadQuery
from .files import IMAGE_EXTENSIONS

_WEIGHT = re.compile(r"^([^:\s/\\]+):(.*)$", re.S)
# what reads as a weight prefix: a decimal number, or nan / inf (refused, rather than searched as text)
_WEIGHT_NUMBER = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|nan|inf|infinity)", re.I)
MAX_K = 10_000  # results per query: past this a query is an export, and k-sized buffers get large
MAX_WEIGHT = 1000.0  # weights are relative: 1000:1 is past any useful blend, and sums stay finite
MAX_CROP = 1e6  # pixels; a larger crop value is a typo, and x + w must stay finite
# shlex.quote's escape for an apostrophe inside a '...' group: close, a "'" group, reopen
_SHLEX_APOSTROPHE = "'\"'\"'"


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
            raise BadQuery(f"{{field}} takes x,y,w,h (pixels, or fractions <= 1), not {text!r}", field="crop") from None
        if not all(math.isfinite(v) and abs(v) <= MAX_CROP for v in (x, y, w, h)):
            raise BadQuery(
                f"{{field}} {text!r}: each of x,y,w,h must be a finite number up to {MAX_CROP:.0f}", field="crop"
            )
        if min(x, y) < 0 or w <= 0 or h <= 0:
            raise BadQuery(f"{{field}} {text!r}: x and y must be >= 0, width and height > 0", field="crop")
        return cls(x, y, w, h, relative=max(x, y, w, h) <= 1.0)

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The crop as a PIL box within an image of that size; outside the image -> BadQuery."""
        x, y, w, h = (self.x * width, self.y * height, self.w * width, self.h * height) if self.relative else (
            self.x, self.y, self.w, self.h)  # fmt: skip
        left, top, right, bottom = round(x), round(y), round(x + w), round(y + h)
        if right > width + 1 or bottom > height + 1 or right - left < 1 or bottom - top < 1:
            shown = f"{self.x:g},{self.y:g},{self.w:g},{self.h:g}"
            raise BadQuery(f"{{field}} {shown} lies outside the {width}x{height} image", field="crop")
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
    p = _expand(value)
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
        return False
    return _is_image_file(value) or "/" in value or os.sep in value


def _expand(value: str) -> Path:
    try:
        return Path(value).expanduser()
    except RuntimeError:  # ~user of an unknown user: the path as written
        return Path(value)


def _closing(text: str, i: int) -> int | None:
    """Index of the quote that closes the one at ``i``: the same character at the end of a word."""
    q, k = text[i], i + 1
    while k < len(text):
        if q == "'" and text.startswith(_SHLEX_APOSTROPHE, k):
            k += len(_SHLEX_APOSTROPHE)
            continue
        if text[k] == q and (k + 1 == len(text) or text[k + 1].isspace()):
            return k
        k += 1
    return None


def split_query(text: str) -> list[tuple[str, bool]]:
    """One query string -> its words as ``(word, quoted)``: whitespace separates words, quotes group them
    (see the module doc). Reads what :func:`shlex.quote` writes, so ``shlex.quote(path)`` stays one term.

    >>> split_query("'2:red dress' - rock'n'roll")
    [('2:red dress', True), ('-', False), ("rock'n'roll", False)]
    """
    words: list[tuple[str, bool]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        if text[i] in "\"'":
            end = _closing(text, i)
            if end is not None:
                inner = text[i + 1 : end]
                words.append((inner.replace(_SHLEX_APOSTROPHE, "'") if text[i] == "'" else inner, True))
                i = end + 1
                continue
            if text[i] == '"':
                raise BadQuery(f'cannot parse the query {text!r}: the " at position {i + 1} is never closed')
        j = i
        while j < n and not text[j].isspace():
            j += 1
        words.append((text[i:j], False))
        i = j
    return words


def _is_image_file(value: str) -> bool:
    p = _expand(value)
    try:
        return p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    except (OSError, ValueError):  # NUL bytes, names too long
        return False


def _tokens(query: str | Sequence[str]) -> list[str]:
    if not isinstance(query, str) and len(query) == 1:
        query = str(query[0])  # one CLI argument may hold a whole composed query: "beach.jpg + 'at night'"
    if isinstance(query, str):
        if _is_image_file(query.strip()):  # a path with spaces, or with + and - in its name
            return [query.strip()]
        words = split_query(query)
    else:
        words = [(str(q), False) for q in query]
    out: list[str] = []
    for tok, quoted in words:
        # "-people" / "+blue" glued to a word is an operator and a term ("t-shirt" is not: no leading sign)
        if not quoted and len(tok) > 1 and tok[0] in "+-" and not tok[1].isspace() and not is_image_ref(tok):
            out += [tok[0], tok[1:]]
        elif quoted and tok in ("+", "-"):
            out.append(f" {tok}")  # a quoted "+" is a word, not an operator (stripped again in _term)
        else:
            out.append(tok)
    return out


def _groups(tokens: list[str]) -> list[tuple[int, list[str]]]:
    """Split tokens at ``+`` / ``-`` operators into (sign, words) groups."""
    groups: list[tuple[int, list[str]]] = []
    sign, words = 1, list[str]()
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
    if m and _WEIGHT_NUMBER.fullmatch(m.group(1)) and not _is_image_file(text):
        weight = float(m.group(1))
        if not math.isfinite(weight):
            raise BadQuery(f"bad weight {m.group(1)!r} in term {text!r}: a weight is a number from 0 to {MAX_WEIGHT:g}")
        if not weight > 0:
            raise BadQuery(f"weight must be > 0 in term {text!r} (use '-' to subtract)")
        if weight > MAX_WEIGHT:
            raise BadQuery(
                f"weight {m.group(1)} in term {text!r} is too large: at most {MAX_WEIGHT:g} (weights are "
                "relative, so 2:a + b is a 2:1 blend)"
            )
        text = m.group(2).strip()
    if not text:
        raise BadQuery("the query has an empty term")
    if not is_image_ref(text):
        return Term("text", text, sign * weight)
    if not _is_image_file(text):
        raise BadQuery(f"no such image file: {text}", path=text)
    return Term("image", str(_expand(text)), sign * weight)


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
            raise BadQuery("{field} needs an image term in the query", field="crop")
        t = terms[idx]
        terms[idx] = Term(t.kind, t.value, t.weight, crop)
    return Query(terms)
