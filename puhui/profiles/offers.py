"""The offer columns of a profile, from the ``product_recommender`` champion.

A thin adapter over the recommender's public scoring entry point
(:func:`puhui.recommender.scoring.score_recommendations`), which is the one source of truth
for the ranker's inputs, eligibility (applied before ranking, with the risk grade this same
refresh just assigned) and the non-personalised ranking (a customer who refused
personalisation, PIPL Art. 24, gets only it). This module adds what only a profile knows:
products the credit decision rules out (a declined customer is offered no loan, whatever
the recommender's grade limit) and the reasons in words.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from puhui.config import FeaturesConfig, ProductsConfig, RecommenderSpec
from puhui.features.sources import day_number
from puhui.profiles.models import ModelSlot
from puhui.recommender.model import Ranker
from puhui.recommender.scoring import load_recommender, score_recommendations
from puhui.recommender.train import EVENTS_TABLE
from puhui.recommender.training_set import graded_events, load_product_events, scenario_prior


@dataclass
class OfferContext:
    """What every partition's offers need, loaded once per refresh."""

    ranker: Ranker
    spec: RecommenderSpec
    products: ProductsConfig
    events: pd.DataFrame  # product funnel events up to the as-of date, keyed by person
    # everyone's scenario mix, computed once per refresh (None: per call, from ``events``)
    prior: pd.Series | None = None


def load_offer_context(engine: Engine, tracking_uri: str, slot: ModelSlot,
                       spec: RecommenderSpec, products: ProductsConfig,
                       features: FeaturesConfig, customers: pd.DataFrame,
                       as_of: date) -> OfferContext:
    """The exact champion version resolved, and the product events it scores from."""
    ranker = load_recommender(tracking_uri, slot.name, str(slot.version))
    events = load_product_events(engine, EVENTS_TABLE, features.timezone, as_of,
                                 customers[["customer_id", "person_key"]])
    known = events[events["day"] <= day_number(as_of)]
    return OfferContext(ranker=ranker, spec=spec, products=products, events=events,
                        prior=scenario_prior(graded_events(known, products, spec), products))


def rule_words(rule: str, product: str, grade: Any, spec: RecommenderSpec) -> str:
    """An eligibility rule of :func:`puhui.recommender.model.eligibility`, in words."""
    rules = spec.eligibility
    if rule == "credit_grade":
        return (f"risk grade {grade} is worse than {rules.credit_max_grade.get(product)}, "
                "the limit for it")
    if rule == "credit_no_risk_grade":
        return "no risk grade (no credit decision to base it on)"
    if rule == "agricultural_activity":
        return "needs agricultural activity (a farmer or a co-operative member)"
    if rule == "age" and product in rules.age:
        return f"age outside {rules.age[product].min}-{rules.age[product].max}"
    return rule


def offer_columns(offers: OfferContext, slot: ModelSlot, frame: pd.DataFrame,
                  grades: list[Any], blocked: list[dict[str, str]], opt_out: list[bool],
                  as_of: date) -> dict[str, list[Any]]:
    """``recommended_products`` (top-k eligible under the final ranking, with scores and
    why other products are not eligible) and ``non_personalised_products`` per customer.

    ``blocked``: products the credit decision already rules out (a declined customer is
    offered no loan, whatever the recommender's grade limit); they are dropped from both
    rankings, the next eligible products moving up."""
    customers = frame.assign(risk_grade=list(grades))
    scored = score_recommendations(offers.ranker, customers, offers.events, as_of,
                                   offers.products, offers.spec, opt_out,
                                   model=slot.name, version=slot.version,
                                   prior=offers.prior)
    k = offers.spec.k
    recommended, fallback = [], []
    for out, grade, ruled_out in zip(scored, grades, blocked, strict=True):
        not_eligible = dict(ruled_out)
        for code, rule in out["not_eligible"].items():
            not_eligible.setdefault(code, rule_words(rule, code, grade, offers.spec))
        popular = [p for p in out["ranked"]["non_personalised"]
                   if p["product"] not in not_eligible][:k]
        opted = out["personalisation_opt_out"]
        top = popular if opted else [p for p in out["ranked"]["personalised"]
                                     if p["product"] not in not_eligible][:k]
        recommended.append({
            "model": slot.name, "version": slot.version,
            "ranking": "non_personalised" if opted else "personalised",
            "products": top, "not_eligible": not_eligible,
            "reason": None if top else "no eligible product"})
        fallback.append(popular)
    return {"recommended_products": recommended, "non_personalised_products": fallback}
