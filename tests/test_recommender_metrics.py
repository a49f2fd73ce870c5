"""Ranking metrics against hand-computed cases (issue 12)."""

import math

import numpy as np
import pytest

from puhui.recommender.metrics import group_metrics, ranking_summary, summarize

LOG3 = math.log2(3)


def test_graded_group_by_hand() -> None:
    # ranked: rel 3, 0, 1 -> DCG = 7 + 0 + 1/log2(4); ideal 3, 1, 0 -> 7 + 1/log2(3)
    m = group_metrics(np.array([3, 0, 1]), np.array([0.9, 0.5, 0.1]), np.zeros(3), k=3)
    assert m.ndcg[0] == pytest.approx(7.5 / (7 + 1 / LOG3))
    assert m.average_precision[0] == pytest.approx((1 + 2 / 3) / 2)
    assert m.hit[0] == 1.0


def test_cutoff_drops_items_below_k() -> None:
    # k=1: only the top item counts; the relevant one is second
    m = group_metrics(np.array([0, 2]), np.array([0.9, 0.1]), np.zeros(2), k=1)
    assert m.ndcg[0] == 0.0
    assert m.average_precision[0] == 0.0
    assert m.hit[0] == 0.0


def test_no_response_is_undefined_and_reported_both_ways() -> None:
    rel = np.array([1, 0, 0, 0])
    scores = np.array([0.9, 0.1, 0.5, 0.4])
    group = np.array([1, 1, 2, 2])
    m = group_metrics(rel, scores, group, k=3)
    assert m.has_response.tolist() == [True, False]
    assert math.isnan(m.ndcg[1]) and math.isnan(m.average_precision[1])
    assert m.hit[1] == 0.0
    s = summarize(m, 3)
    assert (s.groups, s.groups_with_response) == (2, 1)
    assert s.ndcg_every == pytest.approx(0.5)  # the no-response group counts 0
    assert s.ndcg_responders == pytest.approx(1.0)  # ... or is left out
    assert s.map_every == pytest.approx(0.5) and s.hit_every == pytest.approx(0.5)
    assert s.hit_responders == pytest.approx(1.0)


def test_ties_are_broken_pessimistically() -> None:
    # equal scores: the relevant item is placed after the irrelevant one, whatever the order
    for rel in ([0, 2], [2, 0]):
        m = group_metrics(np.array(rel), np.array([0.5, 0.5]), np.zeros(2), k=1)
        assert m.ndcg[0] == 0.0 and m.hit[0] == 0.0
    m = group_metrics(np.array([0, 2]), np.array([0.5, 0.5]), np.zeros(2), k=2)
    assert m.ndcg[0] == pytest.approx(1 / LOG3)


def test_k_larger_than_the_group() -> None:
    m = group_metrics(np.array([1]), np.array([0.3]), np.zeros(1), k=3)
    assert (m.ndcg[0], m.average_precision[0], m.hit[0]) == (1.0, 1.0, 1.0)
    m = group_metrics(np.array([0, 1]), np.array([0.9, 0.1]), np.zeros(2), k=5)
    assert m.ndcg[0] == pytest.approx(1 / LOG3)
    assert m.average_precision[0] == pytest.approx(0.5)  # P@2 / min(5, 1 relevant)


def test_all_tied_k_beyond_the_products_with_a_silent_customer() -> None:
    # 3 products all scored alike, k=5: ranked pessimistically rel 0, 1, 2; the second
    # customer responded to nothing (undefined, 0 under "every", left out of "responders")
    rel = np.array([2, 0, 1, 0, 0, 0])
    group = np.array([1, 1, 1, 2, 2, 2])
    m = group_metrics(rel, np.full(6, 0.5), group, k=5)
    ndcg = (1 / LOG3 + 3 / 2) / (3 + 1 / LOG3)  # DCG 0 + 1/log2(3) + 3/log2(4)
    assert m.ndcg[0] == pytest.approx(ndcg)
    assert m.average_precision[0] == pytest.approx((1 / 2 + 2 / 3) / 2)  # P@2, P@3
    assert m.hit.tolist() == [1.0, 0.0]
    s = summarize(m, 5)
    assert (s.groups, s.groups_with_response) == (2, 1)
    assert s.ndcg_every == pytest.approx(ndcg / 2)
    assert s.ndcg_responders == pytest.approx(ndcg)
    assert s.map_every == pytest.approx(7 / 24) and s.hit_every == pytest.approx(0.5)


def test_rows_in_any_order_and_groups_interleaved() -> None:
    rel = np.array([0, 3, 1, 0, 1])
    scores = np.array([0.5, 0.9, 0.1, 0.2, 0.8])
    group = np.array([7, 7, 7, 3, 3])
    m = group_metrics(rel, scores, group, k=3)
    assert m.groups.tolist() == [3, 7]
    assert m.ndcg[0] == 1.0
    assert m.ndcg[1] == pytest.approx(7.5 / (7 + 1 / LOG3))
    s = ranking_summary(rel, scores, group, 3)
    assert s.ndcg_every == pytest.approx((1 + 7.5 / (7 + 1 / LOG3)) / 2)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="k must"):
        group_metrics(np.array([1]), np.array([1.0]), np.zeros(1), k=0)
    with pytest.raises(ValueError, match="same length"):
        group_metrics(np.array([1, 0]), np.array([1.0]), np.zeros(2), k=1)


def test_chance_ndcg_is_the_mean_over_every_order_by_hand() -> None:
    from itertools import permutations

    from puhui.recommender.metrics import chance_ndcg

    rel = np.array([2, 0, 1, 0, 1, 0, 0, 0])
    group = np.array([5, 5, 5, 5, 7, 7, 9, 9])  # 4 products; 2 (k covers all); no response
    chance = chance_ndcg(rel, group, k=3)
    # Group 5 by hand: each row is at each position with chance 1/4; mean gain (3+1)/4 = 1,
    # discounts 1 + 1/log2(3) + 1/2; ideal 3 + 1/log2(3).
    assert chance[0] == pytest.approx((1 + 1 / LOG3 + 0.5) / (3 + 1 / LOG3))
    orders = list(permutations(range(4)))
    every = [group_metrics(rel[:4], -np.array(o, dtype=float), np.zeros(4), 3).ndcg[0]
             for o in orders]
    assert chance[0] == pytest.approx(np.mean(every))  # the mean over all 24 orders
    # Two products with k=3: both are always shown, so chance earns 1 or 1/log2(3) half-half.
    assert chance[1] == pytest.approx((1 + 1 / LOG3) / 2)
    assert np.isnan(chance[2])
    assert len(chance_ndcg(rel[:0], group[:0], 3)) == 0
