"""The SQL behind the web UI's library views that :mod:`visdex.browse` does not hold: files per folder (the
folder tree) and the best tag of each image (the map coloured by tag). Named functions over an
:class:`~visdex.store.db.IndexDB`, so callers never write SQL.

>>> folder_counts(db)                                    # doctest: +SKIP
[('/photos/2023', 412), ('/photos/2023/trip', 40)]
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence

from ..errors import BadQuery

# a file's folder: its path up to the last "/", without it (as the `folder` filter field reads it)
FOLDER_SQL = "rtrim(rtrim(files.path, replace(files.path, '/', '')), '/')"
_TOO_COMPLEX = re.compile(r"too large|too many|too deep|stack overflow|too long", re.I)


def _rows(db, sql: str, params: Sequence = ()) -> list[tuple]:
    try:
        return db.conn.execute(sql, list(params)).fetchall()
    except sqlite3.OperationalError as e:
        if not _TOO_COMPLEX.search(str(e)):
            raise
        raise BadQuery(f"where: the filter is too complex for SQLite ({e}); use fewer conditions") from None


def folder_counts(db, cond: str = "1", params: Sequence = ()) -> list[tuple[str, int]]:
    """(folder, files directly in it) for every folder holding an indexed file that ``cond`` (SQL over
    ``files``, from :func:`visdex.filters.compile_where`) selects; by folder."""
    return _rows(
        db,
        f"SELECT {FOLDER_SQL} AS folder, COUNT(*) FROM files WHERE files.status = 'ok' AND ({cond}) "
        "GROUP BY folder ORDER BY folder",
        params,
    )


def best_tags(db) -> list[tuple[int, str]]:
    """(file id, label) of the best-scoring tag of every tagged, indexed file; by id."""
    return _rows(
        db,
        "SELECT file_id, label FROM (SELECT tags.file_id, tags.label, row_number() OVER "
        "(PARTITION BY tags.file_id ORDER BY tags.score DESC, tags.label) AS r FROM tags "
        "JOIN files ON files.id = tags.file_id WHERE files.status = 'ok') WHERE r = 1 ORDER BY file_id",
    )
