"""Hubness reduction: some images sit near every query (a microscopy photo answering "wall clock", "coins",
"a mug"). CSLS (cross-domain similarity local scaling, Conneau et al. 2018, "Word translation without parallel
data") corrects for it: a candidate x is scored ``2 cos(q, x) - r(x)``, where ``r(x)`` is the mean cosine of x
to its :data:`K` nearest *reference queries*. A hub is close to many queries, so its r(x) is high and it drops.

Reference queries: for text queries, the model's own embeddings of a built-in list of generic captions and class
names (:func:`text_bank_texts`), cached by model fingerprint in the user cache dir (:func:`text_bank`) and embedded
ahead at index time for a model that uses it by default (:func:`prepare`); for image queries, a sample of the
index's own vectors. Only a shortlist (:data:`SHORTLIST` or 4k candidates) is re-scored, never the whole collection;
r(x) of a candidate is computed when first needed and kept for the life of the index object.

>>> reducer = HubnessReducer(ix)                                    # doctest: +SKIP
>>> reducer.rescore("text", ids, cosines)                           # doctest: +SKIP
array([...])
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import IndexEmpty

if TYPE_CHECKING:
    from .api import Index
    from .models.base import Embedder, Fingerprint

K = 10  # nearest reference queries that make r(x)
SHORTLIST = 64  # candidates re-scored per query (at least 4k)
IMAGE_BANK = 2048  # stored vectors sampled as reference image queries
# On by default only where it helped on the held-out queries (benchmarks/quality_queries_heldout.json: 42 queries
# written before measuring, 26 photos; benchmarks/quality_offline.py, results in
# benchmarks/results/quality-hubness-heldout.json). Names are fnmatch patterns, first match wins; a model not listed
# is off. Measured (top-1 / Recall@5, search path, off -> on):
#   lite0-minilm  held-out 0.429 / 0.714 -> 0.381 / 0.667 (worse; fixed set 0.543 / 0.714 -> 0.543 / 0.686): off
#   lite2-minilm  held-out 0.429 / 0.738 -> 0.429 / 0.738 (equal; it helped only on the fixed set it was tuned on,
#                 0.657 / 0.800 -> 0.686 / 0.829): off
#   effnet-lite0  image queries only; eval labelled equal: off
# search(..., hubness=True) / --hubness / hubness=true over HTTP turns it on for any model.
DEFAULT_ON: tuple[tuple[str, bool], ...] = (("lite0-minilm", False), ("lite2-minilm", False), ("effnet-lite*", False))
TEMPLATES = ("a photo of a {}.", "{}")


def default_on(model_name: str | None) -> bool:
    """Whether search reduces hubness for this model unless told otherwise (see :data:`DEFAULT_ON`)."""
    for pattern, on in DEFAULT_ON:
        if model_name and fnmatch.fnmatch(model_name, pattern):
            return on
    return False


# Generic scenes and things people search their photos for; with the ImageNet class names they make the text bank.
_GENERIC = """people, a person, a man, a woman, a child, a baby, a group of friends, a family, a crowd, a portrait,
a selfie, a wedding, a party, a birthday cake, a concert, a city street, a building, a house, a room, a kitchen,
a living room, a bedroom, an office, a shop, a market, a restaurant, food on a plate, a drink, a car, a bus, a train,
a bicycle, a boat, an airplane, a road, a bridge, a beach, the sea, a lake, a river, a waterfall, a mountain, a forest,
a tree, a flower, a garden, a park, a field, the sky, clouds, a sunset, snow, rain, night, a dog, a cat, a bird,
a horse, a fish, an insect, a toy, a book, a screen, a phone, a computer, a document, a text, a drawing, a painting,
a map, a logo, a pattern, a texture, a wall, a floor, a window, a door, a chair, a table, a bed, a lamp, a clock,
sports, a ball, a game, a holiday, a museum, a church, a statue, a monument, a farm, an animal, a machine, a tool,
clothes, shoes, a bag, jewellery, money, a close-up, a landscape, an aerial view, an underwater photo,
a black and white photo, a blurry photo, a dark photo, a bright photo, a medical image, a microscope image,
space, stars, the moon"""


@cache
def text_bank_texts() -> tuple[str, ...]:
    """The built-in reference text queries: generic captions plus the ImageNet class names in two templates."""
    generic = [t.strip() for t in _GENERIC.replace("\n", " ").split(",") if t.strip()]
    try:
        from .models.offline import imagenet_class_names

        names = list(dict.fromkeys(imagenet_class_names()))
    except ImportError:  # timm absent: the generic captions alone
        names = []
    return tuple(generic + [t.format(n) for n in names for t in TEMPLATES])


def penalties(vectors: np.ndarray, bank: np.ndarray, k: int = K, skip_self: bool = False) -> np.ndarray:
    """r(x): the mean cosine of each row of ``vectors`` to its ``k`` nearest rows of ``bank``. ``skip_self``
    leaves out a bank row identical to x (the image bank is a sample of the index, x may be in it)."""
    sims = vectors @ bank.T
    if skip_self:
        sims[sims > 0.99999] = -np.inf
    k = max(1, min(k, bank.shape[0] - (1 if skip_self else 0)))
    top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
    return top.mean(axis=1).astype(np.float32)


def csls(cosines: np.ndarray, r: np.ndarray) -> np.ndarray:
    """CSLS scores up to the query's own term (equal for all candidates, so the ranking is the same)."""
    return 2 * cosines - r


