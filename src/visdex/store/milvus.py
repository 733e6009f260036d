"""Milvus as the vector store: a milvus-lite file on this machine (``milvus:./vectors.db``) or a
Milvus server / cluster (``milvus://host:19530``), behind the same :class:`VectorStore` contract.

Who holds what: the index's SQLite file stays the truth for files, items, tags and settings; the
vectors live in one Milvus collection, each with the scalar fields ``--where`` filters on (path,
folder, name, format, width, height, size, mtime, EXIF date, camera; a catalog's key, title and
attributes), so a filter runs inside Milvus as a boolean expression (:mod:`.milvus_where`).

Consistency between the two: a write never goes to Milvus directly. ``upsert`` / ``delete`` put the
change in an *outbox* table of the same SQLite transaction as the file rows (so a rolled-back batch
never reaches Milvus), and committed changes are pushed after the commit; a crash in between leaves
them in the outbox, pushed by the next process that opens the index. Metadata that changes without
a new vector (a moved file) reaches the outbox through SQLite triggers. Every read pushes pending
changes first, so reads see every committed write.

>>> store = MilvusVectorStore(IndexDB(tmp_dir), dim=512, spec="milvus:./vectors.db")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from ..errors import BadQuery, MissingDependency, StoreError
from .base import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, VectorStore, as_ids, empty_results, pad_results
from .db import IndexDB
from .milvus_bulk import BULK_MIN, DONE, FILE_ROWS, BulkImporter, BulkUnsupported
from .milvus_where import INT_FIELDS, JSON_FIELDS, VARCHAR_FIELDS, MilvusFilter, scalar_fields

log = logging.getLogger(__name__)

META_STORE = "store"  # "local" (or absent) / the store's URL without credentials
META_COLLECTION = "milvus_collection"
META_CREATED = "milvus_created"  # the collection this index created: if it goes missing, vectors were lost
META_INDEX = "milvus_index"  # JSON: the collection's vector index as built (type, params, rows it was sized for)
META_IMPORT = "milvus_import"  # JSON: an import job may be running (staged files); waited for before other writes
OUTBOX = "milvus_outbox"
CONNECT_TIMEOUT = 10.0
DEFAULT_PORT = 19530
PUSH_AT = 1024  # pending changes that make a commit push them at once (else: at flush or the next read)
PUSH_BATCH = 2048
BULK_AT = 1_000_000  # inside bulk_load(): pending changes that make a commit push them (~2 GB of 512-d vectors)
ID_FILTER_CHUNK = 50_000  # ids per "id in [...]" expression; larger allowed sets are searched in chunks
MAX_TOPK = 16_384  # Milvus' limit on k
IVF_NLIST, IVF_NPROBE = 1024, 32  # a collection made before visdex sized its index (see ivf_lists) was built so
DEFAULT_ROWS = 1_000_000  # an index whose size is unknown is sized for this many vectors
SEGMENT_BYTES = 1 << 30  # Milvus' dataCoord.segment.maxSize (1024 MB): IVF lists are built per sealed segment
RESIZE_GROWTH = 2.0  # re-build an IVF index once the collection holds this many times the rows it was sized for
DISKANN_SEARCH_LIST = 100
MILVUS_ANN = ("auto", "flat", "hnsw", "ivf-sq8", "ivfpq", "diskann")
ROOT_FIELD = "root"  # partition key: a file's root folder (or shard), "catalog" for items
PARTITIONS = 64  # Milvus hashes partition-key values into this many partitions
NULLABLE_SINCE = (2, 5)  # older servers ignore nullable=True and refuse rows with a None: no filter fields there
UPSERT_ROUTES_SINCE = (2, 4)  # 2.3's upsert ignores the partition key (rows land where `root == ...` never looks)
IMPORT_VISIBLE_S, BULK_POLL_S = 600.0, 1.0  # how long an import's rows may take to reach searches, polled so
UNKNOWN_JOB_WAIT_S = 120.0  # the same for a job a process was killed while starting (it may have failed)
COPY_BATCH = 2048  # rows per request while a re-size copies a collection aside
DROP_GRACE_S = 1.0  # after the alias moves, searches that resolved it before get this long on the old collection


_OUTBOX_DDL = (
    f"CREATE TABLE IF NOT EXISTS {OUTBOX} (id INTEGER PRIMARY KEY, op TEXT NOT NULL, vec BLOB)",
    # A trigger's INSERT OR IGNORE is overridden by the outer UPSERT's conflict policy: test with NOT EXISTS.
    f"""CREATE TRIGGER IF NOT EXISTS {OUTBOX}_files AFTER UPDATE OF path, size, mtime, width, height, format,
        taken_at, camera ON files WHEN NEW.status = 'ok' BEGIN INSERT INTO {OUTBOX} (id, op) SELECT NEW.id, 'meta'
        WHERE NOT EXISTS (SELECT 1 FROM {OUTBOX} WHERE id = NEW.id); END""",
    f"""CREATE TRIGGER IF NOT EXISTS {OUTBOX}_items AFTER UPDATE OF key, title, attrs ON items
        WHEN NEW.status = 'ok' BEGIN INSERT INTO {OUTBOX} (id, op) SELECT NEW.id, 'meta'
        WHERE NOT EXISTS (SELECT 1 FROM {OUTBOX} WHERE id = NEW.id); END""",
)
_OUTBOX_OBJECTS = (OUTBOX, f"{OUTBOX}_files", f"{OUTBOX}_items")


# -- where the collection is -------------------------------------------------------------
@dataclass(frozen=True)
class MilvusSpec:
    """A parsed ``milvus:`` store URL. ``uri`` is what pymilvus connects to: an absolute ``.db`` path
    (milvus-lite) or ``http(s)://host:port``. The token is never recorded in the index."""

    uri: str
    db_name: str = ""
    collection: str | None = None
    token: str | None = field(default=None, repr=False, compare=False)

    @property
    def lite(self) -> bool:
        return not self.uri.startswith(("http://", "https://"))

    @property
    def url(self) -> str:
        """The form recorded in the index (no credentials): ``milvus:/abs/vectors.db``, ``milvus://host:19530/db``."""
        if self.lite:
            return f"milvus:{self.uri}"
        scheme, rest = self.uri.split("://", 1)
        base = f"milvus://{rest}" if scheme == "http" else f"milvus+https://{rest}"
        return base + (f"/{self.db_name}" if self.db_name else "")

    def describe(self) -> str:
        return f"milvus-lite {self.uri}" if self.lite else f"Milvus at {self.uri}" + (
            f" (database {self.db_name})" if self.db_name else "")  # fmt: skip


