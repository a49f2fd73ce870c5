"""The generating process: credit bureau evolution, loan applications and the true PD.

Who the people are and their behavioural rates come from ``population.py``; the partner
feeds (``feeds.py``) are drawn from those rates day by day. This module holds the parts of
the process that decide risk.

Credit bureau (征信)
    About 29 % of people have no bureau record at all (≈47 % of rural, ≈37 % of 18–25 year
    olds, ≈9 % of urban salaried people); their absence from the feed *is* the information.
    For the others a state (accounts open, delinquencies in 24 months, worst days past due in
    24 months, inquiries in 6 months, total debt) starts from draws that depend on income and
    the hidden stress factor and then evolves month by month: inquiries decay by 1/6 and
    arrive as Poisson, delinquencies arrive with a stress-dependent rate and age out after 24
    months, accounts open and close now and then, debt drifts. The bureau score (300–850) is
    a function of these facts plus a persistent per-person noise (what the bureau knows that
    we do not). The monthly snapshot on the 1st is the state of that month.

Loan applications
    Customers (after their onboarding date) apply as a Poisson process with a per-person
    weight (lognormal; higher for small-business owners, lower for retired people, slightly
    higher under financial stress = adverse selection). Farmers apply more in spring
    (planting) and autumn. Product: farmers mostly agri_loan, business owners mostly
    business_loan, everyone else microloan (restricted to the loan products in
    ``products``). Amounts are lognormal (agri loans grow with acreage, all with income);
    the scenario is where the applicant was (co-op, e-commerce, wallet, branch). The
    ``legacy_decision`` is the lender's old rule: bureau score (or 600 for a thin file)
    adjusted by income band (−25, −5, +10, +25) must reach 580, loan-to-income at most 2,
    fewer than 3 delinquencies — with 3 % of decisions flipped by branch overrides. About
    80 % are approved; thin-file applicants with a low income are all declined, which is
    why the legacy rule approves rural applicants far less often (≈65 % vs ≈90 % urban).

True probability of default (90+ days past due within 180 days of disbursement)
    PD = sigmoid(intercept + Σ terms + penalty), with every term a function of facts the
    lender can observe point in time at the application (bureau snapshot of the month, KYC,
    the loan) or of the behavioural rates that the feeds sample (so 30/90/180-day windows of
    feed data estimate them). With z = (650 - bureau_score) / 100 and lti = amount / the
    income band's annual income (24k, 48k, 90k, 160k yuan):

    ========================  ==============================================================
    thin_file                 +0.55 if no bureau record
    score                     record: 0.2·z + 2.5·sigmoid(6·(z − 0.1)) — a cliff around a
                              bureau score of 640
    accounts                  record: U-shaped: +0.5 if no account open, +0.2 per account
                              beyond 3
    delinquencies             record: +0.28 per delinquency in 24 months (capped at 6)
    severe_dpd                record: +0.6 if worst days past due in 24 months ≥ 90
    inquiries                 record: +0.08 per inquiry in 6 months, +0.8 more if ≥ 6
    debt_to_income            record: 0.35·log(1 + total_debt / income)
    credit_hungry             record: +0.9 if ≥ 4 inquiries AND total debt > 0.8 × income
    income_band               low +0.45, lower_middle +0.2, middle 0, upper_middle −0.35
    occupation                farmer 0, small_business_owner +0.15, gig_worker +0.35,
                              salaried −0.3, retired −0.15; +0.7 more for a gig worker
                              with a low income band
    wallet                    wallet user: (4.0 + 3.0 if thin file)·max(0, late_share −
                              0.06) (late_share: share of bill payments paid late)
                              + 3.0·max(0, 1 − ratio) − 1.5·min(max(ratio − 1, 0), 0.3)
                              (ratio: inflow / outflow); no wallet: +0.25
    ecommerce                 shopper: 1.0·electronics_share
                              − 0.2·clip(log(monthly spend / 300), −2, 2); no shopping: +0.1
    thin_young_electronics    +4.0·max(0, electronics_share − 0.25) if thin file AND age ≤ 25
    farm                      co-op farmer: 3.5·max(0, 0.9 − harvest quality)
                              (harvest sales per mu relative to the crop's norm)
                              + 0.35 if acreage < 4 mu − 0.4 if acreage ≥ 30 mu and
                              quality ≥ 1; farmer outside a co-op: +0.3
    loan_to_income            0.2·lti + 1.8·sigmoid((lti − 0.8) / 0.08) — stretched loans
    penalty                   +1.2 for the ``penalize_segment`` (only when asked)
    ========================  ==============================================================

    About 10 % of the variance of the log-odds is beyond a linear fit of these inputs (the
    cliffs, the U shape and the interactions), so a tree model beats a plain logistic
    regression on the same features; and the strongest terms sit on facts observed exactly
    (bureau, KYC, the loan), so feature windows get close to the ceiling (on a 60k-user run,
    ceiling 0.86: gradient boosting on 180-day windows ≈ 0.83, logistic regression ≈ 0.82).

    Gender, age band and region type have no main effect: age enters only through the
    thin-file × young × electronics interaction above (a documented, deliberate one), and
    region only through what it changes in behaviour (thin files, farming, wallets). With
    ``penalize_segment`` ("rural", "female", "age_18_25", ...) the segment gets +1.2 on the
    log-odds: the bias a fairness check should find.

    The intercept is solved (bisection) so that the mean PD over approved applications is
    8 % before any penalty; labels are ``default_flag = U < PD`` with U drawn per application
    from the application day's generator, so a penalty only ever adds defaults. ``max_dpd``
    is 90–150 for defaults, 1–89 for a PD-dependent share of the others, else 0.

    ``risk_auc_ceiling`` in truth.json is the AUC of these true PDs against the delivered
    labels: what a perfect model of this process would score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date

import numpy as np

from puhui.generate import reference as ref
from puhui.generate.population import Population
from puhui.generate.timeline import (
    SECONDS_PER_DAY,
    Stream,
    Timeline,
    age_in_years,
    epoch_day,
    rng_for,
)

PERFORMANCE_WINDOW_DAYS = 180
# Application ids are "A" + 4-digit day number since this date + 6-digit sequence.
APPLICATION_ID_EPOCH = date(2020, 1, 1)
# Applications per unit of application weight per customer-day (≈1.5 per person over 13
# months with the default onboarding pattern).
BASE_APPLICATION_RATE = 0.0052
FARMER_APPLICATION_SEASON = (0.8, 1.5, 1.9, 1.7, 1.0, 0.7, 0.7, 0.7, 1.1, 1.1, 0.7, 0.6)


@dataclass(frozen=True)
class RiskParameters:
    """Coefficients of the true log-odds of default (see the module docstring)."""

    target_approved_default_rate: float = 0.08
    thin_file: float = 0.55
    score_linear: float = 0.2
    score_step: float = 2.5  # a cliff around 640: sigmoid(6 * (z - 0.1))
    delinquency: float = 0.28
    severe_dpd: float = 0.6
    inquiry: float = 0.08
    inquiry_burst: float = 0.8
    no_open_account: float = 0.5  # accounts: U-shaped, none open is risky ...
    many_accounts: float = 0.2  # ... and so is each account beyond 3
    debt_to_income: float = 0.35
    credit_hungry: float = 0.9  # >= 4 inquiries in 6 months AND debt above 80 % of income
    income_band: tuple[float, ...] = (0.45, 0.2, 0.0, -0.35)
    occupation: tuple[float, ...] = (0.0, 0.15, 0.35, -0.3, -0.15)
    gig_low_income: float = 0.7  # gig worker with a low income band (on top of both)
    late_share: float = 4.0  # per unit of late share above the 6 % that is normal
    thin_file_late_share: float = 3.0  # extra for thin files (behaviour is all there is)
    outflow_excess: float = 3.0
    inflow_surplus: float = -1.5
    no_wallet: float = 0.25
    electronics: float = 1.0
    log_spend: float = -0.2
    no_ecommerce: float = 0.1
    thin_young_electronics: float = 4.0
    harvest_shortfall: float = 3.5
    small_farm: float = 0.35
    large_good_farm: float = -0.4
    farmer_no_coop: float = 0.3
    loan_to_income: float = 0.2
    loan_to_income_cliff: float = 1.8  # sigmoid((lti - 0.8) / 0.08): stretched borrowers
    segment_penalty: float = 1.2

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["income_band"] = dict(zip(ref.INCOME_BANDS, self.income_band, strict=True))
        out["occupation"] = dict(zip(ref.OCCUPATIONS, self.occupation, strict=True))
        return out


SEGMENTS: tuple[str, ...] = (
    *ref.REGION_TYPES, "male", "female", *(name for name, _, _ in ref.AGE_BANDS),
)


def segment_mask(
    segment: str, pop: Population, people: np.ndarray, at_days: np.ndarray
) -> np.ndarray:
    """Which of ``people`` (at epoch ``at_days``) belong to a named fairness segment."""
    if segment in ref.REGION_TYPES:
        return pop.region[people] == ref.REGION_TYPES.index(segment)
    if segment in ("male", "female"):
        return pop.gender[people] == (segment == "female")
    for name, low, high in ref.AGE_BANDS:
        if segment == name:
            age = age_in_years(pop.birth_day[people], at_days)
            return (age >= low) & (age <= high)
    raise ValueError(f"unknown segment {segment!r}; choose one of {', '.join(SEGMENTS)}")


# ---------------------------------------------------------------------------------------
# Credit bureau


@dataclass
class BureauHistory:
    """Monthly bureau state of the people with a record: arrays (month, holder)."""

    months: list[date]
    holders: np.ndarray  # person index of each holder
    position: np.ndarray  # per person: holder position, or -1 without a record
    accounts_open: np.ndarray
    delinquencies_24m: np.ndarray
    max_dpd_24m: np.ndarray
    inquiries_6m: np.ndarray
    total_debt_yuan: np.ndarray
    bureau_score: np.ndarray

    def month_index(self, days: np.ndarray) -> np.ndarray:
        """Index into ``months`` of the month each epoch day falls in."""
        starts = np.array([epoch_day(m) for m in self.months])
        return np.searchsorted(starts, days, side="right") - 1


def build_bureau_history(pop: Population, timeline: Timeline, seed: int) -> BureauHistory:
    """Evolve every record holder's bureau state month by month over the run."""
    months = timeline.bureau_months()
    holders = np.flatnonzero(pop.has_record)
    position = np.full(pop.n, -1, dtype=np.int64)
    position[holders] = np.arange(len(holders))
    k = len(holders)
    stress = pop.stress[holders].astype(np.float64)
    income_level = pop.income[holders].astype(np.float64)
    income_yuan = np.array(ref.INCOME_BAND_YUAN)[pop.income[holders]]
    business = pop.occupation[holders] == ref.SMALL_BUSINESS
    noise = pop.score_noise[holders].astype(np.float64)
    delinquency_rate = 0.25 * np.exp(0.9 * stress)
    inquiry_rate = 0.9 * np.exp(0.35 * stress) + 0.3 * business
    debt_median = 15_000.0 * np.array([0.6, 0.85, 1.1, 1.5])[pop.income[holders]]

    shape = (len(months), k)
    accounts = np.empty(shape, dtype=np.int16)
    delinquencies = np.empty(shape, dtype=np.int16)
    max_dpd = np.empty(shape, dtype=np.int16)
    inquiries = np.empty(shape, dtype=np.int16)
    debt = np.empty(shape, dtype=np.int32)
    score = np.empty(shape, dtype=np.int16)

    rng = rng_for(seed, Stream.BUREAU, 0)
    acc = rng.poisson(0.8 + 0.7 * income_level + 0.5 * business)
    deliq = np.minimum(rng.poisson(delinquency_rate), 12)
    worst = np.where(deliq > 0, _delinquency_severity(rng, stress), 0)
    worst = np.where((deliq == 0) & (rng.random(k) < 0.1), rng.integers(1, 30, k), worst)
    inq = rng.poisson(inquiry_rate)
    owed = acc * debt_median * np.exp(rng.normal(0.0, 0.8, k) + 0.25 * stress)
    for i, month in enumerate(months):
        if i > 0:
            rng = rng_for(seed, Stream.BUREAU, month.year * 100 + month.month)
            inq = rng.binomial(inq, 5 / 6) + rng.poisson(inquiry_rate / 6)
            new_deliq = rng.poisson(delinquency_rate / 24)
            deliq = np.minimum(deliq - rng.binomial(deliq, 1 / 24) + new_deliq, 12)
            worst = np.where(new_deliq > 0, np.maximum(worst, _delinquency_severity(rng, stress)),
                             worst)
            worst = np.where((deliq == 0) & (worst >= 30), 0, worst)
            u = rng.random(k)
            opened = u < 0.03
            closed = (u > 0.975) & (acc > 0)
            acc = acc + opened - closed
            owed = owed * np.exp(rng.normal(0.005, 0.05, k)) + opened * debt_median
            owed = np.where(acc == 0, 0.0, owed)
            jitter = rng.normal(0.0, 4.0, k)
        else:
            jitter = np.zeros(k)
        accounts[i] = acc
        delinquencies[i] = deliq
        max_dpd[i] = worst
        inquiries[i] = inq
        debt[i] = np.round(owed / 100) * 100
        raw_score = (
            705 - 26 * np.minimum(deliq, 6) - 0.35 * worst - 9 * np.minimum(inq, 10)
            + 6 * np.minimum(acc, 6) - 30 * np.log1p(owed / income_yuan) + 1.4 * noise + jitter
        )
        score[i] = np.clip(np.rint(raw_score), 300, 850)
    return BureauHistory(
        months=months, holders=holders, position=position, accounts_open=accounts,
        delinquencies_24m=delinquencies, max_dpd_24m=max_dpd, inquiries_6m=inquiries,
        total_debt_yuan=debt, bureau_score=score,
    )


