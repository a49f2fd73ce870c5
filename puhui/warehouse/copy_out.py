"""A query's rows as Arrow columns: on PostgreSQL through ``COPY (query) TO STDOUT`` CSV.

Building a Python tuple and object per value (the driver's way) cost more than the queries
themselves where many rows come back (the feature build's reads, the key index's join).
PostgreSQL's CSV writes NULL as an empty unquoted field and an empty string quoted; the
parse options here keep that distinction.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pa_csv
from sqlalchemy import Connection, Engine, Select, text

if TYPE_CHECKING:
    from psycopg import Cursor


def copy_sql(engine: Engine, query: Select) -> str:
    """``query`` with its values written in, for a ``COPY`` (which takes no parameters)."""
    sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    # The psycopg dialect doubles every % (of a column Util%, a literal) for the driver's
    # parameter pass, which a query without parameters never gets: psycopg sent Util%% as is.
    return sql.replace("%%", "%") if engine.dialect.paramstyle in ("format", "pyformat") \
        else sql


def csv_convert_options(types: dict[str, pa.DataType]) -> pa_csv.ConvertOptions:
    """Arrow's parse of PostgreSQL's COPY CSV into ``types``: NULL is an empty unquoted
    field, an empty string is quoted."""
    return pa_csv.ConvertOptions(column_types=types, null_values=[""],
                                 strings_can_be_null=True, quoted_strings_can_be_null=False)


def copy_statement(sql: str, header: bool = False) -> str:
    """``COPY (sql) TO STDOUT`` as CSV. ``header`` for a streamed parse
    (``pyarrow.csv.open_csv``), which refuses an empty stream: with the header line a query
    of no rows is still a CSV (skip it: ``skip_rows=1``). :func:`copy_to_arrow` reads the
    rows whole and tells no rows by their length instead."""
    return f"COPY ({sql}) TO STDOUT (FORMAT csv{', HEADER true' if header else ''})"


def copy_to_arrow(cursor: Cursor, sql: str, types: dict[str, pa.DataType]) -> pa.Table:
    """The rows of ``sql`` (its columns named and typed as ``types``, in order) on the
    PostgreSQL ``cursor``'s connection, in its transaction and settings. A compiled
    ``Select`` goes through :func:`copy_sql` first: ``str()`` of it keeps bind placeholders
    and, on psycopg, doubled ``%``, which ``COPY`` would send as written."""
    buffer = io.BytesIO()
    with cursor.copy(copy_statement(sql)) as copy:
        for block in copy:
            buffer.write(block)
    if not buffer.tell():  # no rows: Arrow refuses an empty CSV
        return pa.table({name: pa.array([], kind) for name, kind in types.items()})
    buffer.seek(0)
    return pa_csv.read_csv(buffer, read_options=pa_csv.ReadOptions(column_names=list(types)),
                           convert_options=csv_convert_options(types))


def query_arrow(conn: Connection, sql: str, types: dict[str, pa.DataType]) -> pa.Table:
    """:func:`copy_to_arrow` on ``conn``; on SQLite, the driver's rows made columns."""
    if conn.dialect.name != "postgresql":
        rows = conn.execute(text(sql)).all()
        return pa.table({name: pa.array([r[i] for r in rows], kind)
                         for i, (name, kind) in enumerate(types.items())})
    with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        return copy_to_arrow(cursor, sql, types)
