"""The recommender's gates (thresholds in configs/models.yaml), on the shared gate code."""

from __future__ import annotations

import pandas as pd

from puhui.config import RecommenderGates
from puhui.lifecycle.gates import GateChecks, GateResult
from puhui.recommender.evaluation import RecommenderEvaluation


def check_recommender_gates(evaluation: RecommenderEvaluation, gates: RecommenderGates,
                            truth_rural_agri_share: float | None) -> GateResult:
    """Beat segment popularity on NDCG@k by the margin; in every gated segment, NDCG@k over
    its responders at least the floor of the way from chance (a random order of the same
    rows) to a perfect order; rural top-1 agri share not below the truth ranking's minus
    the tolerance (only checked when the truth is known, i.e. on generated data)."""
    k = evaluation.counts["k"]
    m = evaluation.metrics
    checks = GateChecks()
    lift = m[f"ndcg_at_{k}_oot"] - m[f"ndcg_at_{k}_oot_segment_popularity"]
    checks.threshold("ndcg_lift_vs_segment_popularity", "all", lift,
                     gates.ndcg_lift_vs_segment_popularity)
    # Over responders, not every customer: over every customer a segment's NDCG@k is at most
    # its share of responders (a perfect ranking's), so a floor there gates the segment's
    # response rate (a random order passed 0.05 in every segment of the demo; every ranking
    # failed it where few responded). Relative to chance, not absolute: with k or fewer
    # eligible products (the retired: loans are past their age limits) every order earns
    # >= 0.5; as a share of the way to a perfect order (1 over responders), so that a small
    # shelf's short way is not held to a large shelf's lead.
    for row in evaluation.segments.itertuples():
        if row.gated:
            checks.threshold("segment_ndcg_over_chance", f"{row.dimension}={row.segment}",
                             way_from_chance(row.model_responders, row.chance_responders),
                             gates.segment_ndcg_over_chance)
    if truth_rural_agri_share is not None:
        share = m.get("rural_agri_top1_share")
        checks.threshold("rural_agri_top1_vs_truth", "region_type=rural",
                         None if share is None else share - truth_rural_agri_share,
                         gates.rural_agri_top1_vs_truth)
    return checks.result()


def way_from_chance(ndcg: float | None, chance: float | None) -> float | None:
    """How far an NDCG over responders is from chance's towards a perfect order's (1): 0 at
    chance, 1 perfect, negative below chance; None when unknown or chance is perfect."""
    if ndcg is None or chance is None or pd.isna(ndcg) or pd.isna(chance) or chance >= 1:
        return None
    return (ndcg - chance) / (1.0 - chance)
