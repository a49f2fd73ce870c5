"""The offer columns of a profile, from the ``product_recommender`` champion.

The champion is used through what the registry serves, ``models:/product_recommender/<v>``
as a pyfunc: (customer, product) rows in, scores out (higher first). Everything else is the
recommender package's own public rules, reused rather than restated: ``eligibility`` (applied
before ranking, with the risk grade this same refresh just assigned) and ``final_scores``
(a customer who refused personalisation, PIPL Art. 24, gets the non-personalised ranking
only).

A profile is not asked in a scenario, so each customer's context is the scenario of their
latest offer (the most common one for a customer never offered anything), and the
non-personalised ranking is the product's popularity: its mean best funnel grade over the
customers offered anything in the recommender's training span (``window_days`` x
``train_windows`` days up to the as-of date), which uses no personal characteristic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from puhui.config import EligibilitySpec, FeaturesConfig, ProductsConfig, RecommenderSpec
from puhui.features.sources import day_number
from puhui.profiles.models import ModelSlot, model_input
from puhui.recommender.model import eligibility, final_scores
from puhui.recommender.train import EVENTS_TABLE
from puhui.recommender.training_set import load_product_events

PAST = ("past_impressions", "past_best_grade", "past_uptakes", "past_kind_uptakes")


@dataclass
class OfferContext:
    """What every partition's offers need, loaded once per refresh."""

    pyfunc: Any  # the champion's pyfunc: rows in, scores out
    features: list[str]
    categorical: list[str]
    spec: RecommenderSpec
    products: ProductsConfig
    popularity: dict[str, float]  # product -> non-personalised score
    past: pd.DataFrame  # index (person_key, product_code): the PAST columns
    scenario: dict[str, str]  # person_key -> scenario of their latest offer
    default_scenario: str | None

    def score(self, rows: pd.DataFrame) -> np.ndarray:
        x = model_input(rows, self.features, self.categorical)
        return np.asarray(self.pyfunc.predict(x), dtype=float).reshape(-1)


def load_offer_context(engine: Engine, tracking_uri: str, slot: ModelSlot,
                       spec: RecommenderSpec, products: ProductsConfig,
                       features: FeaturesConfig, customers: pd.DataFrame,
                       as_of: date) -> OfferContext:
    """The exact champion version resolved, and the product events it needs, aggregated."""
    import mlflow.pyfunc

    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{slot.name}/{slot.version}")
    ranker = pyfunc.unwrap_python_model().ranker
    events = load_product_events(engine, EVENTS_TABLE, features.timezone, as_of,
                                 customers[["customer_id", "person_key"]])
    events = events[events["product_code"].isin(products.codes)]
    events = events.assign(grade=events["event_type"].map(spec.grading),
                           kind=events["product_code"].map({p.code: p.kind
                                                            for p in products.products}))
    events = events.dropna(subset=["grade"])
    return OfferContext(
        pyfunc=pyfunc, features=list(ranker.features), categorical=sorted(ranker.categories),
        spec=spec, products=products, popularity=popularity(events, spec, as_of, products),
        past=past_use(events), scenario=latest_scenario(events),
        default_scenario=(events["scenario"].mode().iloc[0] if len(events) else None))


def popularity(events: pd.DataFrame, spec: RecommenderSpec, as_of: date,
               products: ProductsConfig) -> dict[str, float]:
    """Mean best grade of each product over the customers offered anything in the span."""
    start = day_number(as_of) - spec.window_days * spec.train_windows
    recent = events[events["day"] > start]
    people = recent["person_key"].nunique()
    best = recent.groupby(["person_key", "product_code"])["grade"].max()
    total = best.groupby(level="product_code").sum()
    return {c: float(total.get(c, 0.0)) / people if people else 0.0 for c in products.codes}


def past_use(events: pd.DataFrame) -> pd.DataFrame:
    """Per (person, product), up to the as-of date: the training set's past-use features."""
    keys = ["person_key", "product_code"]
    seen = events.groupby(keys).agg(
        past_impressions=("event_type", lambda s: float((s == "impression").sum())),
        past_best_grade=("grade", "max"),
        past_uptakes=("event_type", lambda s: float((s == "uptake").sum())))
    kind = events[events["event_type"] == "uptake"].groupby(["person_key", "kind"]).size()
    seen["past_kind_uptakes"] = 0.0
    if len(seen):
        product_kind = events.drop_duplicates("product_code").set_index(
            "product_code")["kind"]
        idx = pd.MultiIndex.from_arrays([
            seen.index.get_level_values("person_key"),
            product_kind.reindex(seen.index.get_level_values("product_code")).to_numpy()])
        seen["past_kind_uptakes"] = kind.reindex(idx).fillna(0.0).to_numpy(dtype=float)
    return seen


def latest_scenario(events: pd.DataFrame) -> dict[str, str]:
    last = events.sort_values(["event_time", "product_code"]).drop_duplicates(
        "person_key", keep="last")
    return dict(zip(last["person_key"], last["scenario"], strict=True))


