"""Prefect tasks of the partitioned feature build and scoring.

Tasks receive the settings (the partition tasks a copy without keys:
``Settings.without_keys``) and the features config (both pickle), a partition key, the
as-of date and the staging directory, never a frame or an engine: each opens its own
warehouse engine from the settings, so the same task runs in a thread, a process or on a
Dask worker on another machine (which then needs to reach the warehouse and a shared
PUHUI_HOME or staging path).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from prefect import task

from puhui import console
from puhui.config import FeaturesConfig
from puhui.features.partitioned import (
    PhoneFeedsSplit,
    build_staged_partition,
    drop_phone_feeds,
    stage_phone_feeds,
    stage_register,
)
from puhui.partitioning import Partition
from puhui.privacy import install_log_scrubbing
from puhui.risk.model import RiskScorer
from puhui.scoring import score_staged_partition
from puhui.settings import Settings
from puhui.warehouse.engine import get_engine
from tasks.retries import step_options

STEP = step_options(retry_delay_seconds=10)


@task(name="stage-feature-partitions", **STEP)
def stage_feature_partitions(settings: Settings, spec: FeaturesConfig, as_of: date,
                             staging: str, partitions: int | None = None) -> list[Partition]:
    """The register split into partitions, and the sources' first days, under ``staging``."""
    return stage_register(get_engine(settings.warehouse_url), spec, as_of, Path(staging),
                          partitions)


@task(name="split-phone-feeds", **STEP)
def split_phone_feeds(settings: Settings, spec: FeaturesConfig, as_of: date, staging: str,
                      partitions: list[Partition]) -> PhoneFeedsSplit:
    """The phone-keyed feeds split by partition into ``staging`` in one scan, before the
    partition tasks, when they are large enough to pay (PostgreSQL, several partitions,
    ``partitioning`` in configs/features.yaml); a complete split is kept (resume)."""
    split = stage_phone_feeds(get_engine(settings.warehouse_url), spec, as_of, Path(staging),
                              len(partitions))
    console.detail(f"features {as_of}: {split.line}")
    return split


@task(name="drop-phone-feeds", **STEP)
def drop_split_phone_feeds(staging: str) -> None:
    """The split, once every partition's features are staged: nothing else reads it."""
    drop_phone_feeds(Path(staging))


@task(name="feature-partition", **STEP)
def build_feature_partition(settings: Settings, spec: FeaturesConfig, as_of: date,
                            staging: str, partition: Partition) -> int:
    """One partition's features (every customer as of ``as_of``) to its staged Parquet file."""
    install_log_scrubbing()  # a Dask worker process has not the flow's filter
    return build_staged_partition(get_engine(settings.warehouse_url), spec, as_of,
                                  Path(staging), partition)


@task(name="score-partition", **STEP)
def score_partition(staging: str, partition: Partition, model_dir: str,
                    num_threads: int | None = None) -> int:
    """One partition's PD from its staged features, with the scorer saved in ``model_dir``
    (LightGBM on ``num_threads`` threads; None: its default)."""
    install_log_scrubbing()  # a Dask worker process has not the flow's filter
    return score_staged_partition(Path(staging), partition,
                                  RiskScorer.load(Path(model_dir), num_threads))