def bank_key(fp: Fingerprint, texts: Sequence[str]) -> str:
    """What a text bank's vectors depend on: the model (name, weights revision, dim) and the texts."""
    return hashlib.sha256(f"{fp.name}|{fp.revision}|{fp.dim}|{'|'.join(texts)}".encode()).hexdigest()[:20]


def bank_path(fp: Fingerprint) -> Path:
    """Where the text bank of a model is cached: the user cache dir, by model fingerprint, so every index of one
    model shares it and only the first query ever made with that model on this machine pays for it."""
    from . import config

    return Path(config.get("cache_dir")) / "hubness" / f"text-{bank_key(fp, text_bank_texts())}.npy"


_BANKS: dict[str, np.ndarray] = {}  # cache file -> its vectors, for the life of the process (indexes share them)


def text_bank(embedder: Embedder, fp: Fingerprint, *, cache: bool = True) -> np.ndarray:
    """The model's embeddings of :func:`text_bank_texts` (float32, (n, dim)): from memory, the cache file, or
    embedded now (~2,100 texts: seconds on a CPU, see docs/quality.md) and cached. ``cache=False`` embeds anew."""
    texts = text_bank_texts()
    path = bank_path(fp)
    key = str(path)
    if cache and key in _BANKS:
        return _BANKS[key]
    if cache:
        try:
            cached = np.load(path)
            if cached.shape == (len(texts), fp.dim):
                return _BANKS.setdefault(key, cached.astype(np.float32))
        except (OSError, ValueError, EOFError):
            pass  # missing or damaged: recompute
    vecs = np.concatenate([embedder.embed_texts(list(texts[i : i + 256])) for i in range(0, len(texts), 256)])
    vecs = vecs.astype(np.float32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, vecs)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # written aside, then renamed: readers never see half a file
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache: keep it in memory only
    _BANKS[key] = vecs
    return vecs


def prepare(ix: Index, force: bool = False) -> bool:
    """Embed and cache the text bank now if text search on this index reduces hubness by default (or ``force``),
    so the first query does not pay for it; for an indexer to call once its model is loaded (no model in
    :data:`DEFAULT_ON` is on yet, so nothing calls it by default). True when a bank is ready."""
    fp = ix.db.fingerprint
    if fp is None or "text" not in fp.modalities or not (force or default_on(fp.name)):
        return False
    if not bank_path(fp).exists():  # checked first: loading even the text tower costs more than this
        text_bank(ix.text_embedder, fp)
    return True


class HubnessReducer:
    """Per-index reference banks and r(x) caches. ``ix``: an open :class:`visdex.api.Index`."""

    def __init__(self, ix: Index) -> None:
        self.ix = ix
        self._banks: dict[str, np.ndarray] = {}
        self._r: dict[str, dict[int, float]] = {"text": {}, "image": {}}

    def bank(self, modality: str) -> np.ndarray:
        if modality not in self._banks:
            if modality == "text":
                fp = self.ix.db.fingerprint
                if fp is None:
                    raise IndexEmpty(f"the index at {self.ix.path} has no vectors yet: nothing to re-rank")
                self._banks[modality] = text_bank(self.ix.text_embedder, fp)
            else:
                self._banks[modality] = self._image_bank()
        return self._banks[modality]

    def _image_bank(self) -> np.ndarray:
        ids = np.asarray(self.ix.store.ids())
        if len(ids) > IMAGE_BANK:
            ids = np.sort(np.random.default_rng(0).choice(ids, IMAGE_BANK, replace=False))
        return self.ix.store.get(ids.tolist()).astype(np.float32)

    def rescore(self, modality: str, ids: np.ndarray, cosines: np.ndarray) -> np.ndarray:
        """CSLS scores for candidates ``ids`` with query cosines ``cosines``."""
        cache_ = self._r[modality]
        missing = [int(i) for i in ids if int(i) not in cache_]
        if missing:
            r = penalties(self.ix.store.get(missing).astype(np.float32), self.bank(modality),
                          skip_self=modality == "image")  # fmt: skip
            cache_.update(zip(missing, r.tolist(), strict=True))
        return csls(np.asarray(cosines, np.float32), np.array([cache_[int(i)] for i in ids], np.float32))


def shortlist_size(k: int) -> int:
    return max(SHORTLIST, 4 * k)
