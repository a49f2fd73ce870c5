"""A batch of generated rows, kept as compact typed columns until it is written.

Columns stay numeric (codes into small string tables, epoch seconds, cents) while rows are
drawn, concatenated and faulted; they become text only when a writer renders them, so a
month of history costs integers, not Python strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from puhui.generate.formatting import (
    format_dates,
    format_decimal2,
    format_ints,
    format_local_times,
    format_months,
    prefixed_ids,
    quote,
)

ColumnKind = Literal["cat", "pid", "int", "dec2", "yuan", "ts", "date", "month"]
# cat: codes into ``table``; pid: prefix + zero-padded number; int; dec2: 2-decimal number;
# yuan: quoted "1,234.50" string; ts: epoch seconds (written +08:00); date; month (YYYY-MM).


@dataclass(frozen=True)
class Column:
    """One typed column; ``valid`` False marks empty (null) values."""

    kind: ColumnKind
    values: np.ndarray
    table: pa.Array | None = None
    prefix: str = ""
    width: int = 0
    valid: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> Column:
        valid = None if self.valid is None else self.valid[rows]
        return replace(self, values=self.values[rows], valid=valid)


Batch = dict[str, Column]


def cat(codes: np.ndarray, table: pa.Array | Sequence[str]) -> Column:
    """A categorical column: ``codes`` index into ``table``."""
    if not isinstance(table, pa.Array):
        table = pa.array(list(table), type=pa.string())
    return Column("cat", np.asarray(codes, dtype=np.int64), table=table)


def batch_rows(batch: Batch) -> int:
    return len(next(iter(batch.values())).values) if batch else 0


def take_rows(batch: Batch, rows: np.ndarray) -> Batch:
    return {name: col.take(rows) for name, col in batch.items()}


def concat_batches(batches: Sequence[Batch]) -> Batch:
    """Rows of several batches with the same columns, in order."""
    if len(batches) == 1:
        return batches[0]
    out: Batch = {}
    for name, first in batches[0].items():
        cols = [b[name] for b in batches]
        valid = None
        if any(c.valid is not None for c in cols):
            valid = np.concatenate([
                np.ones(len(c.values), bool) if c.valid is None else c.valid for c in cols
            ])
        out[name] = replace(first, values=np.concatenate([c.values for c in cols]), valid=valid)
    return out


def render_text(col: Column) -> pa.Array:
    """The column as strings, as they appear in a CSV or JSON file (nulls kept null)."""
    kind = col.kind
    if kind == "cat":
        assert col.table is not None
        text = col.table.take(pa.array(col.values))
    elif kind == "pid":
        text = prefixed_ids(col.prefix, col.values, col.width)
    elif kind == "int":
        text = format_ints(col.values)
    elif kind == "dec2":
        text = format_decimal2(col.values)
    elif kind == "yuan":
        text = quote(format_decimal2(col.values, thousands=True))
    elif kind == "ts":
        text = format_local_times(col.values)
    elif kind == "date":
        text = format_dates(col.values)
    elif kind == "month":
        text = format_months(col.values)
    else:  # pragma: no cover - guarded by ColumnKind
        raise ValueError(kind)
    if col.valid is not None and not col.valid.all():
        text = pc.if_else(pa.array(col.valid), text, pa.scalar(None, pa.string()))
    return text


def is_json_number(col: Column) -> bool:
    return col.kind in ("int", "dec2")


def render_arrow(col: Column) -> pa.Array:
    """The column as a typed Arrow array (for Parquet)."""
    mask = None if col.valid is None else pa.array(~col.valid)
    if col.kind == "int":
        return pa.array(col.values.astype(np.int64), mask=mask)
    if col.kind == "dec2":
        return pa.array(np.round(col.values.astype(np.float64), 2), mask=mask)
    if col.kind == "ts":
        # Stored as UTC instants with the +08:00 zone attached (Parquet keeps UTC).
        millis = col.values.astype(np.int64) * 1000
        return pa.array(millis, type=pa.timestamp("ms", tz="+08:00"), mask=mask)
    if col.kind == "date":
        return pa.array(col.values.astype(np.int32), type=pa.date32(), mask=mask)
    return render_text(col)
