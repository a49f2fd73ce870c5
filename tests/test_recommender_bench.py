"""The recommender benchmark compares like with like (issue 12): its bare ``lightgbm.train``
gets the same rows, categories and parameters as ``train_ranker``, so the two build the
same model and the ratio measures only the frame → encoding → Dataset path."""

import numpy as np
import pytest

lgb = pytest.importorskip("lightgbm")

from bench.bench_recommender import (  # noqa: E402 - after the skip
    _columns,
    _spec,
    bare_dataset,
    bare_matrix,
    synthetic_frame,
)
from puhui.recommender.model import ranker_params, train_ranker  # noqa: E402


def test_bare_lightgbm_and_train_ranker_build_the_same_model() -> None:
    features, categorical, codes = _columns()
    spec = _spec(8).model_copy(update={"lightgbm": {**_spec(8).lightgbm,
                                                    "min_data_in_leaf": 50}})
    frame = synthetic_frame(600, features, categorical, codes, seed=7)
    ours = train_ranker(frame, features, categorical, spec)

    matrix = bare_matrix(frame, features, categorical)
    sizes = np.full(600, len(codes))
    data = bare_dataset(matrix, frame["relevance"].to_numpy(), sizes, features, categorical,
                        spec)
    bare = lgb.train(ranker_params(spec, len(frame)), data, num_boost_round=spec.num_boost_round)

    assert bare.num_trees() == ours.booster.num_trees() == 8
    assert ours.booster.dump_model()["tree_info"][0]["num_leaves"] > 1  # it learned
    np.testing.assert_array_equal(bare.predict(matrix), ours.score(frame))