def _delinquency_severity(rng: np.random.Generator, stress: np.ndarray) -> np.ndarray:
    """Days past due of a delinquency: 30, 60, 90, ... (worse under stress), up to 180."""
    steps = 1 + rng.poisson(0.6 * np.exp(0.6 * stress))
    return np.minimum(30 * steps + rng.integers(0, 10, len(stress)), 180)


# ---------------------------------------------------------------------------------------
# Loan applications, PD and outcomes


@dataclass
class Applications:
    """Every loan application of the run (history and delivery window), in time order."""

    day: np.ndarray  # epoch day
    time: np.ndarray  # epoch seconds
    number: np.ndarray  # numeric part of application_id
    person: np.ndarray
    product: np.ndarray  # index into ref.LOAN_PRODUCTS
    amount: np.ndarray  # yuan requested
    term_months: np.ndarray
    scenario: np.ndarray  # index into ref.SCENARIOS
    approved: np.ndarray
    pd: np.ndarray
    default: np.ndarray
    max_dpd: np.ndarray
    terms: dict[str, np.ndarray] = field(default_factory=dict)
    intercept: float = 0.0

    def __len__(self) -> int:
        return len(self.day)

    @property
    def observation_day(self) -> np.ndarray:
        return self.day + PERFORMANCE_WINDOW_DAYS


