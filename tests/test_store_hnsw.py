"""The two HNSW engines behind ``--ann hnsw`` (visdex.store.hnsw): hnswlib when installed, FAISS otherwise.
Both pass the store contract; hnswlib's dead nodes, persistence, filters and fallbacks are checked here
(FAISS's are in test_store_local.py)."""

import json
import sys

import numpy as np
import pytest

from visdex.errors import MissingDependency
from visdex.models.base import l2_normalize
from visdex.store import hnsw, local
from visdex.store.db import IndexDB
from visdex.store.local import FAISS_NAME, LocalVectorStore

from store_contract import StoreContract, rand_vecs

needs_hnswlib = pytest.mark.skipif(not hnsw.hnswlib_installed(), reason="hnswlib not installed (visdex[ann])")


def _store(path, dim: int, engine: str = "hnswlib", ann: str = "hnsw") -> LocalVectorStore:
    store = LocalVectorStore(IndexDB(path), dim, ann=ann)
    store.hnsw_engine = engine
    return store


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim))
    return l2_normalize(centres[rng.integers(0, 64, n)] + 0.35 * rng.standard_normal((n, dim)))


@needs_hnswlib
class TestHnswlibStoreContract(StoreContract):
    def make_store(self, tmp_path, dim):
        return _store(tmp_path / "ix", dim)


class TestFaissHNSWStoreContract(StoreContract):
    def make_store(self, tmp_path, dim):
        return _store(tmp_path / "ix", dim, engine="faiss")


@needs_hnswlib
def test_hnswlib_recall_against_exact_and_info(tmp_path):
    vecs, ids = _clustered(5000, 32), np.arange(5000)
    graph, flat = _store(tmp_path / "h", 32), LocalVectorStore(IndexDB(tmp_path / "f"), 32, ann="flat")
    for s in (graph, flat):
        s.upsert(ids, vecs)
    q = _clustered(200, 32, seed=7)
    scores, got = graph.search(q, 10)
    _, want = flat.search(q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want, strict=True)]) >= 0.95
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, vecs[got]), atol=1e-5)  # cosines, not distances
    assert isinstance(graph.index, hnsw.HnswlibGraph)
    info = graph.info()
    assert info["backend"] == "local (SQLite + hnswlib hnsw)" and info["params"]["engine"] == "hnswlib"
    assert info["params"]["M"] == hnsw.HNSWLIB_M


@needs_hnswlib
def test_hnswlib_deletes_and_replacements_after_reopen(tmp_path):
    vecs = _clustered(3000, 32)
    store = _store(tmp_path / "h", 32)
    store.upsert(np.arange(3000), vecs)
    graph = store.index
    store.delete([5, 6, 99_999])  # 99_999 was never stored
    store.upsert([7], vecs[100:101])  # 7 now holds 100's vector: updated in place, no dead node
    _, got = store.search(vecs[5:8], 5)
    assert not np.isin(got, [5, 6]).any()
    _, got = store.search(vecs[100:101], 2)
    assert set(got[0]) == {7, 100}
    assert store.index is graph and graph.ntotal == 3000 and store.info()["dead_nodes"] == 2
    store.upsert([6], vecs[200:201])  # a deleted id comes back: its node revives with the new vector
    assert store.info()["dead_nodes"] == 1 and graph.ntotal == 3000
    store.flush()
    meta = json.loads((tmp_path / "h" / (FAISS_NAME + ".json")).read_text())
    assert meta["engine"] == "hnswlib" and meta["dead"] == 1
    again = _store(tmp_path / "h", 32)
    assert isinstance(again.index, hnsw.HnswlibGraph) and again.info()["dead_nodes"] == 1  # loaded, not rebuilt
    assert again.index.ntotal == 3000
    _, got = again.search(vecs, 1)
    assert (got[:, 0] >= 0).all() and not np.isin(got, [5]).any()
    assert set(again.search(vecs[200:201], 2)[1][0]) == {6, 200}
    np.testing.assert_allclose(again.get([7])[0], vecs[100], atol=1e-6)


