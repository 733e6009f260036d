"""The Python API: an :class:`Index` is a directory holding one SQLite file (the truth) and
derived files (the FAISS index).

>>> from visdex import open_index                                        # doctest: +SKIP
>>> ix = open_index("/tmp/photos-index", model="lite0-minilm")           # doctest: +SKIP
>>> ix.add(["~/Pictures"])                                               # doctest: +SKIP
>>> [h.path for h in ix.search("dog on a beach", k=5)]                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config
from .errors import BadQuery, IndexEmpty, ModelMismatch, NotFound, VisdexError
from .models.base import Embedder, Fingerprint, l2_normalize
from .query import Crop, parse_query
from .search import Hit, cut_hits, search_vectors
from .store.base import VectorStore
from .store.db import IndexDB
from .store.local import ANN_KINDS, LocalVectorStore

log = logging.getLogger(__name__)
_KEEP = object()  # reload_store(): keep the recorded location

if TYPE_CHECKING:  # a text search imports neither Pillow nor the ingest pipeline
    from PIL import Image
    from typing_extensions import TypeIs

    from .ingest import IngestReport, Progress

    QueryLike = str | os.PathLike | Image.Image


def _is_image(query) -> TypeIs[Image.Image]:
    """Whether ``query`` is a PIL image (none can be while Pillow is not imported)."""
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(query, pil.Image)


def model_source(name: str) -> str:
    """What a model name points at: a hub id or an absolute local path (compared with an index's fingerprint)."""
    from .models import get_spec
    from .models.onnx import split_backend

    name = split_backend(name)[1]  # onnx-int8:clip-vit-b-32 runs the weights of clip-vit-b-32
    if name.startswith("hf:"):
        return name[3:]
    p = Path(name).expanduser()
    if p.is_dir():
        return str(p.resolve())
    return get_spec(name).source


def loadable_name(name: str) -> str:
    """The name to store so the model can be loaded again later from any working directory."""
    from .models.onnx import split_backend, with_backend

    backend, name = split_backend(name)
    p = Path(name).expanduser()
    return with_backend(str(p.resolve()) if not name.startswith("hf:") and p.is_dir() else name, backend)


@dataclass
class IndexStatus:
    path: str
    model: str | None
    fingerprint: Fingerprint | None
    schema_version: int
    files_ok: int
    files_failed: int
    vectors: int
    roots: list[str]
    failures: list[tuple[str, str]] = field(default_factory=list)
    store: dict = field(default_factory=dict)
    kind: str = "files"
    items_ok: int = 0
    items_failed: int = 0

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "fingerprint"}
        d["fingerprint"] = None if self.fingerprint is None else self.fingerprint.__dict__
        d["failures"] = [{"path": p, "reason": r} for p, r in self.failures]
        return d