def build_applications(
    pop: Population, bureau: BureauHistory, timeline: Timeline, seed: int,
    products: Sequence[str], params: RiskParameters, penalize_segment: str | None,
) -> Applications:
    """Draw all applications day by day, decide them, and draw their outcomes."""
    loan_products = [p for p in ref.LOAN_PRODUCTS if p in products]
    if not loan_products:
        raise ValueError("products must include a loan product: " + ", ".join(ref.LOAN_PRODUCTS))
    farmers = np.flatnonzero(pop.occupation == ref.FARMER)
    others = np.flatnonzero(pop.occupation != ref.FARMER)
    streams = [
        (farmers, np.cumsum(pop.application_weight[farmers], dtype=np.float64), True),
        (others, np.cumsum(pop.application_weight[others], dtype=np.float64), False),
    ]
    id_epoch = epoch_day(APPLICATION_ID_EPOCH)
    parts: list[dict[str, np.ndarray]] = []
    for d in timeline.all_days:
        day = epoch_day(d)
        rng = rng_for(seed, Stream.APPLICATIONS, day)
        chosen = []
        for members, cum, seasonal in streams:
            if len(members) == 0:
                continue
            rate = BASE_APPLICATION_RATE * cum[-1]
            if seasonal:
                rate *= FARMER_APPLICATION_SEASON[d.month - 1]
            count = rng.poisson(rate)
            picks = np.searchsorted(cum, np.sort(rng.random(count)) * cum[-1], side="right")
            chosen.append(members[np.minimum(picks, len(members) - 1)])
        people = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
        people = people[pop.onboard_day[people] <= day]
        n = len(people)
        seconds = _hour_profile_seconds(rng, n, ref.BUSINESS_HOURS)
        draws = rng.random((n, 7))  # product, term, scenario, override, default, mild, dpd
        amount_z = rng.standard_normal(n)
        order = np.argsort(seconds, kind="stable")
        people, seconds, draws = people[order], seconds[order], draws[order]
        amount_z = amount_z[order]
        product = _choose_product(pop, people, draws[:, 0], loan_products)
        parts.append({
            "day": np.full(n, day, dtype=np.int64),
            "time": day * SECONDS_PER_DAY + seconds - 8 * 3600,
            "number": (day - id_epoch) * 1_000_000 + np.arange(1, n + 1),
            "person": people,
            "product": product,
            "amount": _loan_amount(pop, people, product, amount_z),
            "term_months": _term_months(product, draws[:, 1]),
            "scenario": _scenario(pop, people, product, draws[:, 2]),
            "draws": draws[:, 3:],
        })
    cols = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    draws = cols.pop("draws")
    apps = Applications(
        **cols, approved=np.zeros(0, bool), pd=np.zeros(0), default=np.zeros(0, bool),
        max_dpd=np.zeros(0, np.int16),
    )
    features = applicant_features(pop, bureau, apps)
    terms = risk_terms(features, params)
    base = np.sum(list(terms.values()), axis=0)
    apps.approved = legacy_decision(features) ^ (draws[:, 0] < 0.03)
    apps.intercept = _solve_intercept(base[apps.approved], params.target_approved_default_rate)
    logit = apps.intercept + base
    if penalize_segment is not None:
        in_segment = segment_mask(penalize_segment, pop, apps.person, apps.day)
        terms["penalty"] = params.segment_penalty * in_segment
        logit = logit + terms["penalty"]
    apps.terms = terms
    apps.pd = 1.0 / (1.0 + np.exp(-logit))
    apps.default = draws[:, 1] < apps.pd
    mild = ~apps.default & (draws[:, 2] < np.minimum(0.5, 2.5 * apps.pd))
    apps.max_dpd = np.where(
        apps.default, 90 + (draws[:, 3] * 61).astype(np.int64),
        np.where(mild, 1 + (draws[:, 3] * 89).astype(np.int64), 0),
    ).astype(np.int16)
    return apps


