"""Evaluating a trained risk model on its untouched out-of-time test window, as a reviewer
would.

Everything is computed on the same split for the candidate (LightGBM, or the logistic
benchmark when it won on validation), the benchmark and (when there is one) the current
champion re-scored on this window, so comparisons are like for like. The candidate's PDs are
calibrated; calibration is reported before and after the map. The result holds flat
metrics (for MLflow and ``model_evaluations``), the tables of the report, and the curves its
plots draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve
from sklearn.pipeline import Pipeline

from puhui.config import FeaturesConfig, RiskModelSpec
from puhui.risk.fairness import fairness_table
from puhui.risk.metrics import (
    calibration_by_grade,
    gains_table,
    population_stability,
    psi_status,
    ranking_metrics,
    reliability_table,
    stability_table,
)
from puhui.risk.model import LOGISTIC, Scorer, TrainedModel, predict_benchmark
from puhui.risk.reasons import reason_frequencies, top_reasons
from puhui.risk.training_set import OOT, TRAIN, VALID, TrainingSet


@dataclass
class Evaluation:
    metrics: dict[str, float]
    segment_metrics: list[dict[str, object]]  # {"metric", "segment", "value"}
    calibration: pd.DataFrame
    gains: pd.DataFrame
    feature_stability: pd.DataFrame
    importance: pd.DataFrame
    fairness: pd.DataFrame
    reasons: pd.DataFrame
    reason_examples: list[dict[str, object]]
    curves: dict[str, dict[str, list[float]]]
    trials: list[dict[str, object]]
    champion: dict[str, object] | None = None
    notes: list[str] = field(default_factory=list)
    calibration_before: pd.DataFrame = field(default_factory=pd.DataFrame)  # raw PDs
    reliability: dict[str, pd.DataFrame] = field(default_factory=dict)  # before / after
    model_facts: dict[str, object] = field(default_factory=dict)  # candidate, map, limits

    def rows(self) -> list[dict[str, object]]:
        """Every figure as (metric, segment, value), for ``model_evaluations``."""
        overall = [{"metric": k, "segment": "all", "value": v} for k, v in self.metrics.items()]
        return overall + self.segment_metrics


def _roc(labels: np.ndarray, scores: np.ndarray, points: int = 200) -> dict[str, list[float]]:
    fpr, tpr, _ = roc_curve(labels, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).astype(int))
    return {"fpr": fpr[keep].round(5).tolist(), "tpr": tpr[keep].round(5).tolist()}


def _segment_auc(frame: pd.DataFrame, dimensions: list[str], min_size: int) -> list[dict]:
    rows = []
    for dimension in dimensions:
        for segment, part in frame.groupby(frame[dimension].fillna("(unknown)")):
            if len(part) >= min_size and part["label"].nunique() == 2:
                m = ranking_metrics(part["label"].to_numpy(), part["pd"].to_numpy())
                for name in ("auc", "ks", "default_rate", "mean_pd"):
                    rows.append({"metric": f"{name}_oot", "segment": f"{dimension}={segment}",
                                 "value": m[name]})
    return rows


def ceiling_metrics(oot: pd.DataFrame, true_pd: pd.Series | None,
                    auc: float) -> dict[str, float]:
    """The AUC the generator's true PDs reach on exactly the test window's labelled rows, and
    the gap to it of the candidate's ``auc`` on those rows. A window's ceiling differs from
    the all-loans one (truth.json) by as much as the model's gap, so only this one is like
    for like. Empty when the truth does not cover every row (another landing zone's, or
    none)."""
    if true_pd is None:
        return {}
    truth = oot["application_id"].map(true_pd)
    if truth.isna().any():
        return {}
    ceiling = ranking_metrics(oot["label"].to_numpy(int), truth.to_numpy(float))["auc"]
    return {"auc_ceiling_test_window": ceiling, "auc_gap_to_ceiling_test_window": ceiling - auc}


def evaluate_risk_model(
    training: TrainingSet, trained: TrainedModel, benchmark: Pipeline,
    model: RiskModelSpec, spec: FeaturesConfig, champion: Scorer | None = None,
    true_pd: pd.Series | None = None,
) -> Evaluation:
    """All figures of the evaluation report for ``trained`` on ``training``'s split;
    ``true_pd`` (generated data only, see ``puhui.generate.truth.load_true_pd``) adds the
    test window's ceiling."""
    scorer = trained.scorer
    train, oot = training.split(TRAIN).copy(), training.split(OOT).copy()
    applicants = training.oot_applicants().copy()
    feats, cats = training.features, training.categorical
    train["pd"] = scorer.predict_pd(train)
    # The labelled test rows are a subset of the window's applicants: score once.
    raw = pd.Series(scorer.predict_raw(applicants), index=applicants.index)
    applicants["pd"] = scorer.calibration.apply(raw.to_numpy()) if scorer.calibration \
        else raw.to_numpy()
    oot["pd"] = applicants.loc[oot.index, "pd"]
    oot_raw = raw.loc[oot.index].to_numpy()
    y_oot = oot["label"].to_numpy(int)
    bench_oot = predict_benchmark(benchmark, oot, feats, cats)
    bench_train = predict_benchmark(benchmark, train, feats, cats)

    m_oot = ranking_metrics(y_oot, oot["pd"].to_numpy())
    m_raw = ranking_metrics(y_oot, oot_raw)
    m_train = ranking_metrics(train["label"].to_numpy(int), train["pd"].to_numpy())
    m_bench = ranking_metrics(y_oot, bench_oot)
    score_psi = population_stability(train["pd"], oot["pd"])
    metrics = {f"{k}_oot": v for k, v in m_oot.items()}
    metrics |= {f"{k}_train": v for k, v in m_train.items()}
    metrics |= {"auc_oot_benchmark": m_bench["auc"], "ks_oot_benchmark": m_bench["ks"],
                "gini_oot_benchmark": m_bench["gini"], "brier_oot_benchmark": m_bench["brier"],
                "auc_train_benchmark": ranking_metrics(train["label"].to_numpy(int),
                                                       bench_train)["auc"],
                "auc_oot_uncalibrated": m_raw["auc"], "brier_oot_uncalibrated": m_raw["brier"],
                "mean_pd_oot_uncalibrated": m_raw["mean_pd"],
                **_validation_metrics(trained),
                "candidate_is_benchmark": float(trained.kind == LOGISTIC),
                "score_psi": score_psi, "best_iteration": float(trained.best_iteration),
                "policy_cutoff_pd": model.policy_cutoff_pd,
                "approval_rate_oot": float((applicants["pd"] < model.policy_cutoff_pd).mean()),
                "applicants_oot": float(len(applicants)),
                **ceiling_metrics(oot, true_pd, m_oot["auc"])}
    if scorer.calibration is not None and scorer.calibration.method == "isotonic":
        # What the isotonic steps alone would cost in ranking (ties broken by the raw PD
        # are what is registered, so ``auc_oot`` keeps the raw ranking).
        steps = scorer.calibration.apply(oot_raw, break_ties=False)
        metrics["auc_oot_isotonic_steps"] = ranking_metrics(y_oot, steps)["auc"]

    curves = {"roc_candidate": _roc(y_oot, oot["pd"].to_numpy()),
              "roc_benchmark": _roc(y_oot, bench_oot)}
    champion_info, champion_metrics, champion_roc = champion_figures(oot, champion)
    metrics |= champion_metrics
    if champion_roc is not None:
        curves["roc_champion"] = champion_roc

    gates = model.gates
    alpha, tolerance = gates.calibration.alpha, gates.calibration.tolerance
    one_sided = gates.calibration.test == "one_sided"
    calibration = calibration_by_grade(y_oot, oot["pd"].to_numpy(), model.grades, alpha,
                                       tolerance, one_sided=one_sided)
    calibration_before = calibration_by_grade(y_oot, oot_raw, model.grades, alpha, tolerance,
                                              one_sided=one_sided)
    reliability = {"before": reliability_table(y_oot, oot_raw, alpha),
                   "after": reliability_table(y_oot, oot["pd"].to_numpy(), alpha)}
    feature_stability = stability_table(train, oot, feats)
    feature_stability.loc[len(feature_stability)] = ["score", score_psi, psi_status(score_psi)]
    importance = scorer.importance().sort_values("importance", ascending=False,
                                                 kind="stable").reset_index(drop=True)
    importance["share"] = importance["importance"] / max(importance["importance"].sum(), 1e-12)

    dims, min_size = model.fairness.dimensions, model.fairness.min_segment_size
    fairness = fairness_table(applicants, oot, model.policy_cutoff_pd, dims, min_size)
    segment_rows = _segment_auc(oot, dims, min_size)
    for row in fairness.itertuples():
        segment = f"{row.dimension}={row.segment}"
        for name in ("approval_rate", "adverse_impact_ratio", "true_positive_rate",
                     "false_decline_rate"):
            value = getattr(row, name)
            if pd.notna(value):
                segment_rows.append({"metric": name, "segment": segment, "value": float(value)})

    declined = applicants[applicants["pd"] >= model.policy_cutoff_pd]
    reasons = top_reasons(scorer.contributions(declined), scorer.features, training.catalog,
                          spec.reasons, model.reasons_per_decline) if len(declined) else []
    examples = [
        {"application_id": app_id, "pd": round(float(p), 4), "reasons": r}
        for app_id, p, r in zip(declined["application_id"].head(5), declined["pd"].head(5),
                                reasons[:5], strict=False)
    ]
    return Evaluation(
        metrics={k: float(v) for k, v in metrics.items()},
        segment_metrics=segment_rows,
        calibration=calibration,
        gains=gains_table(y_oot, oot["pd"].to_numpy()),
        feature_stability=feature_stability,
        importance=importance,
        fairness=fairness,
        reasons=reason_frequencies(reasons, spec.reasons),
        reason_examples=examples,
        curves=curves,
        trials=trained.trials,
        champion=champion_info,
        calibration_before=calibration_before,
        reliability=reliability,
        model_facts=model_facts(training, trained),
    )


