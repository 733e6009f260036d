"""Zero-shot tags: each image is scored against a list of labels through the model's text tower
and its best labels are stored as metadata, searchable with ``--where 'tag = beach'``.

Scores are a softmax over the given labels of the cosine similarities divided by a temperature,
so they say "how much more this label than the others", comparable across models.

>>> report = tag_index(ix, ["beach", "mountain", "city"], top=2)     # doctest: +SKIP
>>> tags_for(ix.db, [1])                                              # doctest: +SKIP
{1: [('beach', 0.91), ('city', 0.06)]}
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import BadQuery

if TYPE_CHECKING:
    from .store.db import IndexDB

TEMPERATURE = 0.03
DEFAULT_TEMPLATE = "a photo of {}"
CHUNK = 4096


@dataclass
class TagReport:
    images: int = 0
    labels: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # label -> images tagged with it

    def to_dict(self) -> dict:
        return {"images": self.images, "labels": self.labels, "counts": self.counts}


def parse_labels(labels: str | None = None, labels_file: str | None = None) -> list[str]:
    """Labels from a comma-separated string and/or a file with one label per line (``#`` comments)."""
    found: list[str] = []
    if labels:
        found += [x.strip() for x in labels.split(",")]
    if labels_file:
        try:
            with open(labels_file, encoding="utf-8") as f:
                found += [x.strip() for x in f if x.strip() and not x.lstrip().startswith("#")]
        except OSError as e:
            raise BadQuery(f"cannot read the labels file {labels_file}: {e.strerror}", path=labels_file) from e
    found = list(dict.fromkeys(x for x in found if x))
    if len(found) < 2:
        raise BadQuery("give at least two labels ({field} 'beach,mountain,city', or one a line in labels_file)",
                       field="labels")  # fmt: skip
    return found


def prompts_for(labels: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """Each label put into ``template`` at its ``{}`` (after the template when it has none).

    >>> prompts_for(["beach"], "a photo of {}, taken outdoors")
    ['a photo of beach, taken outdoors']
    """
    try:
        fields = [f + (spec or "") + (conv or "") for _, f, spec, conv in string.Formatter().parse(template)
                  if f is not None]  # fmt: skip
    except ValueError as e:  # a lone "{" or "}"
        raise BadQuery(f"{{field}} {template!r}: {e} (write {{{{ and }}}} for literal braces)",
                       field="template") from None  # fmt: skip
    if not fields:
        return [f"{template} {x}" for x in labels]
    if fields != [""]:
        raise BadQuery(f"{{field}} {template!r}: give exactly one {{}} where the label goes, e.g. 'a photo of {{}}'",
                       field="template")  # fmt: skip
    return [template.format(x) for x in labels]


def label_scores(image_vecs: np.ndarray, label_vecs: np.ndarray) -> np.ndarray:
    """(n, d) x (m, d) -> (n, m) softmax scores over the labels."""
    logits = image_vecs @ label_vecs.T / TEMPERATURE
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def tag_index(
    ix,
    labels: Sequence[str],
    *,
    top: int = 3,
    min_score: float | None = None,
    template: str = DEFAULT_TEMPLATE,
    progress=None,
) -> TagReport:
    """Tag every indexed image with its ``top`` labels among those scoring at least ``min_score``
    (default: better than chance, 1 / number of labels)."""
    if ix.db.kind == "catalog":
        raise BadQuery("tags are for folder indexes; a catalog's attributes already filter its items")
    if top < 1:
        raise BadQuery("{field} must be at least 1", field="top")
    labels = list(labels)
    min_score = 1.0 / len(labels) if min_score is None else min_score
    prompts = prompts_for(labels, template)
    label_vecs = ix.embedder.embed_texts(prompts)  # raises UnsupportedModality for image-only models
    ids = ix.store.ids()
    report = TagReport(images=len(ids), labels=labels, counts=dict.fromkeys(labels, 0))
    if progress is not None:
        progress.start(len(ids))
    db = ix.db
    db.delete_tags(labels)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        scores = label_scores(ix.store.get(chunk), label_vecs)
        best = np.argsort(-scores, axis=1)[:, :top]
        rows = []
        for fid, order, s in zip(chunk, best, scores, strict=True):
            for j in order:
                if s[j] >= min_score:
                    rows.append((int(fid), labels[j], float(s[j])))
                    report.counts[labels[j]] += 1
        db.upsert_tags(rows)
        if progress is not None:
            progress.advance(len(chunk))
    return report


def tags_for(db: IndexDB, ids: Sequence[int]) -> dict[int, list[tuple[str, float]]]:
    """Stored tags of the given file ids, best first."""
    return db.tags_of(ids)
