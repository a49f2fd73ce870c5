"""Risk scoring of customers: the one path from features to PD, grade and decision.

:func:`score_risk` is what every consumer of the risk model scores with: the profile refresh
(:mod:`puhui.profiles.refresh`, with the champion's pyfunc) and the partitioned batch
scoring below (:func:`score_staged_partition`, with a saved scorer). Both therefore agree on
the grade of a PD and on the policy decision.

Chunked scoring: each partition is scored from its own staged features Parquet file and
written to its own file (atomically), so memory is one partition's and a re-run scores only
the partitions not yet done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from puhui.config import RiskGrade
from puhui.features.partitioned import features_path, read_features_parquet, write_atomic
from puhui.partitioning import Partition
from puhui.risk.metrics import assign_grades


class PDScorer(Protocol):
    def predict_pd(self, frame: pd.DataFrame) -> np.ndarray: ...


def score_risk(frame: pd.DataFrame, scorer: PDScorer, grades: list[RiskGrade] | None = None,
               policy_cutoff_pd: float | None = None) -> pd.DataFrame:
    """``pd`` of each row, its ``grade`` on the scale ``grades`` and its ``decision``
    (``decline`` at or above ``policy_cutoff_pd``, else ``approve``) when those are given."""
    probability = np.asarray(scorer.predict_pd(frame), dtype=float).reshape(-1)
    out = pd.DataFrame({"pd": probability}, index=frame.index)
    if grades is not None:
        out["grade"] = assign_grades(probability, grades)
    if policy_cutoff_pd is not None:
        out["decision"] = np.where(probability >= policy_cutoff_pd, "decline", "approve")
    return out


def scores_path(directory: Path, partition: Partition) -> Path:
    return directory / f"scores-{partition.bucket:05d}.parquet"


def score_staged_partition(directory: Path, partition: Partition, scorer: PDScorer,
                           grades: list[RiskGrade] | None = None) -> int:
    """PD (and grade, given the scale) of every row of a partition's features; returns rows
    scored (or found scored)."""
    target = scores_path(directory, partition)
    if target.exists():
        return int(pd.read_parquet(target, columns=["person_key"]).shape[0])
    features = read_features_parquet(features_path(directory, partition))
    scores = score_risk(features, scorer, grades)
    scores.insert(0, "as_of_date", features["as_of_date"])
    scores.insert(0, "person_key", features["person_key"])
    write_atomic(scores.reset_index(drop=True), target)
    return len(scores)
