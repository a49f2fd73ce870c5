"""The recommender's training set: one group per customer and window, every product a row.

Windows of ``window_days`` end on the training as-of date and step back; the newest is the
out-of-time window (only the evaluation and the gates see it). A customer offered anything
in a window forms a group: each product on the shelf is a row, its relevance the furthest
funnel stage (graded in config) the customer's offers of it reached in the window, 0 when
shown without a response or not shown. Everything a row knows is from before the window:
customer features as of the day before its first day (the point-in-time feature builder),
past use of the product and its kind up to that day, the customer's scenario mix (how
likely the product is on the shelf they are shown), the product's attributes and the
season. The scenario of the customer's first offer in the window is kept as the request's
context for the non-personalised ranking (popularity by scenario), not as a feature.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd
from sqlalchemy import Engine, MetaData, Table, select

from puhui.config import ProductsConfig, RecommenderSpec
from puhui.errors import PuhuiError
from puhui.features.sources import day_from_number, day_number, local_days, time_kind

TRAIN, OOT = "train", "oot"
CUSTOMER_PRODUCT_FEATURES = [
    "past_impressions", "past_best_grade", "past_responses", "past_uptakes",
    "past_kind_uptakes", "past_kind_responses", "past_offers", "recent_offers",
    "past_response_rate", "exposure", "month",
]
EXPOSURE_PRIOR_OFFERS = 5.0  # pseudo-offers of everyone's mix added to each customer's
PRODUCT_FEATURES = ["product_code", "product_kind", "product_scenarios"]
# Mean relevance of the product in the windows before a row's (overall, within the
# customer's occupation): what the popularity baselines know, point in time.
POPULARITY_FEATURES = ["product_popularity", "occupation_product_popularity"]
POPULARITY_CELL_MIN_ROWS = 30
# The request's scenario is not a feature: a profile is scored outside any request, and a
# ranking led by the request's shelf pushed rural customers' agri products out of top-1
# (the customer's own scenario mix is a feature: ``exposure``).


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


EVENT_COLUMNS = ["person_key", "day", "event_time", "product_code", "scenario", "event_type",
                 "batch_id"]


def product_events_table(engine: Engine, table_name: str) -> Table:
    """The warehouse's offer funnel table, or a one-line error saying to ingest it first."""
    try:
        return Table(table_name, MetaData(), autoload_with=engine)
    except Exception as exc:  # noqa: BLE001 - NoSuchTableError and driver variants
        raise PuhuiError(f"table {table_name} is not in the warehouse: ingest "
                         "product_events first (puhui run ingest)") from exc


def key_product_events(frame: pd.DataFrame, table: Table, timezone: str, as_of: date,
                       customers: pd.DataFrame) -> pd.DataFrame:
    """Raw funnel rows of ``table`` -> the newest delivery of each event up to ``as_of``
    (local days), keyed by the person ``customers`` (customer_id, person_key) gives."""
    frame = frame.sort_values(["event_id", "batch_id"]).drop_duplicates("event_id", keep="last")
    frame["day"] = local_days(frame["event_time"], time_kind(table, "event_time"), timezone)
    frame = frame[frame["day"] <= day_number(as_of)]
    person = customers.drop_duplicates("customer_id", keep="last").set_index("customer_id")
    frame["person_key"] = frame["customer_id"].map(person["person_key"])
    return frame.dropna(subset=["person_key"])[EVENT_COLUMNS].reset_index(drop=True)


def load_product_events(engine: Engine, table_name: str, timezone: str, as_of: date,
                        customers: pd.DataFrame) -> pd.DataFrame:
    """Offer funnel events up to ``as_of`` (local days), keyed by person, newest delivery."""
    table = product_events_table(engine, table_name)
    with engine.connect() as conn:
        frame = pd.read_sql_query(select(table), conn)
    return key_product_events(frame, table, timezone, as_of, customers)


def window_as_of_days(as_of: date, spec: RecommenderSpec) -> list[int]:
    """Feature days of the windows, newest (out of time) first; window w covers the
    ``window_days`` days after its feature day."""
    end = day_number(as_of)
    return [end - (w + 1) * spec.window_days for w in range(spec.train_windows + 1)]


def window_events(events: pd.DataFrame, as_of: date,
                  spec: RecommenderSpec) -> Iterator[tuple[int, int, pd.DataFrame]]:
    """(window, feature day, the window's events) for every window, newest first: the
    events after the feature day, up to ``window_days`` days after it."""
    for w, feature_day in enumerate(window_as_of_days(as_of, spec)):
        yield w, feature_day, events[(events["day"] > feature_day)
                                     & (events["day"] <= feature_day + spec.window_days)]


