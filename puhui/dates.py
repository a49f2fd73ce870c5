"""Dates in the lender's timezone (delivery dates and as-of dates are local, not UTC)."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

LENDER_TIMEZONE = ZoneInfo("Asia/Shanghai")


# fromisoformat alone also takes 20260101 and the week date 2026-W01-1 (2025-12-29): a
# release went ahead with that day's end as the bound on event times (round 16), and
# `run report --as-of 2026-W01-1` ran for 2025-12-29 (round 17).
DAY_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_day(text: str) -> date:
    """``YYYY-MM-DD`` and nothing else as a date; ValueError otherwise (2026-13-45 too)."""
    if not DAY_TEXT.fullmatch(text):
        raise ValueError(f"not a date YYYY-MM-DD: {text!r}")
    return date.fromisoformat(text)


def today_local() -> date:
    return datetime.now(LENDER_TIMEZONE).date()


def date_range(start: date, end: date) -> list[date]:
    """Every date from ``start`` to ``end`` inclusive."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]
