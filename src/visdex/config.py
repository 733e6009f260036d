"""All settings in one table: name, default, help. Each can be set by an environment
variable ``VISDEX_<NAME>`` (upper case); CLI flags override the environment.

A test checks that every setting here is documented in the README.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadSetting


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str  # raises ValueError for a value it cannot use
    expects: str = ""  # what a valid value looks like, for the error message

    @property
    def env(self) -> str:
        return f"VISDEX_{self.name.upper()}"


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("not a whole number") from None  # get() names the variable
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}")
        return value

    return parse


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_YES_NO = "1/0, true/false, yes/no or on/off"


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in _TRUE + _FALSE:
        raise ValueError("not a yes/no value")
    return value in _TRUE


def _one_of(*values: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in values:
            raise ValueError("unknown value")
        return value

    return parse


def _default_index_dir() -> str:
    from platformdirs import user_data_dir

    return str(Path(user_data_dir("visdex", appauthor=False)) / "index")


SETTINGS: tuple[Setting, ...] = (
    Setting("index", None, "Index directory (default: the platform data dir, e.g. ~/.local/share/visdex/index)."),
    Setting("cache_dir", None, "Derived caches: weight hashes, class embeddings (default: the user cache dir)."),
    Setting("model", "clip-vit-b-32", "Model used when a new index is created (an existing index keeps its own)."),
    Setting("device", "auto", "Where the model runs: auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps."),
    Setting("batch_size", 32, "Images per model batch when indexing.", _integer(1), "a whole number >= 1"),
    Setting(
        "workers",
        0,
        "Decode worker processes (0 = one per CPU core, at most 8; 1 = decode in-process).",
        _integer(0),
        "a whole number >= 0",
    ),
    Setting(
        "max_pixels",
        178_956_970,
        "Largest image (width x height) decoded; larger ones are skipped.",
        _integer(1),
        "a whole number >= 1",
    ),
    Setting("token", None, "Bearer token that `visdex serve` requires on every API request (unset: no auth)."),
    Setting(
        "allowed_hosts",
        (),
        "Host names `visdex serve` answers to besides loopback and --host, comma-separated "
        "(DNS-rebinding guard); * for any.",
        lambda v: tuple(h.strip() for h in v.split(",") if h.strip()),
    ),
    Setting(
        "analyses_nice",
        5,
        "CPU priority (Linux nice, 0-19) of `visdex serve`'s background thread that computes duplicates, clusters "
        "and the map: higher leaves more CPU to searches, and to every other program on the machine.",
        _integer(0, 19),
        "a whole number from 0 to 19",
    ),
    Setting("gpu_decode", "auto", "JPEG decoding when indexing on a GPU: auto (measure, pick the faster), gpu, cpu."),
    Setting(
        "compile", False, "Indexing on a GPU: torch.compile the model (slower start, faster long runs).", _flag, _YES_NO
    ),
    Setting(
        "store",
        "local",
        "Where a new index keeps its vectors: local, milvus:./vectors.db (milvus-lite), "
        "milvus://host:19530 (a Milvus server); an existing index keeps its own.",
    ),
    Setting(
        "cpu_backend",
        "auto",
        "Indexing on a CPU: auto (torch in bfloat16 on a CPU with AMX -- vectors within a cosine of 1e-3, "
        "2.5-6x faster; elsewhere ONNX Runtime fp32 -- the same vectors, faster -- when visdex[onnx] is "
        "installed and its one-time export is cached or pays for itself), onnx, torch (fp32), bf16.",
        _one_of("auto", "onnx", "torch", "bf16"),
        "auto, onnx, torch or bf16",
    ),
    Setting(
        "query_export",
        "auto",
        "Text queries without torch: auto (export the model's text tower to ONNX once, "
        "at the end of `visdex index` or in the background after a search; needs visdex[onnx]), off.",
    ),
    Setting(
        "milvus_token",
        None,
        "Token for a Milvus server that requires one (user:password or an API key); never written to the index.",
    ),
    Setting(
        "milvus_bulk_stage",
        None,
        "Bulk insert for `visdex import` into a Milvus server: an fsspec URL in the bucket the server reads "
        "(s3://BUCKET/prefix) to stage Parquet files in; unset: batched upserts.",
    ),
    Setting("milvus_memory", "64GB", "RAM of the Milvus query nodes: --ann auto picks IVF codes or DISKANN past it."),
    Setting(
        "benchmarks",
        None,
        "Folder of benchmark results (JSON) that `visdex recommend` takes speeds from "
        "(default: benchmarks/results of a source checkout).",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def is_set(name: str) -> bool:
    """Whether the user chose this setting (``VISDEX_<NAME>`` is set), rather than its default.

    >>> is_set("batch_size")  # doctest: +SKIP
    False
    """
    return os.environ.get(_BY_NAME[name].env) not in (None, "")


def default(name: str) -> Any:
    """A setting's default from the table, whatever the environment says (modules that need a default as a
    constant read it here, so every default is written once).

    >>> default("max_pixels")
    178956970
    """
    return _BY_NAME[name].default


def get(name: str) -> Any:
    """The value of a setting: ``VISDEX_<NAME>`` if set, else the default.

    >>> get("batch_size")
    32
    """
    s = _BY_NAME[name]
    raw = os.environ.get(s.env)
    if raw not in (None, ""):
        try:
            return s.parse(raw)
        except ValueError as e:
            raise BadSetting(
                f"{s.env}={raw!r}: {e}; it takes {s.expects or 'another value'} ({s.help.rstrip('.')})"
            ) from None
    if name == "index":
        return _default_index_dir()
    if name == "cache_dir":
        from platformdirs import user_cache_dir

        return user_cache_dir("visdex", appauthor=False)
    return s.default
