"""Reading the raw tables a feature set needs, as of a date, with their lineage.

Every row read is stamped with an integer ``day`` (days since 1970-01-01 in the lender's
timezone) and a ``person_key``; phone-keyed feeds are joined to people through the customer
register. Rows with an event time after the as-of date are dropped as they are read, before
anything else sees them, so nothing later can reach a feature. The batch ids of the rows read
are kept: they are the data lineage of whatever is built from these frames.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from sqlalchemy import ColumnElement, Engine, MetaData, Select, Table, func, select

from puhui.config import FeaturesConfig, FeatureSource
from puhui.errors import PuhuiError
from puhui.partitioning import Partition, bucket_of, in_bucket
from puhui.warehouse.copy_out import (
    copy_sql,
    copy_statement,
    copy_to_arrow,
    csv_convert_options,
)

if TYPE_CHECKING:
    from psycopg import Cursor
    from psycopg.abc import Buffer

EPOCH = pd.Timestamp("1970-01-01")


def local_days(values: pd.Series, kind: str, timezone: str) -> np.ndarray:
    """Days since 1970-01-01 of each value in ``timezone``.

    ``kind``: "timestamp" (stored in UTC; naive means UTC), "date", or "month" ("YYYY-MM",
    known only at the end of that month).
    """
    if values.empty:
        return np.zeros(0, dtype=np.int64)
    if kind == "month":
        stamps = pd.to_datetime(values.astype(str) + "-01") + pd.offsets.MonthEnd(0)
    elif kind == "date":
        stamps = pd.to_datetime(values)
    else:
        stamps = pd.to_datetime(values, utc=True).dt.tz_convert(timezone).dt.tz_localize(None)
    return ((stamps.dt.normalize() - EPOCH).dt.days).to_numpy(np.int64)


def time_kind(table: Table, column: str) -> str:
    """How a time column is stored: "timestamp", "date" or "month" (a YYYY-MM string)."""
    python_type = table.c[column].type.python_type
    if python_type is datetime:
        return "timestamp"
    if python_type is date:
        return "date"
    return "month"


def day_number(day: date) -> int:
    return (pd.Timestamp(day) - EPOCH).days


def day_from_number(number: int) -> date:
    return (EPOCH + pd.Timedelta(days=int(number))).date()


@dataclass
class SourceFrames:
    """The rows of each source up to ``as_of``, the customer register, and their batches."""

    as_of: date
    customers: pd.DataFrame
    events: dict[str, pd.DataFrame]
    first_day: dict[str, int]  # first event day of each source, up to ``as_of``
    batch_ids: set[str] = field(default_factory=set)


def _arrow_type(column: object) -> pa.DataType:
    """The Arrow type a column's CSV text is parsed as (what psycopg would have returned)."""
    sql_type = column.type  # type: ignore[attr-defined]
    try:
        python_type = sql_type.python_type
    except NotImplementedError:
        return pa.string()
    if python_type is datetime:
        return pa.timestamp("us", tz="UTC" if getattr(sql_type, "timezone", False) else None)
    if python_type is date:
        return pa.date32()
    if python_type in (float, Decimal):
        return pa.float64()
    if python_type is int:
        return pa.int64()
    if python_type is bool:
        return pa.bool_()
    return pa.string()


# The plan of a partition's read (``read_frame(key_range=True)``), whatever the session's
# settings. The planner costs one query, not N: for a partition of 1/8 of the people a scan
# of the table looks cheaper than 25k index probes, but N partitions make N scans of
# everything (measured at 200k: 10 s scan against 1.5 s index-only, per partition); without
# the index a scan remains the only plan, and is used. A phone-keyed feed joins the
# partition's phones (a sub-select): for ~20k people the planner preferred a hash join over
# a full scan of the feed's index, so every partition read the whole feed again (45k
# customers in 2 partitions: payments 4.9 s, e-commerce 4.6 s against 0.8 s and 0.35 s).
# Probing the index once per phone, in phone order (a sort, not a hash, so the probes walk
# the index forward), reads only the partition's rows, at any size.
KEY_RANGE_PLAN = {"enable_seqscan": "off", "enable_hashjoin": "off", "enable_mergejoin": "off",
                  "enable_hashagg": "off", "enable_nestloop": "on"}


