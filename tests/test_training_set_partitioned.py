"""The risk training set built from partitioned features equals the whole-table one."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from puhui.config import FeaturesConfig, ModelsConfig, load_config
from puhui.features.builder import build_features
from puhui.features.sources import load_source_frames
from puhui.partitioning import bucket_of
from puhui.risk.training_set import (
    REGISTER_COLUMNS,
    ApplicantFeatures,
    TrainingSet,
    applicant_features,
    build_training_set,
    feature_requests,
)
from puhui.settings import load_settings
from puhui.warehouse.engine import get_engine
from tests.conftest import RISK_AS_OF, RiskTemplates, risk_env

AS_OF = date.fromisoformat(RISK_AS_OF)


@pytest.fixture
def risk_clean(risk_templates: RiskTemplates, dialect: str, puhui_env: Path,
               monkeypatch: pytest.MonkeyPatch) -> str:
    return risk_env(risk_templates, "clean", dialect, puhui_env, monkeypatch)


def _whole_table(engine, spec: FeaturesConfig) -> ApplicantFeatures:  # noqa: ANN001
    """The training flow's features before partitioning: whole raw tables in memory."""
    frames = load_source_frames(engine, spec, AS_OF)
    apps = feature_requests(engine, spec, AS_OF)
    features = build_features(frames, apps[["person_key", "as_of_date"]], spec)
    return ApplicantFeatures(AS_OF, apps, features, frames.customers[REGISTER_COLUMNS],
                             frames.batch_ids)


def _assert_same(got: TrainingSet, want: TrainingSet) -> None:
    pd.testing.assert_frame_equal(got.frame, want.frame, check_exact=True)
    assert got.catalog == want.catalog
    assert (got.oot_start, got.oot_end, got.valid_start) == (
        want.oot_start, want.oot_end, want.valid_start)
    assert got.batch_ids == want.batch_ids


def test_partitioned_training_set_equals_the_whole_table_one(risk_clean: str) -> None:
    """Every row, every column (features, label, split, protected attributes), bit for bit,
    and the same lineage: one partition (the demo's case) and three."""
    engine = get_engine(risk_clean)
    settings = load_settings()
    spec = load_config(settings.config_dir, FeaturesConfig)
    model = load_config(settings.config_dir, ModelsConfig).credit_risk
    want = build_training_set(engine, spec, model, _whole_table(engine, spec))
    features = [f.name for f in want.catalog]
    labelled = want.frame[want.frame["label"].notna()]
    assert len(labelled) > 500 and labelled["label"].nunique() == 2
    # The comparison covers real values: every feature has some, and so do the applicants'
    # register columns.
    assert want.frame[features].notna().any().all()
    assert want.frame["region_type"].notna().all()
    for partitions in (1, 3):
        # Every partition has applicants, so each one is read and the lineage is complete.
        buckets = bucket_of(want.frame["person_key"], partitions)
        assert np.bincount(buckets, minlength=partitions).min() > 0
        got = build_training_set(engine, spec, model,
                                 applicant_features(engine, spec, AS_OF, partitions))
        _assert_same(got, want)


def test_user_features_written_in_chunks_in_one_transaction(
        risk_clean: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training flow writes ~2M feature rows at 1M customers: chunk by chunk (memory
    bounded by a chunk), every row once, re-runs replace, values round-trip."""
    from sqlalchemy import func, select

    from puhui.features import store
    from puhui.warehouse.schema import user_features

    engine = get_engine(risk_clean)
    spec = load_config(load_settings().config_dir, FeaturesConfig)
    features = applicant_features(engine, spec, AS_OF).features.head(500)
    monkeypatch.setattr(store, "WRITE_CHUNK_ROWS", 7)
    assert store.write_user_features(engine, features, spec.feature_set) == len(features)
    assert store.write_user_features(engine, features, spec.feature_set) == len(features)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(user_features)).scalar_one() \
            == len(features)
    back = store.read_user_features(engine).set_index(["person_key", "as_of_date"])
    mine = features.set_index(["person_key", "as_of_date"])
    back = back.loc[mine.index]
    np.testing.assert_array_equal(back["bureau_score"].astype(float).to_numpy(),
                                  mine["bureau_score"].astype(float).to_numpy())