def graded_events(events: pd.DataFrame, products: ProductsConfig,
                  spec: RecommenderSpec) -> pd.DataFrame:
    """Events of shelf products with their relevance grade (``grading`` in config) and
    product kind."""
    unknown = set(spec.grading) ^ {"impression", "click", "application", "uptake"}
    if unknown:
        raise PuhuiError(f"grading must grade impression, click, application and uptake "
                         f"(not {sorted(unknown)})")
    events = events[events["product_code"].isin(products.codes)].copy()
    events["grade"] = events["event_type"].map(spec.grading)
    events["kind"] = events["product_code"].map({p.code: p.kind for p in products.products})
    return events.dropna(subset=["grade"])


def scenario_prior(past: pd.DataFrame, products: ProductsConfig) -> pd.Series:
    """Everyone's scenario mix of impressions in ``past`` (uniform when there are none)."""
    shown = past[past["event_type"] == "impression"]
    return scenario_mix(shown["scenario"].value_counts(), products)


def scenario_mix(impressions: pd.Series, products: ProductsConfig) -> pd.Series:
    """Impression counts per scenario -> shares over the shelf's scenarios (uniform when
    there are none)."""
    scenarios = sorted({s for p in products.products for s in p.scenarios})
    counts = impressions.reindex(scenarios, fill_value=0)
    total = float(counts.sum())
    if not total:
        return pd.Series(1.0 / len(scenarios), index=scenarios)
    return counts / total


def past_use_features(rows: pd.DataFrame, past: pd.DataFrame, products: ProductsConfig,
                      feature_day: int, prior: pd.Series | None = None) -> pd.DataFrame:
    """``rows`` (person_key, product_code) with the customer x product features
    known on ``feature_day``: from ``past`` (graded funnel events up to that day) and the
    shelf. Used for training windows and for scoring alike, so both see the same columns.

    Exposure matters as much as taste here: a product can only be responded to when shown,
    and what a customer is shown follows the scenarios they come through; ``exposure`` is
    the chance the product is on the shelf of the customer's next request, from their
    scenario mix so far (shrunk to everyone's mix when they have few past offers).
    ``prior``: everyone's mix (``scenario_prior``) when ``past`` holds only some customers'
    events (scoring one partition), so a customer's features do not depend on the partition.
    """
    kinds = {p.code: p.kind for p in products.products}
    shelf = {p.code: set(p.scenarios) for p in products.products}
    rows = rows.copy()
    shown = past[past["event_type"] == "impression"]
    responded = past[past["grade"] > 0]
    took = past[past["event_type"] == "uptake"]
    by_pair = ["person_key", "product_code"]
    rows = rows.join(shown.groupby(by_pair).size().rename("past_impressions"), on=by_pair)
    rows = rows.join(past.groupby(by_pair)["grade"].max().rename("past_best_grade"),
                     on=by_pair)
    rows = rows.join(responded.groupby(by_pair).size().rename("past_responses"), on=by_pair)
    rows = rows.join(took.groupby(by_pair).size().rename("past_uptakes"), on=by_pair)
    rows["kind"] = rows["product_code"].map(kinds)
    by_kind = ["person_key", "kind"]
    rows = rows.join(took.groupby(by_kind).size().rename("past_kind_uptakes"), on=by_kind)
    rows = rows.join(responded.groupby(by_kind).size().rename("past_kind_responses"),
                     on=by_kind)
    offers = shown.groupby("person_key").size()
    rows["past_offers"] = rows["person_key"].map(offers)
    recent = shown[shown["day"] > feature_day - 90].groupby("person_key").size()
    rows["recent_offers"] = rows["person_key"].map(recent)
    rows["past_response_rate"] = rows["person_key"].map(
        responded[responded["event_type"] == "click"].groupby("person_key").size() / offers)
    for col in ("past_impressions", "past_responses", "past_uptakes", "past_kind_uptakes",
                "past_kind_responses", "past_offers", "recent_offers"):
        rows[col] = rows[col].fillna(0).astype(float)
    rows["past_best_grade"] = rows["past_best_grade"].astype(float)  # missing: never shown
    rows["past_response_rate"] = rows["past_response_rate"].astype(float)
    # Scenario mix: counts per (customer, scenario), shrunk towards everyone's mix.
    scenarios = sorted({s for v in shelf.values() for s in v})
    mix = shown.groupby(["person_key", "scenario"]).size().unstack(fill_value=0).reindex(
        columns=scenarios, fill_value=0)
    if prior is None:
        prior = scenario_prior(past, products)
    prior = prior.reindex(scenarios, fill_value=0.0)
    share = (mix + EXPOSURE_PRIOR_OFFERS * prior).div(
        mix.sum(axis=1) + EXPOSURE_PRIOR_OFFERS, axis=0)
    on_shelf = pd.DataFrame({s: [float(s in shelf[c]) / max(sum(
        s in shelf[o] for o in shelf), 1) for c in products.codes] for s in scenarios},
        index=products.codes)
    exposure = share @ on_shelf.T  # person x product
    pair = exposure.stack().rename("exposure")
    rows = rows.join(pair, on=by_pair)
    default = (prior * on_shelf).sum(axis=1)
    rows["exposure"] = rows["exposure"].fillna(rows["product_code"].map(default)).astype(float)
    rows["month"] = float(day_from_number(feature_day).month)
    return rows.rename(columns={"kind": "product_kind"})


