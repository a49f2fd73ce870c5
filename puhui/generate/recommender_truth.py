"""The recommender's ground truth for truth.json: impressions per product and the ceiling.

The ceiling is the score of a ranking that knows each person's true ``offer_affinity``,
measured exactly as the recommender's evaluation measures a model (the same metric code,
puhui/recommender/metrics.py): one group per person with at least one offer in the
out-of-time window (its last ``OOT_DAYS`` days), every product on the shelf as a
candidate, ranked by true affinity on the window's first day; a product's relevance is the
furthest funnel stage its offers reached in the window (0 when shown without a response or
not shown). Eligibility (risk grade, age limits) is the lender's policy applied by the
recommender, not part of the truth, so the ceiling ranks the whole shelf.
"""

from __future__ import annotations

import numpy as np

from puhui.generate import reference as ref
from puhui.generate.feeds import World, offer_affinity, offer_day
from puhui.generate.timeline import epoch_day
from puhui.recommender.metrics import GroupMetrics, group_metrics, summarize

OOT_DAYS = 28  # mirrors product_recommender.test_days in configs/models.yaml
K = 3
AGRI_PRODUCTS = ("agri_loan", "crop_insurance")


def recommender_truth(world: World) -> dict[str, object]:
    """Impression and response counts per product, and the affinity ranking's metrics."""
    products = world.products
    days = [epoch_day(d) for d in world.timeline.all_days]
    oot = set(days[-OOT_DAYS:])
    impressions = np.zeros(len(products), dtype=np.int64)
    responses = np.zeros(len(products), dtype=np.int64)
    oot_impressions = np.zeros(len(products), dtype=np.int64)
    best = np.zeros((world.pop.n, len(products)), dtype=np.int8)
    shown = np.zeros(world.pop.n, dtype=bool)
    for day in days:
        o = offer_day(world, day)
        impressions += np.bincount(o.product, minlength=len(products))
        responses += np.bincount(o.product[o.grade > 0], minlength=len(products))
        if day in oot:
            oot_impressions += np.bincount(o.product, minlength=len(products))
            np.maximum.at(best, (o.people, o.product), o.grade.astype(np.int8))
            shown[o.people] = True

    people = np.flatnonzero(shown)
    n_products = len(products)
    person = np.repeat(people, n_products)
    product = np.tile(np.arange(n_products), len(people))
    start = min(oot) if oot else 0
    affinity = offer_affinity(world, person, product, start)
    agricultural = (world.pop.occupation[person] == ref.FARMER) | world.pop.is_coop_member[person]
    eligible = ~np.isin(np.array(products)[product], AGRI_PRODUCTS) | agricultural
    relevance = best[person, product].astype(np.float64)
    metrics = group_metrics(relevance[eligible], affinity[eligible], person[eligible], K)
    summary = summarize(metrics, K)
    by_segment = segment_ceilings(world, metrics, start - 1)

    # Top-1 of the truth ranking (ties: the first product on the shelf) for rural people.
    ranked = np.where(eligible, affinity, -np.inf).reshape(len(people), n_products)
    top1 = np.argmax(ranked, axis=1) if len(people) else people
    rural = world.pop.region[people] == ref.REGION_TYPES.index("rural")
    agri = np.isin(np.array(products)[top1], AGRI_PRODUCTS) if len(people) else rural
    return {
        "k": K,
        "oot_days": OOT_DAYS,
        "oot_start": world.timeline.all_days[-OOT_DAYS:][0].isoformat() if days else None,
        "rural_agri_boost": world.rural_agri_boost,
        "impressions_by_product": dict(zip(products, impressions.tolist(), strict=True)),
        "responses_by_product": dict(zip(products, responses.tolist(), strict=True)),
        "oot_impressions_by_product": dict(zip(products, oot_impressions.tolist(), strict=True)),
        "ceiling": summary.as_dict(),
        "ceiling_by_segment": by_segment,
        "rural_top1_agri_share": None if not rural.any() else round(float(agri[rural].mean()), 6),
    }


def segment_ceilings(world: World, metrics: GroupMetrics, as_of_day: int) -> dict[str, dict]:
    """The ceiling within each segment the recommender's evaluation reports (region type,
    age band on the window's feature day, gender, occupation): what the segment gates can
    ask of a ranking there."""
    pop, people = world.pop, metrics.groups
    ages = pop.age_at(as_of_day, people)
    band = np.full(len(people), None, dtype=object)
    for name, lo, hi in ref.AGE_BANDS:
        band[(ages >= lo) & (ages <= hi)] = name
    columns = {
        "region_type": np.array(ref.REGION_TYPES, dtype=object)[pop.region[people]],
        "age_band": band,
        "gender": np.array([{"M": "male", "F": "female"}[g] for g in ref.GENDERS],
                           dtype=object)[pop.gender[people]],  # as the warehouse names them
        "occupation": np.array(ref.OCCUPATIONS, dtype=object)[pop.occupation[people]],
    }
    out: dict[str, dict] = {}
    for dimension, values in columns.items():
        for value in sorted({v for v in values if v is not None}):
            s = summarize(metrics, K, values == value)
            out[f"{dimension}={value}"] = {
                "groups": s.groups, "groups_with_response": s.groups_with_response,
                "ndcg_every": s.ndcg_every, "ndcg_responders": s.ndcg_responders}
    return out