@contextmanager
def _copy_session(engine: Engine, key_range: bool = False) -> Iterator[Cursor]:
    """A cursor of a connection of its own, set for the COPYs of ``read_frame``."""
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("SET LOCAL TimeZone = 'UTC'")
        # JIT compiling a scan costs ~0.2 s per query, more than a partition's read saves.
        cursor.execute("SET LOCAL jit = off")
        if key_range:
            for setting, value in KEY_RANGE_PLAN.items():
                cursor.execute(f"SET LOCAL {setting} = {value}")
        yield cursor
        conn.rollback()


def _column_types(query: Select) -> dict[str, pa.DataType]:
    """The Arrow types a query's COPY CSV is parsed as (what psycopg would have returned)."""
    return {c.name: _arrow_type(c) for c in query.selected_columns}


def _csv_options(query: Select, block_size: int) -> dict[str, object]:
    """How Arrow parses a query's COPY CSV, with its header, in blocks of ``block_size``
    bytes into the types psycopg would have returned."""
    types = _column_types(query)
    read = pa_csv.ReadOptions(column_names=list(types), skip_rows=1, block_size=block_size)
    return {"read_options": read, "convert_options": csv_convert_options(types)}


def read_frame(engine: Engine, query: Select, key_range: bool = False) -> pd.DataFrame:
    """The rows of ``query`` as a DataFrame, the same values as ``pandas.read_sql_query``.

    On PostgreSQL the rows travel as ``COPY (query) TO STDOUT`` CSV parsed by Arrow: building
    a Python tuple and object per value (what ``read_sql_query`` does) was ~70% of the
    feature build's time. Timestamps come in UTC (the session's zone is set for the COPY).

    ``key_range``: the query is one partition's read, to be served by the partition-read
    indexes (:func:`puhui.features.partitioned.ensure_partition_indexes`), not a scan.
    """
    if engine.dialect.name != "postgresql":
        with engine.connect() as conn:
            return pd.read_sql_query(query, conn)
    with _copy_session(engine, key_range) as cursor:
        return copy_to_arrow(cursor, copy_sql(engine, query), _column_types(query)).to_pandas()


