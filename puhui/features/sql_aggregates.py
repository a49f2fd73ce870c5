"""A partition's window aggregates and latest values computed by PostgreSQL, not pandas.

The SQL is generated from ``configs/features.yaml`` (no per-feature SQL). Per source, for
each request (person, as-of day) of the partition: one ``LATERAL`` aggregate over that
person's rows with one ``FILTER``ed count or sum per (aggregate part, window), and one
``LATERAL ... ORDER BY time DESC LIMIT 1`` for its latest values. Each is an index range read
of the covering ``(key, time)`` index per request
(:func:`puhui.features.partitioned.ensure_partition_indexes`): no sort or hash of the
partition's rows, so the server's memory stays flat. The parts are the pandas builder's
(``puhui.features.builder._components``: a count, a sum, or a sum and a count for means and
shares), so the arithmetic after them (per 30 days over the days covered, ratios, missing
values) is the builder's own (:func:`~puhui.features.builder.window_values`), as are the
register's features, the derived ones and the final frame.

Point in time, the builder's rule: a row counts for a request as of day D if its event day in
the lender's timezone is on or before D, i.e. its event time is strictly before the first
instant of D + 1; a window of w days holds the days ``(D - w, D]``, i.e. times from the first
instant of D - w + 1; the latest row is the newest on or before D, if at most
``max_age_days`` old. Those instants are computed once per request, in each time column's
own terms (:func:`day_start`), so each row costs comparisons of stored values: a first
version that computed each row's local day in SQL spent more on that (every FILTER
recomputed it) than pandas spends on the whole partition.

The requests (person, phone owned, as-of day) travel to the server once per partition by
``COPY`` into a temporary table; results come back as ``COPY`` CSV through Arrow.
PostgreSQL only. Not what :func:`puhui.features.partitioned.build_partition` runs: measured
1.69x slower than its pandas path at 200k customers (README, Performance), it is kept as the
measured alternative, equal to the builder (``tests/test_sql_aggregates.py``) and benchmarked
by ``bench/bench_sql_aggregates.py``.
"""

from __future__ import annotations

import io
from datetime import date
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    Table,
    and_,
    column,
    func,
    literal_column,
    select,
    table,
    true,
)

from puhui.config import Aggregate, FeaturesConfig, FeatureSource, RowFilter
from puhui.features.builder import (
    customer_features,
    distinct_requests,
    finish_features,
    window_values,
)
from puhui.features.sources import _reflect, time_kind
from puhui.partitioning import Partition
from puhui.warehouse.copy_out import copy_sql, copy_to_arrow

if TYPE_CHECKING:
    from psycopg import Cursor

REQUESTS = "puhui_partition_requests"
EPOCH = "DATE '1970-01-01'"


def day_start(kind: str, timezone_aware: bool, timezone: str, day: str) -> str:
    """SQL for the first instant of local day number ``day`` (an SQL expression) in a time
    column's own terms, so that "event day >= D" is "time >= day_start(D)", a comparison
    the (key, time) index serves. ``kind`` as :func:`puhui.features.sources.time_kind`."""
    date_sql = f"({EPOCH} + ({day}))"
    if kind == "date":
        return date_sql
    if kind == "month":  # "YYYY-MM", known at the end of the month: day >= D iff month >= D's
        return f"to_char({date_sql}, 'YYYY-MM')"
    zone = timezone.replace("'", "''")
    start = f"timezone('{zone}', {date_sql}::timestamp)"  # local midnight, as timestamptz
    # Stored in UTC; a column without a zone holds UTC wall time.
    return start if timezone_aware else f"timezone('UTC', {start})"


def row_condition(rows: Table, condition: RowFilter) -> ColumnElement[bool]:
    """:func:`puhui.features.builder.row_mask` in SQL: a missing value matches no clause,
    except ``ne`` (pandas' ``ne`` is true for a missing value: IS DISTINCT FROM)."""
    clauses: list[ColumnElement[bool]] = []
    for name, test in condition.items():
        values = rows.c[name]
        if isinstance(test, list):
            clauses.append(values.in_(test))
        elif isinstance(test, dict):
            for op, bound in test.items():
                if op == "ne":
                    clauses.append(values.is_distinct_from(bound))
                else:
                    clauses.append(getattr(values, f"__{op}__")(bound))
        else:
            clauses.append(values == test)
    return and_(true(), *clauses)


def components(rows: Table, agg: Aggregate) -> dict[str, tuple[str, ColumnElement[bool]]]:
    """The builder's additive parts of ``agg`` as (count|sum of column, row filter)."""
    where = row_condition(rows, agg.where)
    if agg.agg == "count":
        return {"n": ("count", where)}
    if agg.agg == "sum":
        return {"s": (f"sum:{agg.column}", where)}
    if agg.agg == "mean":
        present = and_(where, rows.c[agg.column].is_not(None))
        return {"s": (f"sum:{agg.column}", present), "n": ("count", present)}
    hit = and_(where, row_condition(rows, agg.share_where))
    return {"s": ("count", hit), "n": ("count", where)}


