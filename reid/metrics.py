"""CMC and mAP for person re-identification, as torchreid's ``eval_market1501`` defines them.

For each query the gallery is ranked by ascending distance; gallery items with the query's
identity *and* camera are removed (they are trivially easy); the rest is a binary relevance
list. Queries without any relevant item left are skipped (not in the denominator).
CMC(k) is the fraction of queries with a hit in the first k kept items; AP is the mean
precision at each hit over the **whole** kept list (not only the top ``max_rank``), the
non-interpolated form torchreid uses (the official MATLAB script averages trapezoids, so it
can differ slightly). The CMC has ``min(max_rank, gallery size)`` entries like torchreid's;
a query whose kept list is shorter counts as hit for every rank past its first hit, where
torchreid's Python path would fail on ragged lists.

Ranking uses a stable sort, so tied distances keep the gallery order (numpy's default sort,
which torchreid uses, breaks ties arbitrarily).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kdbench.benchmarks.errors import DatasetError

# Queries ranked per block: bounds the int64 work arrays to ~32 MB each on full Market-1501.
_BLOCK_ENTRIES = 4_000_000


@dataclass(frozen=True)
class ReIDScores:
    """CMC curve (fractions, index k-1 = rank-k) and mAP over the valid queries."""

    cmc: np.ndarray
    mAP: float
    valid_queries: int

    def rank(self, k: int) -> float:
        """CMC at rank ``k``; past the end of a short curve it is the last value."""
        if k < 1:
            raise ValueError(f"rank must be >= 1; got {k}")
        return float(self.cmc[min(k, len(self.cmc)) - 1])


def eval_market1501(
    distmat: np.ndarray | torch.Tensor,
    q_pids: np.ndarray | torch.Tensor,
    g_pids: np.ndarray | torch.Tensor,
    q_camids: np.ndarray | torch.Tensor,
    g_camids: np.ndarray | torch.Tensor,
    max_rank: int = 50,
) -> ReIDScores:
    """CMC and mAP of a [num_query, num_gallery] distance matrix (smaller = more similar)."""
    dist = _array(distmat, np.float64)
    q_pids, g_pids = _array(q_pids, np.int64), _array(g_pids, np.int64)
    q_camids, g_camids = _array(q_camids, np.int64), _array(g_camids, np.int64)
    _check_shapes(dist, q_pids, g_pids, q_camids, g_camids, max_rank)
    num_q, num_g = dist.shape
    ranks = min(max_rank, num_g)
    cmc_sum, ap_sum, valid = np.zeros(ranks), 0.0, 0
    block = max(1, _BLOCK_ENTRIES // max(1, num_g))
    for start in range(0, num_q, block):
        sl = slice(start, start + block)
        hits, ap = _score_block(dist[sl], q_pids[sl], q_camids[sl], g_pids, g_camids, ranks)
        cmc_sum += hits.sum(0)
        ap_sum += float(ap.sum())
        valid += len(ap)
    if valid == 0:
        raise DatasetError(
            "no query has a gallery image of the same identity from another camera, so CMC "
            "and mAP are undefined; check that query and gallery share identities"
        )
    return ReIDScores(cmc=cmc_sum / valid, mAP=ap_sum / valid, valid_queries=valid)


def _score_block(
    dist: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray,
    g_camids: np.ndarray, ranks: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per valid query of the block: rank-k hit indicators [Q', ranks] and AP [Q']."""
    order = np.argsort(dist, axis=1, kind="stable")
    match = g_pids[order] == q_pids[:, None]
    keep = ~(match & (g_camids[order] == q_camids[:, None]))
    relevant = match & keep
    num_rel = relevant.sum(1)
    valid = num_rel > 0
    kept_rank = np.cumsum(keep, axis=1)  # 1-based position among the kept items
    hits_so_far = np.cumsum(relevant, axis=1)
    precision = np.where(relevant, hits_so_far / np.maximum(kept_rank, 1), 0.0)
    ap = precision.sum(1)[valid] / num_rel[valid]
    first_hit = np.where(relevant, kept_rank, np.iinfo(np.int64).max).min(1)[valid]
    cmc = np.arange(1, ranks + 1)[None, :] >= first_hit[:, None]
    return cmc, ap


def _array(x: np.ndarray | torch.Tensor, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_shapes(dist: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                  q_camids: np.ndarray, g_camids: np.ndarray, max_rank: int) -> None:
    if dist.ndim != 2:
        raise ValueError(f"distmat must be [num_query, num_gallery]; got shape {dist.shape}")
    num_q, num_g = dist.shape
    for name, arr, n in (("q_pids", q_pids, num_q), ("q_camids", q_camids, num_q),
                         ("g_pids", g_pids, num_g), ("g_camids", g_camids, num_g)):
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match distmat {dist.shape}; "
                             f"got {arr.shape}")
    if num_q == 0 or num_g == 0:
        raise DatasetError(f"cannot rank {num_q} queries against {num_g} gallery images")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1; got {max_rank}")
