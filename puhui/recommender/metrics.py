"""Ranking metrics for the product recommender: NDCG@k, MAP@k and hit-rate@k per group.

One group is one ranking (a customer on an as-of date); its rows are the products ranked,
each with a graded relevance (0 = shown only, higher = further down the offer funnel) and a
score (higher is ranked first).

A group with no relevant item (relevance all 0) has no defined NDCG or average precision.
Libraries disagree on it (LightGBM counts it as 1.0, sklearn's ``ndcg_score`` as 0.0), so
this module never decides silently: per-group values are NaN there, and summaries report
both conventions with their counts: ``every`` (such a group counts 0, hit-rate included)
and ``responders`` (such groups left out).

Ties in score are broken pessimistically: within equal scores the less relevant item comes
first, so a constant score earns nothing from the order the rows happened to arrive in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class GroupMetrics:
    """Per-group values, aligned with ``groups`` (sorted unique group ids)."""

    groups: np.ndarray
    ndcg: np.ndarray  # NaN where the group has no relevant item
    average_precision: np.ndarray  # NaN where the group has no relevant item
    hit: np.ndarray  # 0/1; 0 where the group has no relevant item
    has_response: np.ndarray  # bool


@dataclass(frozen=True)
class RankingSummary:
    """Means over groups, under both conventions for groups without a response."""

    k: int
    groups: int
    groups_with_response: int
    ndcg_every: float | None
    ndcg_responders: float | None
    map_every: float | None
    map_responders: float | None
    hit_every: float | None
    hit_responders: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _group_positions(sorted_groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index of each run of equal ids and every row's position within its run."""
    n = len(sorted_groups)
    starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    sizes = np.diff(np.r_[starts, n])
    return starts, np.arange(n) - np.repeat(starts, sizes)


def group_metrics(
    relevance: np.ndarray, scores: np.ndarray, group: np.ndarray, k: int
) -> GroupMetrics:
    """NDCG@k (gain 2^rel - 1, discount 1/log2(rank + 1)), AP@k (relevant = rel > 0,
    normalised by min(k, relevant items)) and hit@k for every group."""
    if k < 1:
        raise ValueError("k must be at least 1")
    relevance = np.asarray(relevance, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    group = np.asarray(group)
    if not (len(relevance) == len(scores) == len(group)):
        raise ValueError("relevance, scores and group must have the same length")
    if len(group) == 0:
        empty = np.array([], dtype=np.float64)
        return GroupMetrics(group[:0], empty, empty, empty, empty.astype(bool))
    if np.any(relevance < 0):
        raise ValueError("relevance must not be negative")

    ranked = np.lexsort((relevance, -scores, group))
    g, rel = group[ranked], relevance[ranked]
    starts, pos = _group_positions(g)
    in_top = pos < k
    discount = np.where(in_top, 1.0 / np.log2(pos + 2.0), 0.0)
    gain = np.power(2.0, rel) - 1.0
    dcg = np.add.reduceat(gain * discount, starts)

    ideal = np.lexsort((-relevance, group))
    ideal_gain = np.power(2.0, relevance[ideal]) - 1.0
    idcg = np.add.reduceat(ideal_gain * discount, starts)  # same groups, same positions

    relevant = rel > 0
    n_relevant = np.add.reduceat(relevant.astype(np.int64), starts)
    has_response = n_relevant > 0
    cum = np.cumsum(relevant)
    before = np.repeat(np.r_[0, cum[starts[1:] - 1]], np.diff(np.r_[starts, len(g)]))
    hits_so_far = cum - before
    precision_terms = np.where(relevant & in_top, hits_so_far / (pos + 1.0), 0.0)
    ap_sum = np.add.reduceat(precision_terms, starts)
    hit = np.add.reduceat((relevant & in_top).astype(np.int64), starts) > 0

    with np.errstate(invalid="ignore", divide="ignore"):
        ndcg = np.where(has_response, dcg / idcg, np.nan)
        ap = np.where(has_response, ap_sum / np.minimum(k, n_relevant), np.nan)
    return GroupMetrics(g[starts], ndcg, ap, hit.astype(np.float64), has_response)


def summarize(metrics: GroupMetrics, k: int, mask: np.ndarray | None = None) -> RankingSummary:
    """Means over the groups selected by ``mask`` (all by default), both conventions."""
    sel = np.ones(len(metrics.groups), dtype=bool) if mask is None else np.asarray(mask)
    n = int(sel.sum())
    responders = sel & metrics.has_response
    n_resp = int(responders.sum())

    def every(values: np.ndarray) -> float | None:
        return None if n == 0 else float(np.nan_to_num(values[sel], nan=0.0).mean())

    def resp(values: np.ndarray) -> float | None:
        return None if n_resp == 0 else float(values[responders].mean())

    return RankingSummary(
        k=k, groups=n, groups_with_response=n_resp,
        ndcg_every=every(metrics.ndcg), ndcg_responders=resp(metrics.ndcg),
        map_every=every(metrics.average_precision),
        map_responders=resp(metrics.average_precision),
        hit_every=every(metrics.hit), hit_responders=resp(metrics.hit),
    )


def chance_ndcg(relevance: np.ndarray, group: np.ndarray, k: int) -> np.ndarray:
    """Each group's expected NDCG@k under a uniformly random order of its rows (sorted
    group ids; NaN where the group has no relevant item): every row is equally likely at
    each position, so E[DCG@k] = mean gain x the first min(k, n) discounts. What a ranking
    that knows nothing earns on the same rows: it depends on the shelf's size (with k or
    fewer eligible products every order shows them all) and, over every customer, on how
    many respond."""
    if k < 1:
        raise ValueError("k must be at least 1")
    relevance = np.asarray(relevance, dtype=np.float64)
    group = np.asarray(group)
    if len(group) == 0:
        return np.array([], dtype=np.float64)
    order = np.lexsort((-relevance, group))  # ideal order, for the IDCG
    g, rel = group[order], relevance[order]
    starts, pos = _group_positions(g)
    sizes = np.diff(np.r_[starts, len(g)])
    discount = np.where(pos < k, 1.0 / np.log2(pos + 2.0), 0.0)
    gain = np.power(2.0, rel) - 1.0
    idcg = np.add.reduceat(gain * discount, starts)
    mean_gain = np.add.reduceat(gain, starts) / sizes
    top_discounts = np.add.reduceat(discount, starts)  # sum of the first min(k, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, mean_gain * top_discounts / idcg, np.nan)


def ranking_summary(
    relevance: np.ndarray, scores: np.ndarray, group: np.ndarray, k: int
) -> RankingSummary:
    """``summarize(group_metrics(...))`` over every group."""
    return summarize(group_metrics(relevance, scores, group, k), k)
