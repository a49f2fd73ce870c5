"""The offer columns of a profile: the ``product_recommender`` champion's ranking and the
non-personalised ranking, which needs no model.

With a champion, a thin adapter over the recommender's public scoring entry point
(:func:`puhui.recommender.scoring.score_recommendations`), which is the one source of truth
for the ranker's inputs, eligibility (applied before ranking, with the risk grade this same
refresh just assigned) and the non-personalised ranking (a customer who refused
personalisation, PIPL Art. 24, gets only it). Without one (its gates failed, or none is
registered), the personalised offers are empty with the reason, but the non-personalised
ranking is still filled, from the product events themselves: segment-free popularity, the
mean relevance of each product over every customer's windows (the recommender's
``window_days`` windows, graded as in config), eligibility applied the same way. An opted-out
customer's offers are that ranking, champion or not.

Product events are read one customer partition at a time (the partition's register rows
select their ``customer_id``s in SQL), so memory follows the partition, not the population.
The two facts every partition needs from everyone's events (the scenario mix of impressions
and the popularity) are sums, gathered by one pass over the partitions before scoring. With
a champion, that pass also stages each partition's keyed events as a Parquet file beside the
profile partitions, and scoring reads its partition's file: the warehouse is read once per
refresh.
This module adds what only a profile knows: products the credit decision rules out (a
declined customer is offered no loan, whatever the recommender's grade limit) and the reasons
in words.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, MetaData, Table, select

from puhui.config import FeaturesConfig, ProductsConfig, RecommenderSpec
from puhui.features.partitioned import read_index, write_atomic
from puhui.features.sources import day_number, read_partition
from puhui.partitioning import Partition, all_partitions
from puhui.profiles.models import ModelSlot
from puhui.recommender.model import Ranker, eligibility
from puhui.recommender.scoring import load_recommender, score_recommendations
from puhui.recommender.train import EVENTS_TABLE
from puhui.recommender.training_set import (
    graded_events,
    key_product_events,
    product_events_table,
    scenario_mix,
    window_events,
)


@dataclass
class EventSummary:
    """Everyone's product events up to the as-of date, as sums over customer partitions
    (the partitions hold disjoint customers, so the sums are the whole population's)."""

    impressions: dict[str, int] = field(default_factory=dict)  # scenario -> impressions
    relevance: dict[str, float] = field(default_factory=dict)  # product -> summed best grade
    groups: int = 0  # (window, customer) pairs with an event: the popularity's denominator

    def add(self, other: EventSummary) -> None:
        for mine, theirs in ((self.impressions, other.impressions),
                             (self.relevance, other.relevance)):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        self.groups += other.groups

    def prior(self, products: ProductsConfig) -> pd.Series:
        """Everyone's scenario mix of impressions (uniform when there are none): what
        ``training_set.scenario_prior`` gives on the whole table."""
        return scenario_mix(pd.Series(self.impressions, dtype="int64"), products)

    def popularity(self, products: ProductsConfig) -> dict[str, float]:
        """Mean relevance of each product over every (window, customer) group."""
        return {code: self.relevance.get(code, 0.0) / self.groups if self.groups else 0.0
                for code in products.codes}


def summarise_events(events: pd.DataFrame, products: ProductsConfig, spec: RecommenderSpec,
                     as_of: date) -> EventSummary:
    """The sums :class:`EventSummary` keeps, for the customers of ``events``."""
    graded = graded_events(events[events["day"] <= day_number(as_of)], products, spec)
    shown = graded[graded["event_type"] == "impression"]
    summary = EventSummary(
        impressions={str(k): int(v) for k, v in shown["scenario"].value_counts().items()})
    for _, _, inside in window_events(graded, as_of, spec):
        best = inside.groupby(["person_key", "product_code"])["grade"].max()
        summary.add(EventSummary(
            relevance={str(k): float(v) for k, v in best.groupby(level=1).sum().items()},
            groups=int(inside["person_key"].nunique())))
    return summary


@dataclass(frozen=True)
class EventTables:
    """Where partitions read their product events from, reflected once per refresh."""

    events: Table
    register: Table
    timezone: str  # the feed's local days

    @classmethod
    def reflect(cls, engine: Engine, features: FeaturesConfig) -> EventTables:
        return cls(product_events_table(engine, EVENTS_TABLE),
                   Table(features.customer.table, MetaData(), autoload_with=engine),
                   features.timezone)


# The key the product events feed is cut into partitions by (through the register).
EVENT_KEY = "customer_id"


def event_read_indexes() -> dict[str, str]:
    """The product events' partition-read index (on :data:`EVENT_KEY`), for
    :func:`puhui.features.partitioned.ensure_partition_indexes`: a partitioned refresh
    creates it with the feature tables' indexes."""
    return read_index(EVENTS_TABLE, [EVENT_KEY])


def read_partition_events(engine: Engine, tables: EventTables, as_of: date,
                          customers: pd.DataFrame, partition: Partition) -> pd.DataFrame:
    """Offer funnel events up to ``as_of`` (local days) of one partition's customers, keyed
    by person, newest delivery of each event: ``training_set.load_product_events`` for the
    partition's people only. ``customers``: the partition's register slice (customer_id,
    person_key). The feature sources' partition read selects the rows: the ids some register
    row of the partition's keys carries (a superset; the register slice then decides), with
    the key-range plan."""
    table = tables.events
    frame = read_partition(engine, select(table), table, EVENT_KEY, partition, tables.register)
    return key_product_events(frame, table, tables.timezone, as_of, customers)


def sum_partition_events(engine: Engine, tables: EventTables, register: pd.DataFrame,
                         as_of: date, partitions: int, products: ProductsConfig,
                         spec: RecommenderSpec, events_dir: Path | None) -> EventSummary:
    """Everyone's event sums, from one pass over the register's ``partitions``. With
    ``events_dir``, each partition's events are staged there for its scoring. A partition
    whose file is already there (a resumed refresh: the directory is the run key's, so the
    inputs are the same, and files appear only complete) is summed from that file: not
    read from the warehouse, not written again."""
    summary = EventSummary()
    if events_dir is not None:
        events_dir.mkdir(parents=True, exist_ok=True)
    for part in all_partitions(partitions):
        staged = events_path(events_dir, part.bucket) if events_dir is not None else None
        if staged is not None and staged.exists():
            events = pd.read_parquet(staged)
        else:
            customers = register[register["partition"] == part.bucket]
            events = read_partition_events(engine, tables, as_of, customers, part)
            if staged is not None:
                write_atomic(events, staged)
        summary.add(summarise_events(events, products, spec, as_of))
    return summary


@dataclass
class OfferContext:
    """What every partition's offers need, loaded once per refresh: the champion's ranker
    (None without a champion: non-personalised ranking only) and everyone's event sums."""

    ranker: Ranker | None
    spec: RecommenderSpec
    products: ProductsConfig
    prior: pd.Series  # everyone's scenario mix (``EventSummary.prior``)
    popularity: dict[str, float]  # product -> popularity from the events (no champion)
    events_dir: Path | None = None  # each partition's events, staged by the event-sums pass

    def partition_events(self, bucket: int) -> pd.DataFrame:
        """Partition ``bucket``'s events, as the event-sums pass read them."""
        if self.events_dir is None:
            raise ValueError("no staged events: build the context with load_offer_context")
        return pd.read_parquet(events_path(self.events_dir, bucket))


def events_path(directory: Path, bucket: int) -> Path:
    return directory / f"events-{bucket:04d}.parquet"


def load_offer_context(engine: Engine, tracking_uri: str, slot: ModelSlot | None,
                       spec: RecommenderSpec, products: ProductsConfig,
                       features: FeaturesConfig, register: pd.DataFrame,
                       as_of: date, partitions: int, events_dir: Path) -> OfferContext:
    """The exact champion version (if any) resolved, and everyone's event sums from one pass
    over the register's ``partitions`` (``register["partition"]``, as ``load_register``
    split it). With a champion, each partition's events are staged under ``events_dir`` for
    its scoring (:meth:`OfferContext.partition_events`); without one, scoring needs none."""
    ranker = (load_recommender(engine, tracking_uri, slot.name, str(slot.version))
              if slot is not None and slot.available else None)
    staged = events_dir if ranker is not None else None  # scoring without one needs none
    summary = sum_partition_events(engine, EventTables.reflect(engine, features), register,
                                   as_of, partitions, products, spec, staged)
    return OfferContext(ranker=ranker, spec=spec, products=products,
                        prior=summary.prior(products), popularity=summary.popularity(products),
                        events_dir=staged)


def rule_words(rule: str, product: str, grade: Any, spec: RecommenderSpec) -> str:
    """An eligibility rule of :func:`puhui.recommender.model.eligibility`, in words."""
    rules = spec.eligibility
    if rule == "credit_grade":
        return (f"risk grade {grade} is worse than {rules.credit_max_grade.get(product)}, "
                "the limit for it")
    if rule == "credit_no_risk_grade":
        return "no risk grade (no credit decision to base it on)"
    if rule == "agricultural_activity":
        return "needs agricultural activity (a farmer or a co-operative member)"
    if rule == "age" and product in rules.age:
        return f"age outside {rules.age[product].min}-{rules.age[product].max}"
    return rule


def not_eligible_in_words(ruled_out: dict[str, str],
                          rules: Iterable[tuple[str, str | None]], grade: Any,
                          spec: RecommenderSpec) -> dict[str, str]:
    """Why each product is not eligible, in words: ``ruled_out`` (the credit decision's,
    already in words; it stands for a product both rule out) and the recommender's
    eligibility ``rules`` (product, rule or None when eligible)."""
    words = dict(ruled_out)
    for code, rule in rules:
        if rule is not None:
            words.setdefault(str(code), rule_words(rule, str(code), grade, spec))
    return words


def offer_columns(offers: OfferContext, slot: ModelSlot, frame: pd.DataFrame,
                  grades: list[Any], blocked: list[dict[str, str]], opt_out: list[bool],
                  as_of: date, events: pd.DataFrame) -> dict[str, list[Any]]:
    """``recommended_products`` (top-k eligible under the final ranking, with scores and
    why other products are not eligible) and ``non_personalised_products`` per customer,
    from the champion's ranker. ``events``: the product events of (at least) ``frame``'s
    customers (:meth:`OfferContext.partition_events`).

    ``blocked``: products the credit decision already rules out (a declined customer is
    offered no loan, whatever the recommender's grade limit); they are dropped from both
    rankings, the next eligible products moving up."""
    if offers.ranker is None:
        raise ValueError("offer_columns needs a champion ranker (see popularity_columns)")
    customers = frame.assign(risk_grade=list(grades))
    scored = score_recommendations(offers.ranker, customers, events, as_of,
                                   offers.products, offers.spec, opt_out,
                                   model=slot.name, version=slot.version,
                                   prior=offers.prior)
    k = offers.spec.k
    recommended, fallback = [], []
    for out, grade, ruled_out in zip(scored, grades, blocked, strict=True):
        not_eligible = not_eligible_in_words(ruled_out, out["not_eligible"].items(), grade,
                                             offers.spec)
        popular = [p for p in out["ranked"]["non_personalised"]
                   if p["product"] not in not_eligible][:k]
        opted = out["personalisation_opt_out"]
        top = popular if opted else [p for p in out["ranked"]["personalised"]
                                     if p["product"] not in not_eligible][:k]
        recommended.append({
            "model": slot.name, "version": slot.version,
            "ranking": "non_personalised" if opted else "personalised",
            "products": top, "not_eligible": not_eligible,
            "reason": None if top else "no eligible product"})
        fallback.append(popular)
    return {"recommended_products": recommended, "non_personalised_products": fallback}


def popularity_columns(offers: OfferContext, slot: ModelSlot | None, frame: pd.DataFrame,
                       grades: list[Any], blocked: list[dict[str, str]],
                       opt_out: list[bool]) -> dict[str, list[Any]]:
    """The offer columns without a recommender champion: no personalised offers (the slot's
    reason says why), the non-personalised ranking from the events' popularity for everyone,
    eligibility applied first (the recommender's rules with this refresh's risk grade, and
    ``blocked``), and an opted-out customer offered exactly that ranking (it needs no model).
    ``version`` stays None: no model ranked these."""
    spec, codes = offers.spec, np.array(offers.products.codes, dtype=object)
    n = len(codes)
    rows = pd.DataFrame({
        "product_code": np.tile(codes, len(frame)),
        "risk_grade": np.repeat(np.array(grades, dtype=object), n),
        "occupation": np.repeat(frame["occupation"].to_numpy(dtype=object), n),
        "agri_coop_member": np.repeat(frame["agri_coop_member"].to_numpy(dtype=float), n),
        "age": np.repeat(frame["age"].to_numpy(dtype=float), n)})
    reasons = eligibility(rows, spec).reason
    # Best first; equal popularity: shelf code order (as ``score_recommendations`` ranks).
    order = sorted(codes, key=lambda c: (-offers.popularity.get(c, 0.0), c))
    name = slot.name if slot else spec.registered_name
    why = (slot.reason if slot else None) or f"no champion for {name}"
    recommended, fallback = [], []
    for i, (grade, ruled_out, opted) in enumerate(zip(grades, blocked, opt_out, strict=True)):
        not_eligible = not_eligible_in_words(
            ruled_out, zip(codes, reasons[i * n:(i + 1) * n], strict=True), grade, spec)
        popular = [{"product": str(c), "score": round(float(offers.popularity.get(c, 0.0)), 6)}
                   for c in order if c not in not_eligible][:spec.k]
        recommended.append({
            "model": name, "version": None,
            "ranking": "non_personalised" if opted else None,
            "products": popular if opted else [], "not_eligible": not_eligible,
            "reason": ("no eligible product" if not popular else None) if opted else why})
        fallback.append(popular)
    return {"recommended_products": recommended, "non_personalised_products": fallback}
