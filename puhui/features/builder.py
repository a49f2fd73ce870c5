"""Point-in-time features for (person, as-of day) requests, as ``configs/features.yaml`` says.

A request's features use only rows with an event day on or before its as-of day: window
aggregates come from per-person running totals, latest values from the newest snapshot at or
before the day. ``feature_catalog`` names every feature the config produces (with its kind
and reason code) without touching data, so models and reason codes agree with the builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from puhui.config import Aggregate, DerivedFeature, FeaturesConfig, FeatureSource, RowFilter
from puhui.features.sources import SourceFrames, day_from_number, day_number
from puhui.features.windows import RunningTotals, latest_rows


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    categorical: bool
    reason: str


def _windowed(name: str, window: int) -> str:
    return f"{name}_{window}d"


def _derived_windows(
    item: DerivedFeature, windows_of: dict[str, list[int] | None]
) -> list[int] | None:
    """Windows a derived feature comes in: those of its windowed inputs (None: unwindowed)."""
    inputs = [windows_of[item.numerator]]
    if item.denominator:
        inputs.append(windows_of[item.denominator])
    windowed = [set(w) for w in inputs if w is not None]
    if not windowed:
        return None
    return sorted(set.intersection(*windowed))


def _base_catalog(spec: FeaturesConfig) -> tuple[list[tuple[str, list[int] | None, FeatureInfo]],
                                                  dict[str, list[int] | None]]:
    items: list[tuple[str, list[int] | None, FeatureInfo]] = []
    for cat in spec.customer.categorical:
        items.append((cat.name, None, FeatureInfo(cat.name, True, cat.reason)))
    tenure = spec.customer.tenure
    items.append((tenure.name, None, FeatureInfo(tenure.name, False, tenure.reason)))
    for source in spec.sources:
        if source.latest:
            present = source.latest.present_as
            items.append((present.name, None, FeatureInfo(present.name, False, present.reason)))
            for col in source.latest.columns:
                items.append((col.name, None, FeatureInfo(col.name, col.categorical, col.reason)))
        for agg in source.aggregates:
            items.append((agg.name, source.windows, FeatureInfo(agg.name, False, agg.reason)))
    windows_of = {name: windows for name, windows, _ in items}
    for item in spec.derived:
        windows = _derived_windows(item, windows_of)
        windows_of[item.name] = windows
        items.append((item.name, windows, FeatureInfo(item.name, False, item.reason)))
    return items, windows_of


def feature_catalog(spec: FeaturesConfig) -> list[FeatureInfo]:
    """Every feature column the builder writes, in order, with kind and reason code."""
    items, _ = _base_catalog(spec)
    out: list[FeatureInfo] = []
    for name, windows, info in items:
        if windows is None:
            out.append(info)
        else:
            out += [FeatureInfo(_windowed(name, w), info.categorical, info.reason) for w in windows]
    return out


def row_mask(frame: pd.DataFrame, condition: RowFilter) -> np.ndarray:
    """Rows matching every clause: a value, a list of values, or comparisons (gt, ge, ...)."""
    mask = np.ones(len(frame), dtype=bool)
    for column, test in condition.items():
        values = frame[column]
        if isinstance(test, list):
            mask &= values.isin(test).to_numpy()
        elif isinstance(test, dict):
            for op, bound in test.items():
                compare = getattr(values, op)(bound)
                mask &= compare.fillna(False).to_numpy(bool)
        else:
            mask &= (values == test).fillna(False).to_numpy(bool)
    return mask


def _components(frame: pd.DataFrame, agg: Aggregate) -> dict[str, np.ndarray]:
    """Additive parts of an aggregate: it is a function of their window sums."""
    where = row_mask(frame, agg.where)
    if agg.agg == "count":
        return {"n": where.astype(float)}
    values = frame[agg.column].astype("float64").to_numpy() if agg.column else None
    if agg.agg == "sum":
        return {"s": np.where(where, np.nan_to_num(values), 0.0)}
    if agg.agg == "mean":
        present = where & ~np.isnan(values)
        return {"s": np.where(present, values, 0.0), "n": present.astype(float)}
    hit = where & row_mask(frame, agg.share_where)
    return {"s": hit.astype(float), "n": where.astype(float)}


def _window_features(
    source: FeatureSource, frame: pd.DataFrame, first_day: int | None,
    codes: pd.Index, req_codes: np.ndarray, req_days: np.ndarray,
) -> dict[str, np.ndarray]:
    parts = {}
    for agg in source.aggregates:
        for part, values in _components(frame, agg).items():
            parts[f"{agg.name}|{part}"] = values
    event_codes = codes.get_indexer(frame["person_key"]).astype(np.int64)
    totals = RunningTotals.from_events(event_codes, frame["day"].to_numpy(), pd.DataFrame(parts))
    out: dict[str, np.ndarray] = {}
    for window in source.windows:
        sums = totals.window(req_codes, req_days, window)
        out.update(window_values(
            source, window, {name: sums[:, i] for i, name in enumerate(totals.columns)},
            first_day, req_days))
    return out


def window_values(
    source: FeatureSource, window: int, sums: dict[str, np.ndarray], first_day: int | None,
    req_days: np.ndarray,
) -> dict[str, np.ndarray]:
    """A window's features from its component sums (``"<aggregate>|<part>"``, parts as
    :func:`_components` names them): shared by the pandas builder and the SQL aggregates."""
    if first_day is None:
        covered = np.zeros(len(req_days))
    else:
        covered = np.clip(req_days - (first_day - 1), 0, window).astype(float)
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for agg in source.aggregates:
            if agg.agg in ("count", "sum"):
                value = sums[f"{agg.name}|{'n' if agg.agg == 'count' else 's'}"]
                if agg.per_30_days:
                    value = np.where(covered > 0, value * 30.0 / covered, np.nan)
                else:
                    value = np.where(covered > 0, value, np.nan)
            else:
                num = sums[f"{agg.name}|s"]
                den = sums[f"{agg.name}|n"]
                value = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
            out[_windowed(agg.name, window)] = value
    return out


def _latest_features(
    source: FeatureSource, frame: pd.DataFrame, codes: pd.Index,
    req_codes: np.ndarray, req_days: np.ndarray,
) -> dict[str, np.ndarray]:
    latest = source.latest
    assert latest is not None
    event_codes = codes.get_indexer(frame["person_key"]).astype(np.int64)
    rows = latest_rows(event_codes, frame["day"].to_numpy(np.int64), req_codes, req_days,
                       latest.max_age_days)
    found = rows >= 0
    out: dict[str, np.ndarray] = {latest.present_as.name: found.astype(float)}
    for col in latest.columns:
        values = frame[col.column].to_numpy(dtype=object if col.categorical else np.float64)
        if len(values) == 0:
            values = np.array([None] if col.categorical else [np.nan], dtype=object)
        picked = values[np.maximum(rows, 0)]
        if col.categorical:
            out[col.name] = np.where(found, picked, None)
        else:
            out[col.name] = np.where(found, picked.astype(np.float64), np.nan)
    return out


def apply_derived(frame: pd.DataFrame, items: list[DerivedFeature],
                  windows_of: dict[str, list[int] | None]) -> None:
    """Add ratio features to ``frame`` in place (a zero or missing divisor gives NaN)."""
    for item in items:
        windows = _derived_windows(item, windows_of) if windows_of else None
        targets = [None] if windows is None else windows
        for window in targets:
            def col(name: str, window: int | None = window) -> pd.Series:
                if window is not None and windows_of.get(name) is not None:
                    return frame[_windowed(name, window)]
                return frame[name]

            numerator = col(item.numerator).astype("float64")
            if item.denominator:
                divisor = col(item.denominator).astype("float64")
            else:
                assert item.lookup is not None
                divisor = frame[item.lookup.by].map(item.lookup.values).astype("float64")
                divisor = divisor * item.lookup.scale
            divisor = divisor.where(divisor != 0)
            name = item.name if window is None else _windowed(item.name, window)
            frame[name] = numerator / divisor


def build_features(
    frames: SourceFrames, requests: pd.DataFrame, spec: FeaturesConfig
) -> pd.DataFrame:
    """Features for each (``person_key``, ``as_of_date``) of ``requests``.

    Returns one row per distinct request, with ``person_key``, ``as_of_date`` and the
    catalog's columns in order. A person not in the register on a date gets missing values.
    """
    requests, req_days = distinct_requests(requests, frames.as_of)
    people = pd.Index(pd.unique(pd.concat(
        [requests["person_key"], frames.customers["person_key"],
         *(f["person_key"] for f in frames.events.values())]
    )))
    # A person's code is their position in ``people`` (an index lookup, not a dict per row).
    codes = people
    req_codes = codes.get_indexer(requests["person_key"]).astype(np.int64)

    columns, known = customer_features(frames.customers, spec, codes, req_codes, req_days)

    for source in spec.sources:
        frame = frames.events[source.name]
        if source.latest:
            columns.update(_latest_features(source, frame, codes, req_codes, req_days))
        if source.aggregates:
            columns.update(_window_features(
                source, frame, frames.first_day.get(source.name), codes, req_codes, req_days
            ))

    return finish_features(columns, known, requests, spec)


def distinct_requests(requests: pd.DataFrame, as_of: date) -> tuple[pd.DataFrame, np.ndarray]:
    """The distinct (person, as-of) requests and their day numbers; none may be after the
    data's ``as_of`` (its features could not be complete)."""
    requests = requests[["person_key", "as_of_date"]].drop_duplicates().reset_index(drop=True)
    req_days = np.array([day_number(d) for d in requests["as_of_date"]], dtype=np.int64)
    if len(req_days) and req_days.max() > day_number(as_of):
        raise ValueError(
            f"a request is as of {day_from_number(int(req_days.max()))}, after the data's "
            f"as-of date {as_of}: its features could not be complete"
        )
    return requests, req_days


