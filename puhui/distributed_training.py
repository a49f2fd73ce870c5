"""LightGBM training on a Dask cluster, for training sets larger than one machine.

``lightgbm.dask.DaskLGBMClassifier`` trains one model across the cluster's workers (each
concatenates the partitions it holds); ``.to_local()`` turns it into a plain model, and the
booster saved is the same kind as a local training's (a ``lightgbm.Booster``), so scoring,
reason codes and the registry do not care where it was trained.

The risk training uses it when ``PUHUI_TASK_RUNNER=dask`` (:func:`dask_training_enabled`),
through :func:`train_early_stopped`, which stands in for ``lightgbm.train`` with early
stopping: ``lightgbm.dask`` has no early stopping (each worker would stop on its own share of
the validation rows), so the cluster trains every round and the iteration early stopping
would have chosen is found afterwards on the whole validation set, by the same rule (the
first metric did not improve for ``patience`` rounds).
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from puhui.task_runners import task_workers

_CLIENT: Any = None


def dask_training_enabled() -> bool:
    """Whether training runs on Dask: the same setting as the partitioned steps' runner."""
    return os.environ.get("PUHUI_TASK_RUNNER", "local").strip().lower() == "dask"


def dask_client() -> Any:
    """The process's Dask client: ``PUHUI_DASK_ADDRESS``'s scheduler, or a LocalCluster of
    ``PUHUI_TASK_WORKERS`` (default 2) worker processes, started once and closed at exit."""
    global _CLIENT
    if _CLIENT is None:
        from distributed import Client, LocalCluster

        address = os.environ.get("PUHUI_DASK_ADDRESS", "").strip()
        if address:
            _CLIENT = Client(address)
        else:
            workers = task_workers()
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            _CLIENT = Client(cluster)
            atexit.register(cluster.close)
        atexit.register(_CLIENT.close)
    return _CLIENT


def train_lightgbm_on_dask(
    client: Any,
    matrix: pd.DataFrame,
    label: np.ndarray,
    params: dict[str, Any],
    rounds: int,
    partitions: int | None = None,
) -> lgb.Booster:
    """A binary LightGBM booster of ``rounds`` trees trained on the cluster of ``client``.

    ``matrix`` is encoded as for a local training (floats, pandas categoricals with a fixed
    vocabulary); it is split into ``partitions`` row blocks (default: one per worker).
    """
    import dask.dataframe as dd
    from lightgbm.dask import DaskLGBMClassifier

    workers = len(client.scheduler_info()["workers"])
    partitions = partitions or max(workers, 1)
    frame = matrix.reset_index(drop=True)
    features = dd.from_pandas(frame, npartitions=partitions, sort=True)
    target = dd.from_pandas(pd.Series(label, name="label"), npartitions=partitions, sort=True)
    model = DaskLGBMClassifier(client=client, n_estimators=rounds, **params)
    model.fit(features, target)
    return model.to_local().booster_


def train_early_stopped(
    params: dict[str, Any],
    train_set: lgb.Dataset,
    stop_set: lgb.Dataset,
    rounds: int,
    patience: int,
) -> lgb.Booster:
    """What ``lgb.train(params, train_set, rounds, valid_sets=[stop_set], callbacks=
    [early_stopping(patience, first_metric_only=True)])`` gives, trained on the Dask cluster:
    a booster with ``best_iteration`` and ``best_score["valid_0"]`` (log-loss and AUC) set.

    Both datasets must keep their raw data (``free_raw_data=False`` or not yet built).
    """
    params = {k: v for k, v in params.items() if k not in ("metric", "first_metric_only")}
    booster = train_lightgbm_on_dask(
        dask_client(), train_set.data, np.asarray(train_set.label), params, rounds
    )
    x_stop, y_stop = stop_set.data, np.asarray(stop_set.label)
    raw = np.zeros(len(y_stop))
    best, best_loss, best_auc = 0, np.inf, float("nan")
    for iteration in range(1, booster.num_trees() + 1):
        # One tree at a time: the running raw score costs one pass per tree, not per prefix.
        raw += booster.predict(
            x_stop, raw_score=True, start_iteration=iteration - 1, num_iteration=1
        )
        pd_ = 1 / (1 + np.exp(-raw))
        loss = log_loss(y_stop, pd_, labels=[0, 1])
        if loss < best_loss:
            best, best_loss, best_auc = iteration, loss, float(roc_auc_score(y_stop, raw))
        elif iteration - best >= patience:
            break
    booster.best_iteration = best
    booster.best_score = {"valid_0": {"binary_logloss": best_loss, "auc": best_auc}}
    return booster
