"""Pictures of an index: a 2D map with thumbnails (PNG or a zoomable HTML page) and a cosine
similarity matrix as a labelled heatmap.

>>> proj = project_2d(ix)                                        # doctest: +SKIP
>>> render_map_png(ix, proj, "map.png")                          # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import BadQuery, MissingDependency

MAX_THUMBS = 2000  # a map draws at most this many thumbnails (a random sample beyond)


@dataclass
class Projection:
    ids: np.ndarray
    xy: np.ndarray  # (n, 2) in [0, 1]
    paths: list[str]
    method: str

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "points": [{"id": int(i), "x": round(float(x), 5), "y": round(float(y), 5), "path": p}
                       for i, (x, y), p in zip(self.ids, self.xy, self.paths, strict=True)],
        }  # fmt: skip


def _pca(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def _method(method: str, n: int) -> str:
    """The method ``auto`` stands for with ``n`` vectors (UMAP if installed, else t-SNE, else PCA)."""
    if method == "auto":
        try:
            import umap  # noqa: F401

            return "umap" if n >= 16 else "pca"
        except ImportError:
            return "tsne" if 16 <= n <= 20_000 and _has_sklearn() else "pca"
    return "pca" if n < 4 else method


def _embed_2d(x: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    n = len(x)
    method = _method(method, n)
    if method == "pca" or n < 4:
        return _pca(x), "pca"
    if method == "umap":
        try:
            import umap
        except ImportError as e:
            raise MissingDependency("umap-learn", extra="map", purpose="{field} umap", field="method") from e
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), metric="cosine", random_state=seed)
        return reducer.fit_transform(x), "umap"
    if method == "tsne":
        if not _has_sklearn():
            raise MissingDependency("scikit-learn", extra="map", purpose="{field} tsne", field="method")
        from sklearn.manifold import TSNE

        perplexity = max(2.0, min(30.0, (n - 1) / 3))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine").fit_transform(x), "tsne"
    raise BadQuery(f"unknown {{field}} {method!r}: auto, umap, tsne or pca", field="method")


def _has_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def project_2d(ix, method: str = "auto", *, seed: int = 0, progress=None) -> Projection:
    """Every indexed vector placed in 2D (``auto``: UMAP if installed, else t-SNE, else PCA), scaled to [0, 1].

    ``progress``: told each step as it begins, ``progress.step(i, names)`` (the web UI lists them)."""
    ids = ix.store.ids()
    if len(ids) < 2:
        raise BadQuery("a map needs at least two indexed images")
    used = _method(method, len(ids))
    steps = [f"Reading {len(ids):,} vectors", f"Laying them out in 2D ({used.upper()})", "Naming the points"]
    if progress is not None:
        progress.step(0, steps)
    vecs = ix.store.get(ids)
    if progress is not None:
        progress.step(1, steps)
    xy, used = _embed_2d(vecs, used, seed)
    if progress is not None:
        progress.step(2, steps)
    xy = np.asarray(xy, np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    xy = (xy - lo) / np.where(hi > lo, hi - lo, 1.0)
    if ix.db.kind == "catalog":
        items = ix.db.items_by_ids(ids)
        paths = [(items[int(i)]["images"] or [""])[0] for i in ids]
    else:
        rows = ix.db.files_by_ids(ids)
        paths = [rows[int(i)].path for i in ids]
    return Projection(ids, xy, paths, used)


def _thumb(path: str, size: int) -> Image.Image | None:
    from .decode import decode_image
    from .errors import BadImage

    try:
        img = decode_image(path, draft_size=size).image
    except (BadImage, OSError):
        return None
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return img


def _sample(n: int, seed: int = 0) -> np.ndarray:
    return np.arange(n) if n <= MAX_THUMBS else np.sort(np.random.default_rng(seed).choice(n, MAX_THUMBS, False))


def _thumb_size(n: int, size: int) -> int:
    """Thumbnails shrink as the map fills up: about 60% of the room each would have on a grid."""
    return int(max(48, min(256, 0.6 * size / max(1.0, np.sqrt(min(n, MAX_THUMBS))))))


def render_map_png(proj: Projection, out_path: str | os.PathLike, *, thumb: int | None = None, size: int = 2048) -> int:
    """Draw the map with thumbnails; returns how many thumbnails were drawn."""
    thumb = thumb or _thumb_size(len(proj.ids), size)
    canvas = Image.new("RGB", (size, size), (24, 24, 28))
    margin = thumb // 2 + 8
    drawn = 0
    for j in _sample(len(proj.ids)):
        img = _thumb(proj.paths[j], thumb)
        if img is None:
            continue
        x = int(margin + proj.xy[j, 0] * (size - 2 * margin)) - img.width // 2
        y = int(margin + (1 - proj.xy[j, 1]) * (size - 2 * margin)) - img.height // 2
        canvas.paste(img, (x, y))
        ImageDraw.Draw(canvas).rectangle((x - 1, y - 1, x + img.width, y + img.height), outline=(235, 235, 235))
        drawn += 1
    canvas.save(out_path)
    return drawn


def _data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


_HTML = """<!doctype html><html><head><meta charset="utf-8"><title>visdex map</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>html,body{margin:0;height:100%;background:#18181c;color:#eee;font:14px system-ui;overflow:hidden}
#v{position:absolute;inset:0;cursor:grab}#w{position:absolute;transform-origin:0 0}
#w img{position:absolute;border:1px solid #ddd;transform:translate(-50%,-50%)}
#w img:hover{z-index:9;outline:3px solid #6cf}
#h{position:fixed;left:8px;top:8px;background:#0008;padding:6px 10px;border-radius:6px}</style></head><body>
<div id="h">visdex map — __N__ images (__METHOD__) · scroll to zoom, drag to pan, click to open</div>
<div id="v"><div id="w"></div></div><script>
const P=__POINTS__, S=__SIZE__, w=document.getElementById('w'), v=document.getElementById('v');
for(const p of P){const i=document.createElement('img');i.src=p.t;i.title=p.path;
 i.style.left=(p.x*S)+'px';i.style.top=((1-p.y)*S)+'px';i.dataset.id=p.id;
 i.onclick=()=>window.open('file://'+p.path);w.appendChild(i);}
let z=Math.min(innerWidth,innerHeight)/S*0.9,tx=(innerWidth-S*z)/2,ty=(innerHeight-S*z)/2;
const f=()=>w.style.transform=`translate(${tx}px,${ty}px) scale(${z})`;f();
v.onwheel=e=>{e.preventDefault();const k=e.deltaY<0?1.15:1/1.15;tx=e.clientX-(e.clientX-tx)*k;
 ty=e.clientY-(e.clientY-ty)*k;z*=k;f();};
let d=null;v.onpointerdown=e=>{d=[e.clientX-tx,e.clientY-ty];v.style.cursor='grabbing'};
onpointerup=()=>{d=null;v.style.cursor='grab'};onpointermove=e=>{if(d){tx=e.clientX-d[0];ty=e.clientY-d[1];f();}};
</script></body></html>"""


def render_map_html(proj: Projection, out_path: str | os.PathLike, *, thumb: int = 96, size: int = 3000) -> int:
    """A self-contained page (thumbnails inlined) with zoom and pan; returns how many were drawn."""
    points = []
    for j in _sample(len(proj.ids)):
        img = _thumb(proj.paths[j], thumb)
        if img is not None:
            points.append({"id": int(proj.ids[j]), "x": float(proj.xy[j, 0]), "y": float(proj.xy[j, 1]),
                           "path": proj.paths[j], "t": _data_uri(img)})  # fmt: skip
    page = (_HTML.replace("__POINTS__", json.dumps(points).replace("</", "<\\/")).replace("__SIZE__", str(size))
            .replace("__N__", str(len(points))).replace("__METHOD__", html.escape(proj.method)))  # fmt: skip
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(page)
    return len(points)


def similarity_matrix(ix, images: list[str]) -> tuple[list[str], np.ndarray]:
    """Cosine similarity of every pair of ``images`` (files, indexed or not), embedded with the index's model."""
    if len(images) < 2:
        raise BadQuery("give at least two images")
    vecs = np.stack([ix.query_vector(Path(p)) for p in images])  # a Path is always an image term
    return [os.path.basename(str(p)) for p in images], vecs @ vecs.T


def _colour(v: float) -> tuple[int, int, int]:
    """A dark-blue -> teal -> yellow ramp (viridis-like) for v in [0, 1]."""
    stops = [(0.0, (68, 1, 84)), (0.5, (33, 145, 140)), (1.0, (253, 231, 37))]
    v = min(1.0, max(0.0, v))
    for (a, ca), (b, cb) in zip(stops, stops[1:], strict=False):
        if v <= b:
            t = (v - a) / (b - a)
            red, green, blue = (int(ca[i] + t * (cb[i] - ca[i])) for i in range(3))
            return red, green, blue
    return stops[-1][1]


def render_matrix_png(
    labels: list[str],
    matrix: np.ndarray,
    out_path: str | os.PathLike,
    *,
    images: list[str] | None = None,
    cell: int = 72,
) -> None:
    """A labelled heatmap; with ``images``, thumbnails head the rows and columns."""
    n = len(labels)
    font = ImageFont.load_default(size=13) if hasattr(ImageFont, "load_default") else None
    head = cell + 8 if images else 0
    label_w = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(x, font=font) for x in labels) + 16
    left, top = int(label_w) + head, int(label_w) + head
    img = Image.new("RGB", (left + n * cell + 10, top + n * cell + 10), "white")
    d = ImageDraw.Draw(img)
    lo = float(min(matrix.min(), 0.0))
    for i in range(n):
        for j in range(n):
            v = (matrix[i, j] - lo) / (1 - lo) if lo < 1 else 1.0
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=_colour(v))
            text = f"{matrix[i, j]:.2f}"
            d.text((x0 + cell / 2, y0 + cell / 2), text, anchor="mm", font=font, fill="black" if v > 0.6 else "white")
        d.text((left - head - 8, top + i * cell + cell / 2), labels[i], anchor="rm", font=font, fill="black")
        col = Image.new("RGB", (int(label_w), 20), "white")
        ImageDraw.Draw(col).text((4, 2), labels[i], font=font, fill="black")
        img.paste(col.rotate(90, expand=True), (left + i * cell + cell // 2 - 10, 4))
        if images:
            t = _thumb(images[i], cell)
            if t is not None:
                img.paste(t, (left - head + (cell - t.width) // 2, top + i * cell + (cell - t.height) // 2))
                img.paste(t, (left + i * cell + (cell - t.width) // 2, top - head + (cell - t.height) // 2))
    img.save(out_path)