class _BlockReader(io.RawIOBase):
    """A stream of byte blocks (a COPY's rows) as a readable file, for Arrow to parse while
    it arrives. ``read`` is served from whole blocks: ``RawIOBase.read(n)`` would allocate n
    bytes per call, and Arrow asks for a whole CSV block each time."""

    def __init__(self, blocks: Iterable[Buffer]) -> None:
        self._blocks = iter(blocks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if 0 <= size <= len(self._pending):  # served from what is held: no block pulled
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        parts, filled = [self._pending], len(self._pending)
        for block in self._blocks:
            parts.append(block)
            filled += len(block)
            if 0 <= size <= filled:
                break
        data = b"".join(parts)
        if size < 0:
            size = len(data)
        self._pending = data[size:]
        return data[:size]

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _reflect(engine: Engine, name: str) -> Table:
    try:
        return Table(name, MetaData(), autoload_with=engine)
    except Exception as exc:  # noqa: BLE001 - NoSuchTableError and driver variants
        raise PuhuiError(
            f"table {name} is not in the warehouse: ingest its feed first (puhui run ingest)"
        ) from exc


def source_columns(source: FeatureSource) -> list[str]:
    """The columns of a source's table that its features read."""
    cols = {source.key, source.time, "batch_id"}
    for agg in source.aggregates:
        cols.update(agg.where)
        cols.update(agg.share_where)
        if agg.column:
            cols.add(agg.column)
    if source.latest:
        cols.update(c.column for c in source.latest.columns)
    return sorted(cols)


def load_customers(engine: Engine, spec: FeaturesConfig, as_of: date) -> pd.DataFrame:
    """One row per customer known on ``as_of`` (the newest delivery of each), keyed by person."""
    table = _reflect(engine, spec.customer.table)
    since = table.c[spec.customer.since]
    frame = read_frame(engine, select(table).where(since <= as_of))
    frame = frame.sort_values(["customer_id", "batch_id", "row_number"], kind="stable")
    frame = frame.drop_duplicates("customer_id", keep="last")
    frame = frame.dropna(subset=["person_key"]).drop_duplicates("person_key", keep="last")
    frame["since_day"] = local_days(
        frame[spec.customer.since], time_kind(table, spec.customer.since), spec.timezone
    )
    return frame.reset_index(drop=True)


def _partition_predicate(engine: Engine, table: Table, key: str, partition: Partition,
                         register: str | Table) -> ColumnElement[bool]:
    """Rows of ``table`` (keyed by ``key``) that may belong to the partition's people.

    A person-keyed table is cut by key range. One keyed by another column of the register (a
    phone, a customer id) keeps the keys that some register row of the partition's people
    carries: a superset of the rows that map to them (the caller applies the exact mapping,
    as for the whole table).
    """
    if key == "person_key":
        return in_bucket(table.c.person_key, partition)
    customers = register if isinstance(register, Table) else _reflect(engine, register)
    keys = select(customers.c[key]).where(in_bucket(customers.c.person_key, partition))
    return table.c[key].in_(keys)


def reads_a_part(partition: Partition | None) -> bool:
    """Whether a read is one partition's part of a table (a partition of one is all of it)."""
    return partition is not None and partition.count > 1


def partition_query(engine: Engine, query: Select, table: Table, key: str,
                    partition: Partition | None, register: str | Table = "") -> Select:
    """``query`` cut to ``partition``'s rows of ``table``, keyed by ``key`` (``register``, the
    customer table or its name, maps another key to people). One partition of one is the
    whole table: read as the whole-table builder reads it, no sub-select, and a scan even
    where the partition-read indexes exist."""
    if reads_a_part(partition):
        assert partition is not None
        query = query.where(_partition_predicate(engine, table, key, partition, register))
    return query


def read_partition(engine: Engine, query: Select, table: Table, key: str,
                   partition: Partition | None, register: str | Table = "") -> pd.DataFrame:
    """A partition's rows of ``query`` (:func:`partition_query`), read with the key-range
    plan when they are a part (``read_frame(key_range=True)``): :func:`reads_a_part` decides
    both, so a part is never read with a scan's plan nor the whole table with an index's."""
    return read_frame(engine, partition_query(engine, query, table, key, partition, register),
                      key_range=reads_a_part(partition))


def source_query(table: Table, source: FeatureSource) -> Select:
    """The query reading a source's columns (all its rows)."""
    return select(*(table.c[c] for c in source_columns(source)))


def load_source(
    engine: Engine, source: FeatureSource, as_of: date, timezone: str,
    phone_to_person: pd.Series, partition: Partition | None = None, register: str = "",
    scattered: Path | None = None,
) -> tuple[pd.DataFrame, int | None]:
    """Rows of one source with event day <= ``as_of``, and the first event day among them.

    With a ``partition``, only the rows of that partition's people are read (``register``
    names the customer table phone-keyed feeds join through); their first day is then not
    the source's: use :func:`first_event_days` for that. ``scattered``: the partition's rows
    already split out of the table (:func:`scatter_phone_feeds`), read instead of the table.
    """
    table = _reflect(engine, source.table)
    if scattered is not None:
        with pa.ipc.open_file(scattered) as rows:
            frame = rows.read_all().to_pandas()
    else:
        frame = read_partition(engine, source_query(table, source), table, source.key,
                               partition, register)
    if frame.empty:
        frame["day"] = np.zeros(0, dtype=np.int64)
        frame["person_key"] = pd.Series(dtype="str")
        return frame, None
    frame["day"] = local_days(frame[source.time], time_kind(table, source.time), timezone)
    frame = frame[frame["day"] <= day_number(as_of)]
    first_day = int(frame["day"].min()) if len(frame) else None
    if source.key == "phone_key":
        frame = frame.assign(person_key=frame["phone_key"].map(phone_to_person))
    frame = frame.dropna(subset=["person_key"])
    return frame.reset_index(drop=True), first_day


def phone_owners(customers: pd.DataFrame) -> pd.Series:
    """phone_key -> person_key; a phone shared by several people goes to the last of them."""
    phone_to_person = customers.dropna(subset=["phone_key"]).set_index("phone_key")["person_key"]
    return phone_to_person[~phone_to_person.index.duplicated(keep="last")]


def count_register(engine: Engine, spec: FeaturesConfig, as_of: date) -> int:
    """Register rows onboarded by ``as_of``: an upper bound on the customers, to size N by."""
    table = _reflect(engine, spec.customer.table)
    query = select(func.count()).select_from(table).where(table.c[spec.customer.since] <= as_of)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)


