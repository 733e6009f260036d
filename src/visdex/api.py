"""The Python API: an :class:`Index` is a directory holding one SQLite file (the truth) and
derived files (the FAISS index).

>>> from visdex import open_index                                        # doctest: +SKIP
>>> ix = open_index("/tmp/photos-index", model="lite0-minilm")           # doctest: +SKIP
>>> ix.add(["~/Pictures"])                                               # doctest: +SKIP
>>> [h.path for h in ix.search("dog on a beach", k=5)]                   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import config
from .errors import BadQuery, ModelMismatch, NotFound
from .files import IMAGE_EXTENSIONS
from .ingest import IngestReport, Progress, ingest
from .models.base import Embedder, Fingerprint
from .search import Hit, search_vectors
from .store.db import IndexDB
from .store.local import LocalVectorStore

QueryLike = str | os.PathLike | Image.Image


def model_source(name: str) -> str:
    """What a model name points at: a hub id or an absolute local path (compared with an index's fingerprint)."""
    from .models import get_spec

    if name.startswith("hf:"):
        return name[3:]
    p = Path(name).expanduser()
    if p.is_dir():
        return str(p.resolve())
    return get_spec(name).source


def loadable_name(name: str) -> str:
    """The name to store so the model can be loaded again later from any working directory."""
    p = Path(name).expanduser()
    return str(p.resolve()) if not name.startswith("hf:") and p.is_dir() else name


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

    def __init__(self, path: str | os.PathLike | None = None, *, model: str | None = None, device: str | None = None,
                 create: bool = True):
        self.path = Path(path or config.get("index")).expanduser()
        self.db = IndexDB(self.path, create=create)
        self.device = device or config.get("device")
        self._embedder: Embedder | None = None
        self._store: LocalVectorStore | None = None
        fp = self.db.fingerprint
        if fp is not None and model is not None and model_source(model) != fp.source:
            raise ModelMismatch(self._mismatch_message(fp, model))
        self.model_name = fp.name if fp is not None else loadable_name(model or config.get("model"))

    # -- plumbing -------------------------------------------------------------------------
    def _mismatch_message(self, fp: Fingerprint, asked: str) -> str:
        return (
            f"the index at {self.path} was built with {fp.short()}, not {asked!r}; vectors of different models "
            f"cannot be compared. Search it without --model (an index remembers its model), or re-index it with "
            f"the new model: visdex index --index {self.path} --model {asked} --rebuild"
        )

    @property
    def fingerprint(self) -> Fingerprint | None:
        return self.db.fingerprint

    @property
    def embedder(self) -> Embedder:
        """The model, loaded on first use and checked against the index's fingerprint."""
        if self._embedder is None:
            from .models import load_embedder

            emb = load_embedder(self.model_name, device=self.device)
            fp = self.db.fingerprint
            if fp is not None and not emb.fingerprint().compatible(fp):
                raise ModelMismatch(
                    f"the model {self.model_name!r} loaded now ({emb.fingerprint().short()}) differs from the one "
                    f"that built the index at {self.path} ({fp.short()}): its weights or preprocessing changed. "
                    f"Re-index: visdex index --index {self.path} --model {self.model_name} --rebuild"
                )
            self._embedder = emb
        return self._embedder

    @property
    def store(self) -> LocalVectorStore:
        if self._store is None:
            fp = self.db.fingerprint
            dim = fp.dim if fp is not None else self.embedder.dim
            self._store = LocalVectorStore(self.db, dim)
        return self._store

    # -- writing --------------------------------------------------------------------------
    def add(self, paths: Sequence[str | os.PathLike], *, include: Sequence[str] = (), exclude: Sequence[str] = (),
            progress: Progress | None = None, batch_size: int | None = None, workers: int | None = None,
            prune: bool = True) -> IngestReport:
        """Index (or bring up to date) the images under ``paths``. Bad files are recorded, never fatal."""
        self.ensure_kind("files")
        emb = self.embedder
        self.ensure_fingerprint()
        return ingest(self.db, self.store, emb, [str(p) for p in paths], include=include, exclude=exclude,
                      batch_size=batch_size, workers=workers, progress=progress, prune=prune)

    def add_catalog(self, path: str | os.PathLike, *, text_weight: float = 0.0, id_column: str | None = None,
                    image_column: str | None = None, title_column: str | None = None,
                    progress: Progress | None = None, workers: int | None = None, prune: bool = True):
        """Index (or update) a CSV / JSONL product catalog: one pooled vector per item; see :mod:`visdex.catalog`.

        >>> ix.add_catalog("items.csv", text_weight=0.2).new                  # doctest: +SKIP
        1200
        """
        from .catalog import ingest_catalog

        return ingest_catalog(self, path, text_weight=text_weight, id_column=id_column, image_column=image_column,
                              title_column=title_column, progress=progress, workers=workers, prune=prune)

    def ensure_kind(self, kind: str) -> None:
        """An index holds either a folder's files or a catalog's items, never both (their ids share one space)."""
        current = self.db.get_meta("kind")
        if current is None:
            self.db.set_meta("kind", kind)
        elif current != kind:
            what = {"catalog": "a catalog (items)", "files": "folders of images"}
            raise BadQuery(
                f"the index at {self.path} holds {what[current]}; it cannot also hold {what[kind]}. "
                "Use another --index for it."
            )

    def ensure_fingerprint(self) -> None:
        """Record the model's fingerprint when the index gets its first vectors."""
        if self.db.fingerprint is None:
            fp = self.embedder.fingerprint()
            self.db.set_fingerprint(Fingerprint(loadable_name(self.model_name), fp.source, fp.revision, fp.dim,
                                                fp.preprocessing, fp.modalities))

    def update(self, **kwargs) -> IngestReport:
        """Re-scan every root this index has seen."""
        return self.add(self.db.roots(), **kwargs)

    def rebuild(self, model: str) -> None:
        """Switch the index to another model: drops all vectors; the next :meth:`add` re-embeds every file."""
        with self.db.transaction() as c:
            if self.db.fingerprint is not None:
                LocalVectorStore(self.db, self.db.fingerprint.dim).clear()
            c.execute("DELETE FROM meta WHERE key = 'fingerprint'")
            c.execute("UPDATE files SET mtime = -1")  # forces a re-embed of every file
        self.model_name = loadable_name(model)
        self._embedder = None
        self._store = None

    # -- reading --------------------------------------------------------------------------
    def query_vector(self, query: QueryLike) -> np.ndarray:
        """A query (text, image path or PIL image) as one normalised vector."""
        if isinstance(query, Image.Image):
            return self.embedder.embed_images([query.convert("RGB")])[0]
        if isinstance(query, os.PathLike) or _looks_like_image_path(query):
            from .decode import decode_image

            p = Path(query).expanduser()
            if not p.is_file():
                raise BadQuery(f"no such image file: {p}")
            return self.embedder.embed_images([decode_image(p, max_pixels=config.get("max_pixels")).image])[0]
        if not isinstance(query, str) or not query.strip():
            raise BadQuery("empty query: give a text or the path of an image")
        return self.embedder.embed_texts([query])[0]

    def search(self, query: QueryLike, k: int = 10) -> list[Hit]:
        """Top-``k`` images for a text or an example image (path or PIL image).

        >>> ix.search("a cat on a sofa", k=3)                                 # doctest: +SKIP
        [Hit(id=12, path='/photos/cat.jpg', score=0.31, ...), ...]
        """
        if k < 1:
            raise BadQuery("k must be at least 1")
        exclude = []
        if isinstance(query, (str, os.PathLike)) and _looks_like_image_path(query):
            row = self.db.file_by_path(str(Path(query).expanduser().resolve()))
            exclude = [row.id] if row is not None and row.status == "ok" else []
            if exclude:
                return search_vectors(self.db, self.store, self.store.get(exclude)[0], k, exclude_ids=exclude)
        return search_vectors(self.db, self.store, self.query_vector(query), k)

    def similar(self, item: str | os.PathLike | int, k: int = 10) -> list[Hit]:
        """Images most like an indexed image (by id or path) or any image file, the image itself left out."""
        if isinstance(item, int):
            if not self.db.files_by_ids([item]):
                raise NotFound(f"no item with id {item} in the index")
            return search_vectors(self.db, self.store, self.store.get([item])[0], k, exclude_ids=[item])
        return self.search(Path(item), k)

    def status(self, max_failures: int = 50) -> IndexStatus:
        counts, items = self.db.counts(), self.db.item_counts()
        fp = self.db.fingerprint
        store_info = self.store.info() if fp is not None else {}
        failures = [(r.path, r.error or "") for r in self.db.failed_files(max_failures)]
        failures += self.db.failed_items(max_failures)
        return IndexStatus(
            path=str(self.path), model=fp.name if fp else None, fingerprint=fp, schema_version=self.db.schema_version,
            files_ok=counts["ok"], files_failed=counts["failed"], vectors=store_info.get("count", 0),
            roots=self.db.roots(), failures=failures, store=store_info, kind=self.db.kind,
            items_ok=items["ok"], items_failed=items["failed"],
        )

    def __len__(self) -> int:
        return self.store.count() if self.db.fingerprint is not None else 0

    def close(self) -> None:
        if self._store is not None:
            self._store.flush()
        self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _looks_like_image_path(q) -> bool:
    if isinstance(q, os.PathLike):
        return True
    if not isinstance(q, str) or "\n" in q or len(q) > 4096:
        return False
    p = Path(q).expanduser()
    return p.suffix.lower() in IMAGE_EXTENSIONS and (p.exists() or "/" in q or os.sep in q)


def open_index(path: str | os.PathLike | None = None, *, model: str | None = None, device: str | None = None,
               create: bool = True) -> Index:
    """Open (or create) the index at ``path`` (default: ``VISDEX_INDEX`` or the platform data dir)."""
    return Index(path, model=model, device=device, create=create)