def _hour_profile_seconds(
    rng: np.random.Generator, n: int, profile: Sequence[float]
) -> np.ndarray:
    """Seconds after local midnight, with the hour drawn from an activity profile."""
    p = np.asarray(profile, dtype=np.float64)
    hours = rng.choice(24, size=n, p=p / p.sum())
    return hours * 3600 + rng.integers(0, 3600, n)


def _choose_product(
    pop: Population, people: np.ndarray, u: np.ndarray, loan_products: list[str]
) -> np.ndarray:
    occupation = pop.occupation[people]
    agri = ref.LOAN_PRODUCTS.index("agri_loan")
    business = ref.LOAN_PRODUCTS.index("business_loan")
    micro = ref.LOAN_PRODUCTS.index("microloan")
    product = np.full(len(people), micro)
    product[(occupation == ref.FARMER) & (u < 0.7)] = agri
    product[(occupation != ref.FARMER) & pop.is_coop_member[people] & (u < 0.2)] = agri
    product[(occupation == ref.SMALL_BUSINESS) & (u < 0.65)] = business
    product[(occupation == ref.GIG) & (u < 0.05)] = business
    allowed = np.array([p in loan_products for p in ref.LOAN_PRODUCTS])
    fallback = ref.LOAN_PRODUCTS.index(loan_products[0])
    return np.where(allowed[product], product, fallback).astype(np.int8)


