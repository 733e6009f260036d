"""The HTTP API and web UI (``visdex serve``); needs the ``server`` extra: ``pip install 'visdex[server]'``.

>>> from visdex.server import create_app                      # doctest: +SKIP
>>> app = create_app("my-index", token="s3cret")               # doctest: +SKIP
"""

from __future__ import annotations

from .app import DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_MAX_UPLOAD_PIXELS, create_app, require_fastapi

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_MAX_UPLOAD_PIXELS", "create_app", "require_fastapi"]