def build_groups(events: pd.DataFrame, products: ProductsConfig, spec: RecommenderSpec,
                 as_of: date) -> pd.DataFrame:
    """Every (customer, window, product) row with relevance, context and past-use features.

    Only events of a row's own window make its relevance and context; only events up to
    its feature day make its features.
    """
    codes = products.codes
    shelf = {p.code: set(p.scenarios) for p in products.products}
    events = graded_events(events, products, spec)
    parts = []
    for w, feature_day, inside in window_events(events, as_of, spec):
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
        rows = past_use_features(rows, events[events["day"] <= feature_day], products,
                                 feature_day)
        rows["as_of_date"] = day_from_number(feature_day)
        rows["window"] = w
        rows["split"] = OOT if w == 0 else TRAIN
        parts.append(rows)
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


def require_out_of_time_groups(frame: pd.DataFrame, events: pd.DataFrame, as_of: date,
                               spec: RecommenderSpec) -> None:
    """Refuse a training set whose newest (out-of-time) window has no offers: the
    evaluation and the gates would have nothing to judge. Names the newest offer's day,
    which is the as-of date to train at."""
    if (frame["split"] == OOT).any():
        return
    start = day_from_number(window_as_of_days(as_of, spec)[0] + 1)
    newest = day_from_number(int(events["day"].max()))
    raise PuhuiError(f"no product_events in the out-of-time window {start}..{as_of} (the "
                     f"newest is on {newest}): train with --as-of {newest}, or ingest newer "
                     "product_events")


def popularity_features(frame: pd.DataFrame) -> pd.DataFrame:
    """``POPULARITY_FEATURES`` for every row from the older windows' relevance only (window
    w+1 ends on window w's feature day, so nothing after a row's feature day is used); an
    occupation cell with fewer than ``POPULARITY_CELL_MIN_ROWS`` rows takes the overall
    value, the oldest window has none."""
    stats = frame.groupby(["window", "occupation", "product_code"], dropna=False)[
        "relevance"].agg(["sum", "count"])
    out = frame[["window", "occupation", "product_code"]].copy()
    out["product_popularity"] = np.nan
    out["occupation_product_popularity"] = np.nan
    for w in frame["window"].unique():
        older = stats[stats.index.get_level_values("window") > w]
        if older.empty:
            continue
        cell = older.groupby(level=["occupation", "product_code"], dropna=False).sum()
        overall = cell.groupby(level="product_code").sum()
        overall = overall["sum"] / overall["count"]
        cell = cell[cell["count"] >= POPULARITY_CELL_MIN_ROWS]
        cell = cell["sum"] / cell["count"]
        rows = out["window"] == w
        product = out.loc[rows, "product_code"]
        out.loc[rows, "product_popularity"] = product.map(overall).to_numpy(dtype=float)
        keys = pd.MultiIndex.from_frame(out.loc[rows, ["occupation", "product_code"]])
        local = cell.reindex(keys).to_numpy(dtype=float)
        out.loc[rows, "occupation_product_popularity"] = np.where(
            np.isnan(local), out.loc[rows, "product_popularity"], local)
    return frame.assign(product_popularity=out["product_popularity"],
                        occupation_product_popularity=out["occupation_product_popularity"])
