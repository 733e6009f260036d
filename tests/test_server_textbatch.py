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


def test_a_text_asked_again_is_answered_from_the_cache(served):
    s, want = served
    q = QUERIES[0]
    first = [(h.id, h.score) for h in s.search(q, k=4)]
    batches = s.texts.batches
    again = [(h.id, h.score) for h in s.search(q, k=4)]
    assert s.texts.batches == batches  # no forward pass for a text embedded before
    assert again == first
    s.texts.forget()  # what a re-index with another model does
    s.search(q, k=4)
    assert s.texts.batches == batches + 1


def test_the_text_cache_keeps_the_most_recent_texts():
    class Counting:
        calls: list[list[str]] = []

        def embed_texts(self, texts):
            self.calls.append(list(texts))
            return np.ones((len(texts), 4), np.float32)

    emb = Counting()
    batcher = TextBatcher(lambda: emb, cache_size=2)
    for t in ("a", "b", "a", "c", "a", "b"):
        batcher.embed([t])
    batcher.close()
    assert emb.calls == [["a"], ["b"], ["c"], ["b"]]  # "b" was the least recent when "c" came


def test_searches_go_on_while_an_upload_is_being_embedded(served):
    """An uploaded image's forward pass runs outside the search lock: text searches do not queue behind it."""
    from PIL import Image

    s, want = served
    emb = s.ix.embedder
    entered, release = threading.Event(), threading.Event()
    real = emb.embed_images

    def slow(images):  # the forward pass of a big model on a busy machine
        entered.set()
        release.wait(30)
        return real(images)

    emb.embed_images = slow
    upload = threading.Thread(target=lambda: s.search(Image.new("RGB", (64, 48), "red"), k=3))
    upload.start()
    try:
        assert entered.wait(30)
        t0 = time.monotonic()
        hits = s.search(QUERIES[1], k=4)  # before: waited for the upload to finish (here: never)
        assert time.monotonic() - t0 < 10
        assert [h.id for h in hits] == [i for i, _ in want[QUERIES[1]]]
    finally:
        release.set()
        upload.join(30)
        emb.embed_images = real


def test_concurrent_uploads_share_forward_passes(served):
    from PIL import Image

    s, _ = served
    colours = ["red", "green", "blue", "white", "black", "yellow"]
    alone = {c: s.search(Image.new("RGB", (64, 48), c), k=3) for c in colours}
    passes = s.images.batches
    got: dict[str, list] = {}
    threads = [threading.Thread(target=lambda c=c: got.__setitem__(c, s.search(Image.new("RGB", (64, 48), c), k=3)))
               for c in colours]  # fmt: skip
    with s.lock:  # the first pass waits here for the model, so the other uploads queue up behind it
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while s.images._queue.qsize() < len(colours) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(timeout=60)
    assert s.images.batches - passes == 2  # one pass for the first upload, one for the five that waited
    for c in colours:
        assert [h.id for h in got[c]] == [h.id for h in alone[c]]
        np.testing.assert_allclose([h.score for h in got[c]], [h.score for h in alone[c]], atol=1e-5)
