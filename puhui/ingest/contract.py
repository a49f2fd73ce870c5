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


# An ISO 8601 time's offset, after its time of day (a date's "-02" is no offset).
_OFFSET = r":\d\d(\.\d+)?(Z|[+-]\d\d(:?\d\d)?)$"


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
    # Each part cast once: a column of local times first failed the offset cast after a full
    # scan (about 2x the read), and a block mixing both was held as not ISO.
    zoned = pc.fill_null(pc.match_substring_regex(values, _OFFSET), False)
    try:
        if pc.all(zoned).as_py():
            return pc.cast(values, pa.timestamp("us", tz="UTC"))
        if not pc.any(zoned).as_py():
            return _local_to_utc(values)
        typed = pc.cast(pc.if_else(zoned, values, None), pa.timestamp("us", tz="UTC"))
        return pc.if_else(zoned, typed, _local_to_utc(pc.if_else(zoned, None, values)))
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
    """Type one column per its contract; raises ContractViolation on type drift.

    Text is parsed as a CSV's cells are. A binary file's (Parquet's, JSON's) typed column
    is taken only where its type means the declared one (:data:`_TYPED`): Arrow's own cast
    gave a zoned timestamp's UTC date, true for a float 0.5 and epoch microseconds for a
    timestamp in an int column, all loaded clean.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):  # a pandas category: its values are the column
        values = values.dictionary_decode()
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return _parse_text(values.cast(pa.string()), column)
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), ARROW_TYPES[column.type])
    return _TYPED[column.type](values, column)


def _type_drift(column: ColumnContract, found: pa.DataType, what: str = "") -> ContractViolation:
    """The hold for a typed column: ``what`` says which values, else the type itself is."""
    return ContractViolation(
        f"type drift in {column.name}: {_type_shown(found)}{what} where {column.type} is declared"
    )


def _typed_text(values: pa.Array, column: ColumnContract) -> pa.Array:
    """Any type with a text form (numbers, binary that is UTF-8) as that text."""
    try:
        # A JSON object or list has no text form in Arrow (it was held as an unexpected
        # error, its reason naming no column).
        return pc.cast(values, ARROW_TYPES["string"])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise _type_drift(column, values.type) from None


def _typed_number(values: pa.Array, column: ColumnContract) -> pa.Array:
    """Integers, floats and decimals; Arrow's safe cast refuses a fraction in an int column
    and an integer a float cannot hold exactly. A bool (0 or 1) or a time (epoch
    microseconds) is no number of the contract's: text "true" in an int column is drift."""
    kind = values.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
        raise _type_drift(column, kind)
    try:
        typed = pc.cast(values, ARROW_TYPES[column.type])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise _type_drift(column, kind, f" value(s) not {column.type}") from None
    if column.type == "float" and not pc.all(pc.fill_null(pc.is_finite(typed), True)).as_py():
        raise ContractViolation(f"type drift in {column.name}: NaN or infinite value(s)")
    return typed


def _typed_bool(values: pa.Array, column: ColumnContract) -> pa.Array:
    """A bool, or numbers that are all 0 or 1 (as the text "0" and "1" are read)."""
    kind = values.type
    if pa.types.is_boolean(kind):
        return values
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise _type_drift(column, kind)
    if not pc.all(pc.is_in(values.drop_null(), pa.array([0, 1], kind))).as_py():
        raise _type_drift(column, kind, " value(s) other than 0 and 1")
    return pc.not_equal(values, pa.scalar(0, kind))


def _typed_date(values: pa.Array, column: ColumnContract) -> pa.Array:
    """A date, or the lender's local date of a timestamp: a zoned one's date in the lender's
    timezone (Arrow's cast took its UTC date, the day before for a morning in Beijing), a
    naive one's own date (Parquet's local time)."""
    kind = values.type
    try:
        if pa.types.is_date(kind):
            return pc.cast(values, ARROW_TYPES["date"])
        if pa.types.is_timestamp(kind):
            if kind.tz is not None:
                values = values.cast(pa.timestamp(kind.unit, tz=str(LENDER_TIMEZONE)))
            return pc.cast(values, ARROW_TYPES["date"])  # a zone's local date, as Arrow casts
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    raise _type_drift(column, kind)


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
    raise _type_drift(column, kind)


# How a typed (non-text) column becomes each contract type.
_TYPED = {
    "string": _typed_text,
    "int": _typed_number,
    "float": _typed_number,
    "bool": _typed_bool,
    "date": _typed_date,
    "timestamp": _typed_timestamp,
}


def _type_shown(found: pa.DataType) -> str:
    """An Arrow type as a reason names it: a nested one by its kind, since a struct's type
    spells the partner's keys (``struct<13812345678: int64>``)."""
    if pa.types.is_struct(found) or pa.types.is_map(found):
        return "a JSON object"
    if pa.types.is_list(found) or pa.types.is_large_list(found):
        return "a JSON list"
    if pa.types.is_timestamp(found) and found.tz is not None:
        # The zone is the file's text (any string): named by its kind, never shown.
        return f"timestamp[{found.unit}] with a zone"
    return str(found)


def coerce_to_contract(table: pa.Table, feed: PartnerFeed) -> pa.Table:
    """The contract's columns, in declared order and declared types (extra columns dropped)."""
    arrays = [coerce_column(table[c.name], c) for c in feed.columns]
    return pa.table(arrays, names=[c.name for c in feed.columns])


def end_of_delivery_day(delivery_date: date) -> datetime:
    """The last instant of the delivery date in the lender's timezone (events must precede it)."""
    return datetime.combine(delivery_date + timedelta(days=1), time(0), tzinfo=LENDER_TIMEZONE)
