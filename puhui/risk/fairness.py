"""Fairness of the decisions at the policy cut-off, per protected segment.

Approval rates are measured on every applicant in the window (labelled or not: the people
who came through the door); error rates need outcomes, so they use the labelled ones.
"Positive" means default and a decline is a positive prediction: the true-positive rate is the
share of defaulters declined, the false-decline rate the share of good payers declined. The
adverse impact ratio compares a segment's approval rate with the best-treated segment of the
same dimension (the four-fifths rule flags a ratio below 0.8).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    count,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)


def _by_segment(metrics: dict, y_true: np.ndarray, y_pred: np.ndarray,
                segments: pd.Series) -> pd.DataFrame:
    frame = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred,
                        sensitive_features=segments.rename("segment"))
    return frame.by_group


def fairness_table(
    applicants: pd.DataFrame, labelled: pd.DataFrame, cutoff: float,
    dimensions: list[str], min_segment_size: int,
) -> pd.DataFrame:
    """One row per (dimension, segment): approval rate, adverse impact ratio, error rates.

    Both frames carry ``pd`` and the dimension columns; ``labelled`` also ``label``.
    ``gated`` says whether the segment is large enough to be held to the gate.
    """
    rows = []
    for dimension in dimensions:
        seg_all = applicants[dimension].fillna("(unknown)").astype(str)
        declined_all = (applicants["pd"].to_numpy() >= cutoff).astype(int)
        approvals = _by_segment({"applicants": count, "declined": selection_rate},
                                declined_all, declined_all, seg_all)
        seg_lab = labelled[dimension].fillna("(unknown)").astype(str)
        declined_lab = (labelled["pd"].to_numpy() >= cutoff).astype(int)
        errors = _by_segment(
            {"labelled": count, "true_positive_rate": true_positive_rate,
             "false_decline_rate": false_positive_rate},
            labelled["label"].to_numpy(int), declined_lab, seg_lab,
        )
        defaults = labelled.groupby(seg_lab)["label"].sum()
        table = approvals.join(errors, how="outer")
        table["approval_rate"] = 1.0 - table["declined"]
        table["gated"] = table["applicants"].fillna(0) >= min_segment_size
        best = table.loc[table["gated"], "approval_rate"].max()
        for segment, row in table.iterrows():
            rows.append({
                "dimension": dimension,
                "segment": segment,
                "applicants": int(row["applicants"]) if pd.notna(row["applicants"]) else 0,
                "approval_rate": float(row["approval_rate"]),
                "adverse_impact_ratio": float(row["approval_rate"] / best) if best else np.nan,
                "labelled": int(row["labelled"]) if pd.notna(row["labelled"]) else 0,
                "defaults": int(defaults.get(segment, 0)),
                "true_positive_rate": float(row["true_positive_rate"]),
                "false_decline_rate": float(row["false_decline_rate"]),
                "gated": bool(row["gated"]),
            })
    return pd.DataFrame(rows)
