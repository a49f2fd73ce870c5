"""Eligibility, the lambdarank model, the popularity rankings and the final ranking.

Eligibility is applied before ranking: an ineligible (customer, product) row is removed,
never ranked low, and each rule's removals are counted. Popularity rankings score a product
by its mean relevance in the training windows: over everyone (global), within a segment
(the baseline the gates compare with) or within the request's scenario (the
non-personalised ranking, which uses no personal characteristic: a customer who refused
personalisation gets only it).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from puhui.config import GRADE_ORDER, RecommenderSpec
from puhui.lifecycle.params import DataSize, resolve_value
from puhui.risk.model import category_vocabulary, encode_features

FARMER = "farmer"


@dataclass
class Eligibility:
    eligible: np.ndarray  # bool per row
    removed: dict[str, int]  # rule -> rows removed by it (a row may fail several)
    reason: np.ndarray  # per row: the first rule it fails, None when eligible


def eligibility(frame: pd.DataFrame, spec: RecommenderSpec) -> Eligibility:
    """Which rows may be offered: credit products only with a champion risk grade within
    the product's limit (no grade, e.g. no risk champion: not offered, counted apart), agri
    products only with agricultural activity (a farmer or a co-op member), age limits."""
    rules = spec.eligibility
    product = frame["product_code"].to_numpy(dtype=object)
    grade = frame["risk_grade"] if "risk_grade" in frame else pd.Series(None, index=frame.index)
    rank = grade.map(lambda g: GRADE_ORDER.find(g) if isinstance(g, str) else -1).to_numpy()
    limit = pd.Series(product).map(
        {p: GRADE_ORDER.find(g) for p, g in rules.credit_max_grade.items()}).to_numpy(
            dtype=float)
    credit = ~np.isnan(limit)
    farmer = frame["occupation"].to_numpy(dtype=object) == FARMER
    member = frame.get("agri_coop_member", pd.Series(0, index=frame.index)).fillna(0) > 0
    age = frame["age"].to_numpy(dtype=float)
    too_young_or_old = np.zeros(len(frame), dtype=bool)
    for code, lim in rules.age.items():
        too_young_or_old |= (product == code) & ((age < lim.min) | (age > lim.max))
    failing = {
        "credit_no_risk_grade": credit & (rank < 0),
        "credit_grade": credit & (rank > np.nan_to_num(limit, nan=99)),
        "agricultural_activity": np.isin(product, rules.agricultural) & ~(
            farmer | member.to_numpy()),
        "age": too_young_or_old,
    }
    reason = np.full(len(frame), None, dtype=object)
    for rule, bad in reversed(failing.items()):  # the first rule named wins
        reason[bad] = rule
    ok = reason == None  # noqa: E711 - elementwise on an object array
    return Eligibility(ok, {rule: int(bad.sum()) for rule, bad in failing.items()}, reason)


@dataclass
class Ranker:
    booster: lgb.Booster
    features: list[str]
    categories: dict[str, list[str]]
    # The non-personalised rankings' training popularity (mean relevance per product):
    # {"all": {code: v}, "by_scenario": {scenario: {code: v}}}; stored with the booster so
    # that scoring needs nothing else.
    popularity: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # as trained, size-aware resolved

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(encode_features(frame, self.features, self.categories))


def ranker_params(spec: RecommenderSpec, rows: int) -> dict[str, Any]:
    """The LightGBM parameters ``train_ranker`` uses on ``rows`` eligible training rows,
    size-aware values resolved (the benchmark trains with them too). MLflow logs ``rows``
    as ``rows_train_eligible``; its ``rows_train`` counts the training rows before
    eligibility."""
    size = DataSize(rows=rows, defaults=0)  # the config refuses values of defaults here
    return {**{k: resolve_value(k, v, size) for k, v in spec.lightgbm.items()},
            "seed": spec.seed, "deterministic": True,
            "force_row_wise": True,
            "label_gain": [float(2**g - 1) for g in range(max(spec.grading.values()) + 1)]}


def train_ranker(train: pd.DataFrame, features: list[str], categorical: list[str],
                 spec: RecommenderSpec) -> Ranker:
    """LightGBM lambdarank on ``train`` (rows of a group contiguous, as built)."""
    if not train["group"].is_monotonic_increasing:  # as built it is: no copy of the frame
        train = train.sort_values("group", kind="stable")
    categories = category_vocabulary(train, categorical)
    sizes = train.groupby("group", sort=True).size().to_numpy()
    # The encoded frame is only needed while the Dataset is built: let LightGBM drop it.
    data = lgb.Dataset(encode_features(train, features, categories),
                       label=train["relevance"].to_numpy(), group=sizes,
                       categorical_feature=categorical)
    params = ranker_params(spec, len(train))
    booster = lgb.train(params, data, num_boost_round=spec.num_boost_round)
    return Ranker(booster, features, categories, params=params)


POPULARITY_MIN_ROWS = 30


def popularity_scores(train: pd.DataFrame, rows: pd.DataFrame, by: list[str],
                      min_rows: int = POPULARITY_MIN_ROWS) -> np.ndarray:
    """Mean training relevance of each row's product within its ``by`` cell; a cell with
    fewer than ``min_rows`` training rows of the product falls back to all customers."""
    glob = train.groupby("product_code")["relevance"].mean()
    score = rows["product_code"].map(glob).fillna(0.0).to_numpy(dtype=float)
    if by:
        keys = [*by, "product_code"]
        cell = train.groupby(keys)["relevance"].agg(["mean", "size"])
        cell = cell[cell["size"] >= min_rows]["mean"]
        local = pd.MultiIndex.from_frame(rows[keys].astype(object)).map(
            lambda k: cell.get(k, np.nan))
        local = np.asarray(local, dtype=float)
        score = np.where(np.isnan(local), score, local)
    return score


def popularity_table(train: pd.DataFrame) -> dict[str, Any]:
    """Mean training relevance per product: overall, within each scenario (the
    non-personalised ranking) and within each occupation (the ranker's popularity
    features); cells with fewer than POPULARITY_MIN_ROWS rows are left out (scoring falls
    back to overall)."""
    def cells(by: str) -> dict[str, dict[str, float]]:
        stats = train.groupby([by, "product_code"])["relevance"].agg(["mean", "size"])
        stats = stats[stats["size"] >= POPULARITY_MIN_ROWS]["mean"]
        return {str(k): {str(c): float(v) for (_, c), v in cell.items()}
                for k, cell in stats.groupby(level=0)}

    return {"all": {str(k): float(v) for k, v in
                    train.groupby("product_code")["relevance"].mean().items()},
            "by_scenario": cells("scenario"), "by_occupation": cells("occupation")}


def final_scores(personal: np.ndarray, non_personal: np.ndarray,
                 person_key: pd.Series, opted_out: Collection[str]) -> np.ndarray:
    """The score each row is ranked by: a customer in ``opted_out`` (refused
    personalisation) gets the non-personalised ranking only."""
    refused = person_key.isin(list(opted_out)).to_numpy()
    return np.where(refused, non_personal, personal)


RANKER_FILE, META_FILE = "booster.txt", "ranker.json"


def save_ranker(ranker: Ranker, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    ranker.booster.save_model(str(directory / RANKER_FILE))
    (directory / META_FILE).write_text(json.dumps(
        {"features": ranker.features, "categories": ranker.categories,
         "popularity": ranker.popularity}), encoding="utf-8")


def load_ranker(directory: Path) -> Ranker:
    meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    booster = lgb.Booster(model_file=str(directory / RANKER_FILE))
    return Ranker(booster, meta["features"], meta["categories"], meta.get("popularity", {}))
