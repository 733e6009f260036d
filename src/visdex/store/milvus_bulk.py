"""Bulk insert into a Milvus server: new vectors staged as Parquet files in the object store the server reads
(its MinIO / S3 bucket), then one import job through Milvus' documented RESTful API (``POST
/v2/vectordb/jobs/import/create``, polled with ``/describe``; Milvus 2.4 and later, the same call as pymilvus'
``bulk_writer.bulk_import``). Millions of rows go in as whole segments instead of millions of upserts. A Milvus 2.3
server has no such API (HTTP 404): there the same files go through its gRPC ``do_bulk_insert``, one task per file
(pymilvus' ``utility``); staged in the bucket it reads, or for a server on local storage (``file://`` under its
``localStorage.path``) given as absolute paths.

Used by :meth:`visdex.store.milvus.MilvusVectorStore.push` when the server is a Milvus server (milvus-lite runs no
import jobs), ``VISDEX_MILVUS_BULK_STAGE`` names where to stage (``s3://BUCKET/prefix``, an fsspec URL; the first
path component is the bucket the server reads, so Milvus is given ``prefix/...``) and at least :data:`BULK_MIN` new
vectors are waiting. Anything else -- or a server that answers the import call with an error -- falls back to
batched upserts, which give the same result.

An import job inserts: it never replaces a row. Only ids that are not in the collection yet are imported (the rest
are upserted), and a job that a killed process left running is waited for before anything else is written, so
nothing is written twice.

>>> BulkImporter("http://milvus:19530", "s3://milvus-bucket/visdex-bulk").relative("s3://milvus-bucket/visdex-bulk/a.parquet")
'visdex-bulk/a.parquet'
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Sequence

import numpy as np

from ..errors import MissingDependency, StoreError

log = logging.getLogger(__name__)

BULK_MIN = 10_000  # fewer new vectors go through upserts: an import job costs seconds however small
FILE_ROWS = 100_000  # rows per staged Parquet file (~200 MB of 512-d vectors in memory while written)
POLL_S = 1.0
WAIT_S = 6 * 3600.0  # an import job still running after this is an error (the next run waits for it again)
HTTP_TIMEOUT = 30.0
DONE, FAILED = "Completed", "Failed"


class BulkUnsupported(Exception):
    """The server cannot run import jobs (too old, or the RESTful API is off): use upserts."""


class BulkImporter:
    """Stages rows in ``stage`` (an fsspec URL of the server's bucket) and imports them into a collection of the
    Milvus server at ``url`` (``http(s)://host:port``)."""

    def __init__(self, url: str, stage: str | None, *, token: str = "", db_name: str = ""):
        self.url, self.stage, self.token, self.db_name = url.rstrip("/"), (stage or "").rstrip("/"), token, db_name
        self.api: str | None = None  # "rest" (2.4+ import jobs) or "grpc" (2.3's do_bulk_insert): found on first call

    # -- the REST calls -------------------------------------------------------------------
    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.db_name:
            headers["DB-Name"] = self.db_name
        return headers

    def _call(self, endpoint: str, body: dict) -> dict:
        req = urllib.request.Request(
            f"{self.url}/v2/vectordb/jobs/import/{endpoint}",
            data=json.dumps(body).encode(),
            headers=self._headers(),
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as r:
                answer = json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            if e.code in (404, 405, 501):
                raise BulkUnsupported(f"{self.url} has no import API (HTTP {e.code})") from e
            raise StoreError(f"Milvus import {endpoint} at {self.url}: HTTP {e.code}") from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise BulkUnsupported(f"cannot call {self.url}'s import API: {e}") from e
        if answer.get("code", 0) != 0:
            raise BulkUnsupported(f"Milvus refused import {endpoint}: {answer.get('message') or answer}")
        return answer.get("data") or {}

    def _rest_or_grpc(self, call, grpc_call):
        """``call()`` by the REST API; on a server without it (HTTP 404: Milvus 2.3) ``grpc_call()``, from then on."""
        if self.api == "grpc":
            return grpc_call()
        try:
            out = call()
        except BulkUnsupported as e:
            if "HTTP 404" not in str(e):
                raise
            self.api = "grpc"
            log.info("%s: no REST import API, using gRPC bulk insert", self.url)
            return grpc_call()
        self.api = "rest"
        return out

    def start(self, collection: str, files: Sequence[str]) -> str:
        """Start one import job of ``files`` (bucket-relative paths, one Parquet file each); its job id (on 2.3: the
        task ids, comma-separated)."""
        files = list(files)
        return self._rest_or_grpc(lambda: self._rest_start(collection, files),
                                  lambda: self._grpc_start(collection, files))  # fmt: skip

    def _rest_start(self, collection: str, files: Sequence[str]) -> str:
        body = {"collectionName": collection, "files": [[f] for f in files]}
        if self.db_name:
            body["dbName"] = self.db_name
        job = self._call("create", body).get("jobId")
        if not job:
            raise BulkUnsupported(f"{self.url} started no import job")
        return str(job)

    def state(self, job: str) -> dict:
        body = {"jobId": job, **({"dbName": self.db_name} if self.db_name else {})}
        return self._rest_or_grpc(lambda: self._call("describe", body), lambda: self._grpc_state(job))

    def wait(self, job: str, timeout: float = WAIT_S) -> dict:
        """Poll until the job completes; a failed job is :class:`BulkUnsupported` (it wrote nothing)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(job)
            if st.get("state") == DONE:
                return st
            if st.get("state") == FAILED:
                raise BulkUnsupported(f"import job {job} failed: {st.get('reason') or 'no reason given'}")
            if time.monotonic() > deadline:
                raise StoreError(f"Milvus import job {job} still runs after {timeout:.0f} s; run again to wait for it")
            time.sleep(POLL_S)

    def wait_idle(self, collection: str, timeout: float = WAIT_S) -> None:
        """Wait until no import job of ``collection`` is pending or running (one a killed process started)."""
        deadline = time.monotonic() + timeout
        body = {"collectionName": collection, **({"dbName": self.db_name} if self.db_name else {})}
        while True:
            jobs = self._rest_or_grpc(lambda: self._call("list", body).get("records") or [],
                                      lambda: self._grpc_list(collection))  # fmt: skip
            if not any(j.get("state") not in (DONE, FAILED) for j in jobs):
                return
            if time.monotonic() > deadline:
                raise StoreError(f"Milvus import jobs of {collection} still run after {timeout:.0f} s")
            time.sleep(POLL_S)

    # -- Milvus 2.3: gRPC bulk insert, one task per file ------------------------------------------
    def _grpc(self):
        try:
            from pymilvus import connections, utility
        except ImportError as e:  # a pymilvus without the ORM API (3.1 drops it): no bulk insert on 2.3
            raise BulkUnsupported(f"this pymilvus has no gRPC bulk insert: {e}") from e
        alias = f"visdex-bulk-{id(self)}"
        with warnings.catch_warnings():  # pymilvus 3.0 deprecates the ORM API it still serves 2.3 servers with
            warnings.simplefilter("ignore")
            if not connections.has_connection(alias):
                connections.connect(alias, uri=self.url, token=self.token, db_name=self.db_name)
        return utility, alias

    def _grpc_start(self, collection: str, files: Sequence[str]) -> str:
        utility, alias = self._grpc()
        tasks = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                for f in files:  # a row-based file (Parquet, JSON) is one task
                    tasks.append(str(utility.do_bulk_insert(collection, files=[f], using=alias)))
            except Exception as e:  # pymilvus raises MilvusException: a server that refuses (no such call, bad file)
                if not tasks:
                    raise BulkUnsupported(f"Milvus refused bulk insert: {e}") from e
                raise StoreError(f"Milvus bulk insert stopped after {len(tasks)} of {len(files)} files: {e}") from e
        return ",".join(tasks)

    def _grpc_state(self, job: str) -> dict:
        utility, alias = self._grpc()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            states = [utility.get_bulk_insert_state(int(t), using=alias) for t in job.split(",")]
        failed = [s for s in states if s.state_name == FAILED]
        if failed:
            return {"state": FAILED, "reason": failed[0].failed_reason}
        return {"state": DONE if all(s.state_name == DONE for s in states) else "Importing"}

    def _grpc_list(self, collection: str) -> list[dict]:
        utility, alias = self._grpc()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tasks = utility.list_bulk_insert_tasks(limit=0, collection_name=collection, using=alias)
        return [{"state": t.state_name} for t in tasks]

    # -- staging --------------------------------------------------------------------------
    def relative(self, url: str) -> str:
        """A staged file's path as the import call wants it: inside the bucket, or for a server on local storage
        (a ``file://`` stage) the absolute path."""
        if url.startswith("file://"):
            return "/" + url[len("file://") :].lstrip("/")
        path = url.split("://", 1)[-1].lstrip("/")
        return path.split("/", 1)[1] if "/" in path else path

    def write(self, rows: list[dict], dim: int) -> str:
        """One Parquet file of ``rows`` (the collection's fields) in the stage; its URL."""
        pa, pq, fsspec = _deps()
        url = f"{self.stage}/{uuid.uuid4().hex}.parquet"
        with fsspec.open(url, "wb") as f:
            pq.write_table(rows_table(pa, rows, dim), f)
        return url

    def remove(self, urls: Sequence[str]) -> None:
        if not urls:
            return
        _, _, fsspec = _deps()
        fs, _ = fsspec.core.url_to_fs(urls[0])
        for u in urls:
            try:
                fs.rm(fsspec.core.url_to_fs(u)[1])
            except OSError as e:  # staged files are only a cost: say so, go on
                log.warning("could not remove the staged file %s: %s", u, e)


def rows_table(pa, rows: list[dict], dim: int):
    """The collection's rows as an Arrow table in Milvus' import layout: a float vector is a list of float32, a
    JSON field a JSON text, a nullable field null."""
    from .milvus_where import INT_FIELDS, JSON_FIELDS

    n = len(rows)
    vectors = np.stack([np.asarray(r["vector"], np.float32) for r in rows]) if rows else np.zeros((0, dim), np.float32)
    offsets = pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32))
    cols: dict = {"id": pa.array([int(r["id"]) for r in rows], pa.int64()),
                  "vector": pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1), pa.float32()))}  # fmt: skip
    for name in rows[0] if rows else ():
        if name in cols:
            continue
        values = [r[name] for r in rows]
        if name in JSON_FIELDS:
            cols[name] = pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
        else:
            typ = pa.int64() if name in INT_FIELDS else pa.float64() if name == "mtime" else pa.string()
            cols[name] = pa.array(values, typ)
    return pa.table(cols)


def _deps():
    try:
        import fsspec
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingDependency(e.name or "pyarrow", "interop", "Milvus bulk insert (Parquet staging)") from e
    return pa, pq, fsspec
