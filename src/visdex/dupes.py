"""Exact and near-duplicate images, as groups with a suggested keeper.

Two stages, so that copies are found and look-alikes are not:

1. **Candidates** by k-NN through the vector store (batches of queries, never an all-pairs
   matrix in memory, so it scales with the store's ANN index): pairs whose cosine is at least
   the model's candidate threshold. An HNSW store searches with efSearch :data:`CANDIDATE_EF`
   instead of its default max(512, 4k): the pass asks only for each vector's nearest few, and a
   copy is among the nearest (10^6 vectors, 2 cores: see benchmarks/dupes_scale.py).
   Embeddings put a resized, recompressed, slightly cropped,
   EXIF-rotated or colour-tweaked copy close to its original — but also a burst frame of the
   same scene, or another photo of the same thing.
2. **Verification** of each candidate pair on the pixels: both images are decoded small
   (JPEG draft mode), made grey, blurred, normalised for brightness and contrast, and compared
   by normalised cross-correlation, allowing for a crop of up to 20%. A copy correlates
   (> 0.9 on our test set); a frame shot a moment later with the subject moved does not (< 0.7).

Exact duplicates (same content hash) need neither stage. The keeper of a group is the largest
image (pixels), then the oldest (EXIF date, then file mtime), then the shortest path.

>>> groups = find_duplicates(ix)                                  # doctest: +SKIP
>>> [(g.kind, len(g.members)) for g in groups]                    # doctest: +SKIP
[('exact', 2), ('near', 4)]
"""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import BadQuery

# Candidate thresholds (cosine) per model, set for recall ~1 on the test set in tests/test_dupes.py;
# precision comes from the pixel verification. Names are fnmatch patterns, first match wins.
CANDIDATE_THRESHOLDS: tuple[tuple[str, float], ...] = (
    ("effnet-lite0", 0.65),
    ("lite0-minilm", 0.35),
    ("clip-*", 0.80),
    ("siglip*", 0.80),
    ("dinov2-*", 0.55),
)
DEFAULT_CANDIDATE_THRESHOLD = 0.75
VERIFY_THRESHOLD = 0.85  # normalised cross-correlation of the small grey images
NEIGHBOURS = 16
BATCH = 4096
# efSearch of the candidate pass on an HNSW store. benchmarks/dupes_scale.py, 10^6 vectors: planted copies
# found 0.9998 at the store default (512), see results/dupes-1e6.json for this value's recall and time.
CANDIDATE_EF = 64
SIG_SIZE = 64


@dataclass
class DupeMember:
    id: int
    path: str
    width: int | None
    height: int | None
    size: int
    taken_at: str | None
    mtime: float
    score: float = 1.0  # cosine to the keeper


@dataclass
class DupeGroup:
    kind: str  # "exact" | "near"
    members: list[DupeMember]
    keeper_id: int

    @property
    def keeper(self) -> DupeMember:
        return next(m for m in self.members if m.id == self.keeper_id)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "keeper_id": self.keeper_id, "members": [asdict(m) for m in self.members]}


@dataclass
class _UnionFind:
    parent: dict[int, int] = field(default_factory=dict)

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return [sorted(g) for g in out.values() if len(g) > 1]


def default_threshold(model_name: str | None) -> float:
    """The candidate cosine threshold for a model (see :data:`CANDIDATE_THRESHOLDS`)."""
    for pattern, value in CANDIDATE_THRESHOLDS:
        if model_name and fnmatch.fnmatch(model_name, pattern):
            return value
    return DEFAULT_CANDIDATE_THRESHOLD


def signature(path: str) -> np.ndarray | None:
    """The small, blurred, grey image pixel verification compares; None if the file cannot be read."""
    from PIL import Image, ImageFilter

    from .decode import decode_image
    from .errors import BadImage

    try:
        img = decode_image(path, draft_size=SIG_SIZE).image.convert("L")
    except (BadImage, OSError):
        return None
    img = img.resize((SIG_SIZE, SIG_SIZE), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(1.5))
    return np.asarray(img, np.float32)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = (a - a.mean()) / (a.std() + 1e-6)
    b = (b - b.mean()) / (b.std() + 1e-6)
    return float((a * b).mean())


