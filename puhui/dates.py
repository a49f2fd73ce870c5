"""Dates in the lender's timezone (delivery dates and as-of dates are local, not UTC)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

LENDER_TIMEZONE = ZoneInfo("Asia/Shanghai")


def today_local() -> date:
    return datetime.now(LENDER_TIMEZONE).date()


def date_range(start: date, end: date) -> list[date]:
    """Every date from ``start`` to ``end`` inclusive."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]
