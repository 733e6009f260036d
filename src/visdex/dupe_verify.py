"""Is a candidate pair one capture (an edited copy) or two captures of one scene (similar shots)?

Geometry, then pixels. Both images are decoded small and grey; ORB features are matched (ratio test) and one
global similarity transform (scale, rotation, translation) is fitted by RANSAC. An edited copy is explained by that
one transform: most matches are inliers, one frame lies inside the other (a crop, a border or caption bar added), and
once aligned the two agree tile by tile after each tile's brightness and contrast are normalised. Two shots of a
scene are not: a stereo pair or a re-shoot has parallax (matches that no single similarity explains, a low inlier
share); frames of a panning burst each hold content the other lacks (neither frame inside the other).

Needs OpenCV (``pip install 'visdex[dupes]'``); :func:`available` says whether it is installed.

>>> a, b = features("IMG_1.jpg"), features("IMG_1-edited.jpg")   # doctest: +SKIP
>>> relation(compare(a, b))                                         # doctest: +SKIP
'copy'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIDE = 480  # long side the images are compared at
N_FEATURES = 800  # 500: recall 0.95 -> 0.97 on tests/dupeset.py at 800; matching time grows with n^2
RATIO = 0.8  # Lowe's ratio test
REPROJ_PX = 3.0  # RANSAC inlier distance at SIDE
GRID = 8  # tiles per side for the aligned pixel check
# Rules, set on tests/dupeset.py (copies: 10 edits of 21 captures; similar shots: bursts, stereo pair, shifted windows)
MIN_INLIERS = 8
COPY_SHARE = 0.3  # inliers of the one transform / ratio-test matches (a watermark's text adds stray features)
COPY_COVER = 0.95  # share of one frame that lies inside the other
COPY_TILES = 0.7  # share of textured tiles that agree (NCC >= TILE_NCC) once aligned
TILE_NCC = 0.8
SIMILAR_SHARE = 0.3
DISTINCT_COVER = 0.9  # below this, each frame holds content the other lacks: two captures for sure
DISTINCT_SHARE = 0.5  # ... or below this share with DISTINCT_MATCHES matches or more: parallax
DISTINCT_MATCHES = 40
FLAT_STD = 2.5  # a border row or column flatter than this is trimmed


def available() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Features:
    blurred: np.ndarray  # float32 (h, w), long side SIDE, Gaussian blur sigma 1.5
    points: np.ndarray  # float32 (n, 2)
    descriptors: np.ndarray | None
    content: tuple[int, int, int, int]  # x0, y0, x1, y1: the frame less flat borders (a screenshot's, a letterbox)


@dataclass
class Evidence:
    matches: int = 0
    inliers: int = 0
    share: float = 0.0  # inliers / matches
    cover: float = 0.0  # the larger of: share of A inside B, share of B inside A (after the transform)
    tiles: float = 0.0  # share of textured tiles that agree after alignment
    scale: float = 0.0  # of the fitted transform, B's pixels per pixel of A at SIDE (0: no fit)

    def to_dict(self) -> dict:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


def features(image) -> Features:
    """ORB features of a PIL image (any mode), resized so its long side is :data:`SIDE`."""
    import cv2

    img = image.convert("L")
    s = SIDE / max(img.size)
    img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))))
    grey = np.asarray(img)
    kp, des = cv2.ORB.create(nfeatures=N_FEATURES, fastThreshold=10).detectAndCompute(grey, None)
    blurred = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), 1.5)
    points = np.asarray([k.pt for k in kp], dtype=np.float32).reshape(-1, 2)
    return Features(blurred, points, des, _content(blurred))


SAME_VIEW_DIFF = 1.0  # mean absolute difference (grey levels) under which two small views may be the same pixels


def same_view(a: Features, b: Features) -> bool:
    """Whether the small blurred views are (nearly) identical: the cheap test before a full decode checks for the
    same pixels (two decodes of the same pixels differ only by resampling)."""
    if a.blurred.shape != b.blurred.shape:
        return False
    return float(np.abs(a.blurred - b.blurred).mean()) < SAME_VIEW_DIFF


def _content(x: np.ndarray) -> tuple[int, int, int, int]:
    """The box inside flat borders (each side trimmed by at most 40%)."""
    h, w = x.shape

    def span(std: np.ndarray, n: int) -> tuple[int, int]:
        lo, hi, cap = 0, n, int(n * 0.4)
        while lo < cap and std[lo] < FLAT_STD:
            lo += 1
        while n - hi < cap and std[hi - 1] < FLAT_STD:
            hi -= 1
        return lo, hi

    y0, y1 = span(x.std(axis=1), h)
    x0, x1 = span(x.std(axis=0), w)
    return x0, y0, x1, y1


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.asarray([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


def compare(a: Features, b: Features) -> Evidence:
    """The evidence for one pair (symmetric up to RANSAC's randomness, which is seeded)."""
    import cv2

    if a.descriptors is None or b.descriptors is None or len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return Evidence()
    knn = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    ev = Evidence(matches=len(good))
    if len(good) < MIN_INLIERS:
        return ev
    src = a.points[[m.queryIdx for m in good]]
    dst = b.points[[m.trainIdx for m in good]]
    cv2.setRNGSeed(0)
    M, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=REPROJ_PX,
                                         maxIters=2000, confidence=0.995)  # fmt: skip
    if M is None:
        return ev
    ev.inliers = int(inl.sum())
    ev.scale = float(np.sqrt(abs(np.linalg.det(M[:, :2]))))
    ev.share = ev.inliers / len(good)
    # coverage between the contents (a screenshot's border would let a neighbouring burst frame fit inside it)
    corners = cv2.transform(_rect(*a.content)[None], M)[0]
    area_a, box_b = cv2.contourArea(corners), _rect(*b.content)
    if area_a < 100:  # a degenerate fit (everything mapped to a point)
        return ev
    overlap, _ = cv2.intersectConvexConvex(corners, box_b)
    ev.cover = max(overlap / area_a, overlap / max(cv2.contourArea(box_b), 1.0))
    if ev.share >= COPY_SHARE and ev.cover >= COPY_COVER:  # only a would-be copy needs the pixel check
        ev.tiles = _tile_agreement(a.blurred, b.blurred, M)
    return ev


