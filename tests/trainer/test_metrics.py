"""Recall and NDCG against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from trainer.metrics import hit_matrix, ranking_metrics


def truth(rows: list[list[int]], n_items: int = 10) -> sp.csr_matrix:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(len(rows), n_items))


def test_hand_computed_recall_and_ndcg() -> None:
    # user 0 relevant {1, 5}: ranked [1, 2, 5] -> hits at ranks 1 and 3
    # user 1 relevant {9}:    ranked [0, 9, 3] -> hit at rank 2
    topk = np.array([[1, 2, 5], [0, 9, 3]])
    metrics = ranking_metrics(topk, np.array([0, 1]), truth([[1, 5], [9]]), ks=(1, 3))
    assert metrics["recall@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert metrics["recall@3"] == pytest.approx((2 / 2 + 1 / 1) / 2)
    assert metrics["ndcg@1"] == pytest.approx((1.0 + 0.0) / 2)
    ndcg0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg1 = (1 / math.log2(3)) / 1
    assert metrics["ndcg@3"] == pytest.approx((ndcg0 + ndcg1) / 2)


def test_users_without_test_items_are_skipped_and_padding_never_hits() -> None:
    topk = np.array([[4, -1, -1], [7, 8, -1]])
    metrics = ranking_metrics(topk, np.array([0, 1]), truth([[], [8]]), ks=(3,))
    assert metrics["recall@3"] == pytest.approx(1.0)
    assert metrics["ndcg@3"] == pytest.approx(1 / math.log2(3))
    assert not hit_matrix(np.array([[-1]]), np.array([1]), truth([[], [0]])).any()


def test_too_short_rankings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 20"):
        ranking_metrics(np.zeros((1, 10), np.int64), np.array([0]), truth([[1]]), ks=(20,))