def customer_features(
    customers: pd.DataFrame, spec: FeaturesConfig, codes: pd.Index, req_codes: np.ndarray,
    req_days: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The register's features of each request, and whether its person was known that day.

    ``codes`` must hold every person of ``customers`` (and ``req_codes`` index it)."""
    columns: dict[str, np.ndarray] = {}
    rows = latest_rows(codes.get_indexer(customers["person_key"]).astype(np.int64),
                       customers["since_day"].to_numpy(np.int64), req_codes, req_days,
                       max_age_days=1 << 19)
    known = rows >= 0
    for cat in spec.customer.categorical:
        values = customers[cat.name].to_numpy(dtype=object)
        columns[cat.name] = np.where(known, values[np.maximum(rows, 0)] if len(values) else None,
                                     None)
    since = customers["since_day"].to_numpy(np.int64)
    tenure = (req_days - since[np.maximum(rows, 0)]) if len(since) else req_days * 0
    columns[spec.customer.tenure.name] = np.where(known, tenure, np.nan).astype(float)
    return columns, known


def finish_features(
    columns: dict[str, np.ndarray], known: np.ndarray, requests: pd.DataFrame,
    spec: FeaturesConfig,
) -> pd.DataFrame:
    """The builder's frame from the base features of each request: derived features, the
    catalog's order and dtypes, nothing for a person not yet known."""
    out = pd.DataFrame(columns)
    _, windows_of = _base_catalog(spec)
    apply_derived(out, spec.derived, windows_of)
    catalog = feature_catalog(spec)
    for info in catalog:
        if info.categorical:
            out[info.name] = out[info.name].astype(object)
    out = out[[info.name for info in catalog]]
    # Before onboarding nobody is linked to a phone or a record in our books: a request for
    # a person not yet in the register gets no features at all, whatever the feeds hold.
    out.loc[~known, :] = None
    for info in catalog:
        if not info.categorical:
            out[info.name] = out[info.name].astype("float64")
    out.insert(0, "as_of_date", requests["as_of_date"].to_numpy())
    out.insert(0, "person_key", requests["person_key"].to_numpy())
    return out

