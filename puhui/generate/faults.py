"""Planted faults: which delivered file gets which bad input, and how it is made bad.

Each fault kind of DOMAIN.md goes into its own delivered (never a history) file, chosen
deterministically from the delivery window and spread over the partners where the fault is
realistic (GBK mix-ups in the KYC register, redeliveries of e-commerce orders, timezone
slips and broken transfers in the high-volume wallet feed, ...). ``expect`` is what
ingestion must do with the file (see CONTRACT.md).

A fault either changes the batch before it is written (columns dropped, added, renamed or
retyped; rows duplicated, emptied, pushed out of range or into the future) or changes the
written bytes (wrong encoding, BOM, truncation, zero bytes, a byte copy of an earlier file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from puhui.generate.arguments import BadArgument
from puhui.generate.batch import Batch, Column, batch_rows, take_rows
from puhui.generate.feeds import FEEDS

FAULT_EXPECT: dict[str, str] = {
    "wrong_encoding": "held",
    "bom": "tolerated",
    "missing_column": "held",
    "extra_column": "warned",
    "renamed_column": "held",
    "type_drift": "held",
    "duplicate_rows": "warned",
    "duplicate_delivery": "duplicate",
    "null_burst": "held",
    "out_of_range": "held",
    "future_timestamp": "warned",
    "truncated_file": "held",
    "empty_file": "held",
}
FAULT_KINDS: tuple[str, ...] = tuple(FAULT_EXPECT)
MIN_DAYS_FOR_FAULTS = 6

UTF8_BOM = b"\xef\xbb\xbf"
NULL_BURST_SHARE = 0.08  # contiguous block of rows with an empty required value
DUPLICATE_SHARE = 0.02
OUT_OF_RANGE_SHARE = 0.01
FUTURE_SHARE = 0.05


@dataclass(frozen=True, eq=False)  # identity hash: one object per planted file
class PlannedFault:
    """One fault: in ``partner``'s file delivered on ``day``."""

    kind: str
    partner: str
    day: date
    column: str | None = None  # the column concerned, if any
    source_day: date | None = None  # duplicate_delivery: the earlier delivery copied
    detail: dict[str, object] = field(default_factory=dict)

    @property
    def expect(self) -> str:
        return FAULT_EXPECT[self.kind]


@dataclass(frozen=True)
class _Choice:
    kind: str
    partners: tuple[str, ...]  # preferred partner first, then fallbacks
    column: str | None = None


# Kinds in planning order with their partner (and fallbacks) and column.
_CHOICES: tuple[_Choice, ...] = (
    _Choice("wrong_encoding", ("customers", "ecommerce_orders")),
    _Choice("missing_column", ("customers", "loan_applications"), "birth_date"),
    _Choice("out_of_range", ("credit_bureau", "ecommerce_orders"), "bureau_score"),
    _Choice("empty_file", ("agri_coop", "product_events")),
    _Choice("bom", ("loan_applications",)),
    _Choice("type_drift", ("loan_applications",), "amount_requested_yuan"),
    _Choice("duplicate_rows", ("ecommerce_orders",), "order_id"),
    _Choice("duplicate_delivery", ("ecommerce_orders",)),
    _Choice("extra_column", ("product_events",), "ab_test_bucket"),
    _Choice("renamed_column", ("mobile_payments",), "payer_phone"),
    _Choice("null_burst", ("mobile_payments",), "payer_phone"),
    _Choice("future_timestamp", ("mobile_payments",), "txn_time"),
    _Choice("truncated_file", ("mobile_payments",)),
)
_FALLBACK_COLUMNS = {
    ("missing_column", "loan_applications"): "term_months",
    ("out_of_range", "ecommerce_orders"): "amount_yuan",
}


def plan_faults(
    delivery_dates: list[date], rows_known: dict[str, dict[date, int]]
) -> list[PlannedFault]:
    """Choose a distinct delivered file for every fault kind.

    ``rows_known`` gives, for feeds whose row counts are known before writing (customers,
    loan applications), the rows of each delivery date: faults that need rows to show go
    to dates that have some. Monthly feeds are used only when a 1st of the month falls in
    the delivery window.
    """
    if len(delivery_dates) < MIN_DAYS_FOR_FAULTS:
        raise ValueError(f"faults need days >= {MIN_DAYS_FOR_FAULTS}")
    used: dict[str, set[date]] = {name: set() for name in FEEDS}
    monthly_dates = [d for d in delivery_dates if d.day == 1]
    wanted = {name: sum(1 for c in _CHOICES if c.partners[0] == name) for name in FEEDS}
    planned: list[PlannedFault] = []
    for choice in _CHOICES:
        for partner in choice.partners:
            spec = FEEDS[partner]
            candidates = monthly_dates if spec.monthly else delivery_dates
            if partner in rows_known:
                candidates = [d for d in candidates if rows_known[partner].get(d, 0) > 0]
            if choice.kind == "duplicate_delivery":
                candidates = [d for d in candidates if d > delivery_dates[0]]
            candidates = [d for d in candidates if d not in used[partner]]
            if not candidates:
                continue
            # Spread a partner's faults evenly over the window.
            k = len([f for f in planned if f.partner == partner])
            target = delivery_dates[0] + timedelta(
                days=round((k + 1) * (len(delivery_dates) - 1) / (wanted[partner] + 1))
            )
            day = min(candidates, key=lambda d: (abs((d - target).days), d))
            source = None
            if choice.kind == "duplicate_delivery":
                earlier = [d for d in delivery_dates if d < day and d not in used[partner]]
                if not earlier:
                    continue
                source = earlier[-1]
                used[partner].add(source)  # the original stays clean
            used[partner].add(day)
            column = _FALLBACK_COLUMNS.get((choice.kind, partner), choice.column)
            planned.append(PlannedFault(choice.kind, partner, day, column, source))
            break
        else:
            # Few users over few days leave some deliveries without rows to damage.
            raise BadArgument("days", f"leaves no delivered file with rows for the fault "
                              f"{choice.kind!r}: give more days or users")
    return planned


