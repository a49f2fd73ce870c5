"""A partition's window aggregates and latest values computed by PostgreSQL, not pandas.

The SQL is generated from ``configs/features.yaml`` (no per-feature SQL): per source, one
grouped query over the partition's requests joined to the source's rows, with one
``FILTER``ed aggregate per (aggregate part, window), and one ``DISTINCT ON`` query for its
latest values. The parts are the pandas builder's (:func:`puhui.features.builder._components`:
a count, a sum, or a sum and a count for means and shares), so the arithmetic after them (per
30 days over the days covered, ratios, missing values) is the builder's own
(:func:`~puhui.features.builder.window_values`), as are the register's features, the derived
ones and the final frame.

Point in time, the builder's rule: a row counts for a request as of day D if its event day
(in the lender's timezone) is on or before D, i.e. its event time is strictly before the end
of D; a window of w days holds the days ``(D - w, D]``; the latest row is the newest on or
before D, if at most ``max_age_days`` old. Event days are computed per row in SQL from the
time column's kind, as :func:`puhui.features.sources.local_days` does in pandas.

The requests (person, phone owned, as-of day) travel to the server once per partition by
``COPY`` into a temporary table; results come back as ``COPY`` CSV through Arrow.
PostgreSQL only: SQLite keeps the pandas builder.
"""

from __future__ import annotations

import io
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    and_,
    column,
    func,
    literal_column,
    select,
    table,
    true,
)
from sqlalchemy.sql.expression import Subquery, TableClause

from puhui.config import Aggregate, FeaturesConfig, FeatureSource, RowFilter
from puhui.features.builder import (
    customer_features,
    distinct_requests,
    finish_features,
    window_values,
)
from puhui.features.sources import _reflect, time_kind
from puhui.partitioning import Partition, in_bucket

REQUESTS = "puhui_partition_requests"


def _requests_table() -> TableClause:
    return table(REQUESTS, column("person_key"), column("phone_key"), column("as_of"))


def day_expression(kind: str, timezone_aware: bool, name: str, timezone: str) -> str:
    """SQL for the local day number (days since 1970-01-01) of a time column, per row."""
    col = f'"{name}"'
    zone = timezone.replace("'", "''")
    epoch = "DATE '1970-01-01'"
    if kind == "date":
        return f"({col} - {epoch})"
    if kind == "month":  # "YYYY-MM" is known at the end of that month
        return (f"((to_date({col} || '-01', 'YYYY-MM-DD') + INTERVAL '1 month')::date - 1 "
                f"- {epoch})")
    # Stored in UTC; a column without a zone holds UTC wall time.
    utc = col if timezone_aware else f"({col} AT TIME ZONE 'UTC')"
    return f"(({utc} AT TIME ZONE '{zone}')::date - {epoch})"


def row_condition(rows: Subquery, condition: RowFilter) -> ColumnElement[bool]:
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


def components(rows: Subquery, agg: Aggregate) -> dict[str, tuple[str, ColumnElement[bool]]]:
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


def _source_rows(engine: Engine, source: FeatureSource, timezone: str,
                 partition: Partition, columns: list[str]) -> Subquery:
    raw = _reflect(engine, source.table)
    kind = time_kind(raw, source.time)
    aware = bool(getattr(raw.c[source.time].type, "timezone", False))
    day = literal_column(day_expression(kind, aware, source.time, timezone))
    query = select(raw.c[source.key].label("k"), day.label("d"),
                   raw.c[source.time].label("t"), literal_column("ctid").label("tid"),
                   *[raw.c[c] for c in columns])
    if source.key == "person_key":  # a key range: the partition-read index serves it
        query = query.where(in_bucket(raw.c.person_key, partition))
    return query.subquery("e")


def window_query(engine: Engine, source: FeatureSource, timezone: str,
                 partition: Partition) -> tuple[Select, list[tuple[str, int]]]:
    """One grouped query: per request, every (part, window) sum; returns it and the names
    (``"<aggregate>|<part>"``, window) of its columns after person_key and as_of."""
    needed: set[str] = set()
    for agg in source.aggregates:
        needed.update(agg.where)
        needed.update(agg.share_where)
        if agg.column:
            needed.add(agg.column)
    rows = _source_rows(engine, source, timezone, partition, sorted(needed))
    req = _requests_table()
    outputs = []
    names: list[tuple[str, int]] = []
    for window in source.windows:
        in_window = rows.c.d > req.c.as_of - window
        for agg in source.aggregates:
            for part, (measure, condition) in components(rows, agg).items():
                where = and_(in_window, condition)
                if measure == "count":
                    value = func.count().filter(where)
                else:
                    value = func.sum(rows.c[measure.removeprefix("sum:")]).filter(where)
                outputs.append(value.label(f"c{len(names)}"))
                names.append((f"{agg.name}|{part}", window))
    key = req.c.person_key if source.key == "person_key" else req.c.phone_key
    join = and_(rows.c.k == key, rows.c.d <= req.c.as_of,
                rows.c.d > req.c.as_of - max(source.windows))
    query = (select(req.c.person_key, req.c.as_of, *outputs)
             .select_from(req.join(rows, join))
             .group_by(req.c.person_key, req.c.as_of))
    return query, names


