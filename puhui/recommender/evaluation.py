"""Out-of-time evaluation of the recommender against its baselines, overall and per segment.

Every ranking is measured on the same rows: the out-of-time window's eligible rows. Headline
figures are NDCG@k, MAP@k and hit-rate@k over every customer (a customer without a response
counts 0), with the same over customers with at least one response and both counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from puhui.config import RecommenderSpec
from puhui.recommender.metrics import group_metrics, summarize

MODEL, POPULARITY, SEGMENT_POPULARITY, NON_PERSONAL = (
    "model", "popularity", "segment_popularity", "non_personal")
AGRI_KINDS_PRODUCTS = ("agri_loan", "crop_insurance")


@dataclass
class RecommenderEvaluation:
    metrics: dict[str, float]
    segments: pd.DataFrame  # dimension, segment, groups, responders, gated, ndcg per ranking
    top1_share: pd.DataFrame  # dimension, segment, product_code, share (model's top-1)
    eligibility_removed: dict[str, int]
    counts: dict[str, int] = field(default_factory=dict)

    def rows(self) -> list[dict[str, object]]:
        """model_evaluations rows: (metric, segment, value)."""
        out: list[dict[str, object]] = [
            {"metric": k, "segment": "all", "value": v} for k, v in self.metrics.items()]
        for r in self.segments.itertuples():
            out.append({"metric": f"ndcg_at_{self.counts['k']}_oot",
                        "segment": f"{r.dimension}={r.segment}", "value": r.model})
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
    counts = {"k": k, "groups_oot": len(first.groups),
              "groups_oot_with_response": int(first.has_response.sum()), "rows_oot": len(oot)}

    groups = oot.drop_duplicates("group").set_index("group").loc[first.groups]
    seg_rows = []
    for dim in spec.segments:
        for value, idx in groups.groupby(dim, dropna=True).indices.items():
            mask = np.zeros(len(first.groups), dtype=bool)
            mask[idx] = True
            row: dict[str, object] = {"dimension": dim, "segment": str(value),
                                      "groups": int(mask.sum()),
                                      "responders": int((mask & first.has_response).sum()),
                                      "gated": bool(mask.sum() >= spec.min_segment_size)}
            for name, m in per.items():
                row[name] = summarize(m, k, mask).ndcg_every
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