def apply_batch_fault(fault: PlannedFault, batch: Batch, rng: np.random.Generator) -> Batch:
    """The batch with the fault's row/column damage (byte-level kinds pass through)."""
    n = batch_rows(batch)
    kind, column = fault.kind, fault.column
    if kind == "missing_column":
        assert column is not None
        return {name: col for name, col in batch.items() if name != column}
    if kind == "extra_column":
        assert column is not None
        out = dict(batch)
        out[column] = Column("cat", rng.integers(0, 2, n), table=pa.array(["A", "B"]))
        return out
    if kind == "renamed_column":
        new_name = {"payer_phone": "payer_mobile"}.get(column or "", f"{column}_v2")
        fault.detail["renamed_to"] = new_name
        return {(new_name if name == column else name): col for name, col in batch.items()}
    if kind == "type_drift":
        assert column is not None
        out = dict(batch)
        out[column] = replace(batch[column], kind="yuan")
        return out
    if kind == "duplicate_rows":
        k = max(3, math.ceil(DUPLICATE_SHARE * n))
        start = int(rng.integers(0, max(n - k, 0) + 1))
        block = np.arange(start, min(start + k, n))
        fault.detail.update(duplicated_rows=len(block))
        return take_rows(batch, np.concatenate([np.arange(n), block]))
    if kind == "null_burst":
        assert column is not None
        k = max(1, math.ceil(NULL_BURST_SHARE * n))
        start = int(rng.integers(0, n - k + 1))
        current = batch[column].valid
        valid = np.ones(n, dtype=bool) if current is None else current.copy()
        valid[start : start + k] = False
        fault.detail.update(first_row=start + 1, rows=k)  # 1-based data row numbers
        out = dict(batch)
        out[column] = replace(batch[column], valid=valid)
        return out
    if kind == "out_of_range":
        assert column is not None
        k = min(n, max(3, math.ceil(OUT_OF_RANGE_SHARE * n)))
        rows = np.sort(rng.choice(n, size=k, replace=False))
        values = batch[column].values.copy()
        values[rows] = 9999 if column == "bureau_score" else -np.abs(values[rows]) - 1
        fault.detail.update(rows=k)
        out = dict(batch)
        out[column] = replace(batch[column], values=values)
        return out
    if kind == "future_timestamp":
        assert column is not None
        k = min(n, max(3, math.ceil(FUTURE_SHARE * n)))
        start = int(rng.integers(0, n - k + 1))
        values = batch[column].values.copy()
        # A clock set to UTC+16 and a day ahead: times land 1-2 days after the delivery date.
        values[start : start + k] += 8 * 3600 + 86_400
        fault.detail.update(first_row=start + 1, rows=k)
        out = dict(batch)
        out[column] = replace(batch[column], values=values)
        return out
    return batch


def apply_byte_fault(fault: PlannedFault, path: Path) -> None:
    """Damage the written file's bytes for the byte-level kinds."""
    if fault.kind == "bom":
        path.write_bytes(UTF8_BOM + path.read_bytes())
    elif fault.kind == "empty_file":
        path.write_bytes(b"")
    elif fault.kind == "truncated_file":
        data = path.read_bytes()
        lines = data.split(b"\n")
        lines = lines[:-1] if lines and lines[-1] == b"" else lines
        if len(lines) < 3:
            raise ValueError(f"{path.name}: too few rows to truncate")
        cut_line = max(1, int(len(lines) * 0.7))
        start = sum(len(line) + 1 for line in lines[:cut_line])
        # Cut inside the third field, like a transfer that stopped mid-row.
        fields = lines[cut_line].split(b",")
        keep = len(fields[0]) + 1 + len(fields[1]) + 1 + max(1, len(fields[2]) // 2)
        path.write_bytes(data[: start + keep])
        fault.detail.update(complete_rows=cut_line - 1)
