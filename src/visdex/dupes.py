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
2. **Verification** of each candidate pair (:mod:`visdex.dupe_verify`, OpenCV): ORB features matched and one
   global similarity transform fitted by RANSAC. A **copy** (the same capture, edited: resized, recompressed,
   cropped, rotated, recoloured, watermarked, captioned, screenshotted) is explained by that one transform, one
   frame lies inside the other, and the aligned pixels agree tile by tile. A **similar shot** (another capture:
   a burst frame, a stereo pair, a re-shoot) shows parallax or content the other frame lacks. Without OpenCV the
   older check decides copies alone: normalised cross-correlation of small blurred grey images (no similar shots).

Groups: exact duplicates (same content hash, or the same decoded pixels) are joined by copy edges, strongest first,
never across a pair shown to be two captures; only their members are offered for removal. Similar shots link those
groups' keepers (and single images) into separate ``"similar shot"`` groups for a person to review.

The **keeper** of a group is the file most likely to be the original (:func:`keeper_rank`): the one with the most
pixels of the shared picture (its resolution, from the verified transforms: a caption bar or a screenshot's frame
adds pixels but no detail; within 3%), then one stored more than once unchanged (an exact duplicate in the group),
then one with EXIF (date taken or camera: editors and messengers often strip it), then the oldest file (mtime), then
the shorter path.

