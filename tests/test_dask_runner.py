"""The partitioned feature flow on local threads and on a 2-worker Dask LocalCluster."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows.features import run_partitioned_features
from puhui.errors import PuhuiError
from puhui.features.partitioned import build_features_partitioned, read_staged_features
from puhui.partitioning import all_partitions
from puhui.risk.model import RiskScorer, category_vocabulary, encode_features
from puhui.scoring import scores_path
from puhui.task_runners import lightgbm_threads, scoring_threads_from_env, task_runner_from_env
from puhui.warehouse.engine import get_engine
from tests.conftest import RiskTemplates, risk_env
from tests.test_features import AS_OF, _spec


def test_task_runner_follows_the_settings() -> None:
    assert isinstance(task_runner_from_env({}), ThreadPoolTaskRunner)
    dask = task_runner_from_env({"PUHUI_TASK_RUNNER": "dask",
                                 "PUHUI_DASK_ADDRESS": "tcp://10.0.0.5:8786"})
    assert isinstance(dask, DaskTaskRunner) and dask.address == "tcp://10.0.0.5:8786"
    local_cluster = task_runner_from_env({"PUHUI_TASK_RUNNER": "dask",
                                          "PUHUI_TASK_WORKERS": "2"})
    assert local_cluster.address is None and local_cluster.cluster_kwargs["n_workers"] == 2
    for bad in ({"PUHUI_TASK_RUNNER": "spark"}, {"PUHUI_TASK_WORKERS": "0"},
                {"PUHUI_TASK_WORKERS": "\u00b9"}):
        with pytest.raises(PuhuiError):
            task_runner_from_env(bad)
    # before the flow starts, not after the whole partitioned build
    for bad in ("0", "\u00b9"):
        with pytest.raises(PuhuiError, match="PUHUI_SCORING_THREADS"):
            task_runner_from_env({"PUHUI_SCORING_THREADS": bad})


def test_scoring_divides_the_cores_among_the_partitions_that_run_at_once() -> None:
    # LightGBM's default (a thread per core in each of 2 partitions at once) oversubscribed
    # the 2 cores: README, Performance, "Partitioned scoring's LightGBM threads".
    assert lightgbm_threads(2, 2) == 1 and lightgbm_threads(1, 2) == 2
    assert lightgbm_threads(3, 2) == 1 and lightgbm_threads(2, 8) == 4
    assert lightgbm_threads(2, 2, configured=2) == 2  # an explicit setting as given
    assert scoring_threads_from_env(8, {}, cores=2) == 1
    assert scoring_threads_from_env(1, {}, cores=2) == 2  # one partition: every core
    assert scoring_threads_from_env(8, {"PUHUI_TASK_WORKERS": "4"}, cores=16) == 4
    assert scoring_threads_from_env(8, {"PUHUI_TASK_RUNNER": "dask"}, cores=2) == 1
    assert scoring_threads_from_env(8, {"PUHUI_SCORING_THREADS": "2"}, cores=2) == 2
    remote = {"PUHUI_TASK_RUNNER": "dask", "PUHUI_DASK_ADDRESS": "tcp://10.0.0.5:8786"}
    assert scoring_threads_from_env(8, remote, cores=2) is None
    assert scoring_threads_from_env(8, remote | {"PUHUI_SCORING_THREADS": "3"}) == 3
    for bad in ("0", "two", "-1", "\u00b9"):  # '¹'.isdigit() is True; int('¹') raises
        with pytest.raises(PuhuiError, match="PUHUI_SCORING_THREADS"):
            scoring_threads_from_env(8, {"PUHUI_SCORING_THREADS": bad}, cores=2)


def test_a_scorer_loaded_with_a_thread_count_scores_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"person_key": range(300), "as_of_date": 0,
                          "bureau_score": rng.normal(600, 80, 300),
                          "occupation": rng.choice(["farmer", "trader"], 300),
                          "income_band": "low", "agri_crop": None})
    directory = _scorer(frame, tmp_path / "model")
    one = RiskScorer.load(directory, num_threads=1)
    assert one.num_threads == 1 and RiskScorer.load(directory).num_threads is None
    np.testing.assert_array_equal(one.predict_pd(frame), RiskScorer.load(directory)
                                  .predict_pd(frame))
    np.testing.assert_array_equal(one.contributions(frame), RiskScorer.load(directory)
                                  .contributions(frame))


def _scorer(features: pd.DataFrame, directory: Path) -> Path:
    """A small booster on the features (label: a noisy rule), saved as a RiskScorer."""
    spec_cats = ["occupation", "income_band", "agri_crop"]
    names = [c for c in features.columns[2:]]
    categories = category_vocabulary(features, spec_cats)
    matrix = encode_features(features, names, categories)
    rng = np.random.default_rng(0)
    score = features["bureau_score"].fillna(550).to_numpy()
    label = (score + rng.normal(0, 60, len(score)) < 560).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                        lgb.Dataset(matrix, label), num_boost_round=20)
    RiskScorer(booster, names, categories).save(directory)
    return directory


@pytest.mark.slow
def test_flow_on_a_dask_local_cluster_equals_the_local_run(
    risk_templates: RiskTemplates, puhui_env: Path, monkeypatch: pytest.MonkeyPatch,
    prefect_harness: None, tmp_path: Path,
) -> None:
    url = risk_env(risk_templates, "clean", "sqlite", puhui_env, monkeypatch)
    engine = get_engine(url)
    want = build_features_partitioned(engine, _spec(), AS_OF, None, 1)
    model_dir = str(_scorer(want, tmp_path / "model"))

    results = {}
    for runner in ("local", "dask"):
        monkeypatch.setenv("PUHUI_TASK_RUNNER", runner)
        monkeypatch.setenv("PUHUI_TASK_WORKERS", "2")
        summary = run_partitioned_features(AS_OF, partitions=3, model_dir=model_dir,
                                           staging=str(tmp_path / runner))
        assert summary["partitions"] == 3 and summary["rows"] == len(want)
        assert summary["scored"] == len(want)
        parts = all_partitions(3)
        features = read_staged_features(tmp_path / runner, parts)
        scores = pd.concat([pd.read_parquet(scores_path(tmp_path / runner, p)) for p in parts])
        results[runner] = (features.sort_values("person_key").reset_index(drop=True),
                           scores.sort_values("person_key").reset_index(drop=True))

    order = want.sort_values("person_key").reset_index(drop=True)
    for runner in ("local", "dask"):
        pd.testing.assert_frame_equal(results[runner][0], order, check_exact=True)
    pd.testing.assert_frame_equal(results["dask"][1], results["local"][1], check_exact=True)
    assert results["local"][1]["pd"].between(0, 1).all()
    assert results["local"][1]["pd"].nunique() > 10
