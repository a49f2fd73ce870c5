"""The synthetic population: who the people are and the per-person rates that drive behaviour.

One row per person, held as numpy arrays (about 150 bytes a person, so a million people
fit in a few hundred MiB). Two kinds of columns:

* facts the lender can observe (KYC: gender, birth date, region type, province, occupation,
  income band, onboarding date; identifiers), and
* behavioural rates (payment rate, bill-pay lateness share, inflow/outflow ratio, order
  rate, electronics share, acreage, harvest quality, ...) that the partner feeds are drawn
  from. The true PD (``process.py``) is a function of the observable facts and of these
  rates, so windows of feed data estimate what drives risk.

``stress`` is a hidden financial-stress factor that correlates the rates with each other
and with income; it does not enter the PD itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from puhui.generate import reference as ref
from puhui.generate.formatting import digit_matrix, prefixed_ids, strings_from_matrix
from puhui.generate.timeline import Stream, Timeline, age_in_years, epoch_day, rng_for
from puhui.identifiers import national_id_check_codes

# Share of the population already onboarded before the history window starts.
PRE_HISTORY_ONBOARDED = 0.5
PRE_HISTORY_SPAN_DAYS = 3 * 365
MEAN_PAYMENT_RATE = 0.10  # transactions per wallet user per day
MEAN_ORDER_RATE = 0.045  # orders per shopper per day
MEAN_IMPRESSION_RATE = 0.03  # product offers shown per customer per day


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Population:
    """Per-person columns (index = person number 0..n-1)."""

    n: int
    # KYC facts
    gender: np.ndarray  # 0 = M, 1 = F
    birth_day: np.ndarray  # epoch days
    region: np.ndarray  # index into ref.REGION_TYPES
    province: np.ndarray  # index into ref.PROVINCES
    occupation: np.ndarray  # index into ref.OCCUPATIONS
    income: np.ndarray  # index into ref.INCOME_BANDS
    onboard_day: np.ndarray  # epoch days
    phone: np.ndarray  # int64, 11 digits
    # identifiers as strings, ready to be taken into files
    customer_id: pa.Array
    national_id: pa.Array
    phone_text: pa.Array  # 3n values: plain, "+86 138 1234 5678", "138-1234-5678"
    # hidden
    stress: np.ndarray
    # credit bureau
    has_record: np.ndarray
    score_noise: np.ndarray
    # mobile wallet
    has_wallet: np.ndarray
    payment_rate: np.ndarray
    txn_type_cum: np.ndarray  # (n, 4) cumulative probabilities of ref.TXN_TYPES
    amount_scale: np.ndarray
    inflow_multiplier: np.ndarray
    late_share: np.ndarray
    late_severity: np.ndarray
    inflow_ratio: np.ndarray
    # e-commerce
    is_shopper: np.ndarray
    order_rate: np.ndarray
    electronics_share: np.ndarray
    agri_share: np.ndarray
    spend_scale: np.ndarray
    monthly_spend: np.ndarray
    phone_style: np.ndarray  # preferred phone format on the e-commerce platform
    # agri co-op
    is_coop_member: np.ndarray
    coop_name_index: np.ndarray
    crop: np.ndarray
    acreage: np.ndarray
    harvest_quality: np.ndarray
    # lender engagement
    application_weight: np.ndarray
    engagement: np.ndarray
    coop_names: tuple[str, ...] = field(default=())

    def age_at(self, days: np.ndarray | int, people: np.ndarray | None = None) -> np.ndarray:
        """Completed years of age of ``people`` (default everyone) at epoch ``days``."""
        birth = self.birth_day if people is None else self.birth_day[people]
        return age_in_years(birth, days)


def build_population(n: int, seed: int, timeline: Timeline) -> Population:
    """Draw ``n`` people; deterministic in (n, seed, timeline)."""
    rng = rng_for(seed, Stream.POPULATION)
    end = epoch_day(timeline.end_date)

    region = rng.choice(3, size=n, p=[0.42, 0.25, 0.33]).astype(np.int8)
    weights = np.array([p.weight for p in ref.PROVINCES])
    province = rng.choice(len(ref.PROVINCES), size=n, p=weights / weights.sum()).astype(np.int16)
    occupation_p = np.array([
        [0.55, 0.12, 0.15, 0.08, 0.10],  # rural
        [0.15, 0.25, 0.25, 0.25, 0.10],  # county
        [0.02, 0.18, 0.25, 0.45, 0.10],  # urban
    ])
    occupation = _choose_rows(rng, occupation_p[region]).astype(np.int8)
    gender = (rng.random(n) < 0.49).astype(np.int8)

    # Age at the end date by occupation (retired people are 60+).
    age_mean = np.array([46.0, 40.0, 29.0, 34.0, 0.0])[occupation]
    age_sd = np.array([11.0, 9.0, 7.0, 9.0, 0.0])[occupation]
    age = np.clip(np.rint(rng.normal(age_mean, age_sd)), 18, 70)
    retired = occupation == ref.RETIRED
    age[retired] = rng.integers(60, 79, size=int(retired.sum()))
    age = age.astype(np.int64)
    birth_day = end - np.floor(age * 365.2425).astype(np.int64) - rng.integers(1, 365, size=n)
    age_now = age_in_years(birth_day, end)

    stress = rng.standard_normal(n).astype(np.float32)
    income_score = (
        np.array([-0.6, 0.4, -0.2, 0.5, -0.3])[occupation]
        + np.array([-0.5, 0.0, 0.5])[region]
        - 0.45 * stress
        + rng.normal(0.0, 0.8, n)
    )
    income = np.digitize(income_score, [-0.8, 0.1, 1.0]).astype(np.int8)

    onboard_day = _onboarding_days(rng, n, timeline, birth_day)
    phone = _unique_phones(rng, n)
    national_id = _national_ids(rng, province, region, birth_day, gender)

    young = age_now <= 25
    farmer = occupation == ref.FARMER
    # Thin file: no bureau record ("missing is information"); rural, young, farmers, gig.
    no_record_logit = (
        -2.1 + np.array([1.7, 0.85, 0.0])[region] + 0.85 * young + 0.45 * farmer
        + 0.35 * (occupation == ref.GIG)
        + 0.2 * retired - 0.15 * income
    )
    has_record = rng.random(n) >= _sigmoid(no_record_logit)
    score_noise = rng.normal(0.0, 28.0, n).astype(np.float32)

    # Mobile wallet: ~80 % have one; heterogeneous lognormal activity.
    wallet_p = np.array([0.8, 0.84, 0.9])[region] * np.where(retired, 0.62, 1.0)
    has_wallet = rng.random(n) < wallet_p
    business = occupation == ref.SMALL_BUSINESS
    raw_rate = np.exp(rng.normal(0.0, 0.9, n)) * np.where(business, 1.6, 1.0)
    payment_rate = np.where(has_wallet, raw_rate, 0.0)
    payment_rate *= MEAN_PAYMENT_RATE / payment_rate[has_wallet].mean() if has_wallet.any() else 0
    base_types = np.array([0.22, 0.26, 0.20, 0.32])
    business_types = np.array([0.16, 0.36, 0.20, 0.28])
    alpha = np.where((occupation == ref.SMALL_BUSINESS)[:, None], business_types, base_types) * 25
    gammas = rng.gamma(alpha)
    type_p = gammas / gammas.sum(axis=1, keepdims=True)
    amount_scale = (
        np.exp(rng.normal(0.0, 0.35, n)) * np.array([0.7, 0.9, 1.15, 1.5])[income]
    ).astype(np.float32)
    late_share = _sigmoid(-3.0 + 1.0 * stress + rng.normal(0.0, 0.6, n)).astype(np.float32)
    late_severity = (1.5 + 7.0 * _sigmoid(stress + rng.normal(0.0, 0.7, n))).astype(np.float32)
    inflow_ratio = np.exp(0.04 - 0.10 * stress + rng.normal(0.0, 0.08, n)).astype(np.float32)
    median = np.array(ref.TXN_MEDIAN_YUAN)
    outflow = (type_p[:, [0, 2, 3]] * median[[0, 2, 3]]).sum(axis=1)
    inflow_multiplier = (inflow_ratio * outflow / (type_p[:, 1] * median[1])).astype(np.float32)

    # E-commerce.
    shopper_p = np.array([0.55, 0.68, 0.78])[region] * np.where(retired, 0.55, 1.0)
    is_shopper = rng.random(n) < shopper_p
    order_rate = np.where(is_shopper, np.exp(rng.normal(0.0, 0.8, n)), 0.0)
    order_rate *= MEAN_ORDER_RATE / order_rate[is_shopper].mean() if is_shopper.any() else 0
    electronics_share = _sigmoid(
        -1.6 + 0.7 * young + 0.3 * (occupation == ref.GIG) + 0.35 * stress
        + rng.normal(0.0, 0.6, n)
    ).astype(np.float32)
    agri_share = np.where(
        farmer, np.clip(rng.beta(4, 7, n), 0.05, 0.8),
        np.array([0.04, 0.02, 0.005])[region],
    ).astype(np.float32)
    spend_scale = (
        np.exp(rng.normal(0.0, 0.3, n)) * np.array([0.75, 0.9, 1.1, 1.4])[income]
    ).astype(np.float32)
    phone_style = rng.choice(3, size=n, p=[0.6, 0.25, 0.15]).astype(np.int8)

    # Agri co-op membership (mostly rural farmers), crop, acreage and harvest quality.
    member_p = np.where(farmer, np.array([0.65, 0.45, 0.2])[region],
                        np.where(region == 0, 0.04, 0.0))
    is_coop_member = rng.random(n) < member_p
    zone_mix = np.array([ref.CROP_MIX_BY_ZONE[p.crop_zone] for p in ref.PROVINCES])
    crop = _choose_rows(rng, zone_mix[province]).astype(np.int8)
    acreage = np.clip(np.round(np.exp(rng.normal(np.log(8.0), 0.8, n)) * 2) / 2, 0.5, 300.0)
    acreage = np.where(farmer | is_coop_member, acreage, 0.0).astype(np.float32)
    harvest_quality = np.exp(-0.15 * stress + rng.normal(0.0, 0.18, n)).astype(np.float32)
    coop_names, coop_name_index = _coop_assignment(rng, province)

    monthly_spend = _expected_monthly_spend(
        order_rate, agri_share, electronics_share, spend_scale, acreage
    )

    application_weight = (
        np.exp(rng.normal(-0.18, 0.6, n)) * np.exp(0.2 * stress)
        * np.array([1.0, 1.4, 1.1, 0.9, 0.4])[occupation]
    ).astype(np.float32)
    engagement = (
        (0.4 + 0.8 * has_wallet + 0.6 * is_shopper + 0.4 * is_coop_member)
        * np.exp(rng.normal(-0.125, 0.5, n))
    ).astype(np.float32)

    customer_number = (np.arange(n, dtype=np.int64) * 282_475_249 + 12_345_678) % 900_000_000
    return Population(
        n=n, gender=gender, birth_day=birth_day, region=region, province=province,
        occupation=occupation, income=income, onboard_day=onboard_day, phone=phone,
        customer_id=prefixed_ids("C", customer_number + 100_000_000, 9),
        national_id=national_id, phone_text=_phone_texts(phone),
        stress=stress, has_record=has_record, score_noise=score_noise,
        has_wallet=has_wallet, payment_rate=payment_rate.astype(np.float32),
        txn_type_cum=np.cumsum(type_p, axis=1).astype(np.float32), amount_scale=amount_scale,
        inflow_multiplier=inflow_multiplier, late_share=late_share, late_severity=late_severity,
        inflow_ratio=inflow_ratio, is_shopper=is_shopper, order_rate=order_rate.astype(np.float32),
        electronics_share=electronics_share, agri_share=agri_share, spend_scale=spend_scale,
        monthly_spend=monthly_spend, phone_style=phone_style, is_coop_member=is_coop_member,
        coop_name_index=coop_name_index, crop=crop, acreage=acreage,
        harvest_quality=harvest_quality, application_weight=application_weight,
        engagement=engagement, coop_names=coop_names,
    )


def _choose_rows(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One category per row of an (n, k) probability matrix."""
    cum = np.cumsum(probabilities, axis=1)
    u = rng.random(len(probabilities)) * cum[:, -1]
    return (u[:, None] >= cum).sum(axis=1)


