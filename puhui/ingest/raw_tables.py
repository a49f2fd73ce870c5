"""``raw_<partner>`` tables, derived from the feed's contract (a new feed needs no migration).

Each accepted record is stored with its batch id and source row number, under the stored
column names (pseudonyms instead of identifiers; dropped columns absent). A contract that
gains a column gets it added as a nullable column; any other change is refused with a line
naming the table and column, because silently reshaping history would break lineage.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Double,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    text,
)
from sqlalchemy.types import TypeEngine

from puhui.config import ColumnContract, PartnerFeed
from puhui.errors import PuhuiError
from puhui.warehouse.engine import lock_for
from puhui.warehouse.schema import session_default

_SQL_TYPES: dict[str, TypeEngine] = {
    "string": Text(),
    "int": BigInteger(),
    "float": Double(),
    "bool": Boolean(),
    "date": Date(),
    "timestamp": DateTime(timezone=True),
}
raw_metadata = MetaData()
_metadata_lock = threading.Lock()


def stored_columns(feed: PartnerFeed) -> list[tuple[str, ColumnContract]]:
    """(warehouse column name, contract column) for every column that is kept."""
    return [(c.stored_name, c) for c in feed.columns if c.stored_name]


def raw_table(feed: PartnerFeed) -> Table:
    """The SQLAlchemy table for ``feed``'s accepted records, as its contract declares it now.

    A process that lives across config edits (``puhui serve``, a warm worker) must see a
    column its contract gained, so a table built from an older contract is rebuilt."""
    columns = [
        Column(
            "batch_id", String(64), nullable=False, server_default=text(session_default("batch_id"))
        ),
        Column("row_number", BigInteger, nullable=False),
        *(
            Column(name, String(64) if c.treatment == "pseudonymize" else _SQL_TYPES[c.type])
            for name, c in stored_columns(feed)
        ),
    ]
    # No index at all: raw tables are append-only landing tables that later stages read
    # whole, and every index is paid on every COPY row. Measured per 1M payment rows: a
    # B-tree on batch_id cost 0.8 s of server time, a BRIN index 0.3-0.45 s (~9 % of the
    # whole ingest), for lookups no stage makes; a lineage question ("the rows of batch X")
    # is one scan. Tables created by earlier versions keep the index they have.
    with _metadata_lock:  # threads of one process (a served flow's tasks) share the cache
        known = raw_metadata.tables.get(feed.raw_table)
        if known is not None:
            if _shape(known.columns) == _shape(columns):
                return known
            raw_metadata.remove(known)
        return Table(feed.raw_table, raw_metadata, *columns)


def _shape(columns: Iterable[Column]) -> list[tuple[str, str, bool]]:
    return [(c.name, repr(c.type), bool(c.nullable)) for c in columns]


def ensure_raw_table(engine: Engine, feed: PartnerFeed) -> Table:
    """Create ``raw_<partner>`` if missing, or add newly declared columns (under a lock)."""
    table = raw_table(feed)
    with engine.begin() as conn:
        lock_for(conn, f"puhui.raw_table.{feed.name}")
        inspector = inspect(conn)
        if not inspector.has_table(table.name):
            table.create(conn)
            return table
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        existing = set(columns)
        if conn.dialect.name == "postgresql" and not columns["batch_id"].get("default"):
            conn.execute(
                text(
                    f'ALTER TABLE "{table.name}" ALTER COLUMN batch_id '
                    f"SET DEFAULT {session_default('batch_id')}"
                )
            )
        for column in table.columns:
            if column.name not in existing:
                if not column.nullable:
                    raise PuhuiError(f"{table.name}: cannot add required column {column.name}")
                sql_type = column.type.compile(dialect=conn.dialect)
                conn.execute(
                    text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {sql_type}')
                )
    return table
