"""Bulk loading on the fast path of each dialect, inside the caller's transaction.

PostgreSQL: ``COPY ... FROM STDIN (FORMAT csv)`` through psycopg 3, fed with CSV bytes that
Arrow's C++ writer produces (serializing rows in Python is what makes DataFrame COPYs slow).
Unquoted empty fields are NULL, quoted ones are empty strings, so nulls survive.
SQLite: one ``executemany`` of plain tuples; only columns whose SQLAlchemy type needs a bind
conversion (dates, timestamps, JSON, booleans) go through it.

Because the caller owns the transaction, a batch and its bookkeeping commit together or not
at all: a crash mid-load leaves nothing half-written.
"""

from __future__ import annotations

import io
import json
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from sqlalchemy import JSON, Connection, Table, text

COPY_CHUNK_ROWS = 100_000


def _as_arrow(data: pa.Table | pd.DataFrame) -> pa.Table:
    if isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    return data


def _check_columns(table: Table, names: Iterable[str]) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in table.c]
    if unknown:
        raise ValueError(f"{table.name}: no such column(s) {unknown}")
    return names


def _json_columns_as_text(table: Table, data: pa.Table) -> pa.Table:
    """Serialize non-string values of JSON columns (COPY and sqlite3 take text)."""
    for name in data.column_names:
        if isinstance(table.c[name].type, JSON) and not pa.types.is_string(data[name].type):
            values = [
                None if v is None else json.dumps(v, sort_keys=True, ensure_ascii=False)
                for v in data[name].to_pylist()
            ]
            data = data.set_column(
                data.column_names.index(name), name, pa.array(values, pa.string())
            )
    return data


def session_default(column: str) -> str:
    """Server default that reads a per-transaction constant set by ``bulk_insert``.

    Declare a column with ``server_default=text(session_default(name))`` and pass its value
    in ``constants``: on PostgreSQL the value is set once (``set_config(..., true)``, local to
    the transaction) instead of being repeated on every COPY row.
    """
    return f"current_setting('puhui.{column}')"


def _copy_postgres(conn: Connection, table: Table, data: pa.Table) -> None:
    columns = ", ".join(f'"{name}"' for name in data.column_names)
    statement = f'COPY "{table.name}" ({columns}) FROM STDIN (FORMAT csv)'
    options = pa_csv.WriteOptions(include_header=False)
    raw = conn.connection.driver_connection
    # One sender thread keeps the server busy parsing block k while this thread serializes
    # block k+1 (Arrow's writer releases the GIL); at most two blocks wait in memory.
    with raw.cursor() as cursor, cursor.copy(statement) as copy, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="puhui-copy") as sender:
        in_flight: deque[Future] = deque()
        for batch in data.to_batches(max_chunksize=COPY_CHUNK_ROWS):
            buffer = io.BytesIO()
            pa_csv.write_csv(pa.Table.from_batches([batch]), buffer, options)
            in_flight.append(sender.submit(copy.write, buffer.getbuffer()))
            while len(in_flight) > 2:
                in_flight.popleft().result()
        for pending in in_flight:
            pending.result()


def _executemany_sqlite(conn: Connection, table: Table, data: pa.Table) -> None:
    dialect = conn.dialect
    columns = []
    for name in data.column_names:
        values = data[name].to_pylist()
        column_type = table.c[name].type
        # JSON arrives here as text already; its bind processor would encode it twice.
        processor = (
            None if isinstance(column_type, JSON) else column_type._cached_bind_processor(dialect)
        )
        if processor is not None:
            values = [None if v is None else processor(v) for v in values]
        columns.append(values)
    placeholders = ", ".join("?" for _ in columns)
    names = ", ".join(f'"{n}"' for n in data.column_names)
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.executemany(
            f'INSERT INTO "{table.name}" ({names}) VALUES ({placeholders})',
            zip(*columns, strict=True),
        )
    finally:
        cursor.close()


def bulk_insert(conn: Connection, table: Table, data: pa.Table | pd.DataFrame,
                constants: Mapping[str, str] | None = None) -> int:
    """Append ``data`` to ``table`` on ``conn``'s open transaction; returns rows written.

    Columns are matched by name and must exist in ``table``; columns of ``table`` not in
    ``data`` take their server default (NULL). ``constants`` are columns with one value for
    every row (a batch id): sent once where the column's default is ``session_default``.
    """
    arrow = _as_arrow(data)
    constants = dict(constants or {})
    _check_columns(table, [*arrow.column_names, *constants])
    if arrow.num_rows == 0:
        return 0
    arrow = _json_columns_as_text(table, arrow)
    if conn.dialect.name == "postgresql":
        for name, value in list(constants.items()):
            default = table.c[name].server_default
            if default is not None and session_default(name) in str(default.arg):
                conn.execute(text("SELECT set_config(:name, :value, true)"),
                             {"name": f"puhui.{name}", "value": value})
                del constants[name]
    for name, value in constants.items():
        arrow = arrow.append_column(name, pa.array([value] * arrow.num_rows, pa.string()))
    if conn.dialect.name == "postgresql":
        _copy_postgres(conn, table, arrow)
    else:
        _executemany_sqlite(conn, table, arrow)
    return arrow.num_rows