def _tile_agreement(u0: np.ndarray, v: np.ndarray, M: np.ndarray) -> float:
    """Warp A onto B; the share of textured tiles (either side) whose normalised cross-correlation is high."""
    import cv2

    hb, wb = v.shape
    th, tw = hb // GRID, wb // GRID
    if th < 4 or tw < 4:
        return 0.0
    u = cv2.warpAffine(u0, M, (wb, hb))
    mask = cv2.warpAffine(np.ones(u0.shape, np.uint8), M, (wb, hb), flags=cv2.INTER_NEAREST)
    m = (cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0).astype(np.float32)

    def tiles(x: np.ndarray) -> np.ndarray:  # per-tile sums over the mask
        return x[: th * GRID, : tw * GRID].reshape(GRID, th, GRID, tw).sum(axis=(1, 3))

    n = tiles(m)
    nz = np.maximum(n, 1)
    mu, mv = tiles(u * m) / nz, tiles(v * m) / nz
    su = np.sqrt(np.maximum(tiles(u * u * m) / nz - mu**2, 0))
    sv = np.sqrt(np.maximum(tiles(v * v * m) / nz - mv**2, 0))
    cov = tiles(u * v * m) / nz - mu * mv
    # a tile counts when A covers most of it and it is not flat on both sides (flat says nothing)
    use = (n >= 0.8 * th * tw) & ((su >= 4) | (sv >= 4))
    if use.sum() < 3:
        return 0.0
    ncc = cov / (su * sv + 1e-3)
    return float((ncc[use] >= TILE_NCC).mean())


def relation(ev: Evidence) -> str | None:
    """``"copy"``, ``"similar shot"`` or None (not shown to be related)."""
    if ev.inliers < MIN_INLIERS:
        return None
    if ev.share >= COPY_SHARE and ev.cover >= COPY_COVER and ev.tiles >= COPY_TILES:
        return "copy"
    if ev.share >= SIMILAR_SHARE:
        return "similar shot"
    return None


def distinct_captures(ev: Evidence) -> bool:
    """Sure to be two captures (never to be merged into one duplicate group): the pair is related, but each frame
    holds content the other lacks, or a single transform explains too few matches (parallax)."""
    return relation(ev) == "similar shot" and (
        ev.cover < DISTINCT_COVER or (ev.share < DISTINCT_SHARE and ev.matches >= DISTINCT_MATCHES)
    )
