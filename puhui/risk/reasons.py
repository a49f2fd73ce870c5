"""Reason codes: why a score is high, in plain language, from LightGBM's own contributions.

``pred_contrib`` splits each applicant's log-odds into one additive part per feature (exact
TreeSHAP values, no extra package). The features pushing the risk up the most are mapped to
their configured reason; several features with one reason count once, so a customer reads
up to ``k`` distinct reasons.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from puhui.features.builder import FeatureInfo


def top_reasons(contributions: np.ndarray, features: list[str], catalog: list[FeatureInfo],
                texts: dict[str, str], k: int) -> list[list[dict[str, object]]]:
    """For each row, up to ``k`` distinct reasons that raise its risk, strongest first.

    ``contributions`` is LightGBM's ``pred_contrib`` output (last column: the base value).
    """
    reason_of = {f.name: f.reason for f in catalog}
    codes = np.array([reason_of[name] for name in features], dtype=object)
    parts = contributions[:, : len(features)]
    out: list[list[dict[str, object]]] = []
    for row in parts:
        picked: list[dict[str, object]] = []
        seen: set[str] = set()
        for j in np.argsort(-row, kind="stable"):
            if row[j] <= 0 or len(picked) == k:
                break
            code = codes[j]
            if code in seen:
                continue
            seen.add(code)
            picked.append({"code": code, "text": texts[code], "feature": features[j],
                           "contribution": round(float(row[j]), 4)})
        out.append(picked)
    return out


def reason_frequencies(reasons: list[list[dict[str, object]]],
                       texts: dict[str, str]) -> pd.DataFrame:
    """How often each reason is given (first and any position) among the rows."""
    first = pd.Series([r[0]["code"] for r in reasons if r], dtype=object).value_counts()
    anywhere = pd.Series([x["code"] for r in reasons for x in r], dtype=object).value_counts()
    codes = sorted(set(anywhere.index), key=lambda c: -anywhere[c])
    return pd.DataFrame({
        "code": codes,
        "reason": [texts[c] for c in codes],
        "first_reason": [int(first.get(c, 0)) for c in codes],
        "any_reason": [int(anywhere[c]) for c in codes],
    })
