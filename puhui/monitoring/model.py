"""Monitoring one model version: population drift, discrimination, calibration, fairness.

Population: score PSI and per-feature CSI of the monitored window against the bins frozen
from the training window at registration, missing-value rates against training's, and the
approval rate at the policy cut-off. Outcomes: AUC/Gini with a bootstrap interval and KS on
newly matured applications, compared with the AUC at registration; calibration per grade with
the Jeffreys test (``puhui.risk.metrics``). Fairness: approval rate per segment and the
adverse impact ratio against the configured reference group, with a bootstrap interval for
small segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from puhui.config import MonitoringConfig, RiskModelSpec
from puhui.monitoring.bins import FrozenBins
from puhui.monitoring.findings import Finding, judged
from puhui.monitoring.stats import bootstrap_auc, bootstrap_ratio
from puhui.profiles.models import RiskScoring
from puhui.risk.metrics import calibration_by_grade, ranking_metrics


@dataclass
class ModelMonitoring:
    findings: list[Finding] = field(default_factory=list)
    drift: pd.DataFrame = field(default_factory=pd.DataFrame)  # variable, psi, status
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)
    fairness: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)


def monitor_model(
    *, as_of: date, name: str, version: str, role: str, scorer: RiskScoring,
    bins: FrozenBins | None, registered: dict[str, float], window: pd.DataFrame,
    matured: pd.DataFrame, risk: RiskModelSpec, mon: MonitoringConfig,
) -> ModelMonitoring:
    t = mon.thresholds
    out = ModelMonitoring()

    def add(metric: str, segment: str, value: float | None, threshold: str | None = None,
            note: str = "") -> None:
        if threshold is None:
            v = None if value is None or value != value else float(value)
            out.findings.append(Finding(as_of, name, version, metric, segment, v, None,
                                        "ok", note))
        else:
            out.findings.append(judged(as_of, name, version, metric, segment, value,
                                       t[threshold], note))

    add("role", role, None, note=role)
    if len(window):
        window = window.copy()
        window["pd"] = scorer.predict_pd(window)
        approved = window["pd"] < risk.policy_cutoff_pd
        add("approval_rate", "all", float(approved.mean()))
        add("applications", "all", float(len(window)))
        add("mean_pd", "all", float(window["pd"].mean()))
        if bins is None:
            out.notes.append(f"{name} v{version}: no frozen bins stored with this version; "
                             "PSI/CSI not computed (versions registered from now on carry "
                             "monitoring/bins.json)")
        else:
            rows = [("score", bins.score.psi(window["pd"]), "score_psi")]
            for feature, frozen in bins.features.items():
                if feature in window.columns:
                    rows.append((feature, frozen.psi(window[feature]), "feature_csi"))
                    current_missing = float(window[feature].isna().mean())
                    add("missing_rate_increase", feature,
                        current_missing - frozen.missing_rate(), "missing_rate_increase")
            for variable, psi, kind in rows:
                add(kind, variable, psi, kind)
            out.drift = pd.DataFrame(
                [{"variable": v, "psi": p, "status": t[k].status(p)} for v, p, k in rows]
            ).sort_values("psi", ascending=False, kind="stable").reset_index(drop=True)
        out.fairness = _fairness(window, approved.to_numpy(), risk, mon)
        for row in out.fairness.itertuples():
            segment = f"{row.dimension}={row.segment}"
            add("approval_rate", segment, row.approval_rate)
            small = row.air_low == row.air_low  # an interval was computed
            # A small segment is judged by its interval's upper end: chance alone must not
            # raise an alarm; a large one by the ratio itself.
            judge = row.air_high if small else row.adverse_impact_ratio
            air = t["adverse_impact_ratio"]
            out.findings.append(Finding(
                as_of, name, version, "adverse_impact_ratio", segment,
                float(row.adverse_impact_ratio), air.act, air.status(judge),
                f"vs {row.reference}; 95% interval {row.air_low:.2f}-{row.air_high:.2f}"
                if small else f"vs {row.reference}"))
    else:
        out.notes.append("no applications in the monitored window")

    if len(matured) >= mon.matured.min_rows and matured["label"].nunique() == 2:
        y = matured["label"].to_numpy(int)
        p = scorer.predict_pd(matured)
        m = ranking_metrics(y, p)
        low, high = bootstrap_auc(y, p, mon.matured.bootstrap)
        add("auc", "all", m["auc"], note=f"95% interval {low:.3f}-{high:.3f}, n={len(y)}")
        add("auc_ci_low", "all", low)
        add("auc_ci_high", "all", high)
        add("gini", "all", m["gini"])
        add("ks", "all", m["ks"])
        add("default_rate", "all", m["default_rate"])
        at_registration = registered.get("auc_oot")
        if at_registration is not None:
            add("auc_drop", "all", at_registration - m["auc"], "auc_drop",
                note=f"AUC at registration {at_registration:.3f}")
        gates = risk.gates.calibration
        out.calibration = calibration_by_grade(y, p, risk.grades, gates.alpha, gates.tolerance,
                                               one_sided=gates.test == "one_sided")
        rejected = int((~out.calibration["ok"]).sum())
        add("calibration_rejected_grades", "all", float(rejected),
            "calibration_rejected_grades")
        for row in out.calibration.itertuples():
            if row.n:
                add("observed_default_rate", f"grade={row.grade}", row.observed)
                add("expected_default_rate", f"grade={row.grade}", row.expected)
    else:
        out.notes.append(f"{len(matured)} newly matured outcomes (fewer than "
                         f"{mon.matured.min_rows} or one class): discrimination and "
                         "calibration not assessed")
    return out


def _fairness(window: pd.DataFrame, approved: np.ndarray, risk: RiskModelSpec,
              mon: MonitoringConfig) -> pd.DataFrame:
    rows = []
    for dimension in mon.fairness.dimensions:
        segments = window[dimension].fillna("(unknown)").astype(str).to_numpy()
        reference = mon.fairness.reference.get(dimension)
        ref_mask = segments == reference
        ref_rate = approved[ref_mask].mean() if ref_mask.any() else np.nan
        for segment in sorted(set(segments)):
            mask = segments == segment
            rate = float(approved[mask].mean())
            air = rate / ref_rate if ref_rate else np.nan
            low = high = np.nan
            if mask.sum() < mon.fairness.small_segment and ref_mask.any() and segment != reference:
                low, high = bootstrap_ratio(approved[mask].astype(float),
                                            approved[ref_mask].astype(float),
                                            mon.matured.bootstrap)
            rows.append({"dimension": dimension, "segment": segment, "reference": reference,
                         "applications": int(mask.sum()), "approval_rate": rate,
                         "adverse_impact_ratio": float(air), "air_low": low, "air_high": high})
    return pd.DataFrame(rows)