def latest_query(engine: Engine, source: FeatureSource, timezone: str,
                 partition: Partition) -> Select:
    """Per request, the newest row on or before its day and at most max_age_days old.

    Rows of the same day: the latest event time, then the last stored (the order the
    pandas builder's read gives them)."""
    latest = source.latest
    assert latest is not None
    rows = _source_rows(engine, source, timezone, partition,
                        sorted({c.column for c in latest.columns}))
    req = _requests_table()
    key = req.c.person_key if source.key == "person_key" else req.c.phone_key
    join = and_(rows.c.k == key, rows.c.d <= req.c.as_of,
                rows.c.d >= req.c.as_of - latest.max_age_days)
    return (select(req.c.person_key, req.c.as_of,
                   *[rows.c[c.column].label(f"c{i}") for i, c in enumerate(latest.columns)])
            .select_from(req.join(rows, join))
            .distinct(req.c.person_key, req.c.as_of)
            .order_by(req.c.person_key, req.c.as_of, rows.c.d.desc(), rows.c.t.desc(),
                      rows.c.tid.desc()))


def _sql(engine: Engine, query: Select) -> str:
    return str(query.compile(dialect=engine.dialect,
                             compile_kwargs={"literal_binds": True}))


def _copy_out(cursor, sql: str, types: dict[str, pa.DataType]) -> pd.DataFrame:  # noqa: ANN001
    buffer = io.BytesIO()
    with cursor.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv, HEADER true)") as copy:
        for block in copy:
            buffer.write(block)
    buffer.seek(0)
    frame = pa_csv.read_csv(
        buffer,
        read_options=pa_csv.ReadOptions(column_names=list(types), skip_rows=1),
        convert_options=pa_csv.ConvertOptions(
            column_types=types, null_values=[""], strings_can_be_null=True,
            quoted_strings_can_be_null=False),
    ).to_pandas()
    return frame.set_index(["person_key", "as_of"])


def _copy_in_requests(cursor, requests: pd.DataFrame) -> None:  # noqa: ANN001
    cursor.execute(f"CREATE TEMPORARY TABLE {REQUESTS} (person_key text NOT NULL, "
                   "phone_key text, as_of integer NOT NULL) ON COMMIT DROP")
    text_rows = io.StringIO()
    requests.to_csv(text_rows, index=False, header=False)
    with cursor.copy(f"COPY {REQUESTS} FROM STDIN (FORMAT csv)") as copy:
        copy.write(text_rows.getvalue())
    cursor.execute(f"ANALYZE {REQUESTS}")


def build_partition_sql(
    engine: Engine, spec: FeaturesConfig, as_of: date, customers: pd.DataFrame,
    partition: Partition, first_day: dict[str, int], requests: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """:func:`puhui.features.partitioned.build_partition`, aggregated by PostgreSQL.

    ``customers`` is the partition's slice of the register (with ``owns_phone``), as the
    pandas path takes it; the result equals that path's (counts exactly, sums to float
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
        _copy_in_requests(cursor, shipped)
        for source in spec.sources:
            if source.latest:
                columns.update(_latest(cursor, engine, spec, source, partition, wanted))
            if source.aggregates:
                columns.update(_windows(cursor, engine, spec, source, partition, wanted,
                                        first_day.get(source.name), req_days))
        conn.rollback()
    return finish_features(columns, known, requests, spec)


def _keys_types() -> dict[str, pa.DataType]:
    return {"person_key": pa.string(), "as_of": pa.int64()}


def _windows(cursor, engine: Engine, spec: FeaturesConfig, source: FeatureSource,  # noqa: ANN001
             partition: Partition, wanted: pd.MultiIndex, first_day: int | None,
             req_days: np.ndarray) -> dict[str, np.ndarray]:
    query, names = window_query(engine, source, spec.timezone, partition)
    types = _keys_types() | {f"c{i}": pa.float64() for i in range(len(names))}
    found = _copy_out(cursor, _sql(engine, query), types).reindex(wanted)
    out: dict[str, np.ndarray] = {}
    for window in source.windows:
        # No row in the window: 0, as the running totals give; rounded as they are, so
        # that the values compare (the server sums in another order).
        sums = {name: np.round(found[f"c{i}"].fillna(0.0).to_numpy(np.float64), 6) + 0.0
                for i, (name, w) in enumerate(names) if w == window}
        out.update(window_values(source, window, sums, first_day, req_days))
    return out


def _latest(cursor, engine: Engine, spec: FeaturesConfig, source: FeatureSource,  # noqa: ANN001
            partition: Partition, wanted: pd.MultiIndex) -> dict[str, np.ndarray]:
    latest = source.latest
    assert latest is not None
    types = _keys_types() | {f"c{i}": pa.string() if c.categorical else pa.float64()
                             for i, c in enumerate(latest.columns)}
    query = latest_query(engine, source, spec.timezone, partition)
    found = _copy_out(cursor, _sql(engine, query), types)
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