>>> groups = find_duplicates(ix)                                  # doctest: +SKIP
>>> [(g.kind, len(g.members)) for g in groups]                    # doctest: +SKIP
[('copy', 6), ('exact', 2), ('similar shot', 3)]
"""

from __future__ import annotations

import fnmatch
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import BadQuery
from .store.dupes_sql import same_hash_groups

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
SIMILAR_SHOT = "similar shot"
GROUP_KINDS = ("exact", "copy", SIMILAR_SHOT)


@dataclass
class DupeMember:
    id: int
    path: str
    width: int | None
    height: int | None
    size: int
    taken_at: str | None
    mtime: float
    camera: str | None = None
    score: float = 1.0  # cosine to the keeper
    # how it relates to the group's keeper: "exact" (same bytes or pixels), "copy" (the same capture, edited) or
    # "similar shot" (another capture of the scene); the keeper has its group's kind
    kind: str = "exact"
    removable: bool = False  # offered for removal: an exact duplicate or a copy, never the keeper or a similar shot


@dataclass
class DupeGroup:
    kind: str  # "exact" | "copy" | "similar shot" (nothing in it offered for removal)
    members: list[DupeMember]
    keeper_id: int

    @property
    def keeper(self) -> DupeMember:
        return next(m for m in self.members if m.id == self.keeper_id)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "keeper_id": self.keeper_id, "members": [asdict(m) for m in self.members]}


@dataclass
class UnionFind:
    """Disjoint sets of ids: exact duplicates, then duplicate groups."""

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


def candidate_pairs(ix, threshold: float, progress=None, device: str | None = None) -> list[tuple[int, int, float]]:
    """(a, b, cosine) with a < b for every k-NN pair at or above ``threshold``. ``device`` (e.g. ``"cuda"``):
    exact k-NN by matrix products on that torch device (:mod:`visdex.gpu_dupes`) instead of the store's search."""
    if device is not None:
        from .gpu_dupes import candidate_pairs as on_device

        return on_device(ix.store, threshold, NEIGHBOURS, device=device, progress=progress)
    store = ix.store
    ids = store.ids()
    if progress is not None:
        progress.start(len(ids))
    los: list[np.ndarray] = []
    his: list[np.ndarray] = []
    sims: list[np.ndarray] = []
    with _candidate_effort(store):
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            scores, nbrs = store.search(store.get(chunk), NEIGHBOURS + 1)
            a, b, s = np.repeat(chunk, nbrs.shape[1]), nbrs.ravel(), scores.ravel()
            keep = (b >= 0) & (b != a) & (s >= threshold)
            a, b = a[keep], b[keep]
            los.append(np.minimum(a, b))
            his.append(np.maximum(a, b))
            sims.append(s[keep])
            if progress is not None:
                progress.advance(len(chunk))
    if not los:
        return []
    lo, hi, sim = np.concatenate(los), np.concatenate(his), np.concatenate(sims)
    order = np.lexsort((-sim, hi, lo))  # each pair once (found from both ends), with its best score
    lo, hi, sim = lo[order], hi[order], sim[order]
    first = np.ones(len(lo), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return list(zip(lo[first].tolist(), hi[first].tolist(), sim[first].astype(float).tolist(), strict=True))


_candidate_pairs = candidate_pairs  # the name other modules' tests and benchmarks use


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
    return [DupeMember(i, r.path, r.width, r.height, r.size, r.taken_at, r.mtime, r.camera) for i, r in rows.items()]


RESOLUTION_TOLERANCE = 0.97  # resolutions within 3% are equal (the fitted scale of a plain re-save is ~1 +- 1%)


def keeper_rank(m: DupeMember, resolution: float, top: float, twins: bool) -> tuple:
    """Sort key of a group member as its keeper (smallest first): at the group's top resolution ``top`` (within
    3%), stored more than once unchanged (``twins``), with EXIF (date taken or camera), the oldest, the shorter
    path. ``resolution``: the member's pixels of the shared picture, on the group's common scale."""
    return (resolution < top * RESOLUTION_TOLERANCE, not twins, not (m.taken_at or m.camera), m.mtime,
            len(m.path), m.path)  # fmt: skip


def _keeper(members: list[DupeMember], exact: UnionFind | None = None,
            resolution: dict[int, float] | None = None) -> DupeMember:  # fmt: skip
    """The member most likely the original (:func:`keeper_rank`). ``resolution``: per id, the pixels of the shared
    picture (from :func:`_resolutions`); each member's own pixel count where missing."""
    res = {m.id: (resolution or {}).get(m.id, float((m.width or 0) * (m.height or 0))) for m in members}
    top = max(res.values())
    root = {m.id: exact.find(m.id) if exact is not None else m.id for m in members}
    sets = Counter(root.values())
    return min(members, key=lambda m: keeper_rank(m, res[m.id], top, sets[root[m.id]] > 1))


def _resolutions(members: list[DupeMember], scales: dict[tuple[int, int], float]) -> dict[int, float]:
    """Each member's pixels of the shared picture, on one scale: from the first member along verified copy edges
    (``scales[a, b]``: b's pixels per pixel of a, squared: an area ratio) and exact ones (equal); a member no
    measured edge reaches keeps its own pixel count."""
    own = {m.id: float((m.width or 0) * (m.height or 0)) for m in members}
    ids = set(own)
    nbrs: dict[int, list[tuple[int, float]]] = {}
    for (a, b), s in scales.items():
        if a in ids and b in ids and s > 0:
            nbrs.setdefault(a, []).append((b, s))
            nbrs.setdefault(b, []).append((a, 1 / s))
    out: dict[int, float] = {}
    for start in sorted(ids, key=lambda i: -own[i]):  # each connected part from its largest member
        if start in out:
            continue
        out[start] = own[start]
        todo = [start]
        while todo:
            x = todo.pop()
            for y, s in nbrs.get(x, []):
                if y not in out:
                    out[y] = out[x] * s
                    todo.append(y)
    return out


def find_duplicates(ix, *, threshold: float | None = None, exact_only: bool = False, verify: bool = True,
                    verify_threshold: float = VERIFY_THRESHOLD, progress=None,
                    device: str | None = None) -> list[DupeGroup]:  # fmt: skip
    """Groups of exact duplicates and edited copies (largest first), then groups of similar shots. ``threshold``
    is the candidate cosine (default: the model's, :func:`default_threshold`); ``verify=False`` trusts embeddings
    alone (every candidate a copy); ``device``: find candidates by exact k-NN on that torch device."""
    if ix.db.kind == "catalog":
        raise BadQuery("duplicates are found among files; this index holds a catalog")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise BadQuery("{field} is a cosine between -1 and 1", field="threshold")
    exact = UnionFind()  # same bytes or same decoded pixels
    for first, *rest in same_hash_groups(ix.db):
        for other in rest:
            exact.union(first, other)
    found = Verified()
    if not exact_only and ix.db.fingerprint is not None:
        t = default_threshold(ix.model_name) if threshold is None else threshold
        pairs = [(a, b) for a, b, _ in candidate_pairs(ix, t, progress, device) if exact.find(a) != exact.find(b)]
        if not verify:
            found.copies = [(1.0, a, b) for a, b in pairs]
        else:
            verify_pairs(ix, pairs, exact, found, verify_threshold)
    return _build_groups(ix, exact, found)


@dataclass
class Verified:
    """What verification found among candidate pairs."""

    copies: list[tuple[float, int, int]] = field(default_factory=list)  # (strength, a, b): the same capture
    similar: list[tuple[int, int]] = field(default_factory=list)  # two captures of one scene
    distinct: set[tuple[int, int]] = field(default_factory=set)  # (a < b) two captures for sure: never merged
    scales: dict[tuple[int, int], float] = field(default_factory=dict)  # copy (a, b): b's pixels per pixel of a
    compared: int = 0  # pairs that ran the geometric (or pixel) check
    skipped: int = 0  # pairs decided without it: exact duplicates, or a pair of exact sets already compared


def verify_pairs(ix, pairs: list[tuple[int, int]], exact: UnionFind, found: Verified,
                 verify_threshold: float = VERIFY_THRESHOLD) -> Verified:  # fmt: skip
    """Sort candidate pairs into exact (same decoded pixels: joined in ``exact``), copies (with a strength and
    a scale), similar shots, and pairs that are two captures for sure. Exact duplicates are never compared:
    a pair inside one exact set is skipped, and a pair of exact sets is compared once (the same pixels give the
    same answer). Without OpenCV, the older pixel correlation decides copies."""
    from . import dupe_verify as dv

    geometric = dv.available()
    cache = ImageCache(ix, geometric)
    done: dict[tuple[int, int], tuple[str | None, float, float, bool]] = {}  # exact-set pair -> its verdict
    for a, b in pairs:
        ra, rb = exact.find(a), exact.find(b)
        if ra == rb:  # joined as the same pixels since the candidates were listed
            found.skipped += 1
            continue
        key = (min(ra, rb), max(ra, rb))
        if key not in done:
            verdict = _verdict(cache, a, b, geometric, verify_threshold)
            if verdict is None:  # the same decoded pixels
                exact.union(a, b)
                found.compared += 1
                continue
            if (ra, rb) != key:  # kept as key[1]'s pixels per pixel of key[0]
                verdict = (verdict[0], verdict[1], _inverse(verdict[2]), verdict[3])
            done[key] = verdict
            found.compared += 1
        else:
            found.skipped += 1
        rel, strength, scale, apart = done[key]
        if rel == "copy":
            found.copies.append((strength, a, b))
            found.scales[(a, b)] = scale if (ra, rb) == key else _inverse(scale)
        elif rel == "similar shot":
            found.similar.append((a, b))
            if apart:
                found.distinct.add((min(a, b), max(a, b)))
    return found


def _inverse(scale: float) -> float:
    return 1 / scale if scale > 0 else 0.0  # 0: no transform was fitted


def _verdict(cache: ImageCache, a: int, b: int, geometric: bool, verify_threshold: float
             ) -> tuple[str | None, float, float, bool] | None:  # fmt: skip
    """(relation, strength, scale, two captures for sure) of a pair, None for the same decoded pixels; scale is
    b's pixels per pixel of a (an area ratio)."""
    from . import dupe_verify as dv

    if not geometric:
        if cache.same_pixels(a, b):
            return None
        sa, sb = cache.signature(a), cache.signature(b)
        if sa is not None and sb is not None and pixel_similarity(sa, sb) >= verify_threshold:
            return "copy", 1.0, cache.pixels(b) / max(cache.pixels(a), 1), False
        return None, 0.0, 1.0, False
    fa, fb = cache.features(a), cache.features(b)
    if fa is None or fb is None:
        return None, 0.0, 1.0, False
    if dv.same_view(fa, fb) and cache.same_pixels(a, b):  # a full decode only when the small views agree
        return None
    ev = dv.compare(fa, fb)
    rel = dv.relation(ev)
    linear = ev.scale * cache.long_side(b) / max(cache.long_side(a), 1)  # at SIDE -> in the files' own pixels
    return rel, ev.share * ev.tiles, linear**2, rel == "similar shot" and dv.distinct_captures(ev)


class ImageCache:
    """Decoded views of candidate images, read lazily (only candidates are read again) and kept for a while."""

    def __init__(self, ix, geometric: bool, size: int = 4096):
        self.ix, self.geometric, self.size = ix, geometric, size
        self._feat: OrderedDict[int, object] = OrderedDict()
        self._sig: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._digest: dict[int, str | None] = {}
        self._rows: dict[int, object] = {}

    def _row(self, i: int):
        if i not in self._rows:
            self._rows[i] = self.ix.db.files_by_ids([i]).get(i)
        return self._rows[i]

    def _remember(self, store: OrderedDict, key: int, value):
        store[key] = value
        if len(store) > self.size:
            store.popitem(last=False)
        return value

    def features(self, i: int):
        if i in self._feat:
            self._feat.move_to_end(i)
            return self._feat[i]
        from . import dupe_verify as dv
        from .decode import decode_image
        from .errors import BadImage

        row = self._row(i)
        try:
            value = dv.features(decode_image(row.path, draft_size=dv.SIDE).image) if row is not None else None
        except (BadImage, OSError):
            value = None
        return self._remember(self._feat, i, value)

    def pixels(self, i: int) -> int:
        row = self._row(i)
        return (row.width or 0) * (row.height or 0) if row is not None else 0

    def long_side(self, i: int) -> int:
        row = self._row(i)
        return max(row.width or 0, row.height or 0) if row is not None else 0

    def signature(self, i: int) -> np.ndarray | None:
        if i not in self._sig:
            row = self._row(i)
            self._remember(self._sig, i, signature(row.path) if row is not None else None)
        return self._sig[i]

    def same_pixels(self, a: int, b: int) -> bool:
        """The same decoded pixels (a re-saved PNG, stripped metadata): checked only for images of one size."""
        ra, rb = self._row(a), self._row(b)
        if ra is None or rb is None or ra.width is None or (ra.width, ra.height) != (rb.width, rb.height):
            return False
        da, db = self._pixel_digest(a), self._pixel_digest(b)
        return da is not None and da == db

    def _pixel_digest(self, i: int) -> str | None:
        if i not in self._digest:
            import hashlib

            from .decode import decode_image
            from .errors import BadImage

            try:
                img = decode_image(self._row(i).path).image.convert("RGB")
                self._digest[i] = hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest()
            except (BadImage, OSError):
                self._digest[i] = None
        return self._digest[i]


def _build_groups(ix, exact: UnionFind, found: Verified) -> list[DupeGroup]:
    """Duplicate groups: exact sets joined by copy edges, strongest first, never across a pair known to be two
    captures. Then similar-shot groups: duplicate groups (by their keepers) and single images linked by similar
    shots, with nothing in them offered for removal."""
    uf = UnionFind()
    members: dict[int, set[int]] = {}
    for x in list(exact.parent):
        uf.union(exact.find(x), x)
    for root, comp in _components(uf).items():
        members[root] = set(comp)
    apart: dict[int, set[int]] = {}
    for a, b in found.distinct:
        apart.setdefault(a, set()).add(b)
        apart.setdefault(b, set()).add(a)
    for _, a, b in sorted(found.copies, key=lambda e: (-e[0], e[1], e[2])):
        ra, rb = uf.find(a), uf.find(b)
        if ra == rb:
            continue
        ma, mb = members.get(ra, {ra}), members.get(rb, {rb})
        if any(apart.get(x, set()) & mb for x in ma):
            continue
        uf.union(ra, rb)
        members[uf.find(ra)] = ma | mb
        members.pop(ra if uf.find(ra) != ra else rb, None)
    groups = []
    keeper_of: dict[int, int] = {}  # duplicate-group root -> keeper id
    for comp in uf.groups():
        g = _duplicate_group(ix, comp, exact, found.scales)
        if g is not None:
            groups.append(g)
            keeper_of[uf.find(comp[0])] = g.keeper_id
    groups.sort(key=lambda g: (-len(g.members), g.keeper.path))
    shots = UnionFind()
    for a, b in found.similar:
        ra, rb = uf.find(a), uf.find(b)
        if ra != rb:
            shots.union(keeper_of.get(ra, ra), keeper_of.get(rb, rb))
    similar_groups = [g for comp in shots.groups() if (g := _similar_group(ix, comp)) is not None]
    similar_groups.sort(key=lambda g: (-len(g.members), g.keeper.path))
    return groups + similar_groups


def _components(uf: UnionFind) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for x in uf.parent:
        out.setdefault(uf.find(x), []).append(x)
    return out


def _scored(ix, members: list[DupeMember], keeper: DupeMember) -> None:
    vecs = ix.store.get([m.id for m in members])
    kv = vecs[[m.id for m in members].index(keeper.id)]
    for m, v in zip(members, vecs, strict=True):
        m.score = round(float(v @ kv), 6)
    members.sort(key=lambda m: (m.id != keeper.id, -m.score, m.path))


def _duplicate_group(ix, comp: list[int], exact: UnionFind, scales: dict[tuple[int, int], float]
                     ) -> DupeGroup | None:  # fmt: skip
    members = _members(ix, comp)
    if len(members) < 2:
        return None
    edges = dict(scales)
    for m in members:  # exact duplicates: the same pixels as their set's root
        if exact.find(m.id) != m.id:
            edges[(exact.find(m.id), m.id)] = 1.0
    keeper = _keeper(members, exact, _resolutions(members, edges))
    for m in members:
        m.kind = "exact" if exact.find(m.id) == exact.find(keeper.id) else "copy"
        m.removable = m.id != keeper.id
    _scored(ix, members, keeper)
    kind = "exact" if all(m.kind == "exact" for m in members) else "copy"
    keeper.kind = kind
    return DupeGroup(kind, members, keeper.id)


def _similar_group(ix, comp: list[int]) -> DupeGroup | None:
    members = _members(ix, comp)
    if len(members) < 2:
        return None
    keeper = _keeper(members)
    for m in members:
        m.kind, m.removable = SIMILAR_SHOT, False
    _scored(ix, members, keeper)
    return DupeGroup(SIMILAR_SHOT, members, keeper.id)
