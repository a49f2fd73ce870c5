"""LightGBM on a 2-worker Dask LocalCluster: a plain booster, AUC within 0.005 of local."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from puhui.distributed_training import train_lightgbm_on_dask


def _data(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 8))
    x[rng.random(x.shape) < 0.1] = np.nan
    band = rng.integers(0, 4, rows)
    signal = np.nan_to_num(x[:, :4]) @ [0.8, -0.6, 0.5, 0.3] + 0.7 * (band == 2)
    label = (rng.random(rows) < 1 / (1 + np.exp(-(signal - 1.5)))).astype(int)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)])
    frame["band"] = pd.Categorical(np.array(list("abcd"))[band], categories=list("abcd"))
    return frame, label


@pytest.mark.slow
def test_dask_lightgbm_matches_local_auc_and_saves_a_plain_booster() -> None:
    from distributed import Client, LocalCluster

    train_x, train_y = _data(40_000, 1)
    test_x, test_y = _data(20_000, 2)
    params = {"objective": "binary", "learning_rate": 0.1, "num_leaves": 15,
              "min_child_samples": 50, "verbose": -1, "random_state": 3}
    local = lgb.train({**params, "num_threads": 1}, lgb.Dataset(train_x, train_y),
                      num_boost_round=60)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        booster = train_lightgbm_on_dask(client, train_x, train_y, params, rounds=60)
    assert isinstance(booster, lgb.Booster) and booster.num_trees() == 60
    auc_local = roc_auc_score(test_y, local.predict(test_x))
    auc_dask = roc_auc_score(test_y, booster.predict(test_x))
    assert auc_local > 0.7
    assert abs(auc_dask - auc_local) < 0.005, (auc_dask, auc_local)
    # The saved model reloads as a plain booster with the same predictions.
    again = lgb.Booster(model_str=booster.model_to_string())
    np.testing.assert_allclose(again.predict(test_x), booster.predict(test_x))
