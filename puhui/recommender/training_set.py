"""The recommender's training set: one group per customer and window, every product a row.

Windows of ``window_days`` end on the training as-of date and step back; the newest is the
out-of-time window (only the evaluation and the gates see it). A customer offered anything
in a window forms a group: each product on the shelf is a row, its relevance the furthest
funnel stage (graded in config) the customer's offers of it reached in the window, 0 when
shown without a response or not shown. Everything a row knows is from before the window:
customer features as of the day before its first day (the point-in-time feature builder),
past use of the product and its kind up to that day, the product's attributes and the
season. The request's context, the scenario of the customer's first offer in the window, is
known when the recommendation is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import pandas as pd
from sqlalchemy import Engine, MetaData, Table, select

from puhui.config import ProductsConfig, RecommenderSpec
from puhui.errors import PuhuiError
from puhui.features.sources import day_from_number, day_number, local_days, time_kind

TRAIN, OOT = "train", "oot"
CUSTOMER_PRODUCT_FEATURES = [
    "past_impressions", "past_best_grade", "past_uptakes", "past_kind_uptakes",
    "offered_in_scenario", "month",
]
PRODUCT_FEATURES = ["product_code", "product_kind", "product_scenarios"]
CONTEXT_FEATURES = ["scenario"]


@dataclass
class RankingSet:
    """Rows (customer, window, product) with relevance, features, split and segments."""

    as_of: date
    frame: pd.DataFrame
    features: list[str]
    categorical: list[str]
    oot_start: date
    batch_ids: set[str] = field(default_factory=set)

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name]


def load_product_events(engine: Engine, table_name: str, timezone: str, as_of: date,
                        customers: pd.DataFrame) -> pd.DataFrame:
    """Offer funnel events up to ``as_of`` (local days), keyed by person, newest delivery."""
    try:
        table = Table(table_name, MetaData(), autoload_with=engine)
    except Exception as exc:  # noqa: BLE001 - NoSuchTableError and driver variants
        raise PuhuiError(f"table {table_name} is not in the warehouse: ingest "
                         "product_events first (puhui run ingest)") from exc
    with engine.connect() as conn:
        frame = pd.read_sql_query(select(table), conn)
    frame = frame.sort_values(["event_id", "batch_id"]).drop_duplicates("event_id", keep="last")
    frame["day"] = local_days(frame["event_time"], time_kind(table, "event_time"), timezone)
    frame = frame[frame["day"] <= day_number(as_of)]
    person = customers.drop_duplicates("customer_id", keep="last").set_index("customer_id")
    frame["person_key"] = frame["customer_id"].map(person["person_key"])
    return frame.dropna(subset=["person_key"])[
        ["person_key", "day", "event_time", "product_code", "scenario", "event_type",
         "batch_id"]].reset_index(drop=True)


def window_as_of_days(as_of: date, spec: RecommenderSpec) -> list[int]:
    """Feature days of the windows, newest (out of time) first; window w covers the
    ``window_days`` days after its feature day."""
    end = day_number(as_of)
    return [end - (w + 1) * spec.window_days for w in range(spec.train_windows + 1)]


def build_groups(events: pd.DataFrame, products: ProductsConfig, spec: RecommenderSpec,
                 as_of: date) -> pd.DataFrame:
    """Every (customer, window, product) row with relevance, context and past-use features.

    Only events of a row's own window make its relevance and context; only events up to
    its feature day make its features.
    """
    codes = products.codes
    kinds = {p.code: p.kind for p in products.products}
    shelf = {p.code: set(p.scenarios) for p in products.products}
    unknown = set(spec.grading) ^ {"impression", "click", "application", "uptake"}
    if unknown:
        raise PuhuiError(f"grading must grade impression, click, application and uptake "
                         f"(not {sorted(unknown)})")
    events = events[events["product_code"].isin(codes)].copy()
    events["grade"] = events["event_type"].map(spec.grading)
    events = events.dropna(subset=["grade"])
    events["kind"] = events["product_code"].map(kinds)
    uptake = events["event_type"] == "uptake"
    parts = []
    for w, feature_day in enumerate(window_as_of_days(as_of, spec)):
        inside = events[(events["day"] > feature_day)
                        & (events["day"] <= feature_day + spec.window_days)]
        if inside.empty:
            continue
        first = inside.sort_values(["event_time", "product_code"]).drop_duplicates(
            "person_key")[["person_key", "scenario"]]
        best = inside.groupby(["person_key", "product_code"])["grade"].max()
        rows = pd.MultiIndex.from_product([first["person_key"], codes],
                                          names=["person_key", "product_code"]).to_frame(
                                              index=False)
        rows["relevance"] = best.reindex(pd.MultiIndex.from_frame(
            rows[["person_key", "product_code"]])).fillna(0).to_numpy()
        rows = rows.merge(first, on="person_key")
        past = events[events["day"] <= feature_day]
        seen = past.groupby(["person_key", "product_code"]).agg(
            past_impressions=("event_type", lambda s: int((s == "impression").sum())),
            past_best_grade=("grade", "max"))
        took = past[uptake.loc[past.index]]
        uptakes = took.groupby(["person_key", "product_code"]).size().rename("past_uptakes")
        kind_uptakes = took.groupby(["person_key", "kind"]).size().rename("past_kind_uptakes")
        rows = rows.join(seen, on=["person_key", "product_code"])
        rows = rows.join(uptakes, on=["person_key", "product_code"])
        rows["kind"] = rows["product_code"].map(kinds)
        rows = rows.join(kind_uptakes, on=["person_key", "kind"])
        for col in ("past_impressions", "past_uptakes", "past_kind_uptakes"):
            rows[col] = rows[col].fillna(0).astype(float)
        rows["past_best_grade"] = rows["past_best_grade"].astype(float)  # missing: never shown
        rows["offered_in_scenario"] = [
            float(s in shelf[c]) for s, c in zip(rows["scenario"], rows["product_code"],
                                                 strict=True)]
        feature_date = day_from_number(feature_day)
        rows["month"] = float(feature_date.month)
        rows["as_of_date"] = feature_date
        rows["window"] = w
        rows["split"] = OOT if w == 0 else TRAIN
        parts.append(rows.rename(columns={"kind": "product_kind"}))
    if not parts:
        raise PuhuiError(f"no product_events in the {spec.train_windows + 1} windows of "
                         f"{spec.window_days} days before {as_of}: ingest product_events")
    frame = pd.concat(parts, ignore_index=True)
    frame["product_scenarios"] = frame["product_code"].map(
        {c: float(len(s)) for c, s in shelf.items()})
    # Contiguous groups, newest window first: LightGBM's lambdarank needs them in order.
    frame = frame.sort_values(["window", "person_key", "product_code"], kind="stable")
    frame["group"] = frame.groupby(["window", "person_key"], sort=False).ngroup()
    return frame.reset_index(drop=True)
