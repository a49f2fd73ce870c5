"""The eight partner feeds: their file formats, columns, and the rows of one day or month.

Each ``*_batch`` function is a pure function of the world (population, bureau history,
applications) and the day or month it is for, with its own seeded generator, so a file's
rows never depend on how the run is chunked or in which order files are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pyarrow as pa

from puhui.generate import reference as ref
from puhui.generate.batch import Batch, Column, cat
from puhui.generate.population import (
    MEAN_IMPRESSION_RATE,
    ORDER_AMOUNT_SIGMA,
    OTHER_CATEGORY_SPLIT,
    Population,
    agri_input_size,
)
from puhui.generate.process import Applications, BureauHistory
from puhui.generate.timeline import (
    LOCAL_OFFSET_SECONDS,
    SECONDS_PER_DAY,
    Stream,
    Timeline,
    age_in_years,
    epoch_day,
    from_epoch_day,
    rng_for,
)


@dataclass(frozen=True)
class FeedSpec:
    """A partner feed as it lands: file extension, text encoding, cadence and columns."""

    name: str
    ext: str  # "csv", "jsonl" or "parquet"
    encoding: str  # text encoding of csv/jsonl files
    monthly: bool  # delivered on the 1st of each month (else daily)
    columns: tuple[str, ...]
    required: tuple[str, ...]  # columns that must never be empty in a clean file


FEEDS: dict[str, FeedSpec] = {
    spec.name: spec
    for spec in (
        FeedSpec(
            "customers", "csv", "utf-8", False,
            ("customer_id", "national_id", "phone", "gender", "birth_date", "region_type",
             "province", "occupation", "income_band", "onboard_date",
             "personalisation_opt_out"),
            ("customer_id", "national_id", "phone", "gender", "birth_date", "region_type",
             "province", "occupation", "income_band", "onboard_date",
             "personalisation_opt_out"),
        ),
        FeedSpec(
            "credit_bureau", "csv", "utf-8", True,
            ("national_id", "phone", "report_date", "accounts_open", "delinquencies_24m",
             "max_dpd_24m", "inquiries_6m", "total_debt_yuan", "bureau_score"),
            ("national_id", "report_date", "bureau_score"),
        ),
        FeedSpec(
            "ecommerce_orders", "jsonl", "utf-8", False,
            ("order_id", "buyer_phone", "order_time", "amount_yuan", "category_code",
             "province"),
            ("order_id", "buyer_phone", "order_time", "amount_yuan", "category_code"),
        ),
        FeedSpec(
            "mobile_payments", "csv", "utf-8", False,
            ("txn_id", "payer_phone", "txn_time", "txn_type", "amount", "merchant_category",
             "days_past_due", "status"),
            ("txn_id", "payer_phone", "txn_time", "txn_type", "amount", "status"),
        ),
        FeedSpec(
            "agri_coop", "csv", "gbk", True,
            ("member_national_id", "coop_name", "crop", "acreage_mu", "harvest_sales_yuan",
             "subsidy_yuan", "record_month"),
            ("member_national_id", "coop_name", "crop", "acreage_mu", "record_month"),
        ),
        FeedSpec(
            "loan_applications", "csv", "utf-8", False,
            ("application_id", "customer_id", "national_id", "phone", "application_time",
             "product_code", "amount_requested_yuan", "term_months", "scenario",
             "legacy_decision"),
            ("application_id", "customer_id", "national_id", "application_time",
             "product_code", "amount_requested_yuan", "term_months", "legacy_decision"),
        ),
        FeedSpec(
            "loan_outcomes", "csv", "utf-8", False,
            ("application_id", "observation_date", "max_dpd", "default_flag"),
            ("application_id", "observation_date", "max_dpd", "default_flag"),
        ),
        FeedSpec(
            "product_events", "parquet", "utf-8", False,
            ("event_id", "customer_id", "event_time", "product_code", "scenario",
             "event_type"),
            ("event_id", "customer_id", "event_time", "product_code", "event_type"),
        ),
    )
}
FEED_ORDER: tuple[str, ...] = tuple(FEEDS)


@dataclass
class World:
    """Everything the feeds are drawn from, plus sampling tables built once per run."""

    pop: Population
    bureau: BureauHistory
    apps: Applications
    timeline: Timeline
    seed: int
    products: tuple[str, ...]
    rural_agri_boost: float = 0.0  # added to rural people's affinity for agri products
    drift: bool = False
    _cache: dict[str, object] = field(default_factory=dict)

    def sampler(self, name: str, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(people, cumulative weights) for drawing people proportionally to ``weights``."""
        if name not in self._cache:
            people = np.flatnonzero(weights > 0)
            self._cache[name] = (people, np.cumsum(weights[people], dtype=np.float64))
        return self._cache[name]  # type: ignore[return-value]


