"""Moving an index's vectors to another store, in place: local (SQLite + FAISS) <-> Milvus (a
milvus-lite file or a server), or from one Milvus to another. Files, items, tags and settings
stay where they are (the index's SQLite file); only the vectors travel, and the index records
its new store, so every later command follows it.

Crash safety: the vectors are first copied to the target and counted; only then does one SQLite
transaction switch the index to it (and, moving to local, write the vectors into SQLite in that
same transaction). A crash before the switch leaves the index on its old store, whole; the copy
left behind on a Milvus target is an unused collection. The old store's vectors are removed
after the switch.

>>> migrate_store(open_index("~/photos-index"), "milvus:./vectors.db").vectors      # doctest: +SKIP
12034
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import BadQuery, StoreError, VisdexError
from .store.backends import LOCAL, check_store, parse_store, record_store, recorded_store, store_url
from .store.local import FAISS_NAME
from .store.milvus import (
    META_CREATED,
    MilvusSpec,
    MilvusVectorStore,
    install_outbox,
    new_collection_name,
    uninstall_outbox,
)

CHUNK = 4096


@dataclass
class MigrateReport:
    source: str
    target: str
    vectors: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def migrate_store(ix, to: str, progress: Callable[[int, int], None] | None = None) -> MigrateReport:
    """Move the vectors of the open index ``ix`` to the store ``to`` ("local", "milvus:./v.db",
    "milvus://host:19530"); ``progress(done, total)`` is called per batch."""
    t0 = time.perf_counter()
    target = parse_store(to)
    source_url, target_url = recorded_store(ix.db), store_url(target)
    report = MigrateReport(source_url, target_url)
    if target_url == source_url and not (isinstance(target, MilvusSpec) and target.collection):
        raise BadQuery(f"the index at {ix.path} already keeps its vectors in {target_url}")
    check_store(target)
    fp = ix.db.fingerprint
    if fp is None:  # no vectors yet: only the choice changes
        _switch(ix, target, None, source_url)
        return report
    source = ix.store
    source.flush()  # a Milvus source pushes what is still queued
    total = source.count()
    if isinstance(target, MilvusSpec):
        dst = MilvusVectorStore(ix.db, fp.dim, target, collection=target.collection or new_collection_name(),
                                install=False)  # fmt: skip
        try:
            for ids, vecs in source.iter_vectors(CHUNK):
                dst.write_direct(ids, vecs)
                report.vectors += len(ids)
                if progress:
                    progress(report.vectors, total)
            if dst.count() != total:
                raise StoreError(f"copied {dst.count()} of {total} vectors to {target_url}; the index stays on "
                                 f"{source_url}")  # fmt: skip
        except BaseException:
            with contextlib.suppress(Exception):
                dst.drop_collection()
            raise
        _switch(ix, target, dst.collection, source_url)
    else:
        with ix.db.transaction():  # the vectors and the switch commit together
            ix.db.delete_all_vectors()
            for ids, vecs in source.iter_vectors(CHUNK):
                ix.db.insert_vectors([(int(i), v.tobytes()) for i, v in zip(ids, vecs, strict=True)])
                report.vectors += len(ids)
                if progress:
                    progress(report.vectors, total)
            _switch(ix, target, None, source_url)
    _cleanup(ix, source, report)
    report.seconds = time.perf_counter() - t0
    return report


def _switch(ix, target, collection: str | None, source_url: str) -> None:
    """One transaction: record the new store; the outbox comes (to Milvus) or goes (to local)."""
    with ix.db.transaction():
        if isinstance(target, MilvusSpec):
            if source_url == LOCAL:
                ix.db.delete_all_vectors()
            record_store(ix.db, target, collection)
            if collection is not None:
                ix.db.set_meta(META_CREATED, collection)
            uninstall_outbox(ix.db)  # an empty outbox: changes queued for the old collection are in the copy
            install_outbox(ix.db)
        else:
            uninstall_outbox(ix.db)
            record_store(ix.db, LOCAL)
        ix.db.bump_generation()
    ix.reload_store(target if isinstance(target, MilvusSpec) else None)


def _cleanup(ix, source, report: MigrateReport) -> None:
    """Remove the old store's vectors once the index has switched (failures are notes, not errors)."""
    if isinstance(source, MilvusVectorStore):
        try:
            source.drop_collection()
        except VisdexError as e:
            report.notes.append(f"the old collection {source.collection} could not be dropped: {e}")
        return
    for name in (FAISS_NAME, FAISS_NAME + ".json"):
        with contextlib.suppress(OSError):
            (ix.path / name).unlink()
    ix.db.vacuum()  # give back the space the vectors took in the SQLite file
