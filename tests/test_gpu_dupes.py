"""visdex.gpu_dupes: the dupes candidate stage as exact k-NN on a torch device. Checked on the CPU device
against a brute-force reference and against the store's own search; the CUDA test (``-m gpu``) checks
the fp16 GPU path against the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from visdex import dupes, gpu_dupes
from visdex.errors import ModelLoadError
from visdex.store.db import IndexDB
from visdex.store.local import LocalVectorStore

torch = pytest.importorskip("torch")


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Clusters of ~40, so many rows have more than NEIGHBOURS neighbours above the threshold (the k cut matters),
    with a spread that varies by row, so that cosines fill the range around the threshold."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 40), dim))
    spread = rng.uniform(0.1, 0.6, (n, 1))
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(x: np.ndarray, ids: np.ndarray, threshold: float, k: int) -> dict[tuple[int, int], float]:
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    out = {}
    for i, row in enumerate(s):
        for j in np.argsort(-row)[:k]:
            if row[j] >= threshold:
                out[(int(min(ids[i], ids[j])), int(max(ids[i], ids[j])))] = float(row[j])
    return out


def _same_pairs(got: dict, want: dict, x: np.ndarray, ids: np.ndarray, k: int = gpu_dupes.NEIGHBOURS) -> None:
    """Equal pair sets, except pairs tied (within 1e-5) with the k-th neighbour of one end: either may be kept."""
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    kth = dict(zip(ids.tolist(), np.sort(s, axis=1)[:, -k].tolist(), strict=True))
    for a, b in set(got) ^ set(want):
        cos = got.get((a, b), want.get((a, b)))
        assert min(abs(cos - kth[a]), abs(cos - kth[b])) < 1e-5, f"pair {(a, b)} (cosine {cos}) is not a tie"
    assert len(set(got) ^ set(want)) < 0.01 * len(want)
    common = sorted(set(got) & set(want))
    np.testing.assert_allclose([got[p] for p in common], [want[p] for p in common], atol=1e-5)


def test_dense_pairs_equal_brute_force_knn():
    x = _clustered(600, 24)
    ids = np.random.default_rng(1).permutation(600) * 3 + 1000  # ids are not row numbers, nor sorted
    want = _brute_force(x, ids, 0.8, gpu_dupes.NEIGHBOURS)
    a, b, cos = gpu_dupes.dense_candidate_pairs(x, ids, 0.8, device="cpu", rows=64)  # 10 blocks, the last short
    got = dict(zip(zip(a.tolist(), b.tolist(), strict=True), cos.tolist(), strict=True))
    assert len(want) > 1000 and all(a_ < b_ for a_, b_ in got)
    _same_pairs(got, want, x, ids)


def _store(tmp_path, ids: np.ndarray, x: np.ndarray) -> LocalVectorStore:
    store = LocalVectorStore(IndexDB(tmp_path / "ix"), x.shape[1], ann="flat")  # exact: the reference search
    store.upsert(ids, x)
    return store


def test_candidate_stage_on_a_device_matches_the_store_search(tmp_path):
    x = _clustered(500, 16, seed=2)
    ids = np.arange(500) * 7 + 5
    ix = SimpleNamespace(store=_store(tmp_path, ids, x))
    by_store = {(a, b): s for a, b, s in dupes._candidate_pairs(ix, 0.85)}
    by_device = {(a, b): s for a, b, s in dupes._candidate_pairs(ix, 0.85, device="cpu")}
    assert len(by_store) > 500
    _same_pairs(by_device, by_store, x, ids)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_unusable_device_is_a_typed_error(tmp_path):
    store = _store(tmp_path, np.arange(4), _clustered(4, 8))
    with pytest.raises(ModelLoadError, match="not available"):
        gpu_dupes.candidate_pairs(store, 0.9, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_gpu_pairs_equal_the_cpu_pairs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20_000, 128)).astype(np.float32)
    src = rng.integers(0, 19_000, 1000)
    x[19_000:] = x[src] + 0.3 * rng.standard_normal((1000, 128)).astype(np.float32) * np.linalg.norm(
        x[src], axis=1, keepdims=True) / np.sqrt(128)  # fmt: skip
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(len(x))
    cpu = gpu_dupes.dense_candidate_pairs(x, ids, 0.9, device="cpu")
    gpu = gpu_dupes.dense_candidate_pairs(x, ids, 0.9, device="cuda", rows=4096)
    assert len(cpu[0]) >= 900
    assert set(zip(*cpu[:2], strict=True)) == set(zip(*gpu[:2], strict=True))
    np.testing.assert_allclose(np.sort(cpu[2]), np.sort(gpu[2]), atol=1e-5)  # re-scored in float32


def test_cli_dupes_on_a_torch_device_finds_the_same_groups(capsys, tmp_path, folder, tiny_clip):
    import json
    import shutil

    from clihelp import run_cli

    shutil.copy(folder / "chelsea.jpg", folder / "chelsea-copy.jpg")
    code, _, err = run_cli(capsys, "index", folder, "--index", tmp_path / "ix", "--model", tiny_clip, "-q")
    assert code == 0, err
    groups = {}
    for device in (None, "cpu"):
        args = ["dupes", "--index", tmp_path / "ix", "--json"] + (["--device", device] if device else [])
        code, out, err = run_cli(capsys, *args)
        assert code == 0, err
        groups[device] = sorted(sorted(m["path"] for m in json.loads(line)["members"]) for line in out.splitlines())
    assert groups["cpu"] == groups[None] and any(any("chelsea-copy" in p for p in g) for g in groups["cpu"])
    code, _, err = run_cli(capsys, "dupes", "--index", tmp_path / "ix", "--device", "cuda:7")
    assert code == 3 and "not available" in err