def _draw_people(
    rng: np.random.Generator, people: np.ndarray, cum: np.ndarray, rate_scale: float
) -> np.ndarray:
    """A Poisson number of events for the whole population, each person chosen
    proportionally to their weight (a superposition of per-person Poisson processes)."""
    if len(people) == 0:
        return np.empty(0, dtype=np.int64)
    count = rng.poisson(cum[-1] * rate_scale)
    # Sorted keys make the binary searches walk the table in order (cache friendly); the
    # order of the picks does not matter, rows are ordered by time afterwards.
    picks = np.searchsorted(cum, np.sort(rng.random(count)) * cum[-1], side="right")
    return people[np.minimum(picks, len(people) - 1)]


def _seconds_in_day(rng: np.random.Generator, n: int, profile: Sequence[float]) -> np.ndarray:
    p = np.asarray(profile, dtype=np.float64)
    return rng.choice(24, size=n, p=p / p.sum()) * 3600 + rng.integers(0, 3600, n)


def _utc_seconds(day: int, seconds_of_day: np.ndarray) -> np.ndarray:
    return day * SECONDS_PER_DAY + seconds_of_day.astype(np.int64) - LOCAL_OFFSET_SECONDS


def _yyyymmdd(day: int) -> int:
    d = from_epoch_day(day)
    return d.year * 10_000 + d.month * 100 + d.day


