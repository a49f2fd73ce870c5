"""Detecting raw personal identifiers in text that must never carry them.

Used as a guard where text leaves the pipeline (audit details, reports, logs) and by the
privacy scan tests. National IDs count only with a valid check digit, which keeps random
digit runs (amounts, counters) from raising false alarms.
"""

from __future__ import annotations

import re

from puhui.identifiers import is_valid_national_id

_NATIONAL_ID = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
_MOBILE_PHONE = re.compile(
    r"(?<![0-9A-Za-z+])(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?![0-9A-Za-z])"
)


def find_raw_identifiers(text: str) -> list[str]:
    """The kinds of raw identifier found in ``text`` ("national ID", "phone number")."""
    found: list[str] = []
    if any(is_valid_national_id(m.group()) for m in _NATIONAL_ID.finditer(text)):
        found.append("national ID")
    if _MOBILE_PHONE.search(text):
        found.append("phone number")
    return found
