"""Bulk loading on the fast path of each dialect, inside the caller's transaction.

PostgreSQL: ``COPY ... FROM STDIN (FORMAT binary)`` through psycopg 3. The tuples are built
column-wise with numpy and Arrow kernels from the server's real column types (read from the
catalog): integers, floats, booleans, dates, timestamps and text/varchar/json. That skips both
serializing text on our side and parsing it on the server's. A column of any other type, or
whose Arrow type would need a conversion whose meaning CSV defines differently (a naive
timestamp into ``timestamptz``), sends the whole table as ``FORMAT csv`` instead, written by
Arrow's C++ CSV writer: unquoted empty fields are NULL, quoted ones are empty strings.
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

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from sqlalchemy import JSON, Connection, Table, text

from puhui.warehouse.schema import session_default

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


def json_columns_as_text(table: Table, data: pa.Table) -> pa.Table:
    """Serialize non-string values of JSON columns (COPY and sqlite3 take text): the text
    :func:`bulk_insert` writes, which ``held_rows_mac`` digests. A ``large_string`` column
    (pandas 3's strings) is not ``string``: its texts are serialized as JSON strings."""
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


# --- PostgreSQL binary COPY ---------------------------------------------------------------
# Each row is an int16 field count, then per field an int32 byte length (-1 for NULL) and the
# value in the server's binary send/recv form, big-endian. Building that with numpy and
# Arrow kernels skips both our CSV writer and the server's text parsing of every value.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
_COPY_TRAILER = b"\xff\xff"
_PG_EPOCH_DAYS = 10_957  # PostgreSQL counts dates and timestamps from 2000-01-01
_PG_EPOCH_MICROS = _PG_EPOCH_DAYS * 86_400 * 1_000_000
# Server types by name (format_type) -> fixed-width big-endian payload dtype.
_FIXED_WIDTH = {
    "bigint": ">i8",
    "integer": ">i4",
    "smallint": ">i2",
    "double precision": ">f8",
    "real": ">f4",
    "boolean": "u1",
    "date": ">i4",
    "timestamp with time zone": ">i8",
    "timestamp without time zone": ">i8",
}
_TEXT_TYPES = ("text", "character varying", "json")  # binary form = the UTF-8 bytes
_ARROW_NUMBERS = {
    ">i8": pa.int64(),
    ">i4": pa.int32(),
    ">i2": pa.int16(),
    ">f8": pa.float64(),
    ">f4": pa.float32(),
}


class _NotEncodable(Exception):
    """A column this encoder does not handle: the whole COPY falls back to CSV."""


def _server_types(conn: Connection, table: Table) -> dict[str, str]:
    """Column name -> the server's type name (without modifiers), from the catalog.

    The catalog, not the SQLAlchemy declaration, because binary input must match the real
    column type byte for byte (an ``int4`` column given 8 bytes is an error, not a cast).
    """
    rows = conn.execute(
        text(
            "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
            "WHERE attrelid = CAST(:name AS regclass) AND attnum > 0 AND NOT attisdropped"
        ),
        {"name": f'"{table.name}"'},
    )
    return {name: kind for name, kind in rows}


def _binary_values(values: pa.ChunkedArray, server_type: str) -> pa.ChunkedArray:
    """``values`` as the Arrow type whose raw values are the binary payload (before
    byte-swapping); raises ``_NotEncodable`` where a CSV COPY is the faithful path."""
    kind = values.type
    if pa.types.is_null(kind):
        return values  # every value NULL: encodable whatever the column type
    try:
        if server_type in _TEXT_TYPES:
            if pa.types.is_string(kind) or pa.types.is_large_string(kind):
                return values.cast(pa.string())
        elif server_type == "boolean":
            if pa.types.is_boolean(kind):
                return values
        elif server_type == "date":
            if pa.types.is_date(kind):
                days = values.cast(pa.date32()).cast(pa.int32())
                return pc.subtract_checked(days, pa.scalar(_PG_EPOCH_DAYS, pa.int32()))
        elif server_type.startswith("timestamp"):
            # A naive value into timestamptz (or an aware one into timestamp) depends on the
            # session time zone in CSV; that meaning is not reproduced here.
            aware = server_type == "timestamp with time zone"
            if pa.types.is_timestamp(kind) and (kind.tz is not None) == aware:
                micros = values.cast(pa.timestamp("us", kind.tz)).cast(pa.int64())
                # Checked: a wrapped-around int64 could land inside PostgreSQL's range.
                return pc.subtract_checked(micros, pa.scalar(_PG_EPOCH_MICROS, pa.int64()))
        elif server_type in _FIXED_WIDTH:
            numeric = pa.types.is_integer(kind) or (
                pa.types.is_floating(kind) and server_type in ("double precision", "real")
            )
            if numeric:
                return values.cast(_ARROW_NUMBERS[_FIXED_WIDTH[server_type]])  # safe cast
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # out of range or lossy: let the CSV path (and the server) judge the value
    raise _NotEncodable(f"{kind} into {server_type}")


def _fixed_block(values: pa.Array, dtype: str) -> np.ndarray:
    """(rows, 4 + width) bytes: length header and big-endian value, for a column without
    NULLs."""
    width = np.dtype(dtype).itemsize
    if pa.types.is_boolean(values.type):
        raw = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.uint8)
    else:
        raw = values.to_numpy(zero_copy_only=False)
    block = np.empty((len(values), 4 + width), dtype=np.uint8)
    block[:, :4] = np.frombuffer(np.array(width, ">i4").tobytes(), np.uint8)
    block[:, 4:] = raw.astype(dtype, copy=False).view(np.uint8).reshape(-1, width)
    return block


