"""Risk-model metrics a model-risk reviewer expects, from probabilities (never labels).

Ranking (AUC, Gini, KS), accuracy of the probabilities (Brier, calibration by grade with a
Jeffreys test), the gains table, and stability (PSI with the usual 0.1 / 0.25 bands).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import beta
from sklearn.metrics import roc_auc_score, roc_curve

from puhui.config import RiskGrade

PSI_WATCH, PSI_ACT = 0.1, 0.25
PSI_EPSILON = 1e-4  # share floor: an empty bin must not make PSI infinite


def ranking_metrics(labels: np.ndarray, pd_: np.ndarray) -> dict[str, float]:
    """AUC, Gini, KS, Brier score, mean predicted and observed default rate."""
    labels = np.asarray(labels, dtype=float)
    auc = float(roc_auc_score(labels, pd_))
    fpr, tpr, _ = roc_curve(labels, pd_)
    return {
        "auc": auc,
        "gini": 2.0 * auc - 1.0,
        "ks": float(np.max(tpr - fpr)),
        "brier": float(np.mean((pd_ - labels) ** 2)),
        "mean_pd": float(np.mean(pd_)),
        "default_rate": float(np.mean(labels)),
        "rows": float(len(labels)),
    }


def assign_grades(pd_: np.ndarray, grades: list[RiskGrade]) -> np.ndarray:
    """The grade of each probability: the first grade whose ``max_pd`` it does not exceed."""
    bounds = np.array([g.max_pd for g in grades])
    index = np.searchsorted(bounds, pd_, side="left")
    names = np.array([g.grade for g in grades], dtype=object)
    return names[np.minimum(index, len(grades) - 1)]


def jeffreys_p_value(defaults: int, n: int, expected_pd: float, one_sided: bool = True) -> float:
    """p-value of "the predicted ``expected_pd`` is not too low" under Jeffreys' prior.

    The posterior of the default rate is Beta(d + 1/2, n - d + 1/2). One-sided (the ECB's PD
    back-test): the probability that the true rate is at most the predicted one, small when
    the model underestimates risk. Two-sided: twice the smaller tail.
    """
    cdf = float(beta.cdf(expected_pd, defaults + 0.5, n - defaults + 0.5))
    return cdf if one_sided else min(1.0, 2.0 * min(cdf, 1.0 - cdf))


def calibration_by_grade(labels: np.ndarray, pd_: np.ndarray, grades: list[RiskGrade],
                         alpha: float, tolerance: float, one_sided: bool = True) -> pd.DataFrame:
    """Per grade: count, defaults, expected vs observed rate, Jeffreys interval and test.

    ``ok`` is False only when the test rejects at ``alpha`` *and* the observed rate is more
    than ``tolerance`` away from the expected one (above it, when one-sided): a statistically
    clear and material miss. One-sided, over-prediction (conservative) is not a failure.
    """
    grade = assign_grades(pd_, grades)
    rows = []
    for g in grades:
        mask = grade == g.grade
        n = int(mask.sum())
        d = int(np.asarray(labels)[mask].sum()) if n else 0
        expected = float(np.mean(pd_[mask])) if n else float("nan")
        observed = d / n if n else float("nan")
        if n:
            low, high = jeffreys_interval(d, n, alpha)
            p_value = jeffreys_p_value(d, n, expected, one_sided)
            miss = observed - expected if one_sided else abs(observed - expected)
            ok = not (p_value < alpha and miss > tolerance)
        else:
            low = high = p_value = float("nan")
            ok = True
        rows.append({"grade": g.grade, "max_pd": g.max_pd, "n": n, "defaults": d,
                     "expected": expected, "observed": observed, "interval_low": float(low),
                     "interval_high": float(high), "p_value": p_value, "ok": ok})
    return pd.DataFrame(rows)


def jeffreys_interval(defaults: int, n: int, alpha: float) -> tuple[float, float]:
    """Equal-tailed (1 - alpha) interval of the default rate under Jeffreys' prior."""
    low, high = beta.ppf([alpha / 2, 1 - alpha / 2], defaults + 0.5, n - defaults + 0.5)
    return float(low), float(high)


