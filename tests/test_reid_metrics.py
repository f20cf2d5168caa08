"""CMC / mAP (torchreid's ``eval_market1501``): a two-query example worked out by hand, a
brute-force loop on random matrices, and the metric's invariants (perfect embedding, gallery
order, same-camera matches, CMC and AP bounds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdbench.benchmarks.errors import DatasetError
from kdbench.reid.metrics import eval_market1501


def brute_force(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50):
    """The definition, one query at a time, in plain Python. Returns (cmc, mAP, per-query)."""
    num_q, num_g = dist.shape
    ranks = min(max_rank, num_g)
    cmcs, aps, per_query = [], [], []
    for q in range(num_q):
        order = sorted(range(num_g), key=lambda g: (dist[q, g], g))
        raw = [int(g_pids[g] == q_pids[q]) for g in order
               if not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])]
        if sum(raw) == 0:
            per_query.append(None)
            continue
        hits, precisions = 0, []
        for i, r in enumerate(raw):
            hits += r
            if r:
                precisions.append(hits / (i + 1))
        first = raw.index(1)
        cmcs.append([float(k >= first) for k in range(ranks)])
        aps.append(sum(precisions) / sum(raw))
        per_query.append({"ap": aps[-1], "first": first + 1, "num_rel": sum(raw), "raw": raw})
    return np.mean(cmcs, axis=0), float(np.mean(aps)), per_query


def random_case(rng: np.random.Generator, num_q: int, num_g: int, num_ids: int = 5,
                num_cams: int = 3):
    return (rng.random((num_q, num_g)), rng.integers(0, num_ids, num_q),
            rng.integers(0, num_ids, num_g), rng.integers(0, num_cams, num_q),
            rng.integers(0, num_cams, num_g))


def valid_case(rng: np.random.Generator, num_q: int, num_g: int, **kwargs):
    while True:
        case = random_case(rng, num_q, num_g, **kwargs)
        if any(p is not None for p in brute_force(*case)[2]):
            return case


def test_spec_hand_made_example():
    # query 0 (pid 1, cam 0) ranks g0 (2,c1), g1 (1,c0: removed), g2 (1,c1), g3 (3,c0), g4 (1,c2)
    # query 1 (pid 2, cam 0): its only match g0 (2,c1) is nearest.
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.9, 0.8, 0.7, 0.6]])
    scores = eval_market1501(dist, [1, 2], [2, 1, 1, 3, 1], [0, 0], [1, 0, 1, 0, 2])
    assert scores.mAP == 0.75
    assert scores.cmc.tolist() == [0.5, 1.0, 1.0, 1.0, 1.0]  # clipped to the gallery size
    assert scores.rank(1) == 0.5 and scores.rank(2) == 1.0 and scores.rank(10) == 1.0
    first = eval_market1501(dist[:1], [1], [2, 1, 1, 3, 1], [0], [1, 0, 1, 0, 2])
    assert first.mAP == 0.5  # (1/2 + 2/4) / 2


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force_on_random_matrices(seed):
    rng = np.random.default_rng(seed)
    num_q, num_g = int(rng.integers(1, 15)), int(rng.integers(1, 40))
    max_rank = int(rng.integers(1, 60))
    case = valid_case(rng, num_q, num_g)
    cmc, m_ap, _ = brute_force(*case, max_rank=max_rank)
    scores = eval_market1501(*case, max_rank=max_rank)
    np.testing.assert_allclose(scores.cmc, cmc, rtol=0, atol=1e-12)
    assert scores.mAP == pytest.approx(m_ap, abs=1e-12)


def test_large_matrix_is_scored_in_blocks_like_the_loop(monkeypatch):
    from kdbench.reid import metrics

    monkeypatch.setattr(metrics, "_BLOCK_ENTRIES", 50)  # several query blocks
    case = valid_case(np.random.default_rng(99), 23, 17)
    cmc, m_ap, _ = brute_force(*case)
    scores = eval_market1501(*case)
    np.testing.assert_allclose(scores.cmc, cmc, atol=1e-12)
    assert scores.mAP == pytest.approx(m_ap, abs=1e-12)


def test_perfect_embedding_gives_rank1_and_map_of_one():
    rng = np.random.default_rng(1)
    q_pids, g_pids = np.repeat(np.arange(6), 2), np.repeat(np.arange(6), 4)
    q_cams, g_cams = np.tile([0, 1], 6), np.tile([0, 1, 2, 3], 6)
    dist = (q_pids[:, None] != g_pids[None, :]).astype(float) + 1e-3 * rng.random((12, 24))
    scores = eval_market1501(dist, q_pids, g_pids, q_cams, g_cams)
    assert scores.rank(1) == 1.0 and scores.mAP == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_gallery_permutation_changes_nothing(seed):
    rng = np.random.default_rng(seed)
    dist, qp, gp, qc, gc = valid_case(rng, 10, 30)
    perm = rng.permutation(30)
    a = eval_market1501(dist, qp, gp, qc, gc)
    b = eval_market1501(dist[:, perm], qp, gp[perm], qc, gc[perm])
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert a.mAP == b.mAP


def test_same_id_same_camera_gallery_items_never_matter():
    rng = np.random.default_rng(3)
    q_pids, q_cams = np.arange(1, 7), rng.integers(0, 3, 6)
    g_pids, g_cams = np.repeat(np.arange(1, 7), 3), np.tile([0, 1, 2], 6)
    dist = rng.random((6, 18)) + 1.0
    base = eval_market1501(dist, q_pids, g_pids, q_cams, g_cams)
    # Each added item has its query's id and camera and is that query's nearest neighbour;
    # for every other query it is a different id ranked last, which cannot move a hit.
    extra = np.full((6, 6), 10.0)
    np.fill_diagonal(extra, 0.0)
    more = eval_market1501(np.hstack([dist, extra]), q_pids, np.concatenate([g_pids, q_pids]),
                           q_cams, np.concatenate([g_cams, q_cams]))
    np.testing.assert_array_equal(base.cmc[:18], more.cmc[:18])
    assert base.mAP == more.mAP
    # ...and removing a query's own same-id same-camera items changes nothing for it.
    for q in range(6):
        one = dict(q_pids=q_pids[q:q + 1], q_camids=q_cams[q:q + 1])
        keep = ~((g_pids == q_pids[q]) & (g_cams == q_cams[q]))
        full = eval_market1501(dist[q:q + 1], g_pids=g_pids, g_camids=g_cams, **one)
        fewer = eval_market1501(dist[q:q + 1, keep], g_pids=g_pids[keep],
                                g_camids=g_cams[keep], **one)
        np.testing.assert_array_equal(full.cmc[: keep.sum()], fewer.cmc)
        assert full.mAP == fewer.mAP


@pytest.mark.parametrize("seed", range(6))
def test_cmc_monotone_and_ap_bounds(seed):
    rng = np.random.default_rng(100 + seed)
    case = valid_case(rng, 8, 25)
    scores = eval_market1501(*case)
    assert np.all(np.diff(scores.cmc) >= 0) and scores.cmc[0] >= 0 and scores.cmc[-1] <= 1
    dist, qp, gp, qc, gc = case
    for q, info in enumerate(brute_force(*case)[2]):
        if info is None:
            continue
        ap = eval_market1501(dist[q:q + 1], qp[q:q + 1], gp, qc[q:q + 1], gc).mAP
        assert 1 / (info["first"] * info["num_rel"]) <= ap + 1e-12 and 0 < ap <= 1
        all_hits_first = info["raw"] == sorted(info["raw"], reverse=True)
        assert (ap == 1.0) == all_hits_first


def test_ap_counts_the_whole_list_not_only_the_top_max_rank():
    # The only hit is third: CMC up to rank 2 is 0, yet AP = 1/3.
    scores = eval_market1501([[0.1, 0.2, 0.3]], [1], [2, 3, 1], [0], [1, 1, 1], max_rank=2)
    assert scores.cmc.tolist() == [0.0, 0.0]
    assert scores.mAP == pytest.approx(1 / 3)


def test_queries_with_only_same_camera_matches_are_skipped():
    dist = [[0.1, 0.2], [0.3, 0.1]]
    scores = eval_market1501(dist, [1, 2], [1, 2], [0, 0], [1, 0])  # query 2's match: cam 0
    assert scores.valid_queries == 1 and scores.mAP == 1.0


def test_tiny_gallery_is_padded_with_the_last_value():
    scores = eval_market1501(torch.tensor([[0.2, 0.1]]), torch.tensor([1]),
                             torch.tensor([1, 5]), torch.tensor([0]), torch.tensor([1, 1]))
    assert len(scores.cmc) == 2 and scores.cmc.tolist() == [0.0, 1.0]
    assert scores.rank(5) == scores.rank(10) == 1.0


def test_tied_distances_keep_gallery_order():
    scores = eval_market1501([[0.5, 0.5]], [1], [2, 1], [0], [1, 1])
    assert scores.rank(1) == 0.0 and scores.mAP == 0.5


def test_no_valid_query_and_bad_shapes_are_clear_errors():
    with pytest.raises(DatasetError, match="no query has a gallery image"):
        eval_market1501([[0.1]], [1], [1], [0], [0])
    with pytest.raises(ValueError, match=r"g_pids must have shape \(3,\)"):
        eval_market1501(np.zeros((1, 3)), [1], [1, 2], [0], [0, 1, 2])
