"""Which vector store an index uses: ``local`` (SQLite + FAISS, the default) or Milvus. The choice is
made when the index is created (``--store`` or ``VISDEX_STORE``), recorded in its meta table, and
every later command follows it; moving an index's vectors to another store is ``visdex migrate``.

>>> parse_store("milvus://localhost:19530").url
'milvus://localhost:19530'
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadQuery
from .base import VectorStore
from .db import DB_NAME, IndexDB
from .milvus import META_COLLECTION, META_CREATED, META_STORE, MilvusSpec, parse_milvus_url

LOCAL = "local"


def parse_store(text: str) -> str | MilvusSpec:
    """``"local"`` or a :class:`MilvusSpec`; anything else is a BadQuery that lists the forms."""
    text = (text or "").strip()
    if text.lower() in ("", LOCAL):
        return LOCAL
    return parse_milvus_url(text)


def store_url(spec: str | MilvusSpec) -> str:
    return spec if isinstance(spec, str) else spec.url


def recorded_store(db: IndexDB) -> str:
    """The store URL the index recorded (``"local"`` when none)."""
    return db.get_meta(META_STORE) or LOCAL


def check_store(spec: str | MilvusSpec) -> None:
    """Connect once, so a bad server fails before the index is written to."""
    if isinstance(spec, MilvusSpec):
        from .milvus import connect

        connect(spec)


def choose_store(path: Path, store: str | None, create: bool) -> str | MilvusSpec | None:
    """Before an index is opened: the store asked for (``store``, or ``VISDEX_STORE`` for a new index),
    parsed and, for a new index, checked -- so a bad URL or a server that does not answer leaves
    nothing behind. None: keep what the index has."""
    from .. import config

    new = create and not (Path(path) / DB_NAME).exists()
    text = store if store is not None else (config.get("store") if new else None)
    if text is None:
        return None
    spec = parse_store(text)
    if new:
        check_store(spec)
    return spec


def apply_store(db: IndexDB, spec: str | MilvusSpec | None) -> None:
    """Record ``spec`` for an index without vectors; an index with vectors keeps its store unless it is moved
    with ``visdex migrate``."""
    if spec is None:
        return
    current, url = recorded_store(db), store_url(spec)
    if url == current:
        return
    if db.fingerprint is not None:
        raise BadQuery(f"the index at {db.dir} keeps its vectors in {current}, not {url}; move them with: "
                       f"visdex migrate --index {db.dir} --to {url}")  # fmt: skip
    check_store(spec)
    record_store(db, spec)


def record_store(db: IndexDB, spec: str | MilvusSpec, collection: str | None = None) -> None:
    with db.transaction() as c:
        c.execute("DELETE FROM meta WHERE key IN (?, ?)", (META_COLLECTION, META_CREATED))
        if isinstance(spec, MilvusSpec) and (collection or spec.collection):
            c.execute("INSERT INTO meta VALUES (?, ?)", (META_COLLECTION, collection or spec.collection))
        db.set_meta(META_STORE, store_url(spec))


def open_store(db: IndexDB, dim: int, *, ann: str | None = None, spec: str | MilvusSpec | None = None) -> VectorStore:
    """The index's vector store. ``spec``: the one parsed from ``--store`` in this run (it may carry a token
    that is never recorded); used when it is the recorded one."""
    url = recorded_store(db)
    if url == LOCAL:
        from .local import LocalVectorStore

        return LocalVectorStore(db, dim, ann=ann)
    from .milvus import MilvusVectorStore

    given = spec if isinstance(spec, MilvusSpec) and spec.url == url else None
    return MilvusVectorStore(db, dim, given or parse_milvus_url(url), ann=ann)
