"""The raw tables' rows digest (``raw_<partner>``, per batch), vectorized with Arrow and
NumPy: each column's canonical values (:func:`_read_canonical`: the texts
:mod:`puhui.table_digests` digests; floats as float64) hashed to 64-bit words and combined
per row by a keyed nonlinear mix (:func:`columns_mac`). A load digests the Arrow data it
writes (:func:`arrow_rows_mac`); ``audit verify --deep`` the rows it reads back
(:func:`read_back_macs`). Its own module so that what imports :mod:`puhui.table_digests` for
counts (plain ``audit verify``, the writers) does not import Arrow and NumPy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Double,
    Float,
    Integer,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from puhui.hashing import column_words, splitmix64_finish
from puhui.table_digests import (
    _RAW_TAG,
    RowsMac,
    _encoder,
    add_macs,
    digested_columns,
    scope_of,
)

# A raw column's type as a load records it with its digest: a contract that changes a
# column's declared type leaves the physical column as it was (``ensure_raw_table`` only
# adds columns), so the load's values and verify's read-back are canonicalized by this one
# recorded type, not each by its own (else every later batch would differ).
_KIND_TYPES: dict[str, type[TypeEngine]] = {
    "float": Double,
    "integer": BigInteger,
    "boolean": Boolean,
    "date": Date,
    "timestamp": DateTime,
    "text": Text,
}


def arrow_rows_mac(
    dialect: Dialect,
    table: Table,
    data: pa.Table,
    constants: Mapping[str, Any],
    subkey: bytes,
) -> RowsMac:
    """The :class:`RowsMac` of ``data``'s rows as ``bulk_insert`` writes them into ``table``
    (``constants``: its one-value columns; a column in neither is NULL), computed from the
    Arrow data the loader holds instead of reading the rows back: each column's canonical
    values (:func:`_arrow_canonical`) and :func:`columns_mac`, as :func:`rows_macs` does
    with the values it reads back."""
    ordered = [table.c[name] for name in digested_columns(table)]
    if data.num_rows == 0:
        return RowsMac(tag=_RAW_TAG)
    canonical: list[pa.Array] = []
    for column in ordered:
        if column.name in constants or column.name not in data.column_names:
            # One value for every row: made once, repeated by Arrow.
            one = _read_canonical(column, [constants.get(column.name)])
            canonical.append(pa.repeat(one[0], data.num_rows))
        else:
            canonical.append(_arrow_canonical(dialect, column, data[column.name]))
    return columns_mac(canonical, subkey)


# string_hashes hashes a value's first 64 bytes, its last 8 and its length: a longer value is
# first replaced by its keyed BLAKE2b (per value, in Python: rare in raw data), so an edit
# anywhere in it changes its hash.
_WHOLLY_HASHED = 72


def _value_words(values: pa.Array, subkey: bytes) -> np.ndarray:
    """A 64-bit word per value of a canonical column (NULLs: any word; the caller marks
    them): :func:`puhui.hashing.column_words` (numbers and times their stored bits, text its
    :func:`string_hashes`)."""
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return column_words(values)
    lengths = pc.binary_length(values)
    if len(values) and (pc.max(lengths).as_py() or 0) > _WHOLLY_HASHED:
        long = pc.fill_null(pc.greater(lengths, _WHOLLY_HASHED), False)
        hashed = [
            hashlib.blake2b(v.encode(), digest_size=16, key=subkey).hexdigest()
            for v in pc.filter(values, long).to_pylist()
        ]
        values = pc.replace_with_mask(values, long, pa.array(hashed, pa.string()))
    return column_words(values)


def _seeds(subkey: bytes, width: int) -> np.ndarray:
    # Per column a seed for its values and one for its NULLs, and the row's first state:
    # secret words, so which values collide with which (NULL with a value) depends on the key.
    words = hashlib.blake2b(b"seeds", digest_size=64, key=subkey).digest()
    stream = b"".join(
        hashlib.blake2b(i.to_bytes(4, "little") + words, digest_size=64, key=subkey).digest()
        for i in range(-(-(2 * width + 1) * 8 // 64))
    )
    return np.frombuffer(stream, "<u8", 2 * width + 1).astype(np.uint64)


def columns_mac(canonical: list[pa.Array], subkey: bytes) -> RowsMac:
    """The raw tables' keyed rows digest of the rows whose columns' canonical values are
    ``canonical`` (one array per digested column, in order; the writer's from its Arrow
    data, verify's from the rows it reads back).

    Vectorized: each value's 64-bit word (:func:`_value_words`), combined per row, column
    by column, by a nonlinear mix (xor with the column's keyed seed, NULLs with another,
    then splitmix64's multiply-xorshift finish), so a value edited or swapped with another
    row's changes its row's word; the rows' words summed mod 2^64 with the count (order-
    independent, chunks add up). Not a cryptographic MAC: the per-value hash is 64-bit and
    unkeyed, so a forger who knows the scheme could search for a colliding value."""
    count = len(canonical[0]) if canonical else 0
    if count == 0:
        return RowsMac(tag=_RAW_TAG)
    seeds = _seeds(subkey, len(canonical))
    state = np.full(count, seeds[-1], dtype=np.uint64)
    for j, values in enumerate(canonical):
        word = _value_words(values, subkey) ^ seeds[2 * j]
        if values.null_count:
            word = np.where(
                values.is_valid().to_numpy(zero_copy_only=False), word, seeds[2 * j + 1]
            )
        state = splitmix64_finish(state ^ word)
    total = int(state.sum(dtype=np.uint64))  # wraps: mod 2^64
    return RowsMac(count, total, _RAW_TAG)


def _read_canonical(column: Column, values: Iterable[Any]) -> pa.Array:
    """A column's canonical values from Python values (verify's read-back, a load's
    constants), by the column's type, whatever the dialect returns (``_encoder``'s rules):
    a float as float64 (NaN, which SQLite stores as NULL, is NULL; -0.0 is 0.0); an integer
    or boolean as int64; a time as its naive UTC instant (``_time``), a date as a date;
    anything else its canonical text."""
    kind = column.type
    if isinstance(kind, Float):
        try:
            return _float_canonical(pa.array(values, pa.float64(), from_pandas=False))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):  # text in a column once text
            return _float_canonical(pa.array([_as_float(v) for v in values], pa.float64()))
    texts = [_encoder(column)(v) for v in values]
    if isinstance(kind, Boolean | Integer):
        return pa.array([None if t is None else int(t) for t in texts], pa.int64())
    if isinstance(kind, DateTime):
        moments = [None if t is None else datetime.fromisoformat(t) for t in texts]
        return pa.array(moments, pa.timestamp("us"))
    if isinstance(kind, Date):
        return pa.array([None if t is None else date.fromisoformat(t) for t in texts])
    return pa.array(texts, pa.string())


def _as_float(value: Any) -> float | None:
    # A value that is no number (a hand edit in a column once text) as NaN, canonically
    # NULL: it differs from any number the load digested.
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return float("nan")


def _float_canonical(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = pc.if_else(pc.is_nan(values), pa.scalar(None, pa.float64()), values)
    return pc.add(values, pa.scalar(0.0))  # -0.0 + 0.0 is 0.0


def _arrow_canonical(dialect: Dialect, column: Column, values: pa.ChunkedArray) -> pa.Array:
    """:func:`_read_canonical`'s values from a column of the loader's Arrow data, by Arrow
    for the types it converts alike (a zoned time's SQLite text is its wall time in its
    zone, which verify reads as UTC; PostgreSQL's is the instant), else per value through
    the dialect's bind processor (SQLite stores a date, time or boolean as text or number)."""
    kind, arrow = column.type, values.type
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if isinstance(kind, Float) and (pa.types.is_floating(arrow) or pa.types.is_integer(arrow)):
        return _float_canonical(pc.cast(values, pa.float64()))
    if isinstance(kind, Boolean | Integer) and (
        pa.types.is_boolean(arrow) or pa.types.is_integer(arrow)
    ):
        return pc.cast(values, pa.int64())
    if isinstance(kind, DateTime) and pa.types.is_timestamp(arrow) and arrow.tz is not None:
        wall = pc.local_timestamp(values) if dialect.name == "sqlite" else values
        return pc.cast(wall, pa.timestamp("us"))  # zoned to naive: the same instant's number
    if isinstance(kind, String) and (pa.types.is_string(arrow) or pa.types.is_large_string(arrow)):
        return pc.cast(values, pa.string())  # text is its own canonical text
    if isinstance(kind, Date) and pa.types.is_date(arrow):  # DateTime is no Date subclass
        return pc.cast(values, pa.date32())
    processor = kind._cached_bind_processor(dialect)
    found = values.to_pylist()
    if processor is not None:
        found = [None if v is None else processor(v) for v in found]
    return _read_canonical(column, found)


def read_back_macs(
    parts: Iterator[list[tuple]],
    columns: Sequence[Column],
    kinds: Sequence[str] | None,
    scoped: bool,
    subkey: bytes,
) -> dict[str, RowsMac]:
    """:class:`RowsMac` per batch of a raw table's rows read back (``parts``: chunks of
    driver rows, ``columns``' values then the scope's), canonicalized by ``kinds`` (the
    columns' types as the load recorded them) or else by the columns' own types."""
    width = len(columns)
    typed = (
        list(columns)
        if kinds is None
        else [Column(c.name, _KIND_TYPES[k]()) for c, k in zip(columns, kinds, strict=True)]
    )
    macs: dict[str, RowsMac] = {}
    for part in parts:
        scopes: dict[str, list[tuple]] = {}
        for row in part:
            scopes.setdefault(scope_of(row[width:]) if scoped else "", []).append(row)
        for name, rows in scopes.items():
            values = list(zip(*rows, strict=True))[:width]
            canonical = [_read_canonical(c, v) for c, v in zip(typed, values, strict=True)]
            add_macs(macs.setdefault(name, RowsMac()), columns_mac(canonical, subkey))
    return macs
