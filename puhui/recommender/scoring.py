"""Scoring customers with a registered recommender: the public entry point for profiles.

``score_recommendations`` is the stable function a profile refresh calls per chunk of
customers (``puhui.profiles.offers.offer_columns``): the top-k personalised products
and the non-personalised ranking of each customer, eligibility applied first (and what was
excluded, by rule), opted-out customers getting only the non-personalised ranking.
``load_recommender`` loads the exact registered version the refresh resolved.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from puhui.config import ProductsConfig, RecommenderSpec
from puhui.features.sources import day_number
from puhui.recommender.model import Ranker, eligibility
from puhui.recommender.training_set import graded_events, past_use_features, scenario_prior


def load_recommender(engine: Engine, tracking_uri: str, name: str, version: str) -> Ranker:
    """The ranker of ``name`` version ``version`` from the registry (not the alias again:
    it may move meanwhile), its files checked against its registration in the trail."""
    from puhui.registry import load_registered_pyfunc

    pyfunc = load_registered_pyfunc(engine, tracking_uri, name, version)
    return pyfunc.unwrap_python_model().ranker


def _ranked(scores: np.ndarray, codes: np.ndarray, keep: np.ndarray) -> list[dict[str, Any]]:
    """Every kept product with its score, best first."""
    order = np.lexsort((codes, -scores))  # equal scores: shelf code order, deterministic
    return [{"product": str(codes[i]), "score": round(float(scores[i]), 6)}
            for i in order if keep[i]]


def _top(ranked: list[dict[str, Any]], k: int) -> list[str]:
    return [r["product"] for r in ranked[:k]]


def score_recommendations(
    ranker: Ranker,
    customers: pd.DataFrame,
    events: pd.DataFrame,
    as_of: date,
    products: ProductsConfig,
    spec: RecommenderSpec,
    opt_out: Sequence[bool],
    *,
    model: str | None = None,
    version: str | None = None,
    prior: pd.Series | None = None,
) -> list[dict[str, Any]]:
    """Top-k offers of each customer as of ``as_of``, one dict per row of ``customers``.

    Arguments:
      ranker: ``load_recommender(...)`` (or a freshly trained ``Ranker``).
      customers: one row per customer: ``person_key``, the feature builder's point-in-time
        columns as of ``as_of`` (``build_features``), ``occupation``, ``agri_coop_member``,
        ``age`` (years on ``as_of``) and ``risk_grade`` (the champion risk model's grade;
        None/missing when there is no risk champion: credit products are then ineligible).
      events: product funnel events as ``training_set.load_product_events`` returns them
        (person_key, day, event_time, product_code, scenario, event_type); only events up
        to ``as_of`` are used, other customers' are ignored.
      as_of: the profile date; products: ``configs/products.yaml``; spec: the
        ``product_recommender`` block of ``configs/models.yaml`` (k, grading, eligibility).
      opt_out: per customer, True when they refused personalisation (PIPL Art. 24): they
        get ``personalised: []`` and the non-personalised ranking only.
      model, version: copied into each dict.
      prior: everyone's scenario mix as of ``as_of`` (``training_set.scenario_prior``);
        computed from ``events`` when not given. Pass it when scoring in chunks so that it
        is computed once.

    Returns, per customer: ``{"model", "version", "personalised": [k codes, best first],
    "non_personalised": [k codes, segment-free popularity], "personalisation_opt_out",
    "not_eligible": {code: rule}, "reason": None, "ranked": {"personalised": [...],
    "non_personalised": [...]}}``. Both rankings hold eligible products only; ``ranked``
    holds every eligible product as ``{"product", "score"}`` in the same order (the first k
    are the two lists; ``personalised`` empty for an opt-out), for callers that must drop
    more products (e.g. a declined credit decision) or show the scores.
    """
    if len(opt_out) != len(customers):
        raise ValueError("opt_out must have one flag per customer")
    codes = np.array(products.codes, dtype=object)
    n_products = len(codes)
    people = customers["person_key"].reset_index(drop=True)
    day = day_number(as_of)
    known = events[events["day"] <= day]
    # Everyone's scenario mix, not this chunk's: a customer's exposure must not depend on
    # which partition they are scored in (training sees every customer's events).
    if prior is None:
        prior = scenario_prior(graded_events(known, products, spec), products)
    past = graded_events(known[known["person_key"].isin(set(people))], products, spec)
    rows = pd.DataFrame({"person_key": np.repeat(people.to_numpy(), n_products),
                         "product_code": np.tile(codes, len(people))})
    rows = past_use_features(rows, past, products, day, prior)
    rows["product_scenarios"] = rows["product_code"].map(
        {p.code: float(len(p.scenarios)) for p in products.products})
    columns = [c for c in customers.columns if c not in rows.columns or c == "person_key"]
    rows = rows.merge(customers[columns].drop_duplicates("person_key"), on="person_key",
                      how="left")
    overall = ranker.popularity.get("all", {})
    by_occupation = ranker.popularity.get("by_occupation", {})
    rows["product_popularity"] = rows["product_code"].map(overall).astype(float)
    local = [by_occupation.get(o, {}).get(c) for o, c in
             zip(rows["occupation"], rows["product_code"], strict=True)]
    rows["occupation_product_popularity"] = pd.Series(
        local, index=rows.index, dtype=float).fillna(rows["product_popularity"])
    allowed = eligibility(rows, spec)
    personal = ranker.score(rows)
    non_personal = rows["product_code"].map(overall).fillna(0.0).to_numpy(dtype=float)

    out = []
    for i, person_opt_out in enumerate(opt_out):
        span = slice(i * n_products, (i + 1) * n_products)
        keep = allowed.eligible[span]
        reasons = allowed.reason[span]
        mine_ranked = [] if person_opt_out else _ranked(personal[span], codes, keep)
        popular = _ranked(non_personal[span], codes, keep)
        out.append({
            "model": model, "version": version,
            "personalised": _top(mine_ranked, spec.k),
            "non_personalised": _top(popular, spec.k),
            "personalisation_opt_out": bool(person_opt_out),
            "not_eligible": {str(c): str(r) for c, r in zip(codes, reasons, strict=True)
                             if r is not None},
            "reason": None,
            "ranked": {"personalised": mine_ranked, "non_personalised": popular},
        })
    return out