def parse_milvus_url(text: str) -> MilvusSpec:
    """``milvus:./vectors.db`` (milvus-lite; the path is made absolute), ``milvus://host[:port][/db]``,
    ``milvus+https://host[:port][/db]``; ``?token=user:password`` or ``user:password@`` in the URL give a
    token for this run only, ``?collection=NAME`` picks the collection.

    >>> parse_milvus_url("milvus://milvus.internal/shop?collection=products")
    MilvusSpec(uri='http://milvus.internal:19530', db_name='shop', collection='products')
    """
    bad = (f"bad {{field}} {text!r}: use local, milvus:./vectors.db (milvus-lite, a file), milvus://host:19530 "
           "or milvus+https://host:443 (a Milvus server; /dbname and ?collection=NAME are optional)")  # fmt: skip
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() not in ("milvus", "milvus+http", "milvus+https"):
        raise BadQuery(bad, field="store")
    if not rest.startswith("//"):  # milvus:PATH, a milvus-lite file
        if scheme.lower() != "milvus" or not rest.strip():
            raise BadQuery(bad, field="store")
        path, _, query = rest.partition("?")
        if not path.endswith(".db"):
            raise BadQuery(
                f"bad {{field}} {text!r}: a milvus-lite file name ends in .db (milvus:./vectors.db)", field="store"
            )
        opts = parse_qs(query)
        return MilvusSpec(str(Path(path).expanduser().resolve()), collection=_collection_opt(opts, text))
    parts = urlsplit(text)
    if not parts.hostname:
        raise BadQuery(bad, field="store")
    try:
        port = parts.port or (443 if scheme.lower() == "milvus+https" else DEFAULT_PORT)
    except ValueError:
        raise BadQuery(bad, field="store") from None
    opts = parse_qs(parts.query)
    token = opts.get("token", [None])[0]
    if parts.username:
        token = unquote(parts.username) + (":" + unquote(parts.password) if parts.password else "")
    db_name = parts.path.strip("/")
    if "/" in db_name:
        raise BadQuery(bad, field="store")
    http = "https" if scheme.lower() == "milvus+https" else "http"
    return MilvusSpec(f"{http}://{parts.hostname}:{port}", db_name, _collection_opt(opts, text), token)


def _collection_opt(opts: dict, text: str) -> str | None:
    name = opts.get("collection", [None])[0]
    if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", name):
        raise BadQuery(
            f"bad {{field}} {text!r}: a collection name is letters, digits and _, not starting with a digit",
            field="store",
        )
    return name


def _pymilvus(lite: bool):
    try:
        import pymilvus
    except ImportError as e:
        raise MissingDependency("pymilvus", extra="milvus", purpose="the Milvus vector store") from e
    if lite:
        import importlib.util

        if importlib.util.find_spec("milvus_lite") is None:
            raise MissingDependency("milvus-lite", extra="milvus", purpose="a milvus-lite file store")
    # pymilvus logs every failed call with a traceback; visdex reports them as one StoreError line.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    return pymilvus


_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def connect(spec: MilvusSpec):
    """A client for ``spec`` (one per process and server); a server that does not answer is a StoreError."""
    pymilvus = _pymilvus(spec.lite)
    token = _token(spec)
    key = (spec.uri, spec.db_name, token)
    with _clients_lock:
        if key not in _clients:
            if spec.lite:
                Path(spec.uri).parent.mkdir(parents=True, exist_ok=True)
            try:
                _clients[key] = pymilvus.MilvusClient(uri=spec.uri, token=token, db_name=spec.db_name,
                                                      timeout=CONNECT_TIMEOUT)  # fmt: skip
            except Exception as e:  # pymilvus raises MilvusException, grpc errors, ValueError, OSError
                raise StoreError(f"cannot reach {spec.describe()}: {_reason(e)}" + _hint(spec, e)) from e
        return _clients[key]


def _token(spec: MilvusSpec) -> str:
    from .. import config

    return spec.token or config.get("milvus_token") or ""


def _default_importer(spec: MilvusSpec) -> BulkImporter | None:
    """Bulk insert for a Milvus server when ``VISDEX_MILVUS_BULK_STAGE`` says where to stage files; else None."""
    from .. import config

    stage = config.get("milvus_bulk_stage")
    if spec.lite or not stage:
        return None
    return BulkImporter(spec.uri, stage, token=_token(spec), db_name=spec.db_name)


def milvus_memory() -> float:
    """The Milvus query nodes' RAM in bytes (``VISDEX_MILVUS_MEMORY``), the budget "auto" sizes the index for."""
    from .. import config
    from ..errors import BadSetting
    from ..sizing import parse_bytes

    raw = config.get("milvus_memory")
    try:
        return parse_bytes(raw) * 1024**3
    except ValueError as e:
        raise BadSetting(f"VISDEX_MILVUS_MEMORY: {e}") from None


def _reason(e: Exception) -> str:
    msg = getattr(e, "message", None) or str(e)
    return " ".join(str(msg).split())


def _hint(spec: MilvusSpec, e: Exception) -> str:
    text = _reason(e).lower()
    if "auth" in text or "token" in text or "password" in text or "permission" in text:
        return "; give a token with VISDEX_MILVUS_TOKEN=user:password"
    if spec.lite:
        return ""
    return "; is the server running? `docker compose up -d` next to visdex's docker-compose.yml starts one"


def _server_version(client) -> tuple[int, int]:
    """(major, minor) of the server; an unreadable version counts as current."""
    try:
        m = re.match(r"v?(\d+)\.(\d+)", str(client.get_server_version()))
    except Exception:  # pymilvus raises MilvusException / grpc errors: a server that does not say
        m = None
    return (int(m[1]), int(m[2])) if m else (99, 0)


