"""The data contract at the door: which columns must be there, and what type each one is.

Schema drift (missing, extra, renamed columns) is reported by name. Values are typed from
text with Arrow compute kernels; a value that does not fit its declared type is type drift.
Thousands separators ("1,234.50") are removed only where the contract declares them:
elsewhere they are drift, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from puhui.config import ColumnContract, PartnerFeed
from puhui.dates import LENDER_TIMEZONE
from puhui.errors import PuhuiError
from puhui.privacy import mask_shape, safe_name


class ContractViolation(PuhuiError):
    """The file breaks its feed's contract in a way that holds the batch."""


@dataclass(frozen=True)
class ColumnCheck:
    missing: list[str]
    extra: list[str]
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (expected, found) guesses

    def describe(self) -> str:
        """Names the columns: the contract's as they are, the file's through ``safe_name``."""
        parts = []
        if self.renamed:
            parts.append(
                "renamed column(s): "
                + ", ".join(f"{a} -> {safe_name(b)}" for a, b in self.renamed[:MAX_NAMED])
            )
        missing = [m for m in self.missing if m not in dict(self.renamed)]
        extra = [e for e in self.extra if e not in {b for _, b in self.renamed}]
        if missing:
            parts.append("missing column(s): " + _names(missing))
        if extra:
            parts.append("extra column(s): " + _names(extra))
        return "; ".join(parts)

    def describe_extra(self) -> str:
        """The warning for tolerated extra columns."""
        return "extra column(s) ignored: " + _names(self.extra)


MAX_NAMED = 10  # a header of thousands of columns is summarized, not listed


def _names(names: list[str]) -> str:
    shown = ", ".join(safe_name(n) for n in names[:MAX_NAMED])
    return shown + (f" (+{len(names) - MAX_NAMED} more)" if len(names) > MAX_NAMED else "")


def _looks_renamed(expected: str, found: str) -> bool:
    a, b = set(expected.split("_")), set(found.split("_"))
    return bool(a & b) or expected[:4] == found[:4]


def check_columns(found: list[str], feed: PartnerFeed) -> ColumnCheck:
    """Compare a file's columns with the contract (order does not matter)."""
    declared = [c.name for c in feed.columns]
    missing = [c for c in declared if c not in found]
    extra = [c for c in found if c not in declared]
    renamed = [(m, e) for m in missing for e in extra if _looks_renamed(m, e)]
    return ColumnCheck(missing, extra, renamed)


_NUMBER_PLAIN = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
_NUMBER_THOUSANDS = r"^\s*[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?\s*$"
_INTEGER = r"^\s*[+-]?\d+\s*$"
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_BOOLEAN_TEXT = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _drift(column: ColumnContract, values: pa.Array, ok: pa.Array) -> None:
    """Raise type drift if any non-null value failed ``ok``, with an example's masked shape.

    The shape (``ddd-dddd-dddd`` for a phone number where a number belongs) says what went
    wrong without the value; personal columns get not even that.
    """
    bad = pc.and_(pc.is_valid(values), pc.invert(pc.fill_null(ok, False)))
    count = pc.sum(bad).as_py() or 0
    if count:
        shape = "" if column.pii else mask_shape(values.filter(bad)[0].as_py())
        example = f", e.g. shape {shape!r}" if shape else ""
        raise ContractViolation(
            f"type drift in {column.name}: {count} value(s) not {column.type}"
            + (" (plain number expected)" if column.type in ("int", "float") else "")
            + example
        )


def _cast_or_drift(
    values: pa.Array, target: pa.DataType, column: ColumnContract, pattern: str
) -> pa.Array:
    """Cast with Arrow's kernel; only when it refuses, find and count the offending values."""
    try:
        return pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        _drift(column, values, pc.match_substring_regex(values, pattern))
        raise ContractViolation(
            f"type drift in {column.name}: value(s) not {column.type}"
        ) from None