class Index:
    """A visdex index. ``model`` is used when the index is new; an existing index keeps its own
    model and asking for another one raises :class:`ModelMismatch`."""

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        model: str | None = None,
        device: str | None = None,
        create: bool = True,
        ann: str | None = None,
        store: str | None = None,
    ):
        from .store.backends import apply_store, choose_store

        self.path = Path(path or config.get("index")).expanduser()
        self._store_spec = choose_store(self.path, store, create)  # checked before anything is written
        self.db = IndexDB(self.path, create=create)
        apply_store(self.db, self._store_spec)
        self.device = device or config.get("device")
        self._embedder: Embedder | None = None
        self._text_embedder: Embedder | None = None
        #: This index answers a query or two and is closed (the CLI): start-up matters more than query speed
        #: (see :func:`visdex.models.textquery.fast_text_embedder` and ``LocalVectorStore.one_shot``).
        self.one_shot = False
        self._store: VectorStore | None = None
        if ann is not None and ann not in ANN_KINDS:
            from .store.milvus import MILVUS_ANN  # an index in Milvus takes its kinds too (ivf-sq8, diskann)

            if not (str(self.db.get_meta("store") or "").startswith("milvus") and ann in MILVUS_ANN):
                raise BadQuery(f"unknown {{field}} {ann!r}: one of {', '.join(ANN_KINDS)}", field="ann")
        self._ann = ann
        fp = self.db.fingerprint
        if fp is not None and model is not None and model_source(model) != fp.source:
            raise ModelMismatch(self._mismatch_message(fp, model))
        self.model_name = fp.name if fp is not None else loadable_name(model or config.get("model"))
        # Another backend of the index's model (onnx-int8:... on a torch-built index): it may answer
        # queries if its measured cosine to the index's vectors allows (see models.onnx.query_compatible).
        self._query_model = None
        if fp is not None and model is not None and _backend(model) != _backend(fp.name):
            self._query_model = loadable_name(model)

    # -- plumbing -------------------------------------------------------------------------
    def _mismatch_message(self, fp: Fingerprint, asked: str) -> str:
        return (
            f"the index at {self.path} was built with {fp.short()}, not {asked!r}; vectors of different models "
            f"cannot be compared. Search it without choosing a model (an index remembers its own), or "
            f"re-index it with the new model: visdex index --index {self.path} --model {asked} --rebuild"
        )

    @property
    def fingerprint(self) -> Fingerprint | None:
        return self.db.fingerprint

    @property
    def embedder(self) -> Embedder:
        """The model, loaded on first use and checked against the index's fingerprint."""
        if self._embedder is None:
            from .models import load_embedder

            emb = load_embedder(self._query_model or self.model_name, device=self.device)
            fp = self.db.fingerprint
            if fp is not None and self._query_model is not None:
                _check_query_model(emb, fp, self.path)
            elif fp is not None and not emb.fingerprint().compatible(fp):
                raise ModelMismatch(
                    f"the model {self.model_name!r} loaded now ({emb.fingerprint().short()}) differs from the one "
                    f"that built the index at {self.path} ({fp.short()}): its weights or preprocessing changed. "
                    f"Re-index: visdex index --index {self.path} --model {self.model_name} --rebuild"
                )
            self._embedder = emb
        return self._embedder

    @property
    def text_embedder(self) -> Embedder:
        """What embeds text queries: the model's cached ONNX text tower when there is one (no torch import,
        see :mod:`visdex.models.textquery`), else the model itself."""
        if self._text_embedder is None:
            emb = None
            if self._embedder is None:
                from .models.textquery import fast_text_embedder

                emb = fast_text_embedder(
                    self._query_model or self.model_name, self.db.fingerprint, one_shot=self.one_shot
                )
            self._text_embedder = emb if emb is not None else self.embedder
        return self._text_embedder

    def use_fast_text_queries(self) -> Embedder:
        """Answer text queries with the model's cached ONNX text tower when there is one, even though the model
        is loaded (a server that has just exported it); else with the model. Returns what embeds them now."""
        from .models.textquery import fast_text_embedder

        fast = fast_text_embedder(self._query_model or self.model_name, self.db.fingerprint)
        self._text_embedder = fast if fast is not None else self.embedder
        return self._text_embedder

    @property
    def model_loaded(self) -> bool:
        """Whether this index had to load its full model (torch) so far -- a search answered by the fast
        text path did not."""
        return self._embedder is not None

    def prepare_text_queries(self, background: bool = False) -> bool:
        """Export the model's text tower to ONNX once, so later text queries need neither torch nor the
        whole model. Uses the model if it is loaded already; ``background``: in a detached process.
        Returns whether an export was made or started. A no-op without the ``onnx`` extra, with
        ``VISDEX_QUERY_EXPORT=off``, for image-only models and when the export is cached."""
        from . import config
        from .models.textquery import export_in_background, export_text_tower

        fp = self.db.fingerprint
        if fp is None or "text" not in fp.modalities or config.get("query_export") != "auto":
            return False
        if background:
            return export_in_background(self.model_name) is not None
        return export_text_tower(self.model_name, self._embedder) is not None

    @property
    def store(self) -> VectorStore:
        """The index's vector store: local (SQLite + FAISS) or Milvus, as recorded by the index."""
        if self._store is None:
            from .store.backends import open_store

            fp = self.db.fingerprint
            dim = fp.dim if fp is not None else self.embedder.dim
            self._store = open_store(self.db, dim, ann=self._ann, spec=self._store_spec)
            if isinstance(self._store, LocalVectorStore):
                self._store.one_shot = self.one_shot
        return self._store

    @property
    def store_spec(self):
        """Where the vectors live when not in the embedded store: the Milvus location (None: local)."""
        return self._store_spec

    def reload_store(self, spec=_KEEP) -> None:
        """Forget the opened vector store (and the ANN index it holds in memory), so the next use opens it again
        from what the index records now: after another process wrote vectors, or after a migration moved them
        (``spec``: the new location; a Milvus spec, or None for the embedded store)."""
        self._store = None
        if spec is not _KEEP:
            self._store_spec = spec

    def use_model(self, name: str, emb: Embedder, store: VectorStore) -> None:
        """After a rebuild swapped in the vectors of ``emb`` (the model called ``name``; see :mod:`visdex.rebuild`):
        the index searches with this model and this store from now on."""
        self.model_name, self._embedder, self._text_embedder, self._store = name, emb, None, store

    # -- writing --------------------------------------------------------------------------
    def add(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        progress: Progress | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        prune: bool = True,
        engine=None,
    ) -> IngestReport:
        """Index (or bring up to date) the images under ``paths`` (folders, files, tar shards, URLs: see
        :mod:`visdex.sources`). Bad files are recorded, never fatal. ``engine``: a
        :class:`visdex.engines.ray_data.RayEngine` decodes and embeds on a Ray cluster instead of here."""
        self.ensure_kind("files")
        fp = self.db.fingerprint
        if fp is not None and self._query_model is not None:  # another backend: may search, never add (said at once,
            raise ModelMismatch(  # even when nothing would need embedding)
                f"the index at {self.path} was built with {fp.name!r}; {self._query_model!r} may search it but not "
                f"add to it. Index without choosing a model (the index's own is used), or re-index: "
                f"visdex index --index {self.path} --model {self._query_model} --rebuild"
            )

        def model(todo: int = 0) -> Embedder:  # called only when files need embedding: a re-scan of an unchanged
            emb = self.embedder if engine else self._indexing_embedder(todo)  # folder loads no model; Ray's
            # workers load their own model, so the driver's need not be fast (no ONNX export for it)
            self._check_writable(emb)
            self.ensure_fingerprint(emb)
            if engine is None:
                remember_preprocess(self.model_name, emb.preprocess)
            return emb

        # Decode workers may start while the model loads, on the preprocessing this model had last time (checked
        # once it has loaded); only on a CPU: a GPU path decodes its own way.
        if engine is None and self._embedder is None and _no_gpu(self.device):
            model.preprocess_hint = preprocess_hint(self.model_name)  # type: ignore[attr-defined]

        # a new index's store needs the model's dimension: opened once the model is
        store = self.store if self.db.fingerprint is not None else (lambda: self.store)
        from .ingest import ingest

        return ingest(
            self.db,
            store,
            model,
            [str(p) for p in paths],
            include=include,
            exclude=exclude,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            prune=prune,
            engine=engine,
        )

    def _indexing_embedder(self, todo: int) -> Embedder:
        """The model that embeds ``todo`` images: on a CPU, by default, its fp32 ONNX Runtime towers (the same
        vectors, faster; see :func:`visdex.models.onnx.load_reference_onnx`) when the one-time export is
        cached or pays for itself; else the model itself."""
        if self._embedder is not None:
            return self._embedder
        if self._query_model is None and _cpu_onnx_wanted(self.model_name, self.device, todo):
            from .models.onnx import load_reference_onnx

            try:
                forced = config.get("cpu_backend") == "onnx"
                emb = load_reference_onnx(self.model_name, export=forced or todo >= ONNX_MIN_IMAGES)
            except VisdexError as exc:  # an export that fails costs only speed: torch indexes
                log.info("indexing with torch: %s", exc)
                emb = None
            fp = self.db.fingerprint
            if emb is not None and (fp is None or emb.fingerprint().compatible(fp)):
                self._embedder = emb
                return emb
        return self.embedder

    def add_catalog(
        self,
        path: str | os.PathLike,
        *,
        text_weight: float = 0.0,
        id_column: str | None = None,
        image_column: str | None = None,
        title_column: str | None = None,
        progress: Progress | None = None,
        workers: int | None = None,
        prune: bool = True,
    ):
        """Index (or update) a CSV / JSONL product catalog: one pooled vector per item; see :mod:`visdex.catalog`.

        >>> ix.add_catalog("items.csv", text_weight=0.2).new                  # doctest: +SKIP
        1200
        """
        from .catalog import ingest_catalog

        self._check_writable(self.embedder)
        return ingest_catalog(
            self,
            path,
            text_weight=text_weight,
            id_column=id_column,
            image_column=image_column,
            title_column=title_column,
            progress=progress,
            workers=workers,
            prune=prune,
        )

    def _check_writable(self, emb: Embedder) -> None:
        """Only the index's own model may add vectors; another backend may at most search."""
        fp = self.db.fingerprint
        if fp is not None and not emb.fingerprint().compatible(fp):
            raise ModelMismatch(
                f"the index at {self.path} was built with {fp.name!r}; {emb.name!r} may search it but not add to it. "
                f"Index without choosing a model (the index's own is used), or re-index: "
                f"visdex index --index {self.path} --model {emb.name} --rebuild"
            )

    def ensure_kind(self, kind: str) -> None:
        """An index holds either a folder's files or a catalog's items, never both (their ids share one space)."""
        current = self.db.get_meta("kind")
        if current is None:
            self.db.set_meta("kind", kind)
        elif current != kind:
            what = {"catalog": "a catalog (items)", "files": "folders of images"}
            raise BadQuery(
                f"the index at {self.path} holds {what[current]}; it cannot also hold {what[kind]}. "
                "Use another index for it."
            )

    def ensure_fingerprint(self, emb: Embedder | None = None) -> None:
        """Record the model's fingerprint when the index gets its first vectors."""
        if self.db.fingerprint is None:
            fp = (emb or self.embedder).fingerprint()
            self.db.set_fingerprint(
                Fingerprint(
                    loadable_name(self.model_name), fp.source, fp.revision, fp.dim, fp.preprocessing, fp.modalities
                )
            )

    def update(self, **kwargs) -> IngestReport:
        """Re-scan every root this index has seen."""
        return self.add(self.db.roots(), **kwargs)

    def rebuild(
        self, model: str, *, progress: Progress | None = None, workers: int | None = None, batch_size: int | None = None
    ):
        """Switch the index to another model (or re-embed with its own): every indexed file or item is
        re-embedded aside while the index stays searchable with its old model, then the new vectors are
        swapped in by one transaction. Interrupted, it leaves the old index whole; run again with the same
        model it resumes. A following :meth:`add` picks up files that changed. See :mod:`visdex.rebuild`.

        >>> ix.rebuild("clip-vit-b-32").embedded                               # doctest: +SKIP
        1200
        """
        from .rebuild import rebuild_index

        report = rebuild_index(self, model, progress=progress, workers=workers, batch_size=batch_size)
        if self.db.fingerprint is None:  # nothing indexed yet: the next add embeds with the model
            self.model_name, self._embedder, self._store = loadable_name(model), None, None
        return report

    # -- reading --------------------------------------------------------------------------
    def _image_vector(self, path: str | os.PathLike, crop: Crop | None = None) -> np.ndarray:
        """An image file's vector: the stored one if the file is indexed (and not cropped), else embedded now."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise BadQuery(f"no such image file: {p}")
        if crop is None and self.db.kind == "files":
            row = self.db.file_by_path(str(p.resolve()))
            if row is not None and row.status == "ok":
                try:
                    return self.store.get([row.id])[0]
                except KeyError:
                    pass  # row written, vector not yet: embed it
        from .decode import decode_image

        return self._embed_image(decode_image(p, max_pixels=config.get("max_pixels")).image, crop)

    def _embed_image(self, image: Image.Image, crop: Crop | None = None) -> np.ndarray:
        image = image.convert("RGB")
        if crop is not None:
            image = image.crop(crop.box(*image.size))
        return self.embedder.embed_images([image])[0]

    def query_vector(self, query: QueryLike | Sequence[str], crop: str | Crop | None = None,
                     text_vectors: Mapping[str, np.ndarray] | None = None) -> np.ndarray:  # fmt: skip
        """A query as one normalised vector: a text, an image (path or PIL image), or a composed query
        ``"beach.jpg + 'at night' - people"`` (see :mod:`visdex.query`); ``crop`` applies to the image term.
        ``text_vectors``: the text terms' vectors, embedded by the caller (a server batches concurrent queries)."""
        crop = Crop.parse(crop) if isinstance(crop, str) else crop
        fp = self.require_vectors()
        if _is_image(query):
            return self._embed_image(query, crop)
        if isinstance(query, np.ndarray):  # a query vector embedded by the caller (a server, outside its lock)
            return l2_normalize(np.asarray(query, np.float32).reshape(1, -1))[0]
        if isinstance(query, os.PathLike):
            return self._image_vector(query, crop)
        if isinstance(query, str) and not query.strip():
            raise BadQuery("empty query: give a text or the path of an image")
        parsed = parse_query(query, crop=crop)
        texts = [t.value for t in parsed.terms if t.kind == "text" and t.value not in (text_vectors or {})]
        text_vecs = dict(text_vectors or {})
        if texts:
            text_vecs.update(zip(texts, self.text_embedder.embed_texts(texts), strict=True))
        total = np.zeros(fp.dim, np.float32)
        for t in parsed.terms:
            vec = text_vecs[t.value] if t.kind == "text" else self._image_vector(t.value, t.crop)
            total += t.weight * vec
        if not np.any(total):
            raise BadQuery("the query's terms cancel out")
        return l2_normalize(total)[0]

    def search(
        self,
        query: QueryLike | Sequence[str],
        k: int = 10,
        *,
        where: str | None = None,
        crop: str | Crop | None = None,
        min_score: float | None = None,
        within: float | None = None,
        text_vectors: Mapping[str, np.ndarray] | None = None,
        hubness: bool | None = None,
    ) -> list[Hit]:
        """Top-``k`` images for a text, an example image (path or PIL image) or a composed query.

        ``where`` filters inside the search (:mod:`visdex.filters`); ``min_score`` drops hits under a
        cosine; ``within`` keeps hits scoring at least ``top - within``.

        >>> ix.search("a cat on a sofa", k=3, where="taken >= 2023")            # doctest: +SKIP
        [Hit(id=12, path='/photos/cat.jpg', score=0.31, ...), ...]
        """
        if k < 1:
            raise BadQuery("k must be at least 1")
        self.require_vectors()
        allowed = self._allowed(where)
        if isinstance(allowed, np.ndarray) and not len(allowed):
            return []
        vec = self.query_vector(query, crop, text_vectors)
        # text or image query: which reference bank hubness reduction uses
        text = isinstance(query, str | list | tuple) and not parse_query(query, crop=crop).image_terms
        hits = search_vectors(self.db, self.store, vec, k, allowed=allowed, **self._hubness(hubness, text, k))
        return cut_hits(hits, min_score, within)

    def _hubness(self, on: bool | None, text: bool, k: int) -> dict:
        """search_vectors' re-scoring arguments (:mod:`visdex.hubness`); ``on=None``: the model's default."""
        from . import hubness as hb

        fp = self.db.fingerprint
        if fp is None or not (hb.default_on(fp.name) if on is None else on):
            return {}
        if getattr(self, "_hubness_reducer", None) is None:
            self._hubness_reducer = hb.HubnessReducer(self)
        modality = "text" if text else "image"
        return {"rescore": lambda ids, cos: self._hubness_reducer.rescore(modality, ids, cos),
                "shortlist": hb.shortlist_size(k)}  # fmt: skip

    def similar(
        self,
        item: str | os.PathLike | int,
        k: int = 10,
        *,
        where: str | None = None,
        min_score: float | None = None,
        within: float | None = None,
        hubness: bool | None = None,
    ) -> list[Hit]:
        """Images most like an indexed item (by id or path) or any image file, the item itself left out."""
        self.require_vectors()
        exclude: list[int] = []
        if isinstance(item, int):
            try:
                if not -(2**63) <= item < 2**63:  # no id is that large (SQLite integers are 64-bit)
                    raise KeyError(item)
                vec = self.store.get([item])[0]
            except KeyError:
                raise NotFound(f"no item with id {item} in the index") from None
            exclude = [item]
        else:
            p = Path(item).expanduser()
            row = self.db.file_by_path(str(p.resolve())) if p.is_file() else None
            exclude = [row.id] if row is not None else []
            vec = self._image_vector(p)
        allowed = self._allowed(where)
        if isinstance(allowed, np.ndarray) and not len(allowed):
            return []
        hits = search_vectors(self.db, self.store, vec, k, allowed=allowed, exclude_ids=exclude,
                              **self._hubness(hubness, False, k))  # fmt: skip
        return cut_hits(hits, min_score, within)

    def require_vectors(self) -> Fingerprint:
        """A search needs the index's model, which an index learns with its first vectors: without them
        there is nothing to search, and no model to load (never the default one from the hub). Returns the
        index's fingerprint."""
        fp = self.db.fingerprint
        if fp is None:
            raise IndexEmpty(
                f"the index at {self.path} is empty: nothing has been indexed into it yet (or its first run was "
                f"interrupted before any image was saved). Index a folder first: "
                f"visdex index FOLDER --index {self.path}"
            )
        return fp

    def _allowed(self, where: str | None):
        """The ids matching ``where`` -- or, for a store that filters itself (Milvus), the filter in its terms."""
        from .filters import allowed_ids

        if not where:
            return None
        pushed = self.store.compile_where(where)
        return pushed if pushed is not None else allowed_ids(self.db, where)

    def status(self, max_failures: int = 50) -> IndexStatus:
        counts, items = self.db.counts(), self.db.item_counts()
        fp = self.db.fingerprint
        store_info = self.store.info() if fp is not None else {}
        failures = [(r.path, r.error or "") for r in self.db.failed_files(max_failures)]
        failures += self.db.failed_items(max_failures)
        return IndexStatus(
            path=str(self.path),
            model=fp.name if fp else None,
            fingerprint=fp,
            schema_version=self.db.schema_version,
            files_ok=counts["ok"],
            files_failed=counts["failed"],
            vectors=store_info.get("count", 0),
            roots=self.db.roots(),
            failures=failures,
            store=store_info,
            kind=self.db.kind,
            items_ok=items["ok"],
            items_failed=items["failed"],
        )

    def __len__(self) -> int:
        return self.store.count() if self.db.fingerprint is not None else 0

    def close(self) -> None:
        """Close the index. Only a writer saves derived data (the ANN file): a search or status writes nothing,
        so it works on a read-only folder or a full disk."""
        try:
            if self._store is not None and self.db.holds_writer:
                self._store.flush()
        finally:
            self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: Images to embed from which CPU indexing exports the model to ONNX (once, ~30-60 s for CLIP B/32 on two
#: cores) rather than run torch: about where the faster forward pass has paid for the export.
ONNX_MIN_IMAGES = 200


def _cpu_onnx_wanted(model_name: str, device: str | None, todo: int) -> bool:
    """Whether CPU indexing should try the ONNX fp32 towers: a torch model, on a machine without a GPU, with
    the ``onnx`` extra installed, and ``cpu_backend`` ``onnx``, or ``auto`` on a CPU without AMX (with AMX,
    torch's bf16 forward pass is the faster one). Imports nothing heavy."""
    import importlib.util

    from .models.onnx import split_backend

    choice = config.get("cpu_backend")
    backend, bare = split_backend(model_name)
    if choice in ("torch", "bf16") or backend != "torch" or todo <= 0:
        return False
    if choice == "auto":
        from .models.catalog import CATALOG
        from .models.families.base import cpu_has_amx_bf16

        cnn = any(s.name == bare and s.offline for s in CATALOG)  # the offline CNNs stay fp32 (cpu_bf16_auto)
        if cpu_has_amx_bf16() and not cnn:  # torch in bf16 beats ONNX fp32 2-3x there, and needs no export
            return False
    if not all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx", "onnxscript")):
        return False
    return _no_gpu(device)


def _hint_path(model_name: str) -> Path:
    from hashlib import sha256

    return Path(config.get("cache_dir")) / "preprocess-hints" / (sha256(model_name.encode()).hexdigest()[:24] + ".json")


def preprocess_hint(model_name: str):
    """The preprocessing ``model_name`` resolved to when it last loaded on this machine, or None. A hint only:
    ingest compares it with the loaded model's before using what it decoded meanwhile."""
    import dataclasses
    import json

    from .models.base import Preprocess

    try:
        raw = json.loads(_hint_path(model_name).read_text())
        fields = {f.name for f in dataclasses.fields(Preprocess)}
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in fields}
        return Preprocess(**kwargs)
    except (OSError, ValueError, TypeError):
        return None


