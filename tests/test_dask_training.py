"""LightGBM on a 2-worker Dask LocalCluster, through the risk training's own path
(``train_lightgbm`` with ``PUHUI_TASK_RUNNER=dask``): a plain booster cut at its early-stopped
iteration, AUC within 0.005 of the local training's on unseen rows."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from puhui import distributed_training
from puhui.config import ModelsConfig, MonotoneSpec, load_config
from puhui.lifecycle.params import DataSize, resolve_lightgbm
from puhui.risk.model import RiskScorer, train_lightgbm
from puhui.settings import load_settings

FEATURES = [*(f"x{i}" for i in range(8)), "band"]


def _data(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 8))
    x[rng.random(x.shape) < 0.1] = np.nan
    band = rng.integers(0, 4, rows)
    signal = np.nan_to_num(x[:, :4]) @ [0.8, -0.6, 0.5, 0.3] + 0.7 * (band == 2)
    frame = pd.DataFrame(x, columns=FEATURES[:8])
    frame["band"] = pd.Series(np.array(list("abcd"), dtype=object)[band], dtype=object)
    frame["label"] = (rng.random(rows) < 1 / (1 + np.exp(-(signal - 1.5)))).astype(float)
    return frame


@pytest.mark.slow
def test_risk_training_on_dask_matches_local_auc_and_saves_a_plain_booster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    train, valid, test = _data(30_000, 1), _data(8_000, 2), _data(20_000, 3)
    spec = load_config(load_settings().config_dir, ModelsConfig).credit_risk.lightgbm
    # A quick learner (the shipped 0.02 runs up to 3,000 rounds): the cluster trains every
    # round, as lightgbm.dask has no early stopping.
    spec = spec.model_copy(update={
        "search": None, "monotone": MonotoneSpec(), "num_boost_round": 300,
        "early_stopping_rounds": 20, "params": {**spec.params, "learning_rate": 0.1}})
    resolved = resolve_lightgbm(spec, DataSize(len(train), int(train["label"].sum())), seed=3)

    def fit():  # noqa: ANN202
        return train_lightgbm(train, valid, FEATURES, ["band"], resolved, seed=3,
                              cross_fit=False)

    monkeypatch.setenv("PUHUI_TASK_RUNNER", "local")
    local = fit()
    monkeypatch.setenv("PUHUI_TASK_RUNNER", "dask")
    monkeypatch.setenv("PUHUI_TASK_WORKERS", "2")
    monkeypatch.delenv("PUHUI_DASK_ADDRESS", raising=False)
    try:
        dask = fit()
        workers = len(distributed_training.dask_client().scheduler_info()["workers"])
    finally:
        if distributed_training._CLIENT is not None:
            distributed_training._CLIENT.close()
            distributed_training._CLIENT = None
    assert workers == 2  # it really ran on the cluster
    assert isinstance(dask.scorer, RiskScorer) and isinstance(dask.scorer.booster, lgb.Booster)
    # Cut at the iteration early stopping chose, as the local booster is.
    assert 0 < dask.best_iteration < resolved.num_boost_round
    assert dask.scorer.booster.num_trees() == dask.best_iteration
    auc_local = roc_auc_score(test["label"], local.scorer.predict_raw(test))
    auc_dask = roc_auc_score(test["label"], dask.scorer.predict_raw(test))
    assert auc_local > 0.7
    assert abs(auc_dask - auc_local) < 0.005, (auc_dask, auc_local)
    # The saved model reloads as a plain booster with the same predictions.
    again = lgb.Booster(model_str=dask.scorer.booster.model_to_string())
    np.testing.assert_allclose(again.predict(dask.scorer.matrix(test)),
                               dask.scorer.booster.predict(dask.scorer.matrix(test)))
