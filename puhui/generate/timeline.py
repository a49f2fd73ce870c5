"""Dates of a landing zone (delivery window, back history, months) and the seeding scheme.

Days are handled as integer "epoch days" (days since 1970-01-01, numpy ``datetime64[D]``
integers) so that whole columns of dates are plain int arrays; event times are int64
seconds since the epoch (UTC instants, written in Asia/Shanghai local time, +08:00).

Every random draw comes from a generator seeded by ``(seed, stream, key)`` where ``key`` is
the day (or month) the draw belongs to, so a partner-day's rows do not depend on how the run
is chunked, on other partners, or on the order files are written in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from enum import IntEnum

import numpy as np

EPOCH = date(1970, 1, 1)
LOCAL_OFFSET_SECONDS = 8 * 3600  # Asia/Shanghai has no DST: always UTC+08:00
SECONDS_PER_DAY = 86_400


class Stream(IntEnum):
    """Independent random streams; the value is part of every seed, so never renumber."""

    POPULATION = 1
    BUREAU = 2
    APPLICATIONS = 3
    MOBILE_PAYMENTS = 4
    ECOMMERCE = 5
    AGRI_COOP = 6
    PRODUCT_EVENTS = 7
    FAULTS = 8


def rng_for(seed: int, stream: Stream, key: int = 0) -> np.random.Generator:
    """A generator for one stream and key (a day or month), independent of all others."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(stream), key)))


def epoch_day(d: date) -> int:
    """Days since 1970-01-01."""
    return (d - EPOCH).days


def from_epoch_day(day: int) -> date:
    """The date of an epoch day."""
    return EPOCH + timedelta(days=int(day))


def month_start(d: date) -> date:
    return d.replace(day=1)


def next_month(d: date) -> date:
    return (d.replace(day=28) + timedelta(days=4)).replace(day=1)


def month_key(d: date) -> int:
    """A month as an integer yyyymm (used as a seed key and in file names)."""
    return d.year * 100 + d.month


@dataclass(frozen=True)
class Timeline:
    """The delivery window (``days`` dates ending at ``end_date``) and the back history."""

    end_date: date
    days: int
    history_days: int

    @property
    def first_delivery(self) -> date:
        return self.end_date - timedelta(days=self.days - 1)

    @property
    def history_start(self) -> date:
        """First day of the back history (the earliest event day of any feed)."""
        return self.first_delivery - timedelta(days=self.history_days)

    @property
    def delivery_dates(self) -> list[date]:
        return [self.first_delivery + timedelta(days=i) for i in range(self.days)]

    @property
    def all_days(self) -> list[date]:
        """Every event day, history and delivery window, in order."""
        n = self.history_days + self.days
        return [self.history_start + timedelta(days=i) for i in range(n)]

    def history_months(self) -> list[date]:
        """Month starts of the months that overlap the history window (one file each)."""
        months: list[date] = []
        m = month_start(self.history_start)
        last = self.first_delivery - timedelta(days=1)
        if self.history_days == 0:
            return [month_start(self.first_delivery)]
        while m <= last:
            months.append(m)
            m = next_month(m)
        return months

    def report_dates(self) -> list[date]:
        """Firsts of the month between history start and end date (monthly deliveries)."""
        m = month_start(self.history_start)
        if m < self.history_start:
            m = next_month(m)
        out: list[date] = []
        while m <= self.end_date:
            out.append(m)
            m = next_month(m)
        return out

    def bureau_months(self) -> list[date]:
        """Month starts whose bureau state any event of the run can need."""
        out: list[date] = []
        m = month_start(self.history_start)
        while m <= self.end_date:
            out.append(m)
            m = next_month(m)
        return out

    def is_history(self, d: date) -> bool:
        return d < self.first_delivery


def day_month_starts(days: np.ndarray) -> np.ndarray:
    """Epoch day of the first of the month, for an array of epoch days."""
    return days.astype("datetime64[D]").astype("datetime64[M]").astype("datetime64[D]").astype(
        np.int64
    )


def age_in_years(birth_days: np.ndarray, at_days: np.ndarray | int) -> np.ndarray:
    """Completed years of age at ``at_days`` (exact, birthday-aware)."""
    b = birth_days.astype("datetime64[D]")
    a = np.asarray(at_days).astype("datetime64[D]")
    by = b.astype("datetime64[Y]").astype(np.int64)
    ay = a.astype("datetime64[Y]").astype(np.int64)
    # Compare (month, day) rather than day-of-year so leap years do not shift birthdays.
    bm = b.astype("datetime64[M]").astype(np.int64) % 12
    am = a.astype("datetime64[M]").astype(np.int64) % 12
    bd = (b - b.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64)
    ad = (a - a.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64)
    before_birthday = (am < bm) | ((am == bm) & (ad < bd))
    return ay - by - before_birthday