def _nullable_fixed(values: pa.Array, dtype: str) -> pa.Array:
    """Header and value per row as a binary array: NULL rows are just the -1 header."""
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    block = _fixed_block(values.fill_null(False if pa.types.is_boolean(values.type) else 0),
                         dtype)
    block[~valid, :4] = 0xFF
    keep = np.ones(block.shape, dtype=bool)
    keep[~valid, 4:] = False
    lengths = np.where(valid, block.shape[1], 4).astype(np.int32)
    return _binary_array(block[keep], lengths)


def _binary_array(data: np.ndarray, lengths: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(
        pa.binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _text_pieces(values: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """The length headers (rows, 4) and the UTF-8 payloads (NULLs skipped by the join)."""
    offsets = np.frombuffer(values.buffers()[1], np.int32, len(values) + 1, values.offset * 4)
    lengths = np.diff(offsets)
    if values.null_count:
        lengths = np.where(values.is_valid().to_numpy(zero_copy_only=False), lengths, -1)
    headers = lengths.astype(">i4").view(np.uint8).reshape(-1, 4)
    return headers, values.view(pa.binary())


def _binary_rows(batch: pa.RecordBatch, dtypes: list[str | None]) -> pa.Buffer:
    """The COPY BINARY tuples of ``batch`` (``dtypes``: payload dtype, None for text)."""
    rows = batch.num_rows
    pieces: list[np.ndarray | pa.Array] = [
        np.frombuffer(np.array(batch.num_columns, ">i2").tobytes(), np.uint8)
        .reshape(1, 2).repeat(rows, axis=0)
    ]
    for values, dtype in zip(batch.columns, dtypes, strict=True):
        if pa.types.is_null(values.type):
            pieces.append(np.full((rows, 4), 0xFF, dtype=np.uint8))
        elif dtype is None:
            pieces.extend(_text_pieces(values))
        elif values.null_count:
            pieces.append(_nullable_fixed(values, dtype))
        else:
            pieces.append(_fixed_block(values, dtype))
    # Adjacent fixed-width pieces become one block, so the join below has fewer inputs.
    merged: list[np.ndarray | pa.Array] = []
    for piece in pieces:
        if isinstance(piece, np.ndarray) and merged and isinstance(merged[-1], np.ndarray):
            merged[-1] = np.concatenate([merged[-1], piece], axis=1)
        else:
            merged.append(piece)
    arrays = [
        _binary_array(p.reshape(-1), np.full(rows, p.shape[1], np.int32))
        if isinstance(p, np.ndarray) else p
        for p in merged
    ]
    if len(arrays) == 1:
        joined = arrays[0]
    else:
        joined = pc.binary_join_element_wise(*arrays, b"", null_handling="skip")
    offsets = np.frombuffer(joined.buffers()[1], np.int32, rows + 1, joined.offset * 4)
    return joined.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


def _binary_plan(conn: Connection, table: Table, data: pa.Table) -> tuple[pa.Table, list] | None:
    """Columns reordered for the encoder and their payload dtypes, or None to use CSV."""
    types = _server_types(conn, table)
    encoded: dict[str, tuple[pa.ChunkedArray, str | None]] = {}
    for name in data.column_names:
        server_type = types.get(name)
        if server_type not in _FIXED_WIDTH and server_type not in _TEXT_TYPES:
            return None
        try:
            values = _binary_values(data[name], server_type)
        except _NotEncodable:
            return None
        encoded[name] = (values, _FIXED_WIDTH.get(server_type))
    # Fixed-width columns without NULLs first: they merge into one block per row.
    order = sorted(
        encoded,
        key=lambda n: 0 if encoded[n][1] and not encoded[n][0].null_count
        else 1 if encoded[n][1] is None else 2,
    )
    plan = pa.table([encoded[n][0] for n in order], names=order)
    return plan, [encoded[n][1] for n in order]


def _copy_postgres(conn: Connection, table: Table, data: pa.Table) -> None:
    plan = _binary_plan(conn, table, data)
    if plan is not None:
        data, dtypes = plan
    columns = ", ".join(f'"{name}"' for name in data.column_names)
    kind = "binary" if plan is not None else "csv"
    statement = f'COPY "{table.name}" ({columns}) FROM STDIN (FORMAT {kind})'
    options = pa_csv.WriteOptions(include_header=False)
    raw = conn.connection.driver_connection
    # One sender thread keeps the server busy parsing block k while this thread encodes
    # block k+1 (Arrow and numpy release the GIL); at most two blocks wait in memory.
    with raw.cursor() as cursor, cursor.copy(statement) as copy, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="puhui-copy") as sender:
        in_flight: deque[Future] = deque()
        if plan is not None:
            copy.write(_COPY_SIGNATURE)
        for batch in data.to_batches(max_chunksize=COPY_CHUNK_ROWS):
            if plan is not None:
                block = memoryview(_binary_rows(batch, dtypes))
            else:
                buffer = io.BytesIO()
                pa_csv.write_csv(pa.Table.from_batches([batch]), buffer, options)
                block = buffer.getbuffer()
            in_flight.append(sender.submit(copy.write, block))
            while len(in_flight) > 2:
                in_flight.popleft().result()
        for pending in in_flight:
            pending.result()
        if plan is not None:
            copy.write(_COPY_TRAILER)


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
    arrow = json_columns_as_text(table, arrow)
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
