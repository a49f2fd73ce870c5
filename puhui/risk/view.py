"""The credit-risk model's adapter to the model owner's views (``models show|compare``)."""

from __future__ import annotations

from puhui.lifecycle.adapters import Headline, ModelView

VIEW = ModelView(
    headline=(Headline("auc_oot", "AUC (test window)"),
              Headline("auc_oot_benchmark", "AUC of the logistic benchmark"),
              Headline("auc_oot_champion", "AUC of the champion when trained, re-scored"),
              Headline("ks_oot", "KS"), Headline("gini_oot", "Gini"),
              Headline("brier_oot", "Brier", higher_is_better=False),
              Headline("score_psi", "score PSI train vs test", higher_is_better=False),
              Headline("approval_rate_oot", "approval rate at the cut-off")),
    segment_metrics=("adverse_impact_ratio", "approval_rate", "false_decline_rate", "auc_oot"),
    calibration_artifact="evaluation/calibration.csv",
    calibration_columns=("n", "defaults", "expected", "observed", "p_value", "ok"),
)
