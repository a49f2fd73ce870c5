"""Segment tags of a profile, from the rules in ``configs/segments.yaml``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from puhui.config import SegmentRule
from puhui.features.builder import row_mask


def age_years(birth: pd.Series, on: object) -> pd.Series:
    """Completed years of age on the date ``on``."""
    birth = pd.to_datetime(birth)
    day = pd.Timestamp(on)
    before = (birth.dt.month > day.month) | ((birth.dt.month == day.month)
                                             & (birth.dt.day > day.day))
    return (day.year - birth.dt.year - before.astype(int)).astype("float64")


def segment_tags(frame: pd.DataFrame, rules: list[SegmentRule]) -> list[list[str]]:
    """The tags of each row of ``frame`` (rules' columns must be present), in rule order."""
    hits = np.column_stack([row_mask(frame, r.rule) for r in rules]) if rules else np.zeros(
        (len(frame), 0), dtype=bool)
    names = [r.tag for r in rules]
    return [[names[j] for j in np.flatnonzero(row)] for row in hits]