class Bounds:
    """Per request, the first instant of each day a source's features start or end at, in
    the source's time column's terms: columns of the requests table, computed once per
    request, so the per-row work is comparisons of stored values (an event day per row,
    recomputed by every FILTER, cost more than the aggregates)."""

    def __init__(self, engine: Engine, spec: FeaturesConfig) -> None:
        self.columns: dict[str, str] = {}  # name -> SQL over the request's ``as_of``
        self.tables: dict[str, Table] = {}
        self.month: dict[str, bool] = {}
        for i, source in enumerate(spec.sources):
            raw = _reflect(engine, source.table)
            self.tables[source.name] = raw
            kind = time_kind(raw, source.time)
            self.month[source.name] = kind == "month"
            aware = bool(getattr(raw.c[source.time].type, "timezone", False))
            # Day D's rows: time < start of D + 1; a window of w days: time >= start of
            # D - w + 1; the latest value: time >= start of D - max_age.
            offsets = {"end": 1, **{f"w{w}": 1 - w for w in source.windows}}
            if source.latest:
                offsets["latest"] = -source.latest.max_age_days
            for label, offset in offsets.items():
                self.columns[f"s{i}_{label}"] = day_start(kind, aware, spec.timezone,
                                                          f"as_of + {offset}")
        self._index = {s.name: i for i, s in enumerate(spec.sources)}
        # One object: SQLAlchemy correlates the LATERAL subqueries by identity.
        self.requests = table(REQUESTS, column("person_key"), column("phone_key"),
                              column("as_of"), *(column(name) for name in self.columns))

    def time(self, source: FeatureSource) -> ColumnElement:
        col = self.tables[source.name].c[source.time]
        # Month strings compare bytewise whatever the database's collation.
        return col.collate("C") if self.month[source.name] else col

    def at(self, source: FeatureSource, label: str) -> ColumnElement:
        return self.requests.c[f"s{self._index[source.name]}_{label}"]


def _own_rows(bounds: Bounds, source: FeatureSource, start: str) -> ColumnElement[bool]:
    """The request's person's rows from day ``start`` to its as-of day (correlated)."""
    req = bounds.requests
    raw = bounds.tables[source.name]
    key = req.c.person_key if source.key == "person_key" else req.c.phone_key
    time = bounds.time(source)
    return and_(raw.c[source.key] == key, time >= bounds.at(source, start),
                time < bounds.at(source, "end"))


def window_query(bounds: Bounds, source: FeatureSource) -> tuple[Select, list[tuple[str, int]]]:
    """Per request, every (part, window) sum, from a LATERAL aggregate of its own rows (an
    index range read per request, no sort or hash of the partition's rows); returns the
    query and the names (``"<aggregate>|<part>"``, window) of its columns c0, c1, ..."""
    raw = bounds.tables[source.name]
    time = bounds.time(source)
    outputs = []
    names: list[tuple[str, int]] = []
    for window in source.windows:
        in_window = time >= bounds.at(source, f"w{window}")
        for agg in source.aggregates:
            for part, (measure, condition) in components(raw, agg).items():
                where = and_(in_window, condition)
                if measure == "count":
                    value = func.count().filter(where)
                else:
                    value = func.sum(raw.c[measure.removeprefix("sum:")]).filter(where)
                outputs.append(value.label(f"c{len(names)}"))
                names.append((f"{agg.name}|{part}", window))
    widest = f"w{max(source.windows)}"
    sums = select(*outputs).select_from(raw).where(_own_rows(bounds, source, widest)).lateral()
    req = bounds.requests
    query = select(req.c.person_key, req.c.as_of, *(sums.c[f"c{i}"] for i in range(len(names))))
    return query.select_from(req.join(sums, true())), names


def latest_query(bounds: Bounds, source: FeatureSource) -> Select:
    """Per request, the newest row on or before its day and at most max_age_days old.

    Rows of the same time: the last stored (the order the pandas builder reads them in)."""
    latest = source.latest
    assert latest is not None
    raw = bounds.tables[source.name]
    newest = (select(*[raw.c[c.column].label(f"c{i}") for i, c in enumerate(latest.columns)])
              .where(_own_rows(bounds, source, "latest"))
              .order_by(raw.c[source.time].desc(), literal_column("ctid").desc())
              .limit(1).lateral())
    req = bounds.requests
    return (select(req.c.person_key, req.c.as_of,
                   *(newest.c[f"c{i}"] for i in range(len(latest.columns))))
            .select_from(req.join(newest, true())))


def _copy_out(cursor: Cursor, sql: str, types: dict[str, pa.DataType]) -> pd.DataFrame:
    return copy_to_arrow(cursor, sql, types).to_pandas().set_index(["person_key", "as_of"])


