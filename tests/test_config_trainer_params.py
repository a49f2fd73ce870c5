"""A LightGBM parameter the trainer sets itself (the seed, determinism, the ranker's label
gains, ...) is refused in a model's config under any of its names, in one line naming the
key: given as ``random_state`` it was silently overridden by the trainer's ``seed``."""

from __future__ import annotations

from pathlib import Path

import pytest

from puhui.config import (
    RANKER_TRAINER_PARAMS,
    RISK_TRAINER_PARAMS,
    ModelsConfig,
    load_config_file,
)
from puhui.errors import PuhuiError
from puhui.recommender.model import ranker_params
from puhui.risk.model import FIXED_PARAMS
from tests.test_attack_round8 import CONFIGS, _edited

_RISK_PARAMS = "    params:\n      objective: binary\n"
_RANKER = "    objective: lambdarank\n"


@pytest.mark.parametrize("old, new, key, real", [
    (_RISK_PARAMS, _RISK_PARAMS + "      random_state: 7\n", "random_state", "seed"),
    (_RISK_PARAMS, _RISK_PARAMS + "      seed: 7\n", "seed", None),
    (_RISK_PARAMS, _RISK_PARAMS + "      monotone_constraint: 1\n", "monotone_constraint",
     "monotone_constraints"),
    (_RANKER, _RANKER + "    random_seed: 7\n", "random_seed", "seed"),
    (_RANKER, _RANKER + "    label_gain: [0, 1, 3]\n", "label_gain", None),
])
def test_a_parameter_the_trainer_sets_is_refused_under_any_name(
        tmp_path: Path, old: str, new: str, key: str, real: str | None) -> None:
    path = _edited(tmp_path, "models.yaml", old, new)
    with pytest.raises(PuhuiError) as caught:
        load_config_file(path, ModelsConfig)
    message = str(caught.value)
    assert message.startswith(f"{path}:") and "\n" not in message
    assert f"{key}: set by the trainer" in message, message
    assert (f"(LightGBM's {real})" in message) == (real is not None)
    assert "not configurable here" in message


def test_the_refused_names_are_the_ones_the_trainers_set() -> None:
    spec = load_config_file(CONFIGS / "models.yaml", ModelsConfig)
    assert set(RISK_TRAINER_PARAMS) == set(FIXED_PARAMS) | {
        "seed", "monotone_constraints", "feature_pre_filter"}
    ranker = spec.product_recommender
    assert ranker is not None
    assert set(RANKER_TRAINER_PARAMS) == set(ranker_params(ranker, 1000)) - set(ranker.lightgbm)
