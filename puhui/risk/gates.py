"""Release gates: the conditions a new model version must meet to become a challenger.

Each check names what failed and by how much, so a model owner reading ``puhui models list``
sees "adverse_impact_ratio region_type=rural 0.71 < 0.80", not just "failed".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from puhui.config import GatesSpec
from puhui.risk.evaluation import Evaluation


@dataclass
class GateResult:
    passed: bool
    failed: list[str] = field(default_factory=list)
    checks: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "failed": self.failed, "checks": self.checks}


def check_gates(evaluation: Evaluation, gates: GatesSpec) -> GateResult:
    """Every configured gate on ``evaluation``; the version passes only if all do."""
    checks: list[dict[str, object]] = []

    def check(gate: str, subject: str, value: float | None, limit: float, ok: bool) -> None:
        checks.append({"gate": gate, "subject": subject, "value": value, "limit": limit,
                       "passed": bool(ok)})

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
    for row in evaluation.calibration.itertuples():
        if row.n:
            check("calibration", f"grade={row.grade}", row.observed,
                  gates.calibration.tolerance, row.ok)
    failed = [_describe(c) for c in checks if not c["passed"]]
    return GateResult(passed=not failed, failed=failed, checks=checks)


def _describe(check: dict[str, object]) -> str:
    gate, subject, value, limit = check["gate"], check["subject"], check["value"], check["limit"]
    if gate == "calibration":
        return f"calibration {subject}: observed default rate {value:.3f} misses the " \
               f"predicted one by more than {limit:.2f} (Jeffreys test rejects)"
    sign = ">" if gate.startswith("max") else "<"
    return f"{gate.removeprefix('min_').removeprefix('max_')} {subject} {value:.3f} " \
           f"{sign} {limit:.2f}"