def first_event_days(engine: Engine, spec: FeaturesConfig, as_of: date) -> dict[str, int]:
    """First event day of each source up to ``as_of``, from one MIN per table.

    Local days do not decrease with time, so the day of the earliest event time is the first
    day, and if it is after ``as_of`` no event is on or before it.
    """
    out: dict[str, int] = {}
    for source in spec.sources:
        table = _reflect(engine, source.table)
        with engine.connect() as conn:
            first = conn.execute(select(func.min(table.c[source.time]))).scalar()
        if first is None:
            continue
        day = int(local_days(pd.Series([first]), time_kind(table, source.time),
                             spec.timezone)[0])
        if day <= day_number(as_of):
            out[source.name] = day
    return out


@dataclass
class Register:
    """The customer register as of a date, split into partitions, with the phone owners."""

    as_of: date
    partitions: int
    customers: pd.DataFrame  # as load_customers, plus "partition" and "owns_phone"

    def part(self, bucket: int) -> pd.DataFrame:
        return self.customers[self.customers["partition"] == bucket].reset_index(drop=True)


def load_register(engine: Engine, spec: FeaturesConfig, as_of: date, partitions: int) -> Register:
    """The register once for all partitions: who owns a shared phone is a global question."""
    customers = load_customers(engine, spec, as_of)
    customers["partition"] = bucket_of(customers["person_key"], partitions)
    owners = phone_owners(customers)
    customers["owns_phone"] = customers["phone_key"].map(owners).eq(customers["person_key"])
    customers["owns_phone"] = customers["owns_phone"].fillna(False).astype(bool)
    return Register(as_of, partitions, customers)


def load_partition_frames(
    engine: Engine, spec: FeaturesConfig, as_of: date, customers: pd.DataFrame,
    partition: Partition, first_day: dict[str, int] | None,
    scattered: dict[str, Path] | None = None,
) -> SourceFrames:
    """What :func:`load_source_frames` gives, for one partition's people only.

    ``customers`` is the partition's slice of :func:`load_register`; ``first_day`` the
    sources' first days (:func:`first_event_days`), which a partition cannot see alone; None
    for a partition of one (the whole population), whose rows read give them. ``scattered``:
    the sources already split by partition (:func:`scatter_phone_feeds`), by source name.
    """
    owners = customers[customers["owns_phone"]]
    phone_to_person = owners.set_index("phone_key")["person_key"]
    files = {name: scattered_file(directory, partition)
             for name, directory in (scattered or {}).items()}
    events, days, batch_ids = _read_sources(engine, spec, as_of, customers, phone_to_person,
                                            partition, files)
    register_columns = [c for c in customers.columns if c not in ("partition", "owns_phone")]
    return SourceFrames(as_of, customers[register_columns], events,
                        dict(days if first_day is None else first_day), batch_ids)