def reliability_table(labels: np.ndarray, pd_: np.ndarray, alpha: float,
                      bins: int = 10) -> pd.DataFrame:
    """Equal-count bins of predicted PD: mean predicted against observed default rate, with
    its Jeffreys interval (the points of a reliability plot)."""
    labels = np.asarray(labels, dtype=float)
    order = np.argsort(pd_, kind="stable")
    rows = []
    for i, part in enumerate(np.array_split(order, bins), start=1):
        if not len(part):
            continue
        d, n = int(labels[part].sum()), len(part)
        low, high = jeffreys_interval(d, n, alpha)
        rows.append({"bin": i, "n": n, "defaults": d, "predicted": float(pd_[part].mean()),
                     "observed": d / n, "interval_low": low, "interval_high": high})
    return pd.DataFrame(rows)


def gains_table(labels: np.ndarray, pd_: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Deciles from riskiest to safest: defaults captured, cumulative capture and lift."""
    labels = np.asarray(labels, dtype=float)
    order = np.argsort(-pd_, kind="stable")
    parts = np.array_split(order, bins)
    total = labels.sum()
    rate = labels.mean()
    rows, captured, seen = [], 0.0, 0
    for i, part in enumerate(parts, start=1):
        d = labels[part].sum()
        captured += d
        seen += len(part)
        rows.append({
            "decile": i, "n": len(part), "min_pd": float(pd_[part].min()),
            "max_pd": float(pd_[part].max()), "defaults": int(d),
            "default_rate": float(d / len(part)), "cumulative_capture": float(captured / total),
            "lift": float((d / len(part)) / rate), "cumulative_lift":
                float((captured / seen) / rate),
        })
    return pd.DataFrame(rows)


def psi_status(psi: float) -> str:
    if psi >= PSI_ACT:
        return "act"
    if psi >= PSI_WATCH:
        return "watch"
    return "stable"


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.maximum(expected / max(expected.sum(), 1), PSI_EPSILON)
    a = np.maximum(actual / max(actual.sum(), 1), PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def population_stability(reference: pd.Series, current: pd.Series, bins: int = 10) -> float:
    """PSI of ``current`` against ``reference``: reference deciles (numbers), categories
    (text), and a bin of its own for missing values."""
    if not pd.api.types.is_numeric_dtype(reference):
        ref = reference.astype(object).where(reference.notna(), "(missing)")
        cur = current.astype(object).where(current.notna(), "(missing)")
        cats = sorted(set(ref) | set(cur), key=str)
        return _psi(ref.value_counts().reindex(cats, fill_value=0).to_numpy(float),
                    cur.value_counts().reindex(cats, fill_value=0).to_numpy(float))
    ref = reference.to_numpy(float)
    cur = current.to_numpy(float)
    ref_ok, cur_ok = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    edges = np.unique(np.quantile(ref_ok, np.linspace(0, 1, bins + 1)[1:-1])) if len(
        ref_ok) else np.array([])

    def counts(values: np.ndarray, missing: int) -> np.ndarray:
        return np.append(np.bincount(np.searchsorted(edges, values, side="right"),
                                     minlength=len(edges) + 1), missing)

    return _psi(counts(ref_ok, int(np.isnan(ref).sum())),
                counts(cur_ok, int(np.isnan(cur).sum())))


@dataclass(frozen=True)
class StabilityRow:
    name: str
    psi: float

    @property
    def status(self) -> str:
        return psi_status(self.psi)


def stability_table(reference: pd.DataFrame, current: pd.DataFrame,
                    columns: list[str]) -> pd.DataFrame:
    """PSI and band of each column between two windows, largest first."""
    rows = [StabilityRow(c, population_stability(reference[c], current[c])) for c in columns]
    frame = pd.DataFrame({"name": [r.name for r in rows], "psi": [r.psi for r in rows],
                          "status": [r.status for r in rows]})
    return frame.sort_values("psi", ascending=False, kind="stable").reset_index(drop=True)
