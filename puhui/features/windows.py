"""Point-in-time look-ups over event tables: window sums and the latest value as of a day.

Both work on integer person codes and integer days (days since 1970-01-01 in the lender's
timezone). Events are collapsed to one row per (person, day) with running totals, so a window
``(as_of - w, as_of]`` is two binary searches and a subtraction, whatever its length: the cost
is O((events + requests) log events), not O(events x requests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Person codes and days are packed into one sortable int64: code * DAY_SPAN + day.
DAY_SPAN = 1 << 20


def pack(codes: np.ndarray, days: np.ndarray) -> np.ndarray:
    return codes.astype(np.int64) * DAY_SPAN + days.astype(np.int64)


@dataclass(frozen=True)
class RunningTotals:
    """Per person, per day with events: cumulative sums of each component column."""

    keys: np.ndarray  # packed (code, day), ascending
    codes: np.ndarray
    totals: np.ndarray  # (rows, components) cumulative within each person
    columns: tuple[str, ...]

    @classmethod
    def from_events(
        cls, codes: np.ndarray, days: np.ndarray, components: pd.DataFrame
    ) -> RunningTotals:
        """Sum ``components`` per (code, day) and accumulate them per code."""
        frame = components.astype("float64").fillna(0.0)
        frame.insert(0, "_key", pack(codes, days))
        daily = frame.groupby("_key", sort=True).sum()
        keys = daily.index.to_numpy(np.int64)
        day_codes = keys // DAY_SPAN
        # Accumulate per person (not one global running sum minus an offset): a person's
        # totals then depend on that person's events only, bit for bit.
        totals = daily.groupby(day_codes, sort=False).cumsum().to_numpy(np.float64)
        return cls(keys, day_codes, totals, tuple(components.columns))

    def at(self, codes: np.ndarray, days: np.ndarray) -> np.ndarray:
        """Totals of each component over every event of ``codes`` on or before ``days``."""
        if len(self.keys) == 0:
            return np.zeros((len(codes), len(self.columns)))
        idx = np.searchsorted(self.keys, pack(codes, days), side="right") - 1
        found = (idx >= 0) & (self.codes[np.maximum(idx, 0)] == codes)
        out = self.totals[np.maximum(idx, 0)]
        out[~found] = 0.0
        return out

    def window(self, codes: np.ndarray, as_of: np.ndarray, days: int) -> np.ndarray:
        """Totals over the ``days`` days ending with ``as_of`` (inclusive)."""
        # Rounded so that "no events in the window" is exactly 0, not a float residue of
        # subtracting two running sums (a residue would turn a ratio into a huge number).
        return np.round(self.at(codes, as_of) - self.at(codes, as_of - days), 6) + 0.0


def latest_rows(
    codes: np.ndarray, days: np.ndarray, req_codes: np.ndarray, req_days: np.ndarray,
    max_age_days: int,
) -> np.ndarray:
    """For each request, the index of the newest event row on or before its day, or -1.

    ``codes``/``days`` need not be sorted. A row older than ``max_age_days`` does not count:
    a snapshot that stopped arriving is no longer a fact about the person.
    """
    if len(codes) == 0:
        return np.full(len(req_codes), -1, dtype=np.int64)
    keys = pack(codes, days)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    idx = np.searchsorted(sorted_keys, pack(req_codes, req_days), side="right") - 1
    safe = np.maximum(idx, 0)
    row_code = sorted_keys[safe] // DAY_SPAN
    row_day = sorted_keys[safe] % DAY_SPAN
    ok = (idx >= 0) & (row_code == req_codes) & (req_days - row_day <= max_age_days)
    return np.where(ok, order[safe], -1)