def remember_preprocess(model_name: str, preprocess) -> None:
    import dataclasses
    import json

    from .models.hf import write_atomic

    path = _hint_path(model_name)
    data = json.dumps(dataclasses.asdict(preprocess), sort_keys=True).encode()
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    write_atomic(path, data)  # an unwritable cache is only logged


def _no_gpu(device: str | None) -> bool:
    device = device or config.get("device") or "auto"
    if device == "cpu":
        return True
    apple_gpu = sys.platform == "darwin" and os.uname().machine == "arm64"
    return device == "auto" and not os.path.exists("/proc/driver/nvidia") and not apple_gpu


cpu_onnx_wanted = _cpu_onnx_wanted  # public: the server asks it too (server/state.py)


def _backend(name: str) -> str:
    from .models.onnx import split_backend

    return split_backend(name)[0]


def _check_query_model(emb: Embedder, fp: Fingerprint, path) -> None:
    """A query embedder of another backend: allowed only when its vectors were measured close enough."""
    from .models.onnx import QUERY_MIN_COSINE, quality_note, query_compatible

    if not query_compatible(emb, fp):
        note = quality_note(emb)
        raise ModelMismatch(
            f"the index at {path} was built with {fp.short()}; {emb.name!r} does not make vectors close enough to "
            f"search it (needs a cosine of at least {QUERY_MIN_COSINE} on every probe"
            + (f"; {note})" if note else ")")
            + ". Search without choosing a model, or re-index with it: "
            f"visdex index --index {path} --model {emb.name} --rebuild"
        )


def open_index(
    path: str | os.PathLike | None = None,
    *,
    model: str | None = None,
    device: str | None = None,
    create: bool = True,
    ann: str | None = None,
    store: str | None = None,
) -> Index:
    """Open (or create) the index at ``path`` (default: ``VISDEX_INDEX`` or the platform data dir).
    ``ann`` (one of ``visdex.store.local.ANN_KINDS``: "auto", "flat", "hnsw", "ivfpq", "hnsw-sq8", ...)
    chooses the vector index and is remembered by the index. ``store`` ("local", "milvus:./vectors.db",
    "milvus://host:19530"; default ``VISDEX_STORE``) is where a new index keeps its vectors (recorded too)."""
    return Index(path, model=model, device=device, create=create, ann=ann, store=store)
