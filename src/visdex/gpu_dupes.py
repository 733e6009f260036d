"""The candidate stage of :mod:`visdex.dupes` on a torch device: exact k-NN by inner product, in blocks.

Every stored vector is compared with every other one by blocks of matrix products, and the
``neighbours`` best of each row are kept. On a GPU this is exact and fast: 10^6 x 512 vectors
are ~5e14 multiply-adds, about a second of fp16 tensor-core time, where the store's HNSW
search took 23 minutes on 2 CPU cores (benchmarks/results/dupes-1e6.json). The result has the
contract of ``dupes._candidate_pairs``: ``(a, b, cosine)`` with ``a < b`` for every pair where one
is among the other's ``neighbours`` nearest and the cosine is at least ``threshold``.

Off the CPU the products run in float16 (float32 accumulation). fp16 rounding can only change
which neighbours are looked at near the k-th one: kept pairs are re-scored in float32, and the
fp16 pre-filter keeps pairs down to ``threshold - FP16_MARGIN`` so none at the threshold is lost.

>>> pairs = candidate_pairs(ix.store, 0.9, device="cuda")           # doctest: +SKIP
>>> a, b, cos = dense_candidate_pairs(vectors, ids, 0.9, device="cuda")   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

NEIGHBOURS = 16  # as dupes.NEIGHBOURS; repeated so that this module does not import dupes
FP16_MARGIN = 0.01  # far above fp16's error on a cosine of unit vectors (~1e-3)
SCORE_BLOCK_BYTES = 2 << 30  # one block of the score matrix on a GPU, at most (less when memory is short)
CPU_BLOCK_BYTES = 256 << 20
RESCORE_CHUNK = 1 << 18  # pairs re-scored in float32 at a time (two gathers of 512 MB at d=512)


def load_vectors(store, device: str):
    """(ids as int64 numpy, float32 (n, d) tensor on ``device``) of every vector in ``store``.

    Reads the store's truth in chunks (``iter_vectors`` where the backend has it, else ``ids`` + ``get``).
    """
    import torch

    if hasattr(store, "iter_vectors"):
        chunks = store.iter_vectors()
    else:
        every = store.ids()
        chunks = ((every[i : i + 65536], store.get(every[i : i + 65536])) for i in range(0, len(every), 65536))
    ids, parts = [], []
    for chunk_ids, vecs in chunks:
        ids.append(np.asarray(chunk_ids, np.int64))
        parts.append(torch.from_numpy(np.array(vecs, np.float32)).to(device))
    if not parts:
        return np.zeros(0, np.int64), torch.zeros((0, 0), device=device)
    return np.concatenate(ids), torch.cat(parts)


def block_rows(n: int, device) -> int:
    """Query rows per block, so that one (rows, n) block of scores fits comfortably in the device's memory."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget, item = min(SCORE_BLOCK_BYTES, free // 8), 2  # topk needs room beside the block
    else:
        budget, item = CPU_BLOCK_BYTES, 4
    return int(max(64, min(16384, budget // max(1, n * item))))


def dense_candidate_pairs(vectors, ids: np.ndarray, threshold: float, neighbours: int = NEIGHBOURS, *,
                          device: str | None = None, rows: int | None = None,
                          progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(a, b, cosine) arrays, ``a < b``, of the k-NN pairs at or above ``threshold`` among ``vectors``.

    ``vectors``: (n, d) L2-normalised float32, a numpy array or a torch tensor (then ``device`` is its own);
    ``ids[i]`` names row i. ``rows``: query rows per block (default: :func:`block_rows`).
    """
    import torch

    x = vectors if isinstance(vectors, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(vectors, np.float32))
    x = x.to(device or x.device, torch.float32)
    ids = np.asarray(ids, np.int64)
    n = len(x)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if n < 2:
        return empty
    fast = x.to(torch.float16) if x.device.type != "cpu" else x  # CPU: no fast fp16 matrix product
    floor = threshold - (FP16_MARGIN if fast.dtype == torch.float16 else 0.0)
    k = min(neighbours + 1, n)  # +1: a row finds itself
    rows = rows or block_rows(n, x.device)
    if progress is not None:
        progress.start(n)
    keys = []
    with torch.inference_mode():
        for start in range(0, n, rows):
            q = fast[start : start + rows]
            top_s, top_i = torch.topk(q @ fast.T, k, dim=1, sorted=False)
            me = torch.arange(start, start + len(q), device=x.device)[:, None]
            keep = (top_s >= floor) & (top_i != me)
            a, b = me.expand_as(top_i)[keep], top_i[keep]
            keys.append(torch.minimum(a, b) * n + torch.maximum(a, b))  # one key per unordered pair
            if progress is not None:
                progress.advance(len(q))
        key = torch.unique(torch.cat(keys))
        lo, hi = key // n, key % n
        cos = torch.cat([(x[lo[i : i + RESCORE_CHUNK]] * x[hi[i : i + RESCORE_CHUNK]]).sum(1)
                         for i in range(0, len(key), RESCORE_CHUNK)]) if len(key) else x.new_zeros(0)  # fmt: skip
        ok = cos >= threshold
        lo_np, hi_np, cos_np = lo[ok].cpu().numpy(), hi[ok].cpu().numpy(), cos[ok].cpu().numpy()
    a, b = ids[lo_np], ids[hi_np]
    return np.minimum(a, b), np.maximum(a, b), cos_np.astype(np.float32)


def candidate_pairs(store, threshold: float, neighbours: int = NEIGHBOURS, *, device: str = "auto",
                    progress=None) -> list[tuple[int, int, float]]:  # fmt: skip
    """``dupes._candidate_pairs`` for a whole store on a torch device: a list of (a, b, cosine), a < b.

    ``device``: ``"cuda"``, ``"cuda:1"``, ``"cpu"`` or ``"auto"``; an unusable one raises
    :class:`~visdex.errors.ModelLoadError`, as it does for a model.
    """
    from .models import resolve_device

    device = resolve_device(device)
    ids, x = load_vectors(store, device)
    a, b, cos = dense_candidate_pairs(x, ids, threshold, neighbours, progress=progress)
    return list(zip(a.tolist(), b.tolist(), cos.tolist(), strict=True))
