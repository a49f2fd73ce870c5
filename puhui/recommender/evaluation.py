"""Out-of-time evaluation of the recommender against its baselines, overall and per segment.

Every ranking is measured on the same rows: the out-of-time window's eligible rows. Headline
figures are NDCG@k, MAP@k and hit-rate@k over every customer (a customer without a response
counts 0), with the same over customers with at least one response and both counts.

Per segment: NDCG@k of every ranking over every customer and over responders, the chance
level (the expected NDCG@k of a random order of the same rows), and the standard error of
the model's lead over each popularity baseline (paired by customer), so that a segment's
loss can be told from noise. A segment is gated when it has at least ``min_segment_size``
customers and ``min_segment_responders`` customers with a response.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from puhui.config import RecommenderSpec
from puhui.recommender.metrics import chance_ndcg, group_metrics, summarize

MODEL, POPULARITY, SEGMENT_POPULARITY, NON_PERSONAL = (
    "model", "popularity", "segment_popularity", "non_personal")
CHANCE = "chance"  # a random order: a reference level, not a ranking that is served
BASELINES = (POPULARITY, SEGMENT_POPULARITY)
AGRI_KINDS_PRODUCTS = ("agri_loan", "crop_insurance")


@dataclass
class RecommenderEvaluation:
    metrics: dict[str, float]
    # dimension, segment, groups, responders, gated; per ranking (and chance) NDCG@k over
    # every customer (<name>) and over responders (<name>_responders); per baseline the
    # standard error of the model's lead over it (<baseline>_lead_se)
    segments: pd.DataFrame
    top1_share: pd.DataFrame  # dimension, segment, product_code, share (model's top-1)
    eligibility_removed: dict[str, int]
    counts: dict[str, int] = field(default_factory=dict)

    def rows(self) -> list[dict[str, object]]:
        """model_evaluations rows: (metric, segment, value)."""
        out: list[dict[str, object]] = [
            {"metric": k, "segment": "all", "value": v} for k, v in self.metrics.items()]
        k = self.counts["k"]
        for r in self.segments.itertuples():
            segment = f"{r.dimension}={r.segment}"
            out.append({"metric": f"ndcg_at_{k}_oot", "segment": segment, "value": r.model})
            out.append({"metric": f"ndcg_at_{k}_oot_responders", "segment": segment,
                        "value": r.model_responders})
        return out


def evaluate(oot: pd.DataFrame, scores: dict[str, np.ndarray], spec: RecommenderSpec,
             removed: dict[str, int]) -> RecommenderEvaluation:
    """``oot``: the eligible out-of-time rows; ``scores``: each ranking's scores on them."""
    k = spec.k
    rel = oot["relevance"].to_numpy(dtype=float)
    group = oot["group"].to_numpy()
    per = {name: group_metrics(rel, s, group, k) for name, s in scores.items()}
    metrics: dict[str, float] = {}
    for name, m in per.items():
        s = summarize(m, k)
        suffix = "" if name == MODEL else f"_{name}"
        for metric, every, resp in (("ndcg", s.ndcg_every, s.ndcg_responders),
                                    ("map", s.map_every, s.map_responders),
                                    ("hit", s.hit_every, s.hit_responders)):
            metrics[f"{metric}_at_{k}_oot{suffix}"] = float(every or 0.0)
            metrics[f"{metric}_at_{k}_oot_responders{suffix}"] = float(resp or 0.0)
    first = per[MODEL]
    chance = np.nan_to_num(chance_ndcg(rel, group, k), nan=0.0)  # no response: 0, as above
    metrics[f"ndcg_at_{k}_oot_{CHANCE}"] = float(chance.mean()) if len(chance) else 0.0
    metrics[f"ndcg_at_{k}_oot_responders_{CHANCE}"] = (
        float(chance[first.has_response].mean()) if first.has_response.any() else 0.0)
    counts = {"k": k, "groups_oot": len(first.groups),
              "groups_oot_with_response": int(first.has_response.sum()), "rows_oot": len(oot)}
    every = {name: np.nan_to_num(m.ndcg, nan=0.0) for name, m in per.items()}

    groups = oot.drop_duplicates("group").set_index("group").loc[first.groups]
    seg_rows = []
    for dim in spec.segments:
        for value, idx in groups.groupby(dim, dropna=True).indices.items():
            mask = np.zeros(len(first.groups), dtype=bool)
            mask[idx] = True
            responders = mask & first.has_response
            row: dict[str, object] = {
                "dimension": dim, "segment": str(value), "groups": int(mask.sum()),
                "responders": int(responders.sum()),
                "gated": bool(mask.sum() >= spec.min_segment_size
                              and responders.sum() >= spec.min_segment_responders)}
            for name, m in per.items():
                summary = summarize(m, k, mask)
                row[name] = summary.ndcg_every
                row[f"{name}_responders"] = summary.ndcg_responders
            row[CHANCE] = float(chance[mask].mean())
            row[f"{CHANCE}_responders"] = (float(chance[responders].mean())
                                           if responders.any() else None)
            for name in BASELINES:
                if name in every:
                    row[f"{name}_lead_se"] = lead_standard_error(
                        every[MODEL][mask] - every[name][mask])
            seg_rows.append(row)
    segments = pd.DataFrame(seg_rows)

    top1 = top1_rows(oot, scores[MODEL])
    shares = []
    for dim in spec.segments:
        table = pd.crosstab(top1[dim], top1["product_code"], normalize="index")
        for seg, row in table.iterrows():
            shares.extend({"dimension": dim, "segment": str(seg), "product_code": p,
                           "share": float(v)} for p, v in row.items())
    for name, s in scores.items():
        share = rural_agri_top1_share(oot, s)
        if share is not None:
            metrics["rural_agri_top1_share" + ("" if name == MODEL else f"_{name}")] = share
    return RecommenderEvaluation(metrics, segments, pd.DataFrame(shares), removed, counts)


def lead_standard_error(lead: np.ndarray) -> float | None:
    """Standard error of the mean of per-customer differences (the model's NDCG@k minus a
    baseline's on the same customer): the paired noise of a segment's lead."""
    return float(lead.std(ddof=1) / np.sqrt(len(lead))) if len(lead) > 1 else None


def rural_agri_top1_share(oot: pd.DataFrame, scores: np.ndarray) -> float | None:
    """Share of rural customers whose top-1 product (by ``scores``) is an agri product."""
    top1 = top1_rows(oot, scores)
    rural = top1[top1["region_type"] == "rural"]
    return float(rural["product_code"].isin(AGRI_KINDS_PRODUCTS).mean()) if len(rural) else None


def top1_rows(oot: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """Each group's first row by ``scores`` (equal scores: the first product code)."""
    ranked = oot.assign(_s=scores).sort_values(
        ["group", "_s", "product_code"], ascending=[True, False, True], kind="stable")
    return ranked.drop_duplicates("group").drop(columns="_s")