def _loan_amount(
    pop: Population, people: np.ndarray, product: np.ndarray, z: np.ndarray
) -> np.ndarray:
    income_factor = np.array([0.6, 0.85, 1.1, 1.5])[pop.income[people]]
    acreage = np.maximum(pop.acreage[people], 2.0)
    median = np.select(
        [product == 0, product == 1],
        [6_000 * income_factor, 6_000 * np.sqrt(acreage) * income_factor ** 0.5],
        40_000 * income_factor,
    )
    sigma = np.array([0.6, 0.5, 0.7])[product]
    low = np.array([1_000, 3_000, 10_000])[product]
    high = np.array([50_000, 300_000, 500_000])[product]
    step = np.array([500, 1_000, 1_000])[product]
    amount = np.clip(median * np.exp(sigma * z), low, high)
    return (np.round(amount / step) * step).astype(np.int64)


def _term_months(product: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.select(
        [product == 0, product == 1],
        [np.where(u < 0.3, 3, np.where(u < 0.7, 6, 12)), np.where(u < 0.4, 6, 12)],
        np.where(u < 0.5, 12, np.where(u < 0.85, 24, 36)),
    ).astype(np.int16)


def _scenario(
    pop: Population, people: np.ndarray, product: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """Where the applicant applied: weights over (ECOMMERCE, WALLET, COOP, BRANCH)."""
    base = np.array([
        [0.45, 0.40, 0.0, 0.15],  # microloan
        [0.25, 0.0, 0.55, 0.20],  # agri_loan
        [0.0, 0.55, 0.0, 0.45],  # business_loan
    ])[product]
    channel = np.stack([
        pop.is_shopper[people], pop.has_wallet[people], pop.is_coop_member[people],
        np.ones(len(people), dtype=bool),
    ], axis=1)
    weights = base * channel
    cum = np.cumsum(weights, axis=1)
    pick = (u[:, None] * cum[:, -1:] >= cum).sum(axis=1)
    return np.minimum(pick, 3).astype(np.int8)


@dataclass
class ApplicantFeatures:
    """What the PD is a function of, per application (point in time)."""

    thin: np.ndarray
    score: np.ndarray
    accounts: np.ndarray
    delinquencies: np.ndarray
    max_dpd: np.ndarray
    inquiries: np.ndarray
    debt: np.ndarray
    income: np.ndarray
    income_yuan: np.ndarray
    occupation: np.ndarray
    has_wallet: np.ndarray
    late_share: np.ndarray
    inflow_ratio: np.ndarray
    is_shopper: np.ndarray
    electronics_share: np.ndarray
    monthly_spend: np.ndarray
    farmer: np.ndarray
    coop_member: np.ndarray
    acreage: np.ndarray
    harvest_quality: np.ndarray
    young: np.ndarray
    amount: np.ndarray

    @property
    def loan_to_income(self) -> np.ndarray:
        return self.amount / self.income_yuan


def applicant_features(
    pop: Population, bureau: BureauHistory, apps: Applications
) -> ApplicantFeatures:
    """Gather each applicant's facts as of the application (bureau: that month's snapshot)."""
    p = apps.person
    pos = bureau.position[p]
    thin = pos < 0
    month = bureau.month_index(apps.day)
    safe_pos = np.where(thin, 0, pos)

    def bureau_value(table: np.ndarray) -> np.ndarray:
        if table.shape[1] == 0:
            return np.zeros(len(p))
        return np.where(thin, 0, table[month, safe_pos]).astype(np.float64)

    return ApplicantFeatures(
        thin=thin,
        score=bureau_value(bureau.bureau_score),
        accounts=bureau_value(bureau.accounts_open),
        delinquencies=bureau_value(bureau.delinquencies_24m),
        max_dpd=bureau_value(bureau.max_dpd_24m),
        inquiries=bureau_value(bureau.inquiries_6m),
        debt=bureau_value(bureau.total_debt_yuan),
        income=pop.income[p].astype(np.int64),
        income_yuan=np.array(ref.INCOME_BAND_YUAN)[pop.income[p]],
        occupation=pop.occupation[p].astype(np.int64),
        has_wallet=pop.has_wallet[p],
        late_share=pop.late_share[p].astype(np.float64),
        inflow_ratio=pop.inflow_ratio[p].astype(np.float64),
        is_shopper=pop.is_shopper[p],
        electronics_share=pop.electronics_share[p].astype(np.float64),
        monthly_spend=pop.monthly_spend[p].astype(np.float64),
        farmer=pop.occupation[p] == ref.FARMER,
        coop_member=pop.is_coop_member[p],
        acreage=pop.acreage[p].astype(np.float64),
        harvest_quality=pop.harvest_quality[p].astype(np.float64),
        young=age_in_years(pop.birth_day[p], apps.day) <= 25,
        amount=apps.amount.astype(np.float64),
    )


def risk_terms(f: ApplicantFeatures, p: RiskParameters) -> dict[str, np.ndarray]:
    """Each named term of the log-odds of default (the intercept and penalty excluded)."""
    record = ~f.thin
    z = (650.0 - f.score) / 100.0
    ratio = f.inflow_ratio
    spend = np.clip(np.log(np.maximum(f.monthly_spend, 1.0) / 300.0), -2.0, 2.0)
    member_farmer = f.farmer & f.coop_member
    lti = f.loan_to_income
    return {
        "thin_file": p.thin_file * f.thin,
        "score": record * (
            p.score_linear * z + p.score_step / (1.0 + np.exp(-6.0 * (z - 0.1)))
        ),
        "delinquencies": record * p.delinquency * np.minimum(f.delinquencies, 6),
        "severe_dpd": record * p.severe_dpd * (f.max_dpd >= 90),
        "inquiries": record * (
            p.inquiry * np.minimum(f.inquiries, 12) + p.inquiry_burst * (f.inquiries >= 6)
        ),
        "accounts": record * (
            p.no_open_account * (f.accounts == 0) + p.many_accounts * np.maximum(0, f.accounts - 3)
        ),
        "debt_to_income": record * p.debt_to_income * np.log1p(f.debt / f.income_yuan),
        "credit_hungry": record * p.credit_hungry
        * ((f.inquiries >= 4) & (f.debt > 0.8 * f.income_yuan)),
        "income_band": np.array(p.income_band)[f.income],
        "occupation": np.array(p.occupation)[f.occupation]
        + p.gig_low_income * ((f.occupation == ref.GIG) & (f.income == 0)),
        "wallet": np.where(
            f.has_wallet,
            (p.late_share + p.thin_file_late_share * f.thin)
            * np.maximum(0.0, f.late_share - 0.06)
            + p.outflow_excess * np.maximum(0.0, 1.0 - ratio)
            + p.inflow_surplus * np.minimum(np.maximum(ratio - 1.0, 0.0), 0.3),
            p.no_wallet,
        ),
        "ecommerce": np.where(
            f.is_shopper, p.electronics * f.electronics_share + p.log_spend * spend,
            p.no_ecommerce,
        ),
        "thin_young_electronics": (f.thin & f.young) * p.thin_young_electronics
        * np.maximum(0.0, f.electronics_share - 0.25),
        "farm": np.where(
            member_farmer,
            p.harvest_shortfall * np.maximum(0.0, 0.9 - f.harvest_quality)
            + p.small_farm * (f.acreage < 4)
            + p.large_good_farm * ((f.acreage >= 30) & (f.harvest_quality >= 1.0)),
            f.farmer * p.farmer_no_coop,
        ),
        "loan_to_income": p.loan_to_income * lti
        + p.loan_to_income_cliff / (1.0 + np.exp(-(lti - 0.8) / 0.08)),
    }


def legacy_decision(f: ApplicantFeatures) -> np.ndarray:
    """The lender's old scorecard rule (True = approved), before branch overrides."""
    points = np.where(f.thin, 600.0, f.score) + np.array([-25.0, -5.0, 10.0, 25.0])[f.income]
    return (points >= 580) & (f.loan_to_income <= 2.0) & (f.delinquencies < 3)


def _solve_intercept(base: np.ndarray, target: float) -> float:
    """The intercept b with mean(sigmoid(b + base)) == target (bisection)."""
    if len(base) == 0:
        return float(np.log(target / (1 - target)))
    low, high = -20.0, 20.0
    for _ in range(60):
        mid = (low + high) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(mid + base)))) > target:
            high = mid
        else:
            low = mid
    return (low + high) / 2


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve via the rank-sum statistic (ties get average ranks)."""
    labels = np.asarray(labels, dtype=bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(average, counts)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))