def load_source_frames(engine: Engine, spec: FeaturesConfig, as_of: date) -> SourceFrames:
    """Everything ``spec`` needs from the warehouse, as it was known at the end of ``as_of``."""
    customers = load_customers(engine, spec, as_of)
    events, first_day, batch_ids = _read_sources(engine, spec, as_of, customers,
                                                 phone_owners(customers))
    return SourceFrames(as_of, customers, events, first_day, batch_ids)


def _read_sources(
    engine: Engine, spec: FeaturesConfig, as_of: date, customers: pd.DataFrame,
    phone_to_person: pd.Series, partition: Partition | None = None,
    scattered: dict[str, Path] | None = None,
) -> tuple[dict[str, pd.DataFrame], dict[str, int], set[str]]:
    """Each source's rows (of ``partition``'s people, or everyone's), the first event day of
    each source among the rows read, and the batch ids of the register and of those rows."""
    events: dict[str, pd.DataFrame] = {}
    first_day: dict[str, int] = {}
    batch_ids = set(customers["batch_id"])
    for source in spec.sources:
        frame, first = load_source(engine, source, as_of, spec.timezone, phone_to_person,
                                   partition, spec.customer.table,
                                   (scattered or {}).get(source.name))
        events[source.name] = frame
        if first is not None:
            first_day[source.name] = first
        batch_ids.update(frame["batch_id"].unique())
    return events, first_day, batch_ids


# --- phone-keyed feeds split by partition in one read ---------------------------------------

SCATTER_BLOCK_BYTES = 32 * 2**20


def scattered_file(directory: Path, partition: Partition) -> Path:
    return directory / f"{partition.bucket:05d}.arrow"


def scatter_phone_feeds(engine: Engine, spec: FeaturesConfig, register: Register,
                        directory: Path) -> dict[str, Path]:
    """Split each phone-keyed source by the partition of its phone's owner, in one sequential
    read of the table; returns each source's directory of per-partition Arrow files.

    A partition's people are a key range of ``person_key``, but their phones are spread over
    the whole ``phone_key`` index: N partitions probing it make one random read of every
    page of it, which on this machine's disk ran at ~5 MB/s against ~100 MB/s for a scan
    (1M customers: over 5 minutes per partition for the payments feed). Splitting as the
    rows stream costs one scan and memory of one block. Rows whose phone no customer owns are
    dropped here, as the partitioned and the whole-table reads drop them.
    """
    owners = register.customers[register.customers["owns_phone"]]
    owner_index = pd.Index(owners["phone_key"])
    owner_bucket = owners["partition"].to_numpy()
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    out: dict[str, Path] = {}
    for source in spec.sources:
        if source.key != "phone_key":
            continue
        table = _reflect(engine, source.table)
        query = source_query(table, source)
        target = directory / source.name
        target.mkdir(parents=True, exist_ok=True)
        writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        with _copy_session(engine) as cursor, cursor.copy(
                copy_statement(copy_sql(engine, query), header=True)) as blocks:
            reader = pa_csv.open_csv(_BlockReader(blocks),
                                     **_csv_options(query, SCATTER_BLOCK_BYTES))
            for batch in reader:
                found = owner_index.get_indexer(batch.column(source.key).to_pandas())
                buckets = np.where(found >= 0, owner_bucket[found], -1)
                order = np.argsort(buckets, kind="stable")
                edges = np.searchsorted(buckets[order], np.arange(register.partitions + 1))
                for bucket in range(register.partitions):
                    rows = order[edges[bucket]:edges[bucket + 1]]
                    if len(rows) == 0:
                        continue
                    if bucket not in writers:
                        path = scattered_file(target, Partition(bucket, register.partitions))
                        writers[bucket] = pa.ipc.new_file(path, reader.schema, options=options)
                    writers[bucket].write_batch(batch.take(pa.array(rows)))
            schema = reader.schema
        for bucket in range(register.partitions):
            if bucket not in writers:  # an empty file: the partition's columns and types
                path = scattered_file(target, Partition(bucket, register.partitions))
                writers[bucket] = pa.ipc.new_file(path, schema, options=options)
            writers[bucket].close()
        out[source.name] = target
    return out