def _onboarding_days(
    rng: np.random.Generator, n: int, timeline: Timeline, birth_day: np.ndarray
) -> np.ndarray:
    """Half the customers joined before the history window, the rest evenly after its start."""
    start = epoch_day(timeline.history_start)
    end = epoch_day(timeline.end_date)
    early = rng.random(n) < PRE_HISTORY_ONBOARDED
    days = np.where(
        early,
        rng.integers(start - PRE_HISTORY_SPAN_DAYS, start, size=n),
        rng.integers(start, end + 1, size=n),
    )
    # Nobody becomes a customer before turning 18.
    eighteenth = birth_day + np.ceil(18 * 365.2425).astype(np.int64)
    return np.minimum(np.maximum(days, eighteenth), end).astype(np.int64)


def _unique_phones(rng: np.random.Generator, n: int) -> np.ndarray:
    prefixes = np.array(ref.MOBILE_PREFIXES, dtype=np.int64)
    phone = prefixes[rng.integers(0, len(prefixes), n)] * 10**8 + rng.integers(0, 10**8, n)
    _redraw_duplicates(phone, lambda k: prefixes[rng.integers(0, len(prefixes), k)] * 10**8
                       + rng.integers(0, 10**8, k))
    return phone


def _redraw_duplicates(values: np.ndarray, draw: Callable[[int], np.ndarray]) -> None:
    """Replace later duplicates in ``values`` (in place) until all values are unique."""
    while True:
        _, first = np.unique(values, return_index=True)
        if len(first) == len(values):
            return
        dup = np.ones(len(values), dtype=bool)
        dup[first] = False
        values[dup] = draw(int(dup.sum()))


