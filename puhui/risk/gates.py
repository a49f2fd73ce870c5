"""Release gates: the conditions a new model version must meet to become a challenger.

Each check names what failed and by how much, so a model owner reading ``puhui models list``
sees "adverse_impact_ratio region_type=rural 0.71 < 0.80", not just "failed".
"""

from __future__ import annotations

from puhui.config import GatesSpec
from puhui.lifecycle.gates import GateChecks, GateResult, describe_check
from puhui.risk.evaluation import Evaluation

__all__ = ["GateResult", "check_gates"]


def check_gates(evaluation: Evaluation, gates: GatesSpec) -> GateResult:
    """Every configured gate on ``evaluation``; the version passes only if all do."""
    checks = GateChecks()
    check = checks.check

    m = evaluation.metrics
    check("min_auc_oot", "all", m["auc_oot"], gates.min_auc_oot,
          m["auc_oot"] >= gates.min_auc_oot)
    if "auc_oot_champion" in m:
        drop = m["auc_oot_champion"] - m["auc_oot"]
        check("max_auc_drop_vs_champion", "champion", drop, gates.max_auc_drop_vs_champion,
              drop <= gates.max_auc_drop_vs_champion)
    check("max_score_psi", "score", m["score_psi"], gates.max_score_psi,
          m["score_psi"] <= gates.max_score_psi)
    for row in evaluation.fairness.itertuples():
        if row.gated:
            check("min_adverse_impact_ratio", f"{row.dimension}={row.segment}",
                  row.adverse_impact_ratio, gates.min_adverse_impact_ratio,
                  row.adverse_impact_ratio >= gates.min_adverse_impact_ratio)
    calibration = gates.calibration
    sided = ("one-sided: fails only if the observed default rate is ABOVE the predicted"
             if calibration.test == "one_sided" else "two-sided: fails if the observed "
             "default rate is above or below the predicted")
    rule = (f"Jeffreys test at alpha {calibration.alpha:g}, {sided} by more than "
            f"{calibration.tolerance:g} and the test rejects")
    for row in evaluation.calibration.itertuples():
        if row.n:
            check("calibration", f"grade={row.grade}", row.observed,
                  calibration.tolerance, row.ok, rule=rule)
    return checks.result(_describe)


def _describe(check: dict[str, object]) -> str:
    gate, subject, value, limit = check["gate"], check["subject"], check["value"], check["limit"]
    if gate == "calibration":
        return f"calibration {subject}: observed default rate {value:.3f} misses the " \
               f"predicted one by more than {limit:.2f} (Jeffreys test rejects)"
    return describe_check(check)