def _id_exprs(ids) -> list[str]:
    """``id in [...]`` expressions of at most :data:`ID_FILTER_CHUNK` ids each (none for no ids)."""
    ids = as_ids(ids)
    return [f"id in [{','.join(map(str, ids[s : s + ID_FILTER_CHUNK].tolist()))}]"
            for s in range(0, len(ids), ID_FILTER_CHUNK)]  # fmt: skip


def new_collection_name() -> str:
    return f"visdex_{uuid.uuid4().hex[:16]}"


# -- the store ---------------------------------------------------------------------------
class MilvusVectorStore(VectorStore):
    """Vectors in a Milvus collection; ``spec`` (a :class:`MilvusSpec` or URL) defaults to the one the
    index recorded. ``ann``: "auto" (FLAT on milvus-lite; on a server HNSW, or by :func:`auto_index` IVF codes /
    DISKANN past the query nodes' RAM), "flat", "hnsw", "ivf-sq8", "ivfpq", "diskann"; the local store's kinds map
    by :func:`_milvus_index`. ``collection`` overrides the recorded one. ``bulk``: how imports reach a Milvus server
    (default: :class:`~visdex.store.milvus_bulk.BulkImporter` when ``VISDEX_MILVUS_BULK_STAGE`` is set)."""

    def __init__(
        self,
        db: IndexDB,
        dim: int,
        spec: MilvusSpec | str | None = None,
        *,
        ann: str | None = None,
        collection: str | None = None,
        install: bool = True,
        bulk: BulkImporter | None = None,
    ):
        self.db = db
        self.dim = int(dim)
        spec = spec if spec is not None else db.get_meta(META_STORE)
        if not spec or spec == "local":
            raise StoreError(f"the index at {db.dir} does not keep its vectors in Milvus")
        self.spec = parse_milvus_url(spec) if isinstance(spec, str) else spec
        if ann is not None:
            _milvus_index(ann)  # a bad kind fails before anything is written
            if ann != db.get_meta("ann"):
                db.set_meta("ann", ann)
        self.ann = db.get_meta("ann") or "auto"
        name = collection or self.spec.collection or db.get_meta(META_COLLECTION)
        if name is None:
            name = new_collection_name()
            db.set_meta(META_COLLECTION, name)
        self.collection: str = name
        self.ef_search: int | None = None
        self._has_root = True
        self._has_fields = True  # False: a collection on a server older than 2.5 (id, vector, root only)
        self._version = (99, 0)  # the server's (major, minor), read on connecting
        self._client = None
        self._lock = threading.RLock()
        self._pending = 0
        self._outbox = install
        self._hold = 0  # open bulk_load() blocks
        self._expected = 0  # rows a bulk_load() announced: the new collection's index is sized for them
        self.bulk = bulk if bulk is not None else _default_importer(self.spec)
        if install:  # False while ``visdex migrate`` fills a collection the index does not use yet
            install_outbox(db)
            if db.get_meta(META_STORE) is None:
                db.set_meta(META_STORE, self.spec.url)

    # -- connection and collection --------------------------------------------------------
    @property
    def index(self):
        """The connected client, the collection created or loaded (the server warms up with this)."""
        return self._conn()

    @property
    def index_type(self) -> str:
        built = self._built()
        return built["type"] if built else self._index_plan(self._size_hint())[0]

    def _index_plan(self, n: int) -> tuple[str, dict]:
        """(Milvus index type, build parameters) for a collection of ``n`` vectors."""
        kind = _milvus_index(self.ann)
        if kind == "auto":
            kind = "FLAT" if self.spec.lite else auto_index(n, self.dim, milvus_memory())
        return kind, index_params(kind, self.dim, n)

    def _built(self) -> dict | None:
        """The index this collection was built with (None: a collection made before visdex recorded it)."""
        raw = self.db.get_meta(META_INDEX)
        rec = json.loads(raw) if raw else None
        return rec if rec and rec.get("collection") == self.collection else None

    def _size_hint(self) -> int:
        """Rows a new collection is about to hold: announced by bulk_load(), or waiting in the outbox."""
        queued = 0
        if self._outbox:
            queued = self.db.conn.execute(f"SELECT COUNT(*) FROM {OUTBOX} WHERE op = 'upsert'").fetchone()[0]
        return max(1, self._expected, queued)

    def _conn(self):
        with self._lock:
            if self._client is not None:
                return self._client
            client = connect(self.spec)
            with self._errors("open the collection"):
                self._version = (99, 0) if self.spec.lite else _server_version(client)
                if client.has_collection(self.collection):
                    self._check_dim(client)  # also notes whether it has the root partition key
                    client.load_collection(self.collection)
                elif self.db.get_meta(META_CREATED) == self.collection:
                    raise StoreError(
                        f"the collection {self.collection} of the index at {self.db.dir} is gone from "
                        f"{self.spec.describe()}: its vectors are lost. Re-embed every file with: "
                        f"visdex index --index {self.db.dir} --rebuild"
                    )
                else:
                    self._create(client)
                    self.db.set_meta(META_CREATED, self.collection)
            self._client = client
            return client

    def _check_dim(self, client) -> None:
        desc = client.describe_collection(self.collection)
        self._has_root = any(f["name"] == ROOT_FIELD for f in desc["fields"])  # collections made before it: none
        self._has_fields = any(f["name"] == "path" for f in desc["fields"])
        vec = next((f for f in desc["fields"] if f["name"] == "vector"), None)
        dim = int((vec or {}).get("params", {}).get("dim", -1))
        if dim != self.dim:
            raise StoreError(f"the Milvus collection {self.collection} holds {dim}-d vectors, not {self.dim}-d: "
                             "it belongs to another index or model; pick another with ?collection=NAME")  # fmt: skip

    def _schema(self):
        """The collection's fields: id, vector, the root partition key and the nullable ``--where`` fields (Milvus
        2.5+; an older server gets id, vector and root only: its filters are answered by SQL, see compile_where)."""
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        if self._has_root:  # partition key: a search filtered to some roots (folders, shards) reads only theirs
            schema.add_field(ROOT_FIELD, DataType.VARCHAR, max_length=65_535, is_partition_key=True)
        if self._has_fields:
            for name in VARCHAR_FIELDS:
                schema.add_field(name, DataType.VARCHAR, max_length=65_535, nullable=True)
            for name in INT_FIELDS:
                schema.add_field(name, DataType.INT64, nullable=True)
            schema.add_field("mtime", DataType.DOUBLE, nullable=True)
            for name in JSON_FIELDS:
                schema.add_field(name, DataType.JSON, nullable=True)
        return schema

    def _make(self, client, name: str, kind: str, build: dict) -> None:
        params = client.prepare_index_params()
        params.add_index("vector", index_type=kind, metric_type="IP", params=build)
        # Strong: a search sees every write acknowledged before it, from any process.
        client.create_collection(name, schema=self._schema(), index_params=params, consistency_level="Strong",
                                 **({"num_partitions": PARTITIONS} if self._has_root else {}))  # fmt: skip

    def _create(self, client) -> None:
        """A new collection. On a server it is made under a physical name with ``self.collection`` as an alias,
        so a re-size can build a new one aside and move the alias (:meth:`fit_index`); milvus-lite has no aliases."""
        self._has_fields = self._version >= NULLABLE_SINCE
        rows = self._size_hint()
        kind, build = self._index_plan(rows)
        if self.spec.lite:
            self._make(client, self.collection, kind, build)
        else:
            self._drop_strays(client, keep=None)  # a killed process's half-made collection
            physical = self._physical_name()
            self._make(client, physical, kind, build)
            client.create_alias(physical, self.collection)
        self._record_index(kind, build, rows)
        log.info("created Milvus collection %s (%s, %d-d) on %s", self.collection, kind, self.dim,
                 self.spec.describe())  # fmt: skip

    def _physical_name(self) -> str:
        return f"{self.collection}__{uuid.uuid4().hex[:8]}"

    def _target(self, client) -> str | None:
        """The collection ``self.collection`` is an alias of; None: it is a collection itself (milvus-lite, or made
        before visdex used aliases)."""
        if self.spec.lite:
            return None
        try:
            return client.describe_alias(self.collection)["collection_name"]
        except Exception:  # pymilvus raises MilvusException: not an alias
            return None

    def _drop_strays(self, client, keep: str | None) -> None:
        """Drop this index's physical collections that no alias points at (a re-size or create that was killed)."""
        prefix = f"{self.collection}__"
        for name in client.list_collections():
            if name.startswith(prefix) and name != keep and re.fullmatch(r"[0-9a-f]{8}", name[len(prefix) :]):
                log.info("dropping %s, left by an interrupted re-size", name)
                client.drop_collection(name)

    def _record_index(self, kind: str, params: dict, rows: int) -> None:
        self.db.set_meta(META_INDEX, json.dumps({"collection": self.collection, "type": kind, "params": params,
                                                 "rows": int(rows)}))  # fmt: skip

    def fit_index(self) -> bool:
        """Re-build the vector index when the collection outgrew the one it has (indexing ends with this): an IVF
        index sized for a collection a :data:`RESIZE_GROWTH` times smaller gets the nlist of its size now, and
        "auto" on a server moves to IVF codes or DISKANN once the vectors pass the query nodes' RAM. Milvus cannot
        change an index in place. On a server the new index is built aside: a new collection, filled from the old
        one, loaded, then the alias searches go through moves to it (searches keep answering from the old one
        meanwhile). On milvus-lite (no aliases) and on a collection made before visdex used aliases: release, drop,
        create, load in place (searches wait meanwhile). True if re-built."""
        built = self._built()
        if built is None:
            return False  # a collection made before visdex sized its index is left as it was built
        client = self._conn()
        n = self._count(client)
        kind, params = self._index_plan(n)
        if kind == built["type"] and (params == built["params"] or n < RESIZE_GROWTH * built["rows"]):
            return False
        target = self._target(client)
        with self._lock, self._errors("re-build the vector index"):
            if target is not None:
                self._rebuild_aside(client, target, kind, params)
            else:
                self._rebuild_in_place(client, kind, params)
        self._record_index(kind, params, n)
        log.info("re-built the vector index of %s for %d vectors: %s %s (was %s %s for %d)", self.collection, n,
                 kind, params, built["type"], built["params"], built["rows"])  # fmt: skip
        return True

    def _rebuild_in_place(self, client, kind: str, params: dict) -> None:
        client.release_collection(self.collection)
        client.drop_index(self.collection, "vector")
        index = client.prepare_index_params()
        index.add_index("vector", index_type=kind, metric_type="IP", params=params)
        client.create_index(self.collection, index)
        client.load_collection(self.collection)

    def _rebuild_aside(self, client, old: str, kind: str, params: dict) -> None:
        """Build a collection with the new index next to ``old``, copy every row into it, load it, move the alias.
        Writes wait (they go through this store's lock); searches through the alias read ``old`` until it moves. A
        process killed meanwhile leaves ``old`` in use and a stray that the next re-size drops."""
        self._drop_strays(client, keep=old)
        new = self._physical_name()
        self._make(client, new, kind, params)
        try:
            fields = ["id", "vector"] + ([ROOT_FIELD] if self._has_root else [])
            fields += [*VARCHAR_FIELDS, *INT_FIELDS, "mtime", *JSON_FIELDS] if self._has_fields else []
            step = max(1, min(COPY_BATCH, (8 << 20) // (4 * self.dim)))
            it = client.query_iterator(old, batch_size=step, filter="", output_fields=fields)
            try:
                while rows := it.next():
                    client.insert(new, [dict(r) for r in rows])
            finally:
                it.close()
            have, want = self._count_in(client, new), self._count_in(client, old)
            if have != want:
                raise StoreError(f"the re-sized copy of {self.collection} holds {have} rows, not {want}: not used")
        except BaseException:
            client.drop_collection(new)
            raise
        client.alter_alias(new, self.collection)
        time.sleep(DROP_GRACE_S)
        client.drop_collection(old)

    def _errors(self, what: str):
        return _MilvusErrors(self, what)

    # -- the outbox ----------------------------------------------------------------------
    def _queue(self, rows: list[tuple[int, str, bytes | None]]) -> None:
        with self.db.transaction() as c:
            c.executemany(
                f"INSERT INTO {OUTBOX} (id, op, vec) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET op = excluded.op, vec = excluded.vec",
                rows,
            )
            self.db.bump_generation()
            self.db.after_commit(lambda: self._after_commit(len(rows)))

    def _after_commit(self, n: int) -> None:
        self._pending += n
        if self._pending >= (BULK_AT if self._hold else PUSH_AT):
            self.push()

    @contextmanager
    def bulk_load(self, rows: int = 0) -> Iterator[MilvusVectorStore]:
        """A block of many writes (an import of ``rows`` vectors): committed changes wait in the outbox (up to
        :data:`BULK_AT`) and reach Milvus together when the block ends -- by a bulk import job on a Milvus server
        that can run one (see :mod:`.milvus_bulk`), else by batched upserts -- and a collection made meanwhile has
        its index sized for ``rows``. A block left by an exception pushes nothing (the next read does)."""
        self._expected = max(self._expected, int(rows))
        self._hold += 1
        try:
            yield self
        finally:
            self._hold -= 1
        if not self._hold:
            self.push()

    def pending(self) -> int:
        return self.db.conn.execute(f"SELECT COUNT(*) FROM {OUTBOX}").fetchone()[0]

    def push(self) -> int:
        """Send committed changes to Milvus; returns how many. Inside an open transaction nothing is sent:
        its rows may still roll back."""
        if self.db.conn.in_transaction:
            return 0
        sent = 0
        with self._lock:
            client = self._conn()
            self._await_import(client)
            sent += self._bulk_push(client)
            while True:
                with self.db.transaction() as c:
                    rows = c.execute(f"SELECT id, op, vec FROM {OUTBOX} ORDER BY id LIMIT ?", (PUSH_BATCH,)).fetchall()
                    if not rows:
                        break
                    self._apply(client, rows)
                    c.executemany(f"DELETE FROM {OUTBOX} WHERE id = ?", [(r[0],) for r in rows])
                    sent += len(rows)
            self._pending = 0
        return sent

    def _apply(self, client, rows: list[tuple]) -> None:
        deletes = [i for i, op, _ in rows if op == "delete"]
        ids = [i for i, op, _ in rows if op == "upsert"]
        vecs = [np.frombuffer(v, np.float32) for _, op, v in rows if op == "upsert"]
        refresh = [i for i, op, _ in rows if op == "meta"]  # metadata changed, the vector did not
        if refresh:
            found = self._fetch(client, refresh)
            ids += list(found)
            vecs += list(found.values())
        with self._errors("write to the collection"):
            if deletes:
                client.delete(self.collection, ids=deletes)
        if ids:
            self._write(client, ids, vecs)

    def _bulk_push(self, client) -> int:
        """The outbox's new vectors (ids not in the collection) by one import job, when a Milvus server and a stage
        are there and enough are waiting; returns how many went. The rest (replaced vectors, deletes) and anything
        the server refuses go by upserts."""
        if self.bulk is None or not self.bulk.stage:
            return 0
        if self.db.conn.execute(f"SELECT COUNT(*) FROM {OUTBOX} WHERE op = 'upsert'").fetchone()[0] < BULK_MIN:
            return 0
        before = self._count(client)
        empty = before == 0
        staged: list[str] = []
        sent: list[tuple[int, bytes]] = []
        rec: dict | None = None
        job: str | None = None
        try:
            last = -1
            while True:
                rows = self.db.conn.execute(f"SELECT id, vec FROM {OUTBOX} WHERE op = 'upsert' AND id > ? ORDER BY id "
                                            "LIMIT ?", (last, FILE_ROWS)).fetchall()  # fmt: skip
                if not rows:
                    break
                last = rows[-1][0]
                present = set() if empty else self._present(client, [i for i, _ in rows])
                new = [(int(i), v) for i, v in rows if int(i) not in present]
                if new:
                    vecs = [np.frombuffer(v, np.float32) for _, v in new]
                    staged.append(self.bulk.write(self._rows([i for i, _ in new], vecs), self.dim))
                    sent += new
            if len(sent) < BULK_MIN:
                return 0
            # recorded before the job starts: a process killed from here on leaves a job that the next one waits for,
            # and for its rows to reach searches (until then a re-import would not see them: two rows of one id)
            rec = {"collection": self.collection, "files": staged, "rows": before + len(sent)}
            self.db.set_meta(META_IMPORT, json.dumps(rec))
            job = self.bulk.start(self.collection, [self.bulk.relative(u) for u in staged])
            self.db.set_meta(META_IMPORT, json.dumps({**rec, "job": job}))
            self.bulk.wait(job)
            self._await_rows(client, before + len(sent))
        except BulkUnsupported as e:
            log.warning("Milvus bulk insert did not run (%s): batched upserts instead", e)
            if job is None and rec is not None:  # refused at the start: no rows of ours will come
                self.db.set_meta(META_IMPORT, json.dumps({k: v for k, v in rec.items() if k != "rows"}))
            self._await_import(client)  # a job that did start must end before its ids are upserted
            return 0
        finally:
            self.bulk.remove(staged)
        with self.db.transaction() as c:  # only rows unchanged since they were staged leave the outbox
            c.executemany(f"DELETE FROM {OUTBOX} WHERE id = ? AND op = 'upsert' AND vec = ?", sent)
            c.execute("DELETE FROM meta WHERE key = ?", (META_IMPORT,))
        log.info("Milvus bulk insert: %d vectors in %d file(s) into %s", len(sent), len(staged), self.collection)
        return len(sent)

    def _await_rows(self, client, n: int, timeout: float = IMPORT_VISIBLE_S, strict: bool = True) -> None:
        """Wait until searches see ``n`` rows: a 2.3 server reports an import done before its segments are loaded
        (~20 s later here), and reads promise every committed write. ``strict``: a timeout is an error."""
        deadline = time.monotonic() + timeout
        while (have := self._count(client)) < n:
            if time.monotonic() > deadline:
                if not strict:
                    log.warning("%s: searches see %d of the %d rows an import may have written", self.collection,
                                have, n)  # fmt: skip
                    return
                raise StoreError(f"Milvus imported into {self.collection}, but searches see {have} of {n} rows after "
                                 f"{timeout:.0f} s; run again to wait")  # fmt: skip
            time.sleep(BULK_POLL_S)

    def _await_import(self, client) -> None:
        """Wait for an import job that this or a killed process started (an import never replaces a row: upserting
        its ids before it ends would leave two rows of one id)."""
        raw = self.db.get_meta(META_IMPORT)
        if raw is None:
            return
        rec = json.loads(raw)
        importer = self.bulk
        if importer is None and not self.spec.lite:  # the stage was unset since: the server still runs the job
            importer = BulkImporter(self.spec.uri, None, token=_token(self.spec), db_name=self.spec.db_name)
        done = None  # did the recorded job complete? None: unknown (killed before the server named it)
        if importer is not None:
            try:
                importer.wait_idle(self.collection)
                if rec.get("job"):
                    done = importer.state(rec["job"]).get("state") == DONE
            except BulkUnsupported as e:  # no import API answers: no job of ours runs there
                log.info("no Milvus import job to wait for: %s", e)
                done = False
        if rec.get("rows") and rec.get("collection") == self.collection and done is not False:
            self._await_rows(client, int(rec["rows"]), IMPORT_VISIBLE_S if done else UNKNOWN_JOB_WAIT_S, bool(done))
        with self.db.transaction() as c:
            c.execute("DELETE FROM meta WHERE key = ?", (META_IMPORT,))

    def _present(self, client, ids: Sequence[int]) -> set[int]:
        """Which of ``ids`` the collection holds."""
        out: set[int] = set()
        with self._errors("read ids"):
            for start in range(0, len(ids), 16_384):
                chunk = ",".join(map(str, ids[start : start + 16_384]))
                out.update(int(r["id"]) for r in client.query(self.collection, filter=f"id in [{chunk}]",
                                                             output_fields=["id"]))  # fmt: skip
        return out

    def _rows(self, ids: Sequence[int], vecs: Sequence[np.ndarray]) -> list[dict]:
        """Collection rows: id, vector, the partition key and the filter fields."""
        fields = scalar_fields(self.db, ids) if self._has_fields else {int(i): {} for i in ids}
        if self._has_root:
            roots = self._roots(ids)
            for i in fields:
                fields[i][ROOT_FIELD] = roots.get(int(i), "catalog")
        return [{"id": int(i), "vector": np.asarray(v, np.float32), **fields[int(i)]}
                for i, v in zip(ids, vecs, strict=True)]  # fmt: skip

    def _write(self, client, ids: Sequence[int], vecs: Sequence[np.ndarray]) -> None:
        step = max(1, min(PUSH_BATCH, (8 << 20) // (4 * self.dim)))  # ~8 MB per request
        with self._errors("write to the collection"):
            for start in range(0, len(ids), step):
                rows = self._rows(ids[start : start + step], vecs[start : start + step])
                if self._version >= UPSERT_ROUTES_SINCE:
                    client.upsert(self.collection, rows)
                else:  # not atomic: a search in between misses these rows, never sees them twice
                    client.delete(self.collection, ids=[r["id"] for r in rows])
                    client.insert(self.collection, rows)

    def _roots(self, ids: Sequence[int]) -> dict[int, str]:
        """The root (folder or shard) each file id was found under; items have none."""
        out: dict[int, str] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            sql = f"SELECT id, root FROM files WHERE id IN ({','.join('?' * len(chunk))})"
            out.update((int(i), str(r)) for i, r in self.db.conn.execute(sql, chunk))
        return out

    def write_direct(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Write straight to Milvus, bypassing the outbox (copying a whole store: ``visdex migrate``)."""
        ids = as_ids(ids)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        self._write(self._conn(), ids.tolist(), list(vectors))

    def _sync(self) -> None:
        """Push pending changes before a read, so reads see every committed write (also another process's)."""
        if self.db.conn.in_transaction or not self._outbox:
            return
        if self._pending or self.db.conn.execute(f"SELECT 1 FROM {OUTBOX} LIMIT 1").fetchone():
            self.push()

    # -- contract ------------------------------------------------------------------------
    def upsert(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        if len(ids):
            self._queue([(int(i), "upsert", v.tobytes()) for i, v in zip(ids, vectors, strict=True)])

    def delete(self, ids: Sequence[int] | np.ndarray) -> None:
        ids = as_ids(ids)
        if len(ids):
            self._queue([(int(i), "delete", None) for i in ids])

    def search(self, queries: np.ndarray, k: int, allowed=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product. ``allowed``: ids (searched as ``id in [...]`` in chunks) or a
        :class:`~visdex.store.milvus_where.MilvusFilter` (a translated ``--where``, run inside Milvus)."""
        from .milvus_where import MilvusFilter

        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        self._sync()
        client = self._conn()
        kk = min(k, MAX_TOPK)
        if isinstance(allowed, MilvusFilter) and allowed.ids is not None:
            exprs = [f"({allowed.expr}) and ({e})" if allowed.expr else e for e in _id_exprs(allowed.ids)]
        elif isinstance(allowed, MilvusFilter):
            exprs = [allowed.expr]
        elif allowed is None:
            exprs = [""]
        else:
            exprs = _id_exprs(allowed)
        if not len(queries) or not exprs:
            return empty_results(len(queries), k)
        built = self._built() or {}
        nlist = (built.get("params") or {}).get("nlist")
        params = {"metric_type": "IP", "params": search_params(self.index_type, kk, self.ef_search, nlist)}
        got_s: list[list[float]] = [[] for _ in queries]
        got_i: list[list[int]] = [[] for _ in queries]
        with self._errors("search"):
            for expr in exprs:
                res = client.search(self.collection, data=list(queries), limit=kk, filter=expr, output_fields=[],
                                    search_params=params)  # fmt: skip
                for row, hits in enumerate(res):
                    got_i[row] += [int(h["id"]) for h in hits]
                    got_s[row] += [float(h["distance"]) for h in hits]
        scores = np.full((len(queries), kk), -np.inf, np.float32)
        ids = np.full((len(queries), kk), -1, np.int64)
        for row in range(len(queries)):
            order = np.argsort(-np.asarray(got_s[row], np.float32), kind="stable")[:kk]
            scores[row, : len(order)] = np.asarray(got_s[row], np.float32)[order]
            ids[row, : len(order)] = np.asarray(got_i[row], np.int64)[order]
        return pad_results(scores, ids, k)

    def compile_where(self, where: str) -> MilvusFilter:
        """A ``where`` filter as a Milvus expression (see :mod:`.milvus_where`), for :meth:`search`."""
        from ..filters import allowed_ids
        from .milvus_where import MilvusFilter, translate_where

        self._conn()  # which fields the collection has
        roots = root_clause(where, self.db.roots(), self.db.kind == "catalog") if self._has_root else None
        if not self._has_fields:  # a server older than 2.5: SQL answers, Milvus still prunes to the roots
            return MilvusFilter(roots or "", 1, ids=allowed_ids(self.db, where))
        f = translate_where(self.db, where)
        return MilvusFilter(f"({roots}) and ({f.expr})", f.fallbacks) if roots else f

    def _fetch(self, client, ids: Sequence[int]) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        step = max(1, min(16_384, (8 << 20) // (4 * self.dim)))
        ids = [int(i) for i in ids]
        with self._errors("read vectors"):
            for start in range(0, len(ids), step):
                for r in client.get(self.collection, ids=ids[start : start + step], output_fields=["vector"]):
                    found[int(r["id"])] = np.asarray(r["vector"], np.float32)
        return found

    def get(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = as_ids(ids)
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        self._sync()
        found = self._fetch(self._conn(), ids.tolist())
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            raise KeyError(f"no vectors for ids {missing[:10]}")
        return np.stack([found[int(i)] for i in ids]).astype(np.float32)

    def count(self) -> int:
        self._sync()
        return self._count(self._conn())

    def _count(self, client) -> int:
        return self._count_in(client, self.collection)

    def _count_in(self, client, name: str) -> int:
        with self._errors("count"):
            return int(client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def ids(self) -> np.ndarray:
        return np.sort(np.fromiter((i for batch, _ in self._scan(4096, vectors=False) for i in batch), np.int64))

    def iter_vectors(self, chunk: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (ids, vectors) in batches, in no particular order."""
        for ids, vecs in self._scan(chunk, vectors=True):
            assert vecs is not None
            yield ids, vecs

    def _scan(self, batch: int, vectors: bool) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        self._sync()
        client = self._conn()
        fields = ["id", "vector"] if vectors else ["id"]
        with self._errors("read vectors"):
            it = client.query_iterator(self.collection, batch_size=batch, filter="", output_fields=fields)
            try:
                while rows := it.next():
                    ids = np.fromiter((r["id"] for r in rows), np.int64, len(rows))
                    vecs = np.asarray([r["vector"] for r in rows], np.float32) if vectors else None
                    yield ids, vecs
            finally:
                it.close()

    def info(self) -> dict:
        """What ``visdex status`` shows: the collection, its index as Milvus reports it, and its load state."""
        count = self.count()
        client = self._conn()
        with self._errors("describe the collection"):
            idx = client.describe_index(self.collection, "vector") or {}
            state = client.get_load_state(self.collection).get("state")
        index = idx.get("index_type", self.index_type)
        # a server reports the build parameters; milvus-lite does not: then those visdex sends for the type
        params = {k: v for k, v in idx.items() if k not in ("index_type", "field_name", "index_name", "metric_type",
                                                              "total_rows", "indexed_rows", "pending_index_rows",
                                                              "state")} or (self._built() or {}).get("params") \
            or index_params(index, self.dim)  # fmt: skip
        load = getattr(state, "name", str(state))
        return {"backend": f"milvus ({self.spec.describe()}, {index}, {load.lower()})", "store": self.spec.url,
                "collection": self.collection, "ann": self.ann, "count": count, "dim": self.dim, "index": index,
                "index_params": params, "indexed_rows": idx.get("indexed_rows"), "load_state": load,
                "partition_key": ROOT_FIELD if self._has_root else None, "alias_of": self._target(client),
                "filter_fields": self._has_fields}  # fmt: skip

    def flush(self) -> None:
        """Push every pending change and fit the index to the collection's size (indexing ends with this)."""
        if self._pending or self._client is not None:
            self._sync()
            if self._outbox:
                self.fit_index()

    def clear(self) -> None:
        """Drop every vector (re-indexing with another model): the collection goes after the commit and a
        new one, of the new model's dimension, is made on next use."""
        with self.db.transaction() as c:
            c.execute(f"DELETE FROM {OUTBOX}")
            c.execute("DELETE FROM meta WHERE key IN (?, ?)", (META_CREATED, META_INDEX))
            self.db.bump_generation()
            self.db.after_commit(self.drop_collection)

    def drop_collection(self) -> None:
        with self._lock:
            client = connect(self.spec)
            with self._errors("drop the collection"):
                target = self._target(client)
                if target is not None:
                    client.drop_alias(self.collection)
                    client.drop_collection(target)
                    self._drop_strays(client, keep=None)
                elif client.has_collection(self.collection):
                    client.drop_collection(self.collection)
            self._client, self._pending = None, 0


class _MilvusErrors:
    """Turns pymilvus / gRPC errors into one-line StoreErrors that name the server and collection."""

    def __init__(self, store: MilvusVectorStore, what: str):
        self.store, self.what = store, what

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is None or isinstance(exc, StoreError | KeyError | BadQuery | MissingDependency):
            return False
        if not isinstance(exc, Exception):
            return False
        s = self.store
        raise StoreError(f"Milvus could not {self.what} ({s.collection} on {s.spec.describe()}): {_reason(exc)}"
                         + _hint(s.spec, exc)) from exc  # fmt: skip


def _milvus_index(ann: str) -> str:
    """An --ann kind -> the Milvus index, by the embedded store's rule: exact (FLAT), a graph (HNSW), int8
    codes in inverted lists (IVF_SQ8: the local ``-sq8`` kinds), product codes (IVF_PQ), or vectors on SSD
    (DISKANN, when even codes do not fit RAM). "auto": FLAT on milvus-lite, HNSW on a server."""
    from .local import ANN_KINDS

    if ann not in ANN_KINDS and ann not in MILVUS_ANN:
        raise BadQuery(f"unknown {{field}} {ann!r}: with Milvus one of {', '.join(MILVUS_ANN)}", field="ann")
    if ann in ("ivf-sq8", "diskann", "ivfpq"):
        return {"ivf-sq8": "IVF_SQ8", "diskann": "DISKANN", "ivfpq": "IVF_PQ"}[ann]
    base, _, quant = ann.partition("-")
    if quant == "sq8":
        return "IVF_SQ8"
    return {"auto": "auto", "flat": "FLAT"}.get(base, "HNSW")


def segment_rows(dim: int) -> int:
    """Vectors in one sealed Milvus segment (the unit Milvus builds an index on)."""
    return max(1, SEGMENT_BYTES // (4 * dim))


def ivf_lists(n: int, dim: int) -> tuple[int, int]:
    """(nlist, nprobe) of an IVF index over a collection of ``n`` vectors: the embedded store's rule
    (:func:`visdex.store.local.ivfpq_params`: nlist the power of two nearest 2 sqrt(n), nprobe nlist/32, at least
    32) applied to the rows Milvus clusters together, one segment: min(n, :func:`segment_rows`).

    >>> ivf_lists(10_000, 512), ivf_lists(10**8, 512)
    ((256, 32), (1024, 32))
    """
    from .local import ivfpq_params

    p = ivfpq_params(max(1, min(int(n), segment_rows(dim))), dim)
    return p.nlist, p.nprobe


def ivf_nprobe(nlist: int) -> int:
    return min(nlist, max(32, nlist // 32))  # the embedded store's rule (ivfpq_params)


def auto_index(n: int, dim: int, memory_bytes: float) -> str:
    """The index "auto" builds on a Milvus server for ``n`` vectors: the embedded store's plan
    (:func:`visdex.sizing.plan_store`) with the query nodes' RAM as the budget -- HNSW while the vectors fit,
    IVF_SQ8 / IVF_PQ codes when only codes fit, DISKANN (vectors on the nodes' SSDs) when not even codes fit."""
    from ..sizing import plan_store

    kind = _milvus_index(ann_for_plan(plan_store(max(1, int(n)), dim, memory_bytes)))
    return "HNSW" if kind == "FLAT" else kind  # a server: a graph from the start, as before


def index_params(kind: str, dim: int, n: int | None = None) -> dict:
    """Build parameters sent with ``create_index`` for a Milvus index type (documented Milvus 2.5 API), for a
    collection of ``n`` vectors (None: :data:`DEFAULT_ROWS`)."""
    if kind == "HNSW":
        return {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    nlist = ivf_lists(DEFAULT_ROWS if n is None else n, dim)[0]
    if kind == "IVF_SQ8":
        return {"nlist": nlist}
    if kind == "IVF_PQ":
        from .local import ivfpq_params

        return {"nlist": nlist, "m": ivfpq_params(DEFAULT_ROWS, dim).m, "nbits": 8}  # the embedded store's codes
    return {}  # FLAT; DISKANN's build is set in the server's config (diskIndex.*)


def search_params(kind: str, k: int, ef: int | None = None, nlist: int | None = None) -> dict:
    """Per-search parameters for a Milvus index type: HNSW's ef, IVF's nprobe (for the ``nlist`` it was built
    with; unknown: the fixed 32 of collections made before), DiskANN's search_list."""
    if kind == "HNSW":
        return {"ef": min(32_768, max(k, ef or max(HNSW_EF_SEARCH, 4 * k)))}
    if kind in ("IVF_SQ8", "IVF_PQ"):
        return {"nprobe": ivf_nprobe(int(nlist)) if nlist else IVF_NPROBE}
    if kind == "DISKANN":
        return {"search_list": min(16_384, max(k, DISKANN_SEARCH_LIST))}
    return {}


def ann_for_plan(plan) -> str:
    """The ``--ann`` for Milvus that follows a :class:`visdex.sizing.StorePlan` (``visdex recommend``): exact,
    HNSW at full precision, IVF_SQ8 for int8 / fp16 codes, IVF_PQ for product codes, DISKANN when nothing
    fits the memory budget."""
    if not plan.fits_memory:
        return "diskann"
    if plan.index == "ivfpq" or plan.codec.startswith("pq"):
        return "ivfpq"
    if plan.codec != "fp32":
        return "ivf-sq8"
    return "hnsw" if plan.index == "hnsw" else "flat"


def root_clause(where: str, roots: Sequence[str], catalog: bool) -> str | None:
    """``root in [...]`` implied by a filter's top-level path / folder comparisons, so Milvus prunes to those
    roots' partitions; None when the filter does not narrow the roots. Only added (ANDed) to the translated
    filter, so it never changes what matches."""
    from ..filters import parse_where
    from .milvus_where import lit

    if catalog or not roots:
        return None
    tree = parse_where(where, catalog=False)
    leaves = [tree] if tree[0] == "leaf" else [n for n in tree[1] if n[0] == "leaf"] if tree[0] == "and" else []
    keep = set(roots)
    for _, leaf in leaves:
        if leaf.field.value.lower() not in ("path", "folder") or leaf.op not in ("=", "~") or len(leaf.values) != 1:
            continue
        if leaf.values[0].startswith("~"):
            continue  # a home-relative value: expanded by the SQL side, not worth pruning here
        prefix = re.split(r"[*?\[]", leaf.values[0], maxsplit=1)[0].lower() if leaf.op == "~" else \
            leaf.values[0].lower()  # fmt: skip
        if not prefix.startswith("/") and "://" not in prefix:
            continue  # only an absolute path or URL says which roots it lies under
        keep &= {r for r in roots if prefix.startswith(r.lower().rstrip("/") + "/") or r.lower().startswith(prefix)
                 or prefix == r.lower()}  # fmt: skip
    if keep == set(roots):
        return None
    return f"{ROOT_FIELD} in [{', '.join(lit(r) for r in sorted(keep))}]"


def install_outbox(db: IndexDB) -> None:
    """The outbox table and its triggers (once per index; SQLite keeps them with the index)."""
    marks = ",".join("?" * len(_OUTBOX_OBJECTS))
    have = db.conn.execute(f"SELECT COUNT(*) FROM sqlite_master WHERE name IN ({marks})", _OUTBOX_OBJECTS).fetchone()
    if have[0] < len(_OUTBOX_OBJECTS):
        with db.transaction() as c:
            for stmt in _OUTBOX_DDL:
                c.execute(stmt)


def uninstall_outbox(db: IndexDB) -> None:
    """Remove the outbox and its triggers (the index left Milvus). Call inside the switching transaction."""
    with db.transaction() as c:
        c.execute(f"DROP TRIGGER IF EXISTS {OUTBOX}_files")
        c.execute(f"DROP TRIGGER IF EXISTS {OUTBOX}_items")
        c.execute(f"DROP TABLE IF EXISTS {OUTBOX}")