def _national_ids(
    rng: np.random.Generator, province: np.ndarray, region: np.ndarray,
    birth_day: np.ndarray, gender: np.ndarray,
) -> pa.Array:
    """18-character IDs: area code of the province (county for rural/county people), birth
    date, sequence with the right parity for gender, and the GB 11643 check digit."""
    n = len(province)
    area = np.empty(n, dtype=np.int64)
    for p_idx, prov in enumerate(ref.PROVINCES):
        for urban, codes in ((True, prov.districts), (False, prov.counties)):
            rows = np.flatnonzero((province == p_idx) & ((region == 2) == urban))
            if len(rows):
                table = np.array([code for code, _ in codes], dtype=np.int64)
                area[rows] = table[rng.integers(0, len(table), len(rows))]
    d = birth_day.astype("datetime64[D]")
    year = d.astype("datetime64[Y]").astype(np.int64) + 1970
    month = d.astype("datetime64[M]").astype(np.int64) % 12 + 1
    day = (d - d.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1
    birth = year * 10_000 + month * 100 + day

    def draw_sequence(k: int, rows: np.ndarray) -> np.ndarray:
        # 17th digit odd for men, even for women.
        base = rng.integers(0, 500, k) * 2
        return base + (gender[rows] == 0)

    sequence = draw_sequence(n, np.arange(n))
    key = (area * 100_000_000 + birth) * 1000 + sequence
    while True:  # the 17-digit body must be unique per person
        _, first = np.unique(key, return_index=True)
        if len(first) == n:
            break
        dup = np.ones(n, dtype=bool)
        dup[first] = False
        rows = np.flatnonzero(dup)
        sequence[rows] = draw_sequence(len(rows), rows)
        key = (area * 100_000_000 + birth) * 1000 + sequence
    digits = digit_matrix(key, 17)
    chars = np.empty((n, 18), dtype=np.uint8)
    chars[:, :17] = digits
    chars[:, 17] = national_id_check_codes(digits.astype(np.int64) - ord("0"))
    return strings_from_matrix(chars)


def _phone_texts(phone: np.ndarray) -> pa.Array:
    """Plain, international ("+86 138 1234 5678") and dashed ("138-1234-5678") forms."""
    n = len(phone)
    digits = digit_matrix(phone, 11)
    intl = np.empty((n, 17), dtype=np.uint8)
    intl[:, 0:4] = np.frombuffer(b"+86 ", dtype=np.uint8)
    intl[:, 4:7] = digits[:, 0:3]
    intl[:, 7] = ord(" ")
    intl[:, 8:12] = digits[:, 3:7]
    intl[:, 12] = ord(" ")
    intl[:, 13:17] = digits[:, 7:11]
    dashed = np.empty((n, 13), dtype=np.uint8)
    dashed[:, 0:3] = digits[:, 0:3]
    dashed[:, 3] = ord("-")
    dashed[:, 4:8] = digits[:, 3:7]
    dashed[:, 8] = ord("-")
    dashed[:, 9:13] = digits[:, 7:11]
    return pa.concat_arrays(
        [strings_from_matrix(digits), strings_from_matrix(intl), strings_from_matrix(dashed)]
    )


def _coop_assignment(
    rng: np.random.Generator, province: np.ndarray
) -> tuple[tuple[str, ...], np.ndarray]:
    """Co-op names (province + county + name word + 农民专业合作社) and each person's co-op."""
    names: list[str] = []
    first_of_province: list[int] = []
    count_of_province: list[int] = []
    for prov in ref.PROVINCES:
        first_of_province.append(len(names))
        for _, county in prov.counties:
            for word in ref.COOP_NAME_WORDS:
                names.append(f"{prov.full_name}{county}{word}农民专业合作社")
        count_of_province.append(len(names) - first_of_province[-1])
    first = np.array(first_of_province)[province]
    count = np.array(count_of_province)[province]
    index = first + (rng.random(len(province)) * count).astype(np.int64)
    return tuple(names), index.astype(np.int32)


def _expected_monthly_spend(
    order_rate: np.ndarray, agri_share: np.ndarray, electronics_share: np.ndarray,
    spend_scale: np.ndarray, acreage: np.ndarray,
) -> np.ndarray:
    """Expected e-commerce spend per month (yuan) implied by the order process in feeds.py."""
    med = np.array(ref.ECOMMERCE_MEDIAN_YUAN)
    lognormal_mean = np.exp(ORDER_AMOUNT_SIGMA**2 / 2)
    other = (
        OTHER_CATEGORY_SPLIT[0] * med[ref.GROCERY] + OTHER_CATEGORY_SPLIT[1] * med[ref.APPAREL]
        + OTHER_CATEGORY_SPLIT[2] * med[ref.HOUSEHOLD]
    )
    general = electronics_share * med[ref.ELECTRONICS] + (1 - electronics_share) * other
    agri = med[ref.AGRI_INPUT] * agri_input_size(acreage)
    per_order = (1 - agri_share) * general + agri_share * agri
    return (30.0 * order_rate * per_order * spend_scale * lognormal_mean).astype(np.float32)


ORDER_AMOUNT_SIGMA = 0.7
# Non-electronics general orders split between grocery, apparel and household.
OTHER_CATEGORY_SPLIT = (0.55, 0.22, 0.23)


def agri_input_size(acreage: np.ndarray) -> np.ndarray:
    """Agri-input order size relative to an 8-mu farm."""
    return np.sqrt(np.maximum(acreage, 1.0) / 8.0)
