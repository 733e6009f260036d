"""Hubness reduction: some images sit near every query (a microscopy photo answering "wall clock", "coins",
"a mug"). CSLS (cross-domain similarity local scaling, Conneau et al. 2018, "Word translation without parallel
data") corrects for it: a candidate x is scored ``2 cos(q, x) - r(x)``, where ``r(x)`` is the mean cosine of x
to its :data:`K` nearest *reference queries*. A hub is close to many queries, so its r(x) is high and it drops.

Reference queries are a bank kept per index: for text queries, the model's own embeddings of a built-in list of
generic captions and class names (:data:`TEXT_BANK`); for image queries, a sample of the index's own vectors.
Only a shortlist (:data:`SHORTLIST` or 4k candidates) is re-scored, never the whole collection; r(x) of a
candidate is computed when first needed and kept for the life of the index object.

>>> reducer = HubnessReducer(ix)                                    # doctest: +SKIP
>>> reducer.rescore("text", ids, cosines)                           # doctest: +SKIP
array([...])
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
from functools import cache
from pathlib import Path

import numpy as np

K = 10  # nearest reference queries that make r(x)
SHORTLIST = 64  # candidates re-scored per query (at least 4k)
IMAGE_BANK = 2048  # stored vectors sampled as reference image queries
# On by default only where `visdex eval` showed it helps for the family (benchmarks/quality_offline.py, results in
# benchmarks/results/quality-hubness.json); names are fnmatch patterns, first match wins. Measured so far: it did
# not help lite0-minilm (fixed queries Recall@5 0.71 -> 0.63, top-1 equal) nor effnet-lite0 (labelled: equal),
# so it is off for every model; search(..., hubness=True) / --hubness turns it on.
DEFAULT_ON: tuple[tuple[str, bool], ...] = (("lite0-minilm", False), ("effnet-lite0", False))
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


class HubnessReducer:
    """Per-index reference banks and r(x) caches. ``ix``: an open :class:`visdex.api.Index`."""

    def __init__(self, ix):
        self.ix = ix
        self._banks: dict[str, np.ndarray] = {}
        self._r: dict[str, dict[int, float]] = {"text": {}, "image": {}}

    def bank(self, modality: str) -> np.ndarray:
        if modality not in self._banks:
            self._banks[modality] = self._text_bank() if modality == "text" else self._image_bank()
        return self._banks[modality]

    def _text_bank(self) -> np.ndarray:
        """The model's embeddings of :func:`text_bank_texts`, cached beside the index (derived data)."""
        texts = text_bank_texts()
        fp = self.ix.db.fingerprint
        key = hashlib.sha256(f"{fp.name}|{fp.revision}|{'|'.join(texts)}".encode()).hexdigest()[:20]
        path = Path(self.ix.path) / f"hubness-text-{key}.npy"
        try:
            cached = np.load(path)
            if cached.shape == (len(texts), fp.dim):
                return cached.astype(np.float32)
        except (OSError, ValueError, EOFError):
            pass  # missing or damaged: recompute
        emb = self.ix.text_embedder
        vecs = np.concatenate([emb.embed_texts(list(texts[i : i + 256])) for i in range(0, len(texts), 256)])
        try:
            buf = io.BytesIO()
            np.save(buf, vecs.astype(np.float32))
            tmp = path.with_suffix(f".{id(self)}.tmp")
            tmp.write_bytes(buf.getvalue())
            tmp.replace(path)
        except OSError:
            pass  # a read-only index: keep it in memory only
        return vecs.astype(np.float32)

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
