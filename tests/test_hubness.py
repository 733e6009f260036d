"""Hubness reduction (CSLS on a shortlist): a hub that sits near every query is demoted; off by default."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from visdex import open_index
from visdex.hubness import HubnessReducer, default_on, penalties, shortlist_size, text_bank_texts
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


def test_search_path_rescores_only_with_hubness_on(tmp_path, folder, tiny_clip):
    assert not default_on("lite0-minilm") and not default_on("clip-vit-b-32")  # measured: it did not help
    assert len(text_bank_texts()) > 1000
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        plain = ix.search("a cat", k=3)
        assert [h.id for h in plain] == [h.id for h in ix.search("a cat", k=3, hubness=False)]
        on = ix.search("a cat", k=3, hubness=True)
        assert len(on) == 3 and all(h.score <= plain[0].score + 1e-6 for h in on)  # scores stay cosines
        assert list((tmp_path / "ix").glob("hubness-text-*.npy"))  # the text bank, embedded once, kept
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
    for flag in ([], ["--hubness"]):
        code, out, err = run_cli(capsys, "eval", "captions", csv, "-m", str(tiny_clip), "--json", "-q", *flag)
        assert code == 0, err
        runs[bool(flag)] = json.loads(out)["results"][0]
    assert runs[True]["images"] == runs[False]["images"] and "text_to_image" in runs[True]


def test_http_search_and_similar_take_the_hubness_flag(tmp_path, folder, tiny_clip):
    from visdex.server import create_app

    from serverhelp import local_client

    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        want_on = [h.id for h in ix.search("a cat", k=5, hubness=True)]
    for bank in (tmp_path / "ix").glob("hubness-*"):
        bank.unlink()  # the server must embed its own bank: proof that the flag reached the library
    with local_client(create_app(tmp_path / "ix")) as c:
        off = c.get("/api/search", params={"q": "a cat", "k": 5, "hubness": "false"})
        assert off.status_code == 200
        assert not list((tmp_path / "ix").glob("hubness-text-*.npy"))
        on = c.get("/api/search", params={"q": "a cat", "k": 5, "hubness": "true"})
        assert on.status_code == 200
        assert [r["id"] for r in on.json()["results"]] == want_on
        assert list((tmp_path / "ix").glob("hubness-text-*.npy"))
        first = on.json()["results"][0]["id"]
        assert len(c.get(f"/api/similar/{first}", params={"k": 2, "hubness": "true"}).json()["results"]) == 2
        assert c.get("/api/search", params={"q": "a cat", "hubness": "maybe"}).status_code == 422
        schema = c.get("/openapi.json").json()
        assert "hubness" in {p["name"] for p in schema["paths"]["/api/search"]["get"]["parameters"]}
