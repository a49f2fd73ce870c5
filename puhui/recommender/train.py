"""Training the recommender end to end, as plain functions: ranking set, model, evaluation,
gates. The flow (flows/train.py) and the lifecycle (puhui/lifecycle/) wrap these."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from puhui.config import FeaturesConfig, ProductsConfig, RecommenderSpec, RiskModelSpec
from puhui.features.builder import build_features, feature_catalog
from puhui.features.sources import SourceFrames
from puhui.lifecycle.gates import GateResult
from puhui.recommender.evaluation import (
    MODEL,
    NON_PERSONAL,
    POPULARITY,
    SEGMENT_POPULARITY,
    RecommenderEvaluation,
    evaluate,
    top1_rows,
)
from puhui.recommender.gates import check_recommender_gates
from puhui.recommender.model import (
    Ranker,
    eligibility,
    final_scores,
    popularity_scores,
    popularity_table,
    train_ranker,
)
from puhui.recommender.training_set import (
    CUSTOMER_PRODUCT_FEATURES,
    OOT,
    POPULARITY_FEATURES,
    PRODUCT_FEATURES,
    TRAIN,
    RankingSet,
    build_groups,
    load_product_events,
    popularity_features,
    require_out_of_time_groups,
)
from puhui.risk.training_set import age_band

EVENTS_TABLE = "raw_product_events"


def _age(birth: pd.Series, on: pd.Series) -> pd.Series:
    birth, on = pd.to_datetime(birth), pd.to_datetime(on)
    before = (on.dt.month < birth.dt.month) | (
        (on.dt.month == birth.dt.month) & (on.dt.day < birth.dt.day))
    return (on.dt.year - birth.dt.year - before.astype(int)).astype(float)


def build_ranking_set(engine: Engine, frames: SourceFrames, features_spec: FeaturesConfig,
                      spec: RecommenderSpec, risk: RiskModelSpec, products: ProductsConfig,
                      grade: Callable[[pd.DataFrame], np.ndarray] | None = None,
                      features: pd.DataFrame | None = None) -> RankingSet:
    """Groups from product_events, joined to point-in-time customer features (as of the day
    before each window), segments, age and the champion risk grade: ``grade`` maps the
    feature rows (one per customer and as-of date) to grades; None when there is no risk
    champion (then no row has a grade and credit products are ineligible). ``features``:
    feature builder rows already built (benchmarks reuse them across runs); the requests
    they lack are built (``complete_features``)."""
    as_of = frames.as_of
    customers = frames.customers
    events = load_product_events(engine, EVENTS_TABLE, features_spec.timezone, as_of,
                                 customers)
    frame = build_groups(events, products, spec, as_of)
    require_out_of_time_groups(frame, events, as_of, spec)
    requests = frame[["person_key", "as_of_date"]].drop_duplicates()
    features = (build_features(frames, requests, features_spec) if features is None
                else complete_features(frames, requests, features, features_spec))
    features = features.assign(risk_grade=grade(features) if grade is not None else None)
    frame = frame.merge(features, on=["person_key", "as_of_date"], how="left")
    people = customers.set_index("person_key")
    frame["region_type"] = frame["person_key"].map(people["region_type"])
    frame["gender"] = frame["person_key"].map(people["gender"]).map(
        {"M": "male", "F": "female"})
    if "occupation" not in frame:
        frame["occupation"] = frame["person_key"].map(people["occupation"])
    birth = frame["person_key"].map(people["birth_date"])
    frame["age"] = _age(birth, frame["as_of_date"])
    frame["age_band"] = age_band(birth, frame["as_of_date"], risk.fairness.age_bands)
    frame = popularity_features(frame)
    catalog = feature_catalog(features_spec)
    feature_names = [f.name for f in catalog] + CUSTOMER_PRODUCT_FEATURES + \
        PRODUCT_FEATURES + POPULARITY_FEATURES
    categorical = [f.name for f in catalog if f.categorical] + [
        c for c in ("product_code", "product_kind", "scenario") if c in feature_names]
    oot_start = frame.loc[frame["split"] == OOT, "as_of_date"].min()
    batch_ids = set(frames.batch_ids) | set(events["batch_id"])
    return RankingSet(as_of, frame, feature_names, categorical, oot_start, batch_ids)


def complete_features(frames: SourceFrames, requests: pd.DataFrame, known: pd.DataFrame,
                      features_spec: FeaturesConfig) -> pd.DataFrame:
    """``known`` feature rows plus the rows of ``requests`` (person_key, as_of_date) they
    lack, built: rows kept from a run with fewer windows must not leave the others' features
    blank when joined."""
    keys = ["person_key", "as_of_date"]
    have = requests[keys].drop_duplicates().merge(
        known[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    missing = have.loc[have["_merge"] == "left_only", keys]
    if missing.empty:
        return known
    return pd.concat([known, build_features(frames, missing, features_spec)],
                     ignore_index=True)


@dataclass
class RecommenderRun:
    ranker: Ranker
    evaluation: RecommenderEvaluation
    gates: GateResult
    oot: pd.DataFrame  # eligible out-of-time rows with every ranking's score
    eligibility_violations: int
    rows_train_eligible: int  # what the ranker trained on (the size-aware leaf count's rows)


def fit_and_evaluate(data: RankingSet, spec: RecommenderSpec,
                     opted_out: Collection[str] = (),
                     truth_rural_agri_share: float | None = None) -> RecommenderRun:
    """Eligibility, the lambdarank model, the baselines and the non-personalised ranking,
    the final ranking (opted-out customers get the non-personalised one), its evaluation
    out of time and the gates."""
    allowed = eligibility(data.frame, spec)
    frame = data.frame[allowed.eligible]
    train, oot = frame[frame["split"] == TRAIN], frame[frame["split"] == OOT].copy()
    ranker = train_ranker(train, data.features, data.categorical, spec)
    ranker.popularity = popularity_table(train)
    non_personal = popularity_scores(train, oot, ["scenario"])
    oot[MODEL] = final_scores(ranker.score(oot), non_personal, oot["person_key"], opted_out)
    oot[POPULARITY] = popularity_scores(train, oot, [])
    oot[SEGMENT_POPULARITY] = popularity_scores(train, oot, list(spec.segment_pair))
    oot[NON_PERSONAL] = non_personal
    scores = {name: oot[name].to_numpy(dtype=float)
              for name in (MODEL, POPULARITY, SEGMENT_POPULARITY, NON_PERSONAL)}
    evaluation = evaluate(oot, scores, spec, allowed.removed)
    # Re-checked on the ranked rows, not assumed: the final ranking must hold no ineligible row.
    violations = int((~eligibility(oot, spec).eligible).sum())
    evaluation.metrics["eligibility_violations"] = float(violations)
    gates = check_recommender_gates(evaluation, spec.gates, truth_rural_agri_share)
    return RecommenderRun(ranker, evaluation, gates, oot, violations, len(train))


def oot_top1(run: RecommenderRun) -> pd.Series:
    """Each out-of-time group's top product under the final ranking, by person."""
    first = top1_rows(run.oot, run.oot[MODEL].to_numpy(dtype=float))
    return pd.Series(first["product_code"].to_numpy(), index=first["person_key"].to_numpy())


__all__ = ["build_ranking_set", "complete_features", "fit_and_evaluate", "oot_top1"]
