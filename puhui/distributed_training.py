"""LightGBM training on a Dask cluster, for training sets larger than one machine.

``lightgbm.dask.DaskLGBMClassifier`` trains one model across the cluster's workers (each
concatenates the partitions it holds); ``.to_local()`` turns it into a plain model, and the
booster saved is the same kind as a local training's (a ``lightgbm.Booster``), so scoring,
reason codes and the registry do not care where it was trained.
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd


def train_lightgbm_on_dask(client: Any, matrix: pd.DataFrame, label: np.ndarray,
                           params: dict[str, Any], rounds: int,
                           partitions: int | None = None) -> lgb.Booster:
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
