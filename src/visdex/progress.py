"""The progress interfaces the library and the training package report through; the CLI draws bars from them.

No imports: the CLI subclasses these at start-up without loading the pipeline or the training code.

>>> class Count(Progress):
...     def advance(self, n: int = 1) -> None:
...         self.done = getattr(self, "done", 0) + n
"""

from __future__ import annotations

__all__ = ["Progress", "TrainProgress"]


class Progress:
    """Receives ingest progress; the CLI draws a bar from it. The base class ignores everything."""

    def start(self, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def failed(self, path: str, reason: str) -> None: ...


class TrainProgress:
    """What a training run reports; the default reports nothing. The CLI draws bars from it.

    ``phase`` opens a unit of work of ``total`` steps (feature caching, an epoch, an evaluation),
    ``advance`` moves it, ``epoch_done`` summarises an epoch, ``failed`` names a skipped image.
    ``start`` is the same as a phase without a new label (so evaluation code can report into it).
    """

    def phase(self, label: str, total: int) -> None: ...

    def start(self, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def failed(self, path: str, reason: str) -> None: ...

    def epoch_done(self, epoch: int, epochs: int, loss: float, score: float, best: bool) -> None: ...