def pixel_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation, the best of: as is, and either image's centre 90% / 80% enlarged
    (a copy cropped by up to ~20% still lines up; a shifted burst frame does not)."""
    from PIL import Image

    n = a.shape[0]
    best = _ncc(a, b)
    for frac in (0.9, 0.8):
        m = int(n * frac)
        o = (n - m) // 2
        for x, y in ((a, b), (b, a)):
            centre = np.asarray(Image.fromarray(x[o : o + m, o : o + m]).resize((n, n), Image.Resampling.BILINEAR))
            best = max(best, _ncc(centre, y))
    return best


def _candidate_pairs(ix, threshold: float, progress=None, device: str | None = None) -> list[tuple[int, int, float]]:
    """(a, b, cosine) with a < b for every k-NN pair at or above ``threshold``. ``device`` (e.g. ``"cuda"``):
    exact k-NN by matrix products on that torch device (:mod:`visdex.gpu_dupes`) instead of the store's search."""
    if device is not None:
        from .gpu_dupes import candidate_pairs

        return candidate_pairs(ix.store, threshold, NEIGHBOURS, device=device, progress=progress)
    store = ix.store
    ids = store.ids()
    if progress is not None:
        progress.start(len(ids))
    lo, hi, sim = [], [], []
    with _candidate_effort(store):
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            scores, nbrs = store.search(store.get(chunk), NEIGHBOURS + 1)
            a, b, s = np.repeat(chunk, nbrs.shape[1]), nbrs.ravel(), scores.ravel()
            keep = (b >= 0) & (b != a) & (s >= threshold)
            a, b = a[keep], b[keep]
            lo.append(np.minimum(a, b))
            hi.append(np.maximum(a, b))
            sim.append(s[keep])
            if progress is not None:
                progress.advance(len(chunk))
    if not lo:
        return []
    lo, hi, sim = np.concatenate(lo), np.concatenate(hi), np.concatenate(sim)
    order = np.lexsort((-sim, hi, lo))  # each pair once (found from both ends), with its best score
    lo, hi, sim = lo[order], hi[order], sim[order]
    first = np.ones(len(lo), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return list(zip(lo[first].tolist(), hi[first].tolist(), sim[first].astype(float).tolist(), strict=True))


@contextmanager
def _candidate_effort(store):
    """Search an HNSW store with efSearch :data:`CANDIDATE_EF` during the pass, unless its caller set one."""
    if not hasattr(store, "ef_search") or store.ef_search is not None:
        yield
        return
    store.ef_search = CANDIDATE_EF
    try:
        yield
    finally:
        store.ef_search = None


def _members(ix, ids: list[int]) -> list[DupeMember]:
    rows = ix.db.files_by_ids(ids)
    return [DupeMember(i, r.path, r.width, r.height, r.size, r.taken_at, r.mtime) for i, r in rows.items()]


def _keeper(members: list[DupeMember]) -> DupeMember:
    def rank(m: DupeMember):
        pixels = (m.width or 0) * (m.height or 0)
        return (-pixels, m.taken_at or "9999", m.mtime, len(m.path), m.path)

    return min(members, key=rank)


def find_duplicates(ix, *, threshold: float | None = None, exact_only: bool = False, verify: bool = True,
                    verify_threshold: float = VERIFY_THRESHOLD, progress=None,
                    device: str | None = None) -> list[DupeGroup]:  # fmt: skip
    """Groups of exact and near duplicates, largest groups first. ``threshold`` is the candidate
    cosine (default: the model's, :func:`default_threshold`); ``verify=False`` trusts embeddings alone;
    ``device``: find candidates by exact k-NN on that torch device (see :func:`_candidate_pairs`)."""
    if ix.db.kind == "catalog":
        raise BadQuery("duplicates are found among files; this index holds a catalog")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise BadQuery("--threshold is a cosine between -1 and 1")
    uf = _UnionFind()
    hashes = dict(ix.db.conn.execute("SELECT id, hash FROM files WHERE status = 'ok' AND hash IS NOT NULL"))
    for (ids,) in ix.db.conn.execute(
        "SELECT group_concat(id) FROM files WHERE status = 'ok' AND hash IS NOT NULL GROUP BY hash HAVING COUNT(*) > 1"
    ):
        first, *rest = (int(x) for x in ids.split(","))
        for other in rest:
            uf.union(first, other)
    if not exact_only and ix.db.fingerprint is not None:
        t = default_threshold(ix.model_name) if threshold is None else threshold
        sigs: dict[int, np.ndarray | None] = {}
        for a, b, _ in _candidate_pairs(ix, t, progress, device):
            if uf.find(a) == uf.find(b):
                continue
            if verify and hashes.get(a) != hashes.get(b):
                for i in (a, b):
                    if i not in sigs:  # decoded lazily: only images that are candidates are read again
                        row = ix.db.files_by_ids([i]).get(i)
                        sigs[i] = signature(row.path) if row is not None else None
                if sigs[a] is None or sigs[b] is None or pixel_similarity(sigs[a], sigs[b]) < verify_threshold:
                    continue
            uf.union(a, b)
    return _build_groups(ix, uf.groups(), hashes)


def _build_groups(ix, components: list[list[int]], hashes: dict[int, str]) -> list[DupeGroup]:
    groups = []
    for comp in components:
        members = _members(ix, comp)
        if len(members) < 2:
            continue
        keeper = _keeper(members)
        vecs = ix.store.get([m.id for m in members])
        kv = vecs[[m.id for m in members].index(keeper.id)]
        for m, v in zip(members, vecs, strict=True):
            m.score = round(float(v @ kv), 6)
        members.sort(key=lambda m: (m.id != keeper.id, -m.score, m.path))
        kind = "exact" if len({hashes.get(m.id) for m in members}) == 1 else "near"
        groups.append(DupeGroup(kind, members, keeper.id))
    groups.sort(key=lambda g: (-len(g.members), g.keeper.path))
    return groups