def _day_ids(day: int, n: int) -> np.ndarray:
    """Numeric part of per-day ids: YYYYMMDD then an 8-digit sequence."""
    return _yyyymmdd(day) * 100_000_000 + np.arange(1, n + 1, dtype=np.int64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------------------------
# customers (the lender's KYC register)


def customers_batch(world: World, people: np.ndarray) -> Batch:
    """KYC rows of ``people`` (ordered by onboarding date, then customer number)."""
    pop = world.pop
    people = people[np.lexsort((people, pop.onboard_day[people]))]
    return {
        "customer_id": cat(people, pop.customer_id),
        "national_id": cat(people, pop.national_id),
        "phone": cat(people, pop.phone_text),
        "gender": cat(pop.gender[people], ref.GENDERS),
        "birth_date": Column("date", pop.birth_day[people]),
        "region_type": cat(pop.region[people], ref.REGION_TYPES),
        "province": cat(pop.province[people], [p.name for p in ref.PROVINCES]),
        "occupation": cat(pop.occupation[people], ref.OCCUPATIONS),
        "income_band": cat(pop.income[people], ref.INCOME_BANDS),
        "onboard_date": Column("date", pop.onboard_day[people]),
        "personalisation_opt_out": Column("int", opt_out(world)[people].astype(np.int64)),
    }


OPT_OUT_RATE = 0.05  # customers who refused personalised marketing (PIPL Art. 24)


def opt_out(world: World) -> np.ndarray:
    """Who refused personalisation: an independent draw (key 1 of the population stream),
    so adding it changed no other value."""
    return rng_for(world.seed, Stream.POPULATION, 1).random(world.pop.n) < OPT_OUT_RATE


# --drift: from this many days before the end date the bureau reports a shifted population
# (scores lower, more delinquencies and inquiries), as after a bureau scorecard change or a
# downturn. Outcomes are untouched: only what the model sees moves.
DRIFT_DAYS = 120
DRIFT_SCORE_SHIFT = -90


# ---------------------------------------------------------------------------------------
# credit_bureau (monthly snapshot on the 1st)


def credit_bureau_batch(world: World, report_date: date) -> Batch:
    """Every record holder's bureau state as of ``report_date`` (a 1st of the month)."""
    bureau = world.bureau
    i = bureau.months.index(report_date)
    people = bureau.holders
    n = len(people)
    drifted = world.drift and (world.timeline.end_date - report_date).days <= DRIFT_DAYS
    shift = int(drifted)
    return {
        "national_id": cat(people, world.pop.national_id),
        "phone": cat(people, world.pop.phone_text),
        "report_date": Column("date", np.full(n, epoch_day(report_date), dtype=np.int64)),
        "accounts_open": Column("int", bureau.accounts_open[i]),
        "delinquencies_24m": Column("int", bureau.delinquencies_24m[i] + shift),
        "max_dpd_24m": Column("int", np.minimum(bureau.max_dpd_24m[i] + 30 * shift, 731)),
        "inquiries_6m": Column("int", bureau.inquiries_6m[i] + 2 * shift),
        "total_debt_yuan": Column("int", bureau.total_debt_yuan[i]),
        "bureau_score": Column("int", np.clip(bureau.bureau_score[i] + DRIFT_SCORE_SHIFT * shift,
                                              300, 850)),
    }


# ---------------------------------------------------------------------------------------
# ecommerce_orders (JSON lines, daily)


def ecommerce_batch(world: World, day: int) -> Batch:
    """One day's orders: everyday shopping plus seasonal agri-input buying by farmers."""
    pop = world.pop
    rng = rng_for(world.seed, Stream.ECOMMERCE, day)
    month = from_epoch_day(day).month
    season = np.array(ref.AGRI_INPUT_SEASON)
    general = _draw_people(
        rng, *world.sampler("orders", pop.order_rate * (1 - pop.agri_share)), 1.0
    )
    agri = _draw_people(
        rng, *world.sampler("agri_orders", pop.order_rate * pop.agri_share),
        season[month - 1] / season.mean(),
    )
    people = np.concatenate([general, agri])
    n = len(people)
    u = rng.random((n, 3))
    z = rng.standard_normal(n)
    seconds = _seconds_in_day(rng, n, ref.HOURLY_ACTIVITY)
    split = np.cumsum(OTHER_CATEGORY_SPLIT)
    other = np.array([ref.GROCERY, ref.APPAREL, ref.HOUSEHOLD])[
        np.minimum(np.searchsorted(split, u[:, 1] * split[-1], side="right"), 2)
    ]
    category = np.where(u[:, 0] < pop.electronics_share[people], ref.ELECTRONICS, other)
    category[len(general):] = ref.AGRI_INPUT
    median = np.array(ref.ECOMMERCE_MEDIAN_YUAN)[category]
    size = np.where(category == ref.AGRI_INPUT, agri_input_size(pop.acreage[people]), 1.0)
    amount = np.round(
        np.maximum(median * size * pop.spend_scale[people] * np.exp(ORDER_AMOUNT_SIGMA * z), 1.0),
        2,
    )
    # Phones as typed at checkout: the person's usual style, sometimes another one.
    style = np.where(u[:, 2] < 0.9, pop.phone_style[people], (u[:, 2] * 30).astype(np.int64) % 3)
    order = np.argsort(seconds, kind="stable")
    people, seconds, amount, category, style = (
        people[order], seconds[order], amount[order], category[order], style[order],
    )
    return {
        "order_id": Column("pid", _day_ids(day, n), prefix="O", width=16),
        "buyer_phone": cat(style * pop.n + people, pop.phone_text),
        "order_time": Column("ts", _utc_seconds(day, seconds)),
        "amount_yuan": Column("dec2", amount),
        "category_code": cat(category, ref.ECOMMERCE_CATEGORIES),
        "province": cat(pop.province[people], [p.name for p in ref.PROVINCES]),
    }


# ---------------------------------------------------------------------------------------
# mobile_payments (CSV, daily, the high-volume feed)


def mobile_payments_batch(world: World, day: int) -> Batch:
    """One day's wallet transactions, drawn from each wallet user's rates."""
    pop = world.pop
    rng = rng_for(world.seed, Stream.MOBILE_PAYMENTS, day)
    people = _draw_people(rng, *world.sampler("payments", pop.payment_rate), 1.0)
    n = len(people)
    seconds = _seconds_in_day(rng, n, ref.HOURLY_ACTIVITY)
    u = rng.random((n, 4)).astype(np.float32)  # type, merchant category, late, status
    z = rng.standard_normal(n).astype(np.float32)
    lateness = rng.poisson(pop.late_severity[people])
    order = np.argsort(seconds, kind="stable")
    people, seconds, u, z = people[order], seconds[order], u[order], z[order]
    lateness = lateness[order]

    txn_type = np.minimum((u[:, 0:1] >= pop.txn_type_cum[people]).sum(axis=1), 3)
    amount = (
        np.array(ref.TXN_MEDIAN_YUAN, dtype=np.float32)[txn_type] * pop.amount_scale[people]
        * np.exp(0.8 * z)
    )
    inflow = txn_type == ref.TRANSFER_IN
    amount[inflow] *= pop.inflow_multiplier[people[inflow]]
    amount = np.round(np.maximum(amount.astype(np.float64), 0.01), 2)

    farmer = pop.occupation[people] == ref.FARMER
    merchant_weights = np.array([0.34, 0.22, 0.14, 0.08, 0.04, 0.12, 0.06])
    cum = np.cumsum(merchant_weights) / merchant_weights.sum()
    merchant = np.minimum(np.searchsorted(cum, u[:, 1], side="right"), len(cum) - 1)
    merchant = np.where(farmer & (u[:, 1] < 0.2), 4, merchant)  # farmers buy agri supplies
    is_merchant = txn_type == ref.MERCHANT
    is_bill = txn_type == ref.BILL_PAY
    late = u[:, 2] < pop.late_share[people]
    days_past_due = np.where(late, 1 + np.minimum(lateness, 60), 0)
    failed = u[:, 3] < 0.012 + 0.05 * pop.late_share[people]
    return {
        "txn_id": Column("pid", _day_ids(day, n), prefix="T", width=16),
        "payer_phone": cat(people, pop.phone_text),
        "txn_time": Column("ts", _utc_seconds(day, seconds)),
        "txn_type": cat(txn_type, ref.TXN_TYPES),
        "amount": Column("yuan", amount),
        "merchant_category": Column(
            "cat", merchant, table=pa.array(ref.MERCHANT_CATEGORIES), valid=is_merchant
        ),
        "days_past_due": Column("int", days_past_due, valid=is_bill),
        "status": cat(failed.astype(np.int64), ref.TXN_STATUSES),
    }


# ---------------------------------------------------------------------------------------
# agri_coop (GBK CSV, monthly on the 1st, the previous month's records)


def agri_coop_batch(world: World, report_date: date) -> Batch:
    """Every co-op member's record of the month before ``report_date``."""
    pop = world.pop
    record_month = date(report_date.year - (report_date.month == 1),
                        (report_date.month - 2) % 12 + 1, 1)
    rng = rng_for(world.seed, Stream.AGRI_COOP, record_month.year * 100 + record_month.month)
    members = np.flatnonzero(pop.is_coop_member)
    n = len(members)
    crop = pop.crop[members]
    acreage = pop.acreage[members].astype(np.float64)
    harvest_weight = np.array(ref.CROP_HARVEST_MONTHS)[crop, record_month.month - 1]
    revenue = np.array(ref.CROP_REVENUE_PER_MU)[crop]
    sales = (
        acreage * revenue * pop.harvest_quality[members] * harvest_weight
        * np.exp(rng.normal(0.0, 0.2, n))
    )
    subsidy = acreage * ref.SUBSIDY_PER_MU * (record_month.month == ref.SUBSIDY_MONTH)
    return {
        "member_national_id": cat(members, pop.national_id),
        "coop_name": cat(pop.coop_name_index[members], pop.coop_names),
        "crop": cat(crop, ref.CROPS),
        "acreage_mu": Column("dec2", acreage),
        "harvest_sales_yuan": Column("dec2", np.round(sales, 2)),
        "subsidy_yuan": Column("dec2", np.round(subsidy, 2)),
        "record_month": Column("month", np.full(n, epoch_day(record_month), dtype=np.int64)),
    }


# ---------------------------------------------------------------------------------------
# loan_applications and loan_outcomes (the lender's own loan book)


def loan_applications_batch(world: World, rows: np.ndarray) -> Batch:
    """Applications ``rows`` (indices into ``world.apps``)."""
    apps, pop = world.apps, world.pop
    people = apps.person[rows]
    return {
        "application_id": Column("pid", apps.number[rows], prefix="A", width=10),
        "customer_id": cat(people, pop.customer_id),
        "national_id": cat(people, pop.national_id),
        "phone": cat(people, pop.phone_text),
        "application_time": Column("ts", apps.time[rows]),
        "product_code": cat(apps.product[rows], ref.LOAN_PRODUCTS),
        "amount_requested_yuan": Column("int", apps.amount[rows]),
        "term_months": Column("int", apps.term_months[rows]),
        "scenario": cat(apps.scenario[rows], ref.SCENARIOS),
        "legacy_decision": cat(apps.approved[rows].astype(np.int64), ("declined", "approved")),
    }


def loan_outcomes_batch(world: World, rows: np.ndarray) -> Batch:
    """Outcomes of approved applications ``rows``, observed 180 days after disbursement."""
    apps = world.apps
    return {
        "application_id": Column("pid", apps.number[rows], prefix="A", width=10),
        "observation_date": Column("date", apps.observation_day[rows]),
        "max_dpd": Column("int", apps.max_dpd[rows]),
        "default_flag": Column("int", apps.default[rows].astype(np.int64)),
    }


# ---------------------------------------------------------------------------------------
# product_events (Parquet, daily): offer funnel impression > click > application > uptake


@dataclass(frozen=True)
class OfferDay:
    """One day's offers and how far down the funnel each went (grade: 0 impression,
    1 click, 2 application, 3 uptake); ``u``, ``waits`` and ``seconds`` time the events."""

    people: np.ndarray
    product: np.ndarray  # index into world.products
    scenario: np.ndarray  # index into ref.SCENARIOS
    affinity: np.ndarray
    click: np.ndarray
    apply: np.ndarray
    uptake: np.ndarray
    waits: np.ndarray
    seconds: np.ndarray

    @property
    def grade(self) -> np.ndarray:
        return self.click.astype(np.int64) + self.apply + self.uptake


def offer_day(world: World, day: int) -> OfferDay:
    """The offers shown on ``day`` and the responses, as the product_events feed writes them."""
    pop = world.pop
    rng = rng_for(world.seed, Stream.PRODUCT_EVENTS, day)
    engagement_mean = float(pop.engagement.mean()) if pop.n else 1.0
    people = _draw_people(
        rng, *world.sampler("events", pop.engagement), MEAN_IMPRESSION_RATE / engagement_mean
    )
    people = people[pop.onboard_day[people] <= day]
    n = len(people)
    u = rng.random((n, 5))
    waits = rng.exponential(1.0, (n, 3))
    seconds = _seconds_in_day(rng, n, ref.HOURLY_ACTIVITY)

    products = world.products
    scenario_products = [
        [i for i, p in enumerate(products) if s in ref.PRODUCT_SCENARIOS[p]] for s in ref.SCENARIOS
    ]
    has_product = np.array([len(x) > 0 for x in scenario_products])
    channel = np.stack([
        pop.is_shopper[people] * 1.0, pop.has_wallet[people] * 1.2,
        pop.is_coop_member[people] * 0.8, np.full(n, 0.3),
    ], axis=1) * has_product
    cum = np.cumsum(channel, axis=1)
    scenario = np.minimum((u[:, 0:1] * cum[:, -1:] >= cum).sum(axis=1), 3)
    product = np.zeros(n, dtype=np.int64)
    for s, options in enumerate(scenario_products):
        rows = scenario == s
        if options and rows.any():
            product[rows] = np.array(options)[(u[rows, 1] * len(options)).astype(np.int64)]
    affinity = offer_affinity(world, people, product, day)
    click = u[:, 2] < _sigmoid(affinity - 2.6)
    apply = click & (u[:, 3] < _sigmoid(affinity - 1.5))
    is_loan = np.array([p in ref.LOAN_PRODUCTS for p in products])[product]
    uptake = apply & (u[:, 4] < np.where(is_loan, 0.7, 0.85))
    return OfferDay(people, product, scenario, affinity, click, apply, uptake, waits, seconds)


def product_events_batch(world: World, day: int) -> Batch:
    """One day's offer funnel events of onboarded customers."""
    pop, products = world.pop, world.products
    o = offer_day(world, day)
    n, people, product, scenario = len(o.people), o.people, o.product, o.scenario
    click, apply, uptake, waits, seconds = o.click, o.apply, o.uptake, o.waits, o.seconds

    t_click = np.minimum(seconds + 5 + (60 * waits[:, 0]).astype(np.int64), SECONDS_PER_DAY - 1)
    t_apply = np.minimum(t_click + 30 + (240 * waits[:, 1]).astype(np.int64), SECONDS_PER_DAY - 1)
    t_uptake = np.minimum(t_apply + 60 + (900 * waits[:, 2]).astype(np.int64), SECONDS_PER_DAY - 1)
    stage_rows = [np.arange(n), np.flatnonzero(click), np.flatnonzero(apply),
                  np.flatnonzero(uptake)]
    stage_times = [seconds, t_click, t_apply, t_uptake]
    idx = np.concatenate(stage_rows)
    event_type = np.concatenate([np.full(len(r), k) for k, r in enumerate(stage_rows)])
    event_seconds = np.concatenate([t[r] for t, r in zip(stage_times, stage_rows, strict=True)])
    order = np.lexsort((event_type, event_seconds))
    idx, event_type, event_seconds = idx[order], event_type[order], event_seconds[order]
    return {
        "event_id": Column("pid", _day_ids(day, len(idx)), prefix="E", width=16),
        "customer_id": cat(people[idx], pop.customer_id),
        "event_time": Column("ts", _utc_seconds(day, event_seconds)),
        "product_code": cat(product[idx], products),
        "scenario": cat(scenario[idx], ref.SCENARIOS),
        "event_type": cat(event_type, ref.EVENT_TYPES),
    }


def offer_affinity(
    world: World, people: np.ndarray, product: np.ndarray, day: int
) -> np.ndarray:
    """Log-odds-like appeal of an offered product to a person (non-linear, segment- and
    behaviour-driven): farmers want agri loans in spring and crop insurance, business owners
    working capital, savers savings, heavy bill payers bill-pay, older people insurance."""
    pop = world.pop
    codes = np.array(world.products)[product]
    occupation = pop.occupation[people]
    farmer = occupation == ref.FARMER
    business = occupation == ref.SMALL_BUSINESS
    age = age_in_years(pop.birth_day[people], day)
    income = pop.income[people]
    late = pop.late_share[people]
    ratio = pop.inflow_ratio[people]
    spring = from_epoch_day(day).month in (2, 3, 4)
    grain = np.isin(pop.crop[people], [0, 1, 2])
    bill_share = pop.txn_type_cum[people, 0]
    member = pop.is_coop_member[people]
    wallet = pop.has_wallet[people]
    a = np.zeros(len(people))
    table = {
        "microloan": 0.2 + 0.6 * (occupation == ref.GIG) + 1.2 * pop.electronics_share[people]
        + 0.8 * (late > 0.15) + 0.4 * (age <= 25) - 0.5 * (age >= 60) - 0.4 * (income >= 2),
        "agri_loan": np.where(farmer, 1.5 + 1.0 * spring + 0.6 * (pop.acreage[people] > 15), -2.0),
        "business_loan": np.where(business, 1.8 + 0.8 * (pop.payment_rate[people] > 0.15), -1.8),
        "micro_insurance": 0.8 * (age >= 46) + 0.5 * (income <= 1) - 0.3 * (age <= 25),
        "crop_insurance": np.where(member, 1.6 + 0.8 * grain, np.where(farmer, 0.6, -2.2)),
        "savings": 0.2 + np.minimum(7.0 * np.maximum(ratio - 1.0, 0.0), 1.4)
        + 0.6 * (occupation == ref.SALARIED) + 0.4 * (income >= 2) - 0.8 * (late > 0.15),
        "bill_pay": np.where(wallet, 0.3 + 3.0 * bill_share - 0.4 * (age >= 60), -1.0),
    }
    for code, value in table.items():
        rows = codes == code
        a[rows] = np.asarray(value)[rows]
    if world.rural_agri_boost:
        # The generator switch: rural people's appeal of the agri shelf, whatever their trade.
        rural_agri = (pop.region[people] == ref.REGION_TYPES.index("rural")) & np.isin(
            codes, ("agri_loan", "crop_insurance"))
        a[rural_agri] += world.rural_agri_boost
    return a