def champion_figures(oot: pd.DataFrame, champion: Scorer | None) -> tuple[
        dict[str, object] | None, dict[str, float], dict[str, list[float]] | None]:
    """``champion`` re-scored on the test window ``oot``: what the report says of it, every
    figure of the report's champion column (``*_oot_champion``) and its ROC curve."""
    if champion is None:
        return None, {}, None
    missing = [f for f in champion.features if f not in oot.columns]
    if missing:
        return ({"note": "champion needs features this training set lacks: "
                 + ", ".join(missing[:5])}, {}, None)
    y_oot = oot["label"].to_numpy(int)
    champ_pd = champion.predict_pd(oot)
    m_champ = ranking_metrics(y_oot, champ_pd)
    return ({"auc_oot": m_champ["auc"]},
            {f"{k}_oot_champion": float(m_champ[k]) for k in ("auc", "gini", "ks", "brier")},
            _roc(y_oot, champ_pd))


def against_champion(evaluation: Evaluation, training: TrainingSet,
                     champion: Scorer | None) -> Evaluation:
    """``evaluation`` with its champion figures those of ``champion`` (None: no champion),
    the candidate's unchanged: what the gates compare when the champion moved after the
    evaluation."""
    info, figures, _ = champion_figures(training.split(OOT), champion)
    metrics = {k: v for k, v in evaluation.metrics.items()
               if not k.endswith("_oot_champion")} | figures
    return replace(evaluation, metrics=metrics, champion=info)