def _copy_in_requests(cursor: Cursor, requests: pd.DataFrame, bounds: Bounds) -> None:
    shipped = f"{REQUESTS}_in"
    cursor.execute(f"CREATE TEMPORARY TABLE {shipped} (person_key text NOT NULL, "
                   "phone_key text, as_of integer NOT NULL) ON COMMIT DROP")
    text_rows = io.StringIO()
    requests.to_csv(text_rows, index=False, header=False)
    with cursor.copy(f"COPY {shipped} FROM STDIN (FORMAT csv)") as copy:
        copy.write(text_rows.getvalue())
    computed = "".join(f", {sql} AS {name}" for name, sql in bounds.columns.items())
    cursor.execute(f"CREATE TEMPORARY TABLE {REQUESTS} ON COMMIT DROP AS "
                   f"SELECT person_key, phone_key, as_of{computed} FROM {shipped}")
    cursor.execute(f"ANALYZE {REQUESTS}")


def build_partition_sql(
    engine: Engine, spec: FeaturesConfig, as_of: date, customers: pd.DataFrame,
    partition: Partition, first_day: dict[str, int], requests: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """:func:`puhui.features.partitioned.build_partition`, aggregated by PostgreSQL.

    ``customers`` is the partition's slice of the register (with ``owns_phone``), as the
    pandas path takes it (``partition`` too, for the same signature: the requests select the
    rows here); the result equals that path's (counts exactly, sums to float
    rounding: the server sums in another order)."""
    if engine.dialect.name != "postgresql":
        raise ValueError("SQL aggregates need PostgreSQL; SQLite uses the pandas builder")
    if requests is None:
        requests = pd.DataFrame({"person_key": customers["person_key"], "as_of_date": as_of})
    requests, req_days = distinct_requests(requests, as_of)
    codes = pd.Index(pd.unique(pd.concat([requests["person_key"], customers["person_key"]])))
    columns, known = customer_features(
        customers, spec, codes, codes.get_indexer(requests["person_key"]).astype(np.int64),
        req_days)
    owners = customers[customers["owns_phone"]].set_index("person_key")["phone_key"]
    shipped = pd.DataFrame({"person_key": requests["person_key"].to_numpy(),
                            "phone_key": requests["person_key"].map(owners).to_numpy(),
                            "as_of": req_days})
    wanted = pd.MultiIndex.from_arrays([requests["person_key"].to_numpy(), req_days])
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        # As for the pandas path's reads: JIT costs more than it saves on a partition, and
        # the planner, costing one query, would scan a whole table for each partition.
        cursor.execute("SET LOCAL jit = off")
        cursor.execute("SET LOCAL enable_seqscan = off")
        bounds = Bounds(engine, spec)
        _copy_in_requests(cursor, shipped, bounds)
        for source in spec.sources:
            if source.latest:
                columns.update(_latest(cursor, engine, bounds, source, wanted))
            if source.aggregates:
                columns.update(_windows(cursor, engine, bounds, source, wanted,
                                        first_day.get(source.name), req_days))
        conn.rollback()
    return finish_features(columns, known, requests, spec)


def _keys_types() -> dict[str, pa.DataType]:
    return {"person_key": pa.string(), "as_of": pa.int64()}


def _windows(cursor: Cursor, engine: Engine, bounds: Bounds, source: FeatureSource,
             wanted: pd.MultiIndex, first_day: int | None,
             req_days: np.ndarray) -> dict[str, np.ndarray]:
    query, names = window_query(bounds, source)
    types = _keys_types() | {f"c{i}": pa.float64() for i in range(len(names))}
    found = _copy_out(cursor, copy_sql(engine, query), types).reindex(wanted)
    out: dict[str, np.ndarray] = {}
    for window in source.windows:
        # No row in the window: 0, as the running totals give; rounded as they are, so
        # that the values compare (the server sums in another order).
        sums = {name: np.round(found[f"c{i}"].fillna(0.0).to_numpy(np.float64), 6) + 0.0
                for i, (name, w) in enumerate(names) if w == window}
        out.update(window_values(source, window, sums, first_day, req_days))
    return out


def _latest(cursor: Cursor, engine: Engine, bounds: Bounds, source: FeatureSource,
            wanted: pd.MultiIndex) -> dict[str, np.ndarray]:
    latest = source.latest
    assert latest is not None
    types = _keys_types() | {f"c{i}": pa.string() if c.categorical else pa.float64()
                             for i, c in enumerate(latest.columns)}
    query = latest_query(bounds, source)
    found = _copy_out(cursor, copy_sql(engine, query), types)
    present = wanted.isin(found.index)
    found = found.reindex(wanted)
    out: dict[str, np.ndarray] = {latest.present_as.name: present.astype(float)}
    for i, col in enumerate(latest.columns):
        values = found[f"c{i}"]
        if col.categorical:
            out[col.name] = np.where(present, values.astype(object).to_numpy(), None)
        else:
            out[col.name] = np.where(present, values.to_numpy(np.float64), np.nan)
    return out
