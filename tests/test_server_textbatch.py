"""``visdex serve`` embeds concurrent text queries together: one forward pass for every text that
arrived while the previous pass ran, outside the lock that searches take, with the same results as
one query at a time."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from visdex import open_index

pytest.importorskip("fastapi")

from visdex.server.state import ServedIndex, TextBatcher  # noqa: E402

QUERIES = [f"a {c} {a}" for c in ("red", "blue", "green", "black") for a in ("cat", "dog", "car", "house")]


@pytest.fixture
def served(tmp_path, folder, tiny_clip):
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        want = {q: [(h.id, h.score) for h in ix.search(q, k=4)] for q in QUERIES}
    s = ServedIndex(tmp_path / "ix")
    s.warm()
    yield s, want
    s.close()


def test_concurrent_text_queries_share_forward_passes(served):
    s, want = served
    got: dict[str, list] = {}
    errors: list[BaseException] = []

    def one(q: str) -> None:
        try:
            got[q] = [(h.id, h.score) for h in s.search(q, k=4)]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(q,)) for q in QUERIES]
    with s.lock:  # the batcher's first pass waits here, so the other 15 requests queue up behind it
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while s.texts._queue.qsize() < len(QUERIES) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert s.texts.batches == 2  # one pass for the first text, one for the 15 that waited: not 16 passes
    for q in QUERIES:
        assert [i for i, _ in got[q]] == [i for i, _ in want[q]]
        np.testing.assert_allclose([x for _, x in got[q]], [x for _, x in want[q]], atol=1e-5)


def test_a_failing_batch_fails_every_waiting_request():
    class Broken:
        def embed_texts(self, texts):
            raise RuntimeError("model fell over")

    batcher = TextBatcher(lambda: Broken())
    with pytest.raises(RuntimeError, match="fell over"):
        batcher.embed(["a cat"])
    batcher.close()
