"""Typed errors. Library code raises these; only the CLI and HTTP layer turn them into
messages, exit codes and statuses.

Every error carries a one-line, user-facing message (``str(err)``) and an ``exit_code``
the CLI uses; ``http_status`` is what the HTTP layer answers with. An error about one argument
names it in ``field`` (as the Python API names it: ``where``, ``k``, ``crop``), so the HTTP layer
can report the field without reading the message; an error about a file named by the caller
carries it in ``path``.

Library messages never name a command-line flag: where a message names its argument it writes
``{field}``, which ``str(err)`` renders as the field's own name (``top must be at least 1``) and
the CLI as its flag (``named("--top")``: ``--top must be at least 1``). A whole command line a
user can run (``visdex index FOLDER --index PATH``) is advice, not a flag name, and stays.
"""

from __future__ import annotations


class VisdexError(Exception):
    """Base class of every error visdex raises on purpose."""

    exit_code = 1
    http_status = 500

    def __init__(self, *args, field: str | None = None, path: str | None = None):
        template = args[0] if args and isinstance(args[0], str) and field and "{field}" in args[0] else None
        if template is not None:
            args = (template.replace("{field}", field or ""), *args[1:])
        super().__init__(*args)
        self.field = field
        self.path = path
        self._template = template

    def named(self, name: str) -> str:
        """The message with the argument called ``name`` (the CLI passes its flag, ``--top``) where it names
        the argument; the plain message when it does not."""
        return self._template.replace("{field}", name) if self._template is not None else str(self)


class UnknownModel(VisdexError):
    """A model name that is neither in the catalog, nor ``hf:<repo>``, nor a local directory."""

    exit_code = 2
    http_status = 400

    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = list(known)
        known_list = ", ".join(self.known)
        super().__init__(f"unknown model {name!r}; known models: {known_list} (or hf:<repo-id>, or a local directory)")


class ModelLoadError(VisdexError):
    """The model could not be loaded (hub unreachable, broken files)."""

    exit_code = 3
    http_status = 503


class ModelMismatch(VisdexError):
    """The index was built with another model than the one asked for."""

    exit_code = 3
    http_status = 409


class UnsupportedModality(VisdexError):
    """A text query against an image-only model, and the like."""

    exit_code = 2
    http_status = 400


class MissingDependency(VisdexError):
    """An optional dependency is not installed; the message names the pip extra."""

    exit_code = 4
    http_status = 501

    def __init__(self, package: str, extra: str | None = None, purpose: str = "", *, field: str | None = None):
        self.package = package
        self.extra = extra
        what = f" (needed for {purpose})" if purpose else ""
        fix = f"pip install 'visdex[{extra}]'" if extra else f"pip install {package}"
        # a purpose that names an argument writes {field}: "{field} umap" reads "--method umap" on the CLI
        super().__init__(f"{package} is not installed{what}; install it with: {fix}", field=field)


class BadImage(VisdexError):
    """An image that cannot be decoded: corrupt, truncated, empty, too large, unsupported."""

    exit_code = 2
    http_status = 400


class ImageTooLarge(BadImage):
    """More pixels than the configured limit (decompression-bomb guard); ``size`` is (width, height) when known."""

    http_status = 413

    def __init__(self, *args, size: tuple[int, int] | None = None, **kw):
        super().__init__(*args, **kw)
        self.size = size


class BadQuery(VisdexError):
    """A query that cannot be parsed or run."""

    exit_code = 2
    http_status = 400


class BadSetting(VisdexError):
    """A ``VISDEX_*`` environment variable whose value cannot be used; the message names the variable."""

    exit_code = 2
    http_status = 500


class IndexNotFound(VisdexError):
    """No index at the given location (and creation was not asked for)."""

    exit_code = 2
    http_status = 404


class StoreError(VisdexError):
    """The index is unreadable or of a newer schema than this visdex understands."""

    exit_code = 5
    http_status = 500


class NotFound(VisdexError):
    """An item id or path that is not in the index."""

    exit_code = 2
    http_status = 404


class BadDataset(VisdexError):
    """An evaluation or training set that cannot be used: missing, empty, wrong columns, no classes."""

    exit_code = 2
    http_status = 400


class IndexEmpty(VisdexError):
    """A search on an index that has no vectors yet (never indexed, or its first run was interrupted)."""

    exit_code = 2
    http_status = 409


class IndexBusy(VisdexError):
    """Another process is writing to the index (one writer at a time; readers never wait)."""

    exit_code = 6
    http_status = 409


class DiskFull(VisdexError):
    """A write failed for lack of space (or a file-size limit); nothing half-written was kept."""

    exit_code = 7
    http_status = 507
