"""The champion risk model's grade for each (customer, as-of date), for credit eligibility.

The risk model scores applications, so a customer's grade answers the question the profiles
ask: the standard offer of ``configs/segments.yaml``'s ``reference_application`` (one
12-month microloan), on the customer's point-in-time features of that date. The model is
the ``credit_risk`` champion, found by alias and loaded at its exact version, through the
profiles' resolver and pyfunc scorer (the only risk interface outside the risk package).

Decided: with no risk champion (none registered or none promoted) nobody has a grade, and a
credit product without a grade is not offered: eligibility removes those rows under the
rule ``credit_no_risk_grade`` and counts them. Offering credit unchecked is what the rule
exists to prevent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from puhui.config import FeaturesConfig, RiskModelSpec
from puhui.features.builder import apply_derived
from puhui.profiles.models import RiskScoring, load_risk_scorer, resolve_models
from puhui.risk.metrics import assign_grades


@dataclass(frozen=True)
class RiskGrader:
    """The champion risk model used for grades, or why there is none (``scorer`` None)."""

    name: str
    version: str | None
    scorer: RiskScoring | None
    reason: str | None = None

    def describe(self) -> str:
        if self.scorer is None:
            return f"credit products ineligible: {self.reason}"
        return f"credit limited by {self.name} v{self.version} grades"


def champion_risk_grader(engine: Engine, tracking_uri: str, risk_name: str) -> RiskGrader:
    """The risk champion by alias (a missing one is a reason; an unreadable registry
    raises, as for the profiles)."""
    slot = resolve_models(tracking_uri, {"risk": risk_name}, engine=engine)["risk"]
    if not slot.available:
        return RiskGrader(risk_name, None, None, slot.reason)
    return RiskGrader(risk_name, slot.version, load_risk_scorer(engine, tracking_uri, slot))


def risk_grades(
    scorer: RiskScoring,
    features: pd.DataFrame,
    reference_application: dict[str, float | int | str],
    features_spec: FeaturesConfig,
    risk: RiskModelSpec,
) -> np.ndarray:
    """Grades of ``features``' rows (the feature builder's point-in-time columns) for the
    reference application."""
    frame = features.copy()
    for name, value in reference_application.items():
        frame[name] = value
    apply_derived(frame, features_spec.application.derived, {})
    return np.asarray(assign_grades(scorer.predict_pd(frame), risk.grades), dtype=object)
