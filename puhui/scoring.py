"""Chunked scoring: a partition's staged features in, its probabilities of default out.

Each partition is scored from its own Parquet file and written to its own file (atomically),
so memory is one partition's and a re-run scores only the partitions not yet done.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from puhui.features.partitioned import features_path, read_features_parquet, write_atomic
from puhui.partitioning import Partition
from puhui.risk.model import RiskScorer


def scores_path(directory: Path, partition: Partition) -> Path:
    return directory / f"scores-{partition.bucket:05d}.parquet"


def score_staged_partition(directory: Path, partition: Partition, scorer: RiskScorer) -> int:
    """PD of every row of a partition's features; returns rows scored (or found scored)."""
    target = scores_path(directory, partition)
    if target.exists():
        return int(pd.read_parquet(target, columns=["person_key"]).shape[0])
    features = read_features_parquet(features_path(directory, partition))
    scores = pd.DataFrame({
        "person_key": features["person_key"],
        "as_of_date": features["as_of_date"],
        "pd": scorer.predict_pd(features),
    })
    write_atomic(scores, target)
    return len(scores)