def _parse_text(values: pa.Array, column: ColumnContract) -> pa.Array:
    if column.type == "string":
        return values
    if column.type in ("int", "float"):
        target = pa.int64() if column.type == "int" else pa.float64()
        if column.number_format == "thousands":
            # Grouping must be well formed ("1,234.50", not "1,23,4.5"): checked, not guessed.
            _drift(column, values, pc.match_substring_regex(values, _NUMBER_THOUSANDS))
            values = pc.replace_substring(values, ",", "")
        pattern = _INTEGER if column.type == "int" else _NUMBER_PLAIN
        parsed = _cast_or_drift(values, target, column, pattern)
        if column.type == "float" and not pc.all(pc.fill_null(pc.is_finite(parsed), True)).as_py():
            raise ContractViolation(f"type drift in {column.name}: NaN or infinite value(s)")
        return parsed
    if column.type == "bool":
        lowered = pc.utf8_lower(pc.utf8_trim_whitespace(values))
        _drift(column, values, pc.is_in(lowered, pa.array(list(_BOOLEAN_TEXT))))
        truthy = pc.is_in(lowered, pa.array([k for k, v in _BOOLEAN_TEXT.items() if v]))
        return pc.if_else(pc.is_valid(values), truthy, pa.scalar(None, pa.bool_()))
    if column.type == "date":
        return _cast_or_drift(values, pa.date32(), column, _DATE)
    # timestamp: ISO 8601 with an offset; without one, the lender's local time is meant.
    try:
        return pc.cast(values, pa.timestamp("us", tz="UTC"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        return _local_to_utc(values)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise ContractViolation(
            f"type drift in {column.name}: value(s) not an ISO timestamp"
        ) from None


def _local_to_utc(values: pa.Array) -> pa.Array:
    """Times without a zone (text, a naive timestamp or a date) as the lender's local time,
    in UTC."""
    local = pc.cast(values, pa.timestamp("us"))
    return pc.assume_timezone(local, timezone=str(LENDER_TIMEZONE)).cast(ARROW_TYPES["timestamp"])


# Each contract type as Arrow holds it (also how the key index reads raw rows back).
ARROW_TYPES = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def coerce_column(values: pa.Array | pa.ChunkedArray, column: ColumnContract) -> pa.Array:
    """Type one column per its contract; raises ContractViolation on type drift."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return _parse_text(values.cast(pa.string()), column)
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), ARROW_TYPES[column.type])
    if column.type == "timestamp":
        return _typed_timestamp(values, column)
    try:
        # A text column's cast fails too: a JSON object or list has no text form in Arrow
        # (it was held as an unexpected error, its reason naming no column).
        return pc.cast(values, ARROW_TYPES[column.type])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise ContractViolation(
            f"type drift in {column.name}: {_type_shown(values.type)} where {column.type} is "
            "declared"
        ) from None


def _typed_timestamp(values: pa.Array, column: ColumnContract) -> pa.Array:
    """A binary file's (Parquet's) timestamp column in UTC, read as the same text would be:
    a time without a zone (Parquet's local time, pandas' default) and a date are the lender's
    local time; one with a zone is that instant. Anything else is type drift: Arrow's cast
    read an int64 of epoch seconds as microseconds (1970-01-01 00:29, loaded clean), and a
    naive time as UTC (8 hours off, then warned as after its delivery day)."""
    kind = values.type
    try:
        if pa.types.is_timestamp(kind) and kind.tz is not None:
            return pc.cast(values, ARROW_TYPES["timestamp"])
        if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
            return _local_to_utc(values)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # nanoseconds a microsecond cannot hold, a local time that never was
    raise ContractViolation(
        f"type drift in {column.name}: {_type_shown(kind)} where timestamp is declared"
    )


def _type_shown(found: pa.DataType) -> str:
    """An Arrow type as a reason names it: a nested one by its kind, since a struct's type
    spells the partner's keys (``struct<13812345678: int64>``)."""
    if pa.types.is_struct(found) or pa.types.is_map(found):
        return "a JSON object"
    if pa.types.is_list(found) or pa.types.is_large_list(found):
        return "a JSON list"
    return str(found)


def coerce_to_contract(table: pa.Table, feed: PartnerFeed) -> pa.Table:
    """The contract's columns, in declared order and declared types (extra columns dropped)."""
    arrays = [coerce_column(table[c.name], c) for c in feed.columns]
    return pa.table(arrays, names=[c.name for c in feed.columns])


def end_of_delivery_day(delivery_date: date) -> datetime:
    """The last instant of the delivery date in the lender's timezone (events must precede it)."""
    return datetime.combine(delivery_date + timedelta(days=1), time(0), tzinfo=LENDER_TIMEZONE)
