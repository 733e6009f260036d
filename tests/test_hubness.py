"""Hubness reduction (CSLS on a shortlist): a hub that sits near every query is demoted; off by default."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from visdex import open_index
from visdex.hubness import (
    HubnessReducer,
    bank_path,
    default_on,
    penalties,
    prepare,
    shortlist_size,
    text_bank,
    text_bank_texts,
)
from visdex.search import search_vectors
from visdex.store.db import IndexDB
from visdex.store.local import LocalVectorStore


def _hub_collection(n: int = 300, d: int = 32):
    """n vectors around a common direction u, plus u itself (id n): close to everything, a hub."""
    rng = np.random.default_rng(0)
    u = np.zeros(d)
    u[0] = 1
    x = 0.55 * u + rng.standard_normal((n, d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    query = 0.7 * x[7] + 0.75 * u  # about item 7, but the hub scores a higher cosine
    return np.vstack([x, u]).astype(np.float32), (query / np.linalg.norm(query)).astype(np.float32)


def test_csls_demotes_a_hub_on_the_shortlist(tmp_path):
    vecs, query = _hub_collection()
    db = IndexDB(tmp_path / "ix")
    store = LocalVectorStore(db, vecs.shape[1], ann="flat")
    store.upsert(np.arange(len(vecs)), vecs)
    scores, ids = store.search(query[None], 2)
    assert ids[0].tolist() == [300, 7]  # plain cosine: the hub first
    reducer = HubnessReducer(SimpleNamespace(store=store))  # image queries: the bank is a sample of the store
    r = reducer.rescore("image", ids[0], scores[0])
    assert r[1] > r[0]  # item 7 now beats the hub
    assert penalties(vecs[[300]], vecs[:300])[0] > penalties(vecs[[7]], vecs[:300], skip_self=True)[0]
    assert shortlist_size(5) >= 50 and shortlist_size(100) == 400


def test_search_path_rescores_only_with_hubness_on(tmp_path, folder, tiny_clip, monkeypatch):
    monkeypatch.setenv("VISDEX_CACHE_DIR", str(tmp_path / "cache"))
    assert len(text_bank_texts()) > 1000
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        plain = ix.search("a cat", k=3)
        assert [h.id for h in plain] == [h.id for h in ix.search("a cat", k=3, hubness=False)]
        on = ix.search("a cat", k=3, hubness=True)
        assert len(on) == 3 and all(h.score <= plain[0].score + 1e-6 for h in on)  # scores stay cosines
        assert bank_path(ix.db.fingerprint).is_file()  # the text bank, embedded once, kept by model fingerprint
        assert len(ix.similar(plain[0].id, k=2, hubness=True)) == 2
    # the rescore hook keeps the k best of the shortlist by the new score
    with open_index(tmp_path / "ix") as ix:
        reverse = search_vectors(ix.db, ix.store, ix.store.get([plain[0].id])[0], 2,
                                 rescore=lambda ids, cos: -cos, shortlist=50)  # fmt: skip
        assert reverse[0].score <= reverse[1].score


def test_eval_with_and_without_hubness(capsys, tmp_path, photos, tiny_clip):
    import json

    from clihelp import run_cli

    csv = tmp_path / "captions.csv"
    csv.write_text("image,caption\n" + "".join(f"{p},a photo of {name}\n" for name, p in sorted(photos.items())))
    runs = {}
    for flag in ([], ["--hubness"], ["--no-hubness"]):
        code, out, err = run_cli(capsys, "eval", "captions", csv, "-m", str(tiny_clip), "--json", "-q", *flag)
        assert code == 0, err
        runs[flag[0] if flag else "default"] = json.loads(out)["results"][0]
    assert runs["--hubness"]["images"] == runs["--no-hubness"]["images"] and "text_to_image" in runs["--hubness"]
    # a model not in DEFAULT_ON is evaluated as search ranks it: without hubness reduction
    assert runs["default"]["text_to_image"] == runs["--no-hubness"]["text_to_image"]


def test_http_search_and_similar_take_the_hubness_flag(tmp_path, folder, tiny_clip, monkeypatch):
    from visdex.server import create_app

    from serverhelp import local_client

    monkeypatch.setenv("VISDEX_CACHE_DIR", str(tmp_path / "cache"))
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        want_on = [h.id for h in ix.search("a cat", k=5, hubness=True)]
        bank = bank_path(ix.db.fingerprint)
    # a new cache dir: the server must embed its own bank, the proof that the flag reached the library
    monkeypatch.setenv("VISDEX_CACHE_DIR", str(tmp_path / "cache2"))
    with local_client(create_app(tmp_path / "ix")) as c:
        new_bank = tmp_path / "cache2" / bank.relative_to(tmp_path / "cache")
        off = c.get("/api/search", params={"q": "a cat", "k": 5, "hubness": "false"})
        assert off.status_code == 200
        assert not new_bank.exists()
        on = c.get("/api/search", params={"q": "a cat", "k": 5, "hubness": "true"})
        assert on.status_code == 200
        assert [r["id"] for r in on.json()["results"]] == want_on
        assert new_bank.is_file()
        first = on.json()["results"][0]["id"]
        assert len(c.get(f"/api/similar/{first}", params={"k": 2, "hubness": "true"}).json()["results"]) == 2
        assert c.get("/api/search", params={"q": "a cat", "hubness": "maybe"}).status_code == 422
        schema = c.get("/openapi.json").json()
        assert "hubness" in {p["name"] for p in schema["paths"]["/api/search"]["get"]["parameters"]}


def test_text_bank_is_cached_by_model_and_prepared_ahead(tmp_path, folder, tiny_clip, monkeypatch):
    """The bank is keyed by the model's fingerprint in the user cache dir: a second index of the same model reuses
    it; prepare() embeds it ahead (at index time) so the first query does not pay for it."""
    monkeypatch.setenv("VISDEX_CACHE_DIR", str(tmp_path / "cache"))
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        fp = ix.db.fingerprint
        assert not prepare(ix)  # not a model that reduces hubness by default: nothing embedded
        assert not bank_path(fp).exists()
        assert prepare(ix, force=True) and bank_path(fp).is_file()
        first = np.load(bank_path(fp))
        assert first.shape == (len(text_bank_texts()), fp.dim)
        np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1, atol=1e-4)
        stamp = bank_path(fp).stat().st_mtime_ns
    with open_index(tmp_path / "other", model=str(tiny_clip)) as ix2:  # another index, the same model
        ix2.add([folder])
        assert ix2.search("a cat", k=2, hubness=True)
        np.testing.assert_array_equal(text_bank(ix2.text_embedder, ix2.db.fingerprint), first)
    assert bank_path(fp).stat().st_mtime_ns == stamp  # read, not embedded again
    with open_index(tmp_path / "ix") as ix:  # embedded anew: the same vectors as the cached ones
        assert np.allclose(text_bank(ix.text_embedder, fp, cache=False), first, atol=1e-5)


def test_default_is_decided_per_model_on_the_held_out_queries():
    """benchmarks/results/quality-hubness-heldout.json: it did not help either offline text model on the held-out
    queries, so it is off for both (and for every model not in the table)."""
    assert not default_on("lite0-minilm") and not default_on("lite2-minilm") and not default_on("effnet-lite0")
    assert not default_on("clip-vit-b-32") and not default_on(None)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lite0-minilm", "lite2-minilm"])
def test_held_out_queries_do_not_improve_with_hubness(tmp_path, model):
    """The measurement behind DEFAULT_ON, re-run through the search path: were it to help, the default should change."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import quality_offline as qo

    queries = qo.load_queries("heldout")
    corpus = qo.write_corpus(tmp_path / "corpus", queries)
    with open_index(tmp_path / "ix", model=model) as ix:
        ix.add([str(p) for p in corpus.values()])
        names = {str(Path(p).resolve()): n for n, p in corpus.items()}
        off = qo.query_scores(ix, names, False, queries)
        on = qo.query_scores(ix, names, True, queries)
    assert len(queries["queries"]) >= 30
    assert on["top1"] <= off["top1"] and on["recall@5"] <= off["recall@5"], (off, on)
