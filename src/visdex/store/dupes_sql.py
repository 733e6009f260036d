"""The duplicate finder's SQL (:mod:`visdex.dupes`): statements on an index's ``files`` table, kept with the store
so that the finder itself holds none."""

from __future__ import annotations

from .db import IndexDB


def same_hash_groups(db: IndexDB) -> list[list[int]]:
    """Ids of readable files that share a content hash (the same bytes), one list per hash seen more than once,
    each sorted."""
    rows = db.conn.execute(
        "SELECT group_concat(id) FROM files WHERE status = 'ok' AND hash IS NOT NULL GROUP BY hash HAVING COUNT(*) > 1"
    )
    return [sorted(int(x) for x in ids.split(",")) for (ids,) in rows]