def candidate_rows(offers: OfferContext, frame: pd.DataFrame, grades: list[Any],
                   as_of: date) -> pd.DataFrame:
    """Every (customer, product) pair with the ranker's features, customer-major order."""
    codes = offers.products.codes
    shelf = {p.code: p for p in offers.products.products}
    people = frame.assign(risk_grade=list(grades))
    rows = people.loc[people.index.repeat(len(codes))].reset_index(drop=True)
    rows["product_code"] = codes * len(people)
    rows["product_kind"] = rows["product_code"].map({c: p.kind for c, p in shelf.items()})
    rows["product_scenarios"] = rows["product_code"].map(
        {c: float(len(p.scenarios)) for c, p in shelf.items()})
    scenario = rows["person_key"].map(offers.scenario).astype(object)
    if offers.default_scenario is not None:
        scenario = scenario.fillna(offers.default_scenario)
    rows["scenario"] = scenario
    rows["offered_in_scenario"] = [float(s in shelf[c].scenarios) for s, c in zip(
        rows["scenario"], rows["product_code"], strict=True)]
    rows["month"] = float(as_of.month)
    past = offers.past.reindex(pd.MultiIndex.from_frame(rows[["person_key", "product_code"]]))
    for column in PAST:
        values = past[column].to_numpy(dtype=float)
        # Never shown: no best grade (missing, as in training); counts are zero.
        rows[column] = values if column == "past_best_grade" else np.nan_to_num(values)
    return rows


def _rule_reasons(rows: pd.DataFrame, spec: RecommenderSpec) -> list[str | None]:
    """The first eligibility rule each row fails, in words (None: eligible)."""
    rules = spec.eligibility
    checks = [
        (EligibilitySpec(credit_max_grade=rules.credit_max_grade),
         lambda r: f"risk grade {r['risk_grade']} is worse than "
                   f"{rules.credit_max_grade.get(r['product_code'])}, the limit for it"),
        (EligibilitySpec(agricultural=rules.agricultural),
         lambda r: "needs agricultural activity (a farmer or a co-operative member)"),
        (EligibilitySpec(age=rules.age),
         lambda r: f"age outside {rules.age[r['product_code']].min}-"
                   f"{rules.age[r['product_code']].max}"),
    ]
    reasons: list[str | None] = [None] * len(rows)
    for rule, words in checks:
        failed = ~eligibility(rows, spec.model_copy(update={"eligibility": rule})).eligible
        for i in np.flatnonzero(failed):
            if reasons[i] is None:
                reasons[i] = words(rows.iloc[i])
    return reasons


def _top(codes: np.ndarray, scores: np.ndarray, k: int) -> list[dict[str, Any]]:
    order = np.lexsort((codes, -scores))[:k]  # ties: product code, so runs agree
    return [{"product": str(codes[i]), "score": round(float(scores[i]), 6)} for i in order]


def offer_columns(offers: OfferContext, slot: ModelSlot, frame: pd.DataFrame,
                  grades: list[Any], blocked: list[dict[str, str]], opt_out: list[bool],
                  as_of: date) -> dict[str, list[Any]]:
    """``recommended_products`` (top-k eligible under the final ranking, with scores and
    why other products are not eligible) and ``non_personalised_products`` per customer.

    ``blocked``: products the credit decision already rules out (a declined customer is
    offered no loan, whatever the recommender's grade limit)."""
    rows = candidate_rows(offers, frame, grades, as_of)
    allowed = eligibility(rows, offers.spec).eligible
    why = _rule_reasons(rows, offers.spec)
    personal = offers.score(rows)
    non_personal = rows["product_code"].map(offers.popularity).to_numpy(dtype=float)
    refused = rows["person_key"][np.repeat(np.asarray(opt_out, dtype=bool),
                                           len(offers.products.codes))]
    final = final_scores(personal, non_personal, rows["person_key"], set(refused))
    codes = rows["product_code"].to_numpy(dtype=object)
    n = len(offers.products.codes)
    k = offers.spec.k
    recommended, fallback = [], []
    for i in range(len(frame)):
        part = slice(i * n, (i + 1) * n)
        not_eligible = dict(blocked[i])
        for code, reason in zip(codes[part], why[part], strict=True):
            if reason is not None:
                not_eligible.setdefault(str(code), reason)
        ok = np.array([c not in not_eligible for c in codes[part]]) & allowed[part]
        top = _top(codes[part][ok], final[part][ok], k)
        recommended.append({
            "model": slot.name, "version": slot.version,
            "ranking": "non_personalised" if opt_out[i] else "personalised",
            "products": top, "not_eligible": not_eligible,
            "reason": None if top else "no eligible product"})
        fallback.append(_top(codes[part][ok], non_personal[part][ok], k))
    return {"recommended_products": recommended, "non_personalised_products": fallback}