@needs_hnswlib
def test_hnswlib_rebuilds_once_a_quarter_is_dead_and_fills_k_around_the_dead(tmp_path):
    vecs = _clustered(2000, 32)
    store = _store(tmp_path / "h", 32)
    store.upsert(np.arange(2000), vecs)
    graph = store.index
    store.delete(np.arange(0, 400))  # 20% dead: searched around
    assert store.index is graph and store.info()["dead_nodes"] == 400
    scores, got = store.search(vecs[:50], 10)
    assert (got >= 400).all()
    np.testing.assert_allclose(scores[:, 0], np.max(vecs[:50] @ vecs[400:].T, axis=1), atol=1e-5)
    store.delete(np.arange(400, 600))  # 30%: rebuilt from SQLite
    assert store.index is not graph and store.index.ntotal == 1400 and store.info()["dead_nodes"] == 0
    small = _store(tmp_path / "s", 32)
    small.upsert(np.arange(100), vecs[:100])
    small.delete(np.arange(0, 100, 5))
    _, got = small.search(vecs[:2], 80)  # every live node
    assert (got >= 0).all() and not np.isin(got, np.arange(0, 100, 5)).any() and len(set(got[0])) == 80


@needs_hnswlib
def test_hnswlib_filters_return_k_matches(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "EXACT_FILTER_MAX", 500)  # larger allowed sets go through the graph
    vecs = _clustered(4000, 32)
    store = _store(tmp_path / "h", 32)
    store.upsert(np.arange(4000), vecs)
    q = vecs[123]
    large = np.unique(np.concatenate([np.arange(1, 4000, 2), np.arange(0, 4000, 4)]))
    scores, got = store.search(q[None], 10, allowed=large)
    want = large[np.argsort(-(vecs[large] @ q))[:10]]
    assert (got[0] >= 0).sum() == 10 and set(got[0]) <= set(large.tolist())
    assert len(set(got[0]) & set(want.tolist())) >= 9
    store.delete(large[:100])  # dead nodes and a filter together
    _, got = store.search(vecs[:3], 10, allowed=large)
    assert (got >= 0).all() and not np.isin(got, large[:100]).any() and np.isin(got, large).all()


@needs_hnswlib
def test_graph_of_the_other_engine_is_rebuilt(tmp_path):
    vecs = rand_vecs(500, 16)
    store = _store(tmp_path / "h", 16, engine="faiss")
    store.upsert(np.arange(500), vecs)
    store.flush()
    assert not isinstance(store.index, hnsw.HnswlibGraph)
    now = _store(tmp_path / "h", 16)  # hnswlib installed since: the FAISS graph is not used
    assert isinstance(now.index, hnsw.HnswlibGraph) and now.search(vecs[42:43], 1)[1][0][0] == 42
    now.flush()
    back = _store(tmp_path / "h", 16, engine="faiss")  # and back
    assert not isinstance(back.index, hnsw.HnswlibGraph) and back.search(vecs[7:8], 1)[1][0][0] == 7


@needs_hnswlib
@pytest.mark.parametrize("damage", ["garbage", "truncated", "other-dim-header"])
def test_damaged_hnswlib_file_is_rebuilt(tmp_path, damage):
    vecs = rand_vecs(300, 16)
    store = _store(tmp_path / "h", 16)
    store.upsert(np.arange(300), vecs)
    store.flush()
    path = tmp_path / "h" / FAISS_NAME
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"garbage" * 100)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # a graph of 8-d vectors where 16-d ones are expected: hnswlib alone would read past its rows
        small = _store(tmp_path / "other", 8)
        small.upsert(np.arange(300), rand_vecs(300, 8))
        small.flush()
        path.write_bytes((tmp_path / "other" / FAISS_NAME).read_bytes())
    with pytest.raises(ValueError):
        hnsw.HnswlibGraph.load(path, 16)
    again = _store(tmp_path / "h", 16)
    assert again.search(vecs[9:10], 1)[1][0][0] == 9 and again.index.ntotal == 300


