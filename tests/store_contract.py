"""The VectorStore contract, as tests any backend runs: subclass ``StoreContract`` and give a
``make_store(tmp_path, dim)`` fixture."""

from __future__ import annotations

import numpy as np
import pytest

from visdex.models.base import l2_normalize


def rand_vecs(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, dim)))


def exact_topk(vecs: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(vecs @ q))[:k]]


class StoreContract:
    dim = 16
    filters_itself = False  # compile_where gives the backend's own filter (Milvus), not None (filter by ids)

    @pytest.fixture
    def store(self, tmp_path):
        return self.make_store(tmp_path, self.dim)

    def test_empty_store_returns_padding(self, store):
        scores, ids = store.search(rand_vecs(2, self.dim), 5)
        assert ids.shape == (2, 5) and (ids == -1).all() and np.isinf(scores).all()
        assert store.count() == 0

    def test_upsert_search_matches_exact(self, store):
        vecs, ids = rand_vecs(200, self.dim), np.arange(1000, 1200)
        store.upsert(ids, vecs)
        assert store.count() == 200
        q = rand_vecs(3, self.dim, seed=1)
        scores, got = store.search(q, 10)
        for row in range(3):
            assert list(got[row]) == list(exact_topk(vecs, ids, q[row], 10))
            assert np.all(np.diff(scores[row]) <= 1e-6)  # best first
            np.testing.assert_allclose(scores[row], np.sort(vecs @ q[row])[::-1][:10], rtol=1e-5, atol=1e-5)

    def test_upsert_replaces(self, store):
        vecs = rand_vecs(10, self.dim)
        store.upsert(np.arange(10), vecs)
        store.upsert([3], vecs[7:8])
        assert store.count() == 10
        np.testing.assert_allclose(store.get([3])[0], vecs[7], atol=1e-6)
        _, got = store.search(vecs[7:8], 2)
        assert set(got[0]) == {3, 7}

    def test_iter_vectors_reads_every_vector_once(self, store):
        vecs, ids = rand_vecs(50, self.dim), np.arange(100, 150)
        store.upsert(ids, vecs)
        store.delete([120, 121])
        seen: dict[int, np.ndarray] = {}
        for part_ids, part_vecs in store.iter_vectors(7):
            assert len(part_ids) == len(part_vecs) <= 7
            for i, v in zip(part_ids.tolist(), part_vecs, strict=True):
                assert i not in seen
                seen[i] = v
        assert sorted(seen) == [i for i in range(100, 150) if i not in (120, 121)]
        for i, v in seen.items():
            np.testing.assert_allclose(v, vecs[i - 100], atol=1e-3)

    def test_compile_where_says_who_filters(self, store):
        store.upsert(np.arange(3), rand_vecs(3, self.dim))
        assert (store.compile_where("format = jpeg") is not None) == self.filters_itself

    def test_delete(self, store):
        vecs = rand_vecs(20, self.dim)
        store.upsert(np.arange(20), vecs)
        store.delete([5, 6, 999])
        assert store.count() == 18
        _, got = store.search(vecs[5:6], 20)
        assert 5 not in got[0] and 6 not in got[0]
        with pytest.raises(KeyError):
            store.get([5])

    def test_filter_is_topk_among_allowed(self, store):
        vecs, ids = rand_vecs(300, self.dim), np.arange(300)
        store.upsert(ids, vecs)
        allowed = ids[ids % 7 == 0]
        q = rand_vecs(1, self.dim, seed=3)[0]
        _, got = store.search(q[None], 5, allowed=allowed)
        assert list(got[0]) == list(exact_topk(vecs[allowed], allowed, q, 5))

    def test_filter_with_fewer_matches_than_k(self, store):
        store.upsert(np.arange(50), rand_vecs(50, self.dim))
        _, got = store.search(rand_vecs(1, self.dim), 10, allowed=np.array([3, 4]))
        assert sorted(got[0][:2]) == [3, 4] and (got[0][2:] == -1).all()

    def test_get_order_and_ids(self, store):
        vecs = rand_vecs(5, self.dim)
        store.upsert([10, 11, 12, 13, 14], vecs)
        np.testing.assert_allclose(store.get([14, 10]), vecs[[4, 0]], atol=1e-6)
        assert sorted(store.ids().tolist()) == [10, 11, 12, 13, 14]
