"""Intervals the monitoring report needs: bootstrap AUC and rate intervals, HHI."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def bootstrap_auc(labels: np.ndarray, scores: np.ndarray, resamples: int,
                  seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the AUC over ``resamples`` stratified resamples."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, int)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    values = []
    for _ in range(resamples):
        rows = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        values.append(roc_auc_score(labels[rows], scores[rows]))
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_ratio(numerator: np.ndarray, reference: np.ndarray, resamples: int,
                    seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Interval of mean(numerator) / mean(reference) (e.g. an adverse impact ratio)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        a = rng.choice(numerator, len(numerator)).mean()
        b = rng.choice(reference, len(reference)).mean()
        values.append(a / b if b else np.nan)
    tail = (1 - level) / 2
    low, high = np.nanquantile(values, [tail, 1 - tail])
    return float(low), float(high)


def hhi(shares: np.ndarray) -> float:
    """Herfindahl-Hirschman index of shares (1/k when even over k grades, 1 when all in one)."""
    shares = np.asarray(shares, float)
    total = shares.sum()
    return float(((shares / total) ** 2).sum()) if total else float("nan")
