"""Training the LightGBM risk model (with an optional bounded search) and its benchmark.

``RiskScorer`` is what gets registered: the booster plus the feature list and the category
vocabulary it was trained with, so scoring later encodes a frame exactly as training did. The
benchmark challenger is a plain logistic regression on the same features and split.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from puhui import console
from puhui.config import LightGBMSpec

# Reproducibility is not a tuning choice: the same data and seed must give the same model.
FIXED_PARAMS: dict[str, Any] = {
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
    "metric": "auc",
}


def encode_features(frame: pd.DataFrame, features: list[str],
                    categories: dict[str, list[str]]) -> pd.DataFrame:
    """``frame``'s features in order: numbers as float, categories with a fixed vocabulary
    (a value not in it becomes missing), as LightGBM needs them."""
    out = pd.DataFrame(index=frame.index)
    for name in features:
        if name in categories:
            values = frame[name].astype(object).where(frame[name].notna(), None)
            out[name] = pd.Categorical(values, categories=categories[name])
        else:
            out[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    return out


@dataclass
class RiskScorer:
    """A trained booster with the exact feature encoding it expects."""

    booster: lgb.Booster
    features: list[str]
    categories: dict[str, list[str]]  # categorical feature -> vocabulary seen in training

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        return encode_features(frame, self.features, self.categories)

    def predict_pd(self, frame: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(self.matrix(frame))

    def contributions(self, frame: pd.DataFrame) -> np.ndarray:
        """Per-row log-odds contributions of each feature (last column: the base value)."""
        return self.booster.predict(self.matrix(frame), pred_contrib=True)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(directory / "booster.txt"))
        (directory / "encoding.json").write_text(json.dumps(
            {"features": self.features, "categories": self.categories},
            ensure_ascii=False, indent=1,
        ), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> RiskScorer:
        encoding = json.loads((directory / "encoding.json").read_text(encoding="utf-8"))
        booster = lgb.Booster(model_file=str(directory / "booster.txt"))
        return cls(booster, encoding["features"], encoding["categories"])


def category_vocabulary(frame: pd.DataFrame, categorical: list[str]) -> dict[str, list[str]]:
    return {
        name: sorted(str(v) for v in frame[name].dropna().unique()) for name in categorical
    }


@dataclass
class TrainedModel:
    scorer: RiskScorer
    params: dict[str, Any]
    best_iteration: int
    trials: list[dict[str, Any]] = field(default_factory=list)


def _search_candidates(spec: LightGBMSpec, seed: int) -> list[dict[str, Any]]:
    """The configured parameters first, then ``trials`` seeded draws from the search lists."""
    candidates = [dict(spec.params)]
    if spec.search is None:
        return candidates
    rng = random.Random(seed)
    space = spec.search.model_dump(exclude={"trials"})
    seen = {json.dumps(candidates[0], sort_keys=True)}
    for _ in range(spec.search.trials * 20):
        if len(candidates) > spec.search.trials:
            break
        draw = dict(spec.params) | {name: rng.choice(values) for name, values in space.items()}
        key = json.dumps(draw, sort_keys=True)
        if key not in seen:
            seen.add(key)
            candidates.append(draw)
    return candidates


def train_lightgbm(
    train: pd.DataFrame, valid: pd.DataFrame, features: list[str], categorical: list[str],
    spec: LightGBMSpec, seed: int,
) -> TrainedModel:
    """Train on ``train`` with early stopping on ``valid``; with a search, keep the best AUC."""
    vocabulary = category_vocabulary(train, categorical)
    x_train = encode_features(train, features, vocabulary)
    x_valid = encode_features(valid, features, vocabulary)
    y_train, y_valid = train["label"].to_numpy(float), valid["label"].to_numpy(float)
    # One binned Dataset serves every search trial; pre-filtering features by the first
    # trial's min_data_in_leaf would make later trials inconsistent.
    train_set = lgb.Dataset(x_train, y_train, categorical_feature=categorical,
                            free_raw_data=False, params={"feature_pre_filter": False})
    valid_set = lgb.Dataset(x_valid, y_valid, reference=train_set,
                            params={"feature_pre_filter": False})
    best: TrainedModel | None = None
    trials = []
    candidates = _search_candidates(spec, seed)
    for number, candidate in enumerate(candidates, start=1):
        params = candidate | FIXED_PARAMS | {"seed": seed}
        with console.progress(f"LightGBM trial {number}/{len(candidates)} rounds",
                              total=spec.num_boost_round) as bar:
            booster = lgb.train(
                params, train_set, num_boost_round=spec.num_boost_round, valid_sets=[valid_set],
                callbacks=[lgb.early_stopping(spec.early_stopping_rounds, verbose=False),
                           lambda _env: bar.advance(1)],
            )
        auc = float(booster.best_score["valid_0"]["auc"])
        trials.append({"params": candidate, "auc_valid": round(auc, 6),
                       "best_iteration": booster.best_iteration})
        if best is None or auc > best.trials[-1]["auc_valid"]:
            best = TrainedModel(RiskScorer(booster, features, vocabulary), params,
                                booster.best_iteration, [trials[-1]])
    assert best is not None
    best.trials = trials
    # Keep only the trees up to the best iteration so every later prediction uses them.
    best.scorer.booster = lgb.Booster(
        model_str=best.scorer.booster.model_to_string(num_iteration=best.best_iteration)
    )
    return best


def train_benchmark(
    train: pd.DataFrame, features: list[str], categorical: list[str], seed: int
) -> Pipeline:
    """Logistic regression on the same features: median-imputed (with missing flags) and
    standardized numbers, one-hot categories."""
    numeric = [f for f in features if f not in categorical]
    prepare = ColumnTransformer([
        ("numeric", make_pipeline(SimpleImputer(strategy="median", add_indicator=True,
                                                keep_empty_features=True),
                                  StandardScaler()), numeric),
        ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
    ])
    model = Pipeline([
        ("prepare", prepare),
        ("logistic", LogisticRegression(max_iter=2000, C=1.0, random_state=seed)),
    ])
    model.fit(_benchmark_input(train, features, categorical), train["label"].astype(int))
    return model


def _benchmark_input(frame: pd.DataFrame, features: list[str],
                     categorical: list[str]) -> pd.DataFrame:
    out = frame[features].copy()
    for name in features:
        if name in categorical:
            out[name] = out[name].astype(object).where(out[name].notna(), "(missing)")
        else:
            out[name] = pd.to_numeric(out[name], errors="coerce").astype("float64")
    return out


def predict_benchmark(model: Pipeline, frame: pd.DataFrame, features: list[str],
                      categorical: list[str]) -> np.ndarray:
    return model.predict_proba(_benchmark_input(frame, features, categorical))[:, 1]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores))