def _validation_metrics(trained: TrainedModel) -> dict[str, float]:
    """How the candidate was chosen, as metrics: ``auc_valid`` is the candidate's figure in
    the comparison (cross-fitted for the booster on a small window)."""
    sel = trained.selection
    names = ("auc_valid_lightgbm", "auc_valid_lightgbm_cross_fitted", "auc_valid_benchmark")
    out = {name: float(sel[name]) for name in names if name in sel}
    key = "auc_valid_benchmark" if trained.kind == LOGISTIC else "auc_valid_lightgbm_compared"
    if key in sel:
        out["auc_valid"] = float(sel[key])
    return out


def model_facts(training: TrainingSet, trained: TrainedModel) -> dict[str, object]:
    """How the candidate came about, for the report: windows, size-aware parameters, the
    choice between booster and benchmark, the calibration map, the monotone constraints."""
    s = training.summary()
    valid = training.split(VALID)
    return {
        "candidate": trained.kind,
        "selection": trained.selection,
        "calibration": trained.calibration.as_dict() if trained.calibration else None,
        "monotone": trained.monotone,
        # The chosen trial's values (configured or drawn by the search), resolved for size.
        "resolved": {k: trained.params.get(k, v) for k, v in trained.resolved.logged().items()}
        if trained.resolved else {},
        "size_aware": trained.resolved.size_aware if trained.resolved else {},
        "windows": {
            "train": {"rows": s["train_rows"], "defaults": s["train_defaults"],
                      "range": s["train_range"]},
            "validation": {"rows": len(valid), "defaults": int(valid["label"].sum()),
                           "range": s["valid_range"]},
            "test": {"rows": s["oot_rows"], "defaults": s["oot_defaults"],
                     "range": s["oot_range"]},
        },
    }