def test_engine_falls_back_to_faiss_without_hnswlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "hnswlib", None)  # import hnswlib now raises ImportError
    assert not hnsw.hnswlib_installed() and hnsw.resolve_engine(None) == "faiss"
    with pytest.raises(MissingDependency, match=r"visdex\[ann\]"):
        hnsw.resolve_engine("hnswlib")
    store = LocalVectorStore(IndexDB(tmp_path / "h"), 16, ann="hnsw")
    vecs = rand_vecs(200, 16)
    store.upsert(np.arange(200), vecs)
    assert store.search(vecs[3:4], 1)[1][0][0] == 3 and store.info()["params"]["engine"] == "faiss"
    assert not isinstance(store.index, hnsw.HnswlibGraph)


def test_single_query_runs_faiss_on_one_thread_and_restores_the_setting(tmp_path):
    import faiss

    store = _store(tmp_path / "h", 16, engine="faiss")
    vecs = rand_vecs(300, 16)
    store.upsert(np.arange(300), vecs)
    before = faiss.omp_get_max_threads()
    seen = []
    with local._threads_for(1):
        seen.append(faiss.omp_get_max_threads())
    with local._threads_for(64):
        seen.append(faiss.omp_get_max_threads())
    assert seen == [1, before] and faiss.omp_get_max_threads() == before
    assert store.search(vecs[:1], 1)[1][0][0] == 0 and faiss.omp_get_max_threads() == before


@needs_hnswlib
def test_built_graph_is_laid_out_cluster_by_cluster(tmp_path, monkeypatch):
    monkeypatch.setattr(hnsw, "LAYOUT_FROM", 2000)
    monkeypatch.setattr(hnsw, "LAYOUT_LISTS", 32)
    vecs = _clustered(6000, 32, seed=4)
    ids = np.random.default_rng(1).permutation(6000) * 5 + 1  # ids in no order of content
    store = _store(tmp_path / "h", 32)
    store.upsert(ids, vecs)
    by_id = dict(zip(ids.tolist(), vecs, strict=True))
    order = hnsw._cluster_order(np.sort(ids), store.iter_vectors, store.get, 32)
    assert sorted(order.tolist()) == sorted(ids.tolist())
    rest = np.stack([by_id[i] for i in order[int(hnsw.LAYOUT_SKELETON * len(order)) :]])
    shuffled = np.stack([by_id[i] for i in np.sort(ids)])
    # neighbours in memory are neighbours in space after the random fifth (in id order they are not)
    assert np.mean(np.sum(rest[1:] * rest[:-1], axis=1)) > 0.5 > np.mean(np.sum(shuffled[1:] * shuffled[:-1], axis=1))
    store._stale = True  # noqa: SLF001 - rebuilt from SQLite, as after many deletes
    flat = LocalVectorStore(IndexDB(tmp_path / "f"), 32, ann="flat")
    flat.upsert(ids, vecs)
    q = _clustered(100, 32, seed=9)
    _, got = store.search(q, 10)
    _, want = flat.search(q, 10)
    assert store.index.ntotal == 6000
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want, strict=True)]) >= 0.95


@needs_hnswlib
def test_filtered_search_scales_ef_by_the_allowed_share(tmp_path, monkeypatch):
    """hnswlib searches on until it holds ef *allowed* nodes: at the default ef (512) a 5% filter would visit
    ~20x the nodes of a search without one (10^6 vectors: 50 ms a query), so ef shrinks with the share."""
    monkeypatch.setattr(local, "EXACT_FILTER_MAX", 100)
    vecs = _clustered(4000, 32)
    store = _store(tmp_path / "h", 32)
    store.upsert(np.arange(4000), vecs)
    allowed = np.arange(0, 4000, 20)  # 5%: 200 ids, through the graph
    _, got = store.search(vecs[:20], 10, allowed=allowed)
    assert store.index._index.ef == 26  # noqa: SLF001 - 512 * 5%, at least 2k
    want = allowed[np.argsort(-(vecs[:20] @ vecs[allowed].T), axis=1)[:, :10]]
    assert np.isin(got, allowed).all()
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want, strict=True)]) >= 0.95
