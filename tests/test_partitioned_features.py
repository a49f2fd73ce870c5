"""Partitioned features: the same values as the whole-table builder, partition by partition."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, MetaData, Table, create_engine, select

from puhui.config import FeaturesConfig
from puhui.features.builder import build_features
from puhui.features.partitioned import (
    build_features_partitioned,
    build_staged_partition,
    ensure_partition_indexes,
    partition_read_indexes,
    read_staged_features,
    stage_register,
)
from puhui.features.sources import first_event_days, load_source_frames
from puhui.partitioning import (
    Partition,
    all_partitions,
    bucket_bounds,
    bucket_of,
    in_bucket,
    partition_count,
)
from puhui.settings import load_settings
from puhui.warehouse.engine import get_engine
from tests.conftest import RiskTemplates, risk_env
from tests.test_features import AS_OF, _mutate_after, _requests, _spec


def split_always(spec: FeaturesConfig) -> FeaturesConfig:
    """``spec`` with the phone-feed split's size threshold at 0: the tests' small warehouses
    are far below the configured one, and a multi-partition build on PostgreSQL then splits."""
    return spec.model_copy(update={"partitioning": spec.partitioning.model_copy(
        update={"split_phone_feeds_min_mib": 0})})


def _keys(n: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]


def test_key_ranges_select_exactly_the_hashed_bucket() -> None:
    keys = _keys(5000) + ["00000000" + "0" * 56, "ffffffff" + "f" * 56]
    for count in (1, 2, 7, 64):
        buckets = bucket_of(pd.Series(keys), count)
        assert buckets.min() >= 0 and buckets.max() < count
        for part in all_partitions(count):
            lower, upper = bucket_bounds(part)
            inside = [(lower is None or k >= lower) and (upper is None or k < upper)
                      for k in keys]
            assert np.array_equal(np.array(inside), buckets == part.bucket), (count, part)
    # Roughly even: the HMAC's hex digits are uniform.
    sizes = np.bincount(bucket_of(pd.Series(_keys(20000)), 8), minlength=8)
    assert sizes.min() > 2000 and sizes.max() < 3000
    # Boundaries: a bucket's first key is in it, the key just before is in the previous one.
    lower, _ = bucket_bounds(Partition(3, 7))
    assert lower is not None
    before = format(int(lower, 16) - 1, "08x")
    assert bucket_of(pd.Series([lower + "0" * 56, before + "f" * 56]), 7).tolist() == [3, 2]


def test_small_populations_run_as_one_partition() -> None:
    assert partition_count(20_000, 50_000) == 1
    assert partition_count(50_000, 50_000) == 1
    assert partition_count(1_000_000, 50_000) == 20
    with pytest.raises(ValueError):
        Partition(3, 3)


@pytest.fixture
def features_env(risk_templates: RiskTemplates, dialect: str, puhui_env: Path,
                 monkeypatch: pytest.MonkeyPatch) -> str:
    return risk_env(risk_templates, "clean", dialect, puhui_env, monkeypatch)


# The whole-table builder's features (and the requests they answer), per dialect: every test
# gets a copy of the same ingested template, so one build per dialect is the reference for all
# of them (it was built again by each of 10 tests, reading every source twice: once for the
# requests, once for the features). The split spec differs only in ``partitioning``, which the
# whole-table builder never reads, so both specs share it.
_WHOLE: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}


def _whole_table(engine: Engine, split: bool) -> tuple[FeaturesConfig, pd.DataFrame,
                                                       pd.DataFrame]:
    """(spec, requests, the whole-table builder's features) of the template's data, before
    any test changed its copy; ``split`` sets the phone-feed split's threshold to 0."""
    spec = split_always(_spec()) if split else _spec()
    key = engine.dialect.name
    if key not in _WHOLE:
        requests = _requests(engine, spec)
        _WHOLE[key] = requests, build_features(load_source_frames(engine, spec, AS_OF),
                                               requests, spec)
    requests, want = _WHOLE[key]
    return spec, requests.copy(), want.copy()


def _assert_identical(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert len(want) > 0
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_sql_key_range_matches_python_buckets(features_env: str) -> None:
    """The predicate pushed into SQL picks the rows Python puts in the bucket (collation)."""
    engine = get_engine(features_env)
    table = Table("raw_customers", MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        keys = pd.Series(conn.execute(select(table.c.person_key)).scalars().all()).dropna()
        for part in all_partitions(5):
            picked = conn.execute(select(table.c.person_key)
                                  .where(in_bucket(table.c.person_key, part))).scalars().all()
            assert sorted(picked) == sorted(keys[bucket_of(keys, 5) == part.bucket])


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_partitioned_features_equal_the_whole_table_builder(features_env: str,
                                                            partitions: int) -> None:
    """Every feature, every row, bit for bit: two as-of dates per customer. 8 partitions
    split the phone-keyed feeds (PostgreSQL), 3 probe them (below the size threshold)."""
    engine = get_engine(features_env)
    spec, requests, want = _whole_table(engine, split=partitions == 8)
    got = build_features_partitioned(engine, spec, AS_OF, requests, partitions)
    _assert_identical(got, want)
    assert want.drop(columns=["person_key", "as_of_date"]).notna().any().all(), \
        "every feature has values somewhere: the comparison covers real values"


def _scans(engine, tables: list[str]) -> dict[str, tuple[int, int, int, int]]:  # noqa: ANN001
    """(rows read by sequential scans, index scans, live rows, entries read from its
    partition-read index) of each table, as the server's statistics have them."""
    from sqlalchemy import text

    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        rows = conn.execute(text(
            "SELECT t.relname, t.seq_tup_read, coalesce(t.idx_scan, 0), t.n_live_tup, "
            "coalesce(i.idx_tup_read, 0) FROM pg_stat_user_tables t "
            "LEFT JOIN pg_stat_user_indexes i ON i.relid = t.relid "
            "AND i.indexrelname = 'ix_' || t.relname || '_partition_read' "
            "WHERE t.relname = ANY(:tables)"), {"tables": tables}).all()
    return {name: (seq_rows, idx, live, idx_rows) for name, seq_rows, idx, live, idx_rows in rows}


@pytest.mark.parametrize("dialect", ["postgres"], indirect=True)
def test_partition_reads_use_the_key_indexes_not_table_scans(features_env: str,
                                                             tmp_path: Path) -> None:
    """The first partitioned run builds the covering (key, time) indexes once; every
    partition then reads its own key range through them, never scanning a whole table."""

    engine = get_engine(features_env)
    spec = _spec()
    tables = [s.table for s in spec.sources]
    build_features_partitioned(engine, spec, AS_OF, None, 1)  # one partition: no index
    with engine.connect() as conn:
        indexes = set(pd.read_sql_query("SELECT indexname FROM pg_indexes", conn)["indexname"])
    assert not indexes & set(partition_read_indexes(spec))
    build_features_partitioned(engine, spec, AS_OF, None, 4)
    with engine.connect() as conn:
        indexes = set(pd.read_sql_query("SELECT indexname FROM pg_indexes", conn)["indexname"])
    assert set(partition_read_indexes(spec)) <= indexes
    assert ensure_partition_indexes(engine, spec) == []  # idempotent: nothing to build
    # At scale (~20k people a partition) the planner, left alone, joined a phone-keyed feed
    # to the partition's phones by hashing over a scan of the feed's whole index; on this
    # small data it probes. A session that disallows probing stands in for that planner:
    # a partition's own read (the staged path, one task per partition) must set the plan.
    hashing = create_engine(engine.url, connect_args={"options": "-c enable_nestloop=off"})

    def staged() -> None:
        for part in stage_register(hashing, spec, AS_OF, tmp_path / "stage", partitions=2):
            build_staged_partition(hashing, spec, AS_OF, tmp_path / "stage", part)
        hashing.dispose()  # its backends exit and flush their statistics

    def first_days() -> None:
        first_event_days(hashing, spec, AS_OF)
        hashing.dispose()

    # Each run also reads each table's MIN(event time) once, for the sources' first days:
    # whatever plan the planner picks for it (a scan, or an index), its reads are measured
    # alone and taken off, so what remains is the partitions' reads.
    for table, (seq_rows, idx, live, idx_rows) in _partition_reads(
            engine, tables, staged, first_days).items():
        # Two partitions: two index reads per table, and not one row by a scan.
        assert idx >= 2 and seq_rows == 0, table
        # And the index is read by key, not scanned whole per partition: together the
        # partitions read about the table's rows once (a hash join over a full index scan
        # read them once per partition).
        assert idx_rows <= 1.5 * live, table
    # Above the size threshold (0 here) the phone-keyed feeds are split by partition in one
    # scan instead (their people's phones are spread over the whole index): no index reads
    # for them, one scan to split; the person-keyed ones still read their key ranges by
    # index alone.
    phone_keyed = {s.table for s in spec.sources if s.key == "phone_key"}
    assert phone_keyed
    split = split_always(spec)
    run = _partition_reads(engine, tables,
                           lambda: build_features_partitioned(engine, split, AS_OF, None, 4),
                           lambda: first_event_days(engine, spec, AS_OF))
    for table, (seq_rows, idx, live, idx_rows) in run.items():
        if table in phone_keyed:
            assert 0.9 * live <= seq_rows <= 1.5 * live and idx_rows == 0, table
        else:
            assert idx >= 4 and seq_rows == 0 and idx_rows <= 1.5 * live, table


def _partition_reads(engine, tables: list[str], run,  # noqa: ANN001
                     first_days) -> dict[str, tuple[int, int, int, int]]:  # noqa: ANN001
    """What ``run`` read of each table (:func:`_reads`) less what ``first_days`` (the run's
    MIN per table, on the same engine) reads alone: (scan rows, index scans, live rows,
    entries read from the partition-read index)."""
    whole = _reads(engine, tables, run)
    minimum = _reads(engine, tables, first_days)
    return {t: (whole[t][0] - minimum[t][0], whole[t][1] - minimum[t][1], whole[t][2],
                whole[t][3] - minimum[t][3]) for t in tables}


def _reads(engine, tables: list[str], run) -> dict[str, tuple[int, int, int, int]]:  # noqa: ANN001
    """What ``run`` read of each table: :func:`_scans`' counts after minus before (live rows
    as after)."""
    _statistics_flushed(engine)
    before = _scans(engine, tables)
    run()
    _statistics_flushed(engine)
    after = _scans(engine, tables)
    return {t: (after[t][0] - before[t][0], after[t][1] - before[t][1], after[t][2],
                after[t][3] - before[t][3]) for t in tables}


def _statistics_flushed(engine) -> None:  # noqa: ANN001
    """Close the pool's connections and wait until no other backend of the test's database
    is left: a backend flushes its statistics as it exits, before it leaves
    ``pg_stat_activity`` (PostgreSQL 15), so the counts then hold everything read."""
    import time

    from sqlalchemy import text

    engine.dispose()
    deadline = time.monotonic() + 30
    while True:
        with engine.connect() as conn:
            others = conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() "
                "AND backend_type IN ('client backend', 'parallel worker')")).scalar()
        engine.dispose()
        if not others:
            return
        assert time.monotonic() < deadline, f"{others} backends still connected"
        time.sleep(0.2)


def test_partitioned_features_ignore_data_after_the_as_of_date(features_env: str) -> None:
    engine = get_engine(features_env)
    spec = _spec()
    requests = _requests(engine, spec)
    before = build_features_partitioned(engine, spec, AS_OF, requests, 4)
    later = build_features_partitioned(engine, spec, date(2026, 9, 30), requests, 4)
    _assert_identical(later, before)
    changed = _mutate_after(engine, AS_OF)
    assert all(n > 0 for n in changed.values()), changed
    _assert_identical(build_features_partitioned(engine, spec, AS_OF, requests, 4), before)


def test_staged_partitions_equal_the_builder_and_skip_finished_work(features_env: str,
                                                                    tmp_path: Path) -> None:
    engine = get_engine(features_env)
    spec = _spec()
    parts = stage_register(engine, spec, AS_OF, tmp_path / "stage", partitions=3)
    rows = [build_staged_partition(engine, spec, AS_OF, tmp_path / "stage", p) for p in parts]
    staged = read_staged_features(tmp_path / "stage", parts)
    assert sum(rows) == len(staged)
    want = build_features_partitioned(engine, spec, AS_OF, None, 1)
    order = ["person_key", "as_of_date"]
    _assert_identical(staged.sort_values(order).reset_index(drop=True),
                      want.sort_values(order).reset_index(drop=True))
    # A re-run finds the files and reads nothing from the warehouse: even a dropped table
    # does not matter for finished partitions.
    with engine.begin() as conn:
        Table("raw_mobile_payments", MetaData(), autoload_with=conn).drop(conn)
    assert [build_staged_partition(engine, spec, AS_OF, tmp_path / "stage", p)
            for p in parts] == rows


def test_fast_reader_returns_what_read_sql_returns(features_env: str) -> None:
    """PostgreSQL's COPY-to-Arrow path gives read_sql_query's values, column by column."""
    from puhui.features.sources import read_frame, source_columns

    engine = get_engine(features_env)
    spec = _spec()
    queries = []
    for name, columns in [(spec.customer.table, None),
                          *((s.table, source_columns(s)) for s in spec.sources)]:
        table = Table(name, MetaData(), autoload_with=engine)
        queries.append(select(*(table.c[c] for c in columns)) if columns else select(table))
    for query in queries:
        fast = read_frame(engine, query)
        with engine.connect() as conn:
            slow = pd.read_sql_query(query, conn)
        assert len(fast) > 0 and list(fast.columns) == list(slow.columns)
        if engine.dialect.name != "postgresql":  # SQLite reads through read_sql itself
            pd.testing.assert_frame_equal(fast, slow, check_exact=True)
            continue
        for column in fast.columns:
            a, b = fast[column], slow[column]
            if pd.api.types.is_datetime64_any_dtype(b):
                assert (a.dt.tz is None) == (b.dt.tz is None), column
                a, b = a.astype("datetime64[us, UTC]"), b.astype("datetime64[us, UTC]")
            pd.testing.assert_series_equal(a, b, check_dtype=False, check_exact=True,
                                           obj=column)


# Partner columns as a feed may spell them (partners.yaml takes them as its header does, in
# any case or script):
# in features.yaml as a latest column, a time, a summed column, a filter and a share filter.
# A % (which the psycopg dialect doubles in the COPY it writes) and a ' (which ends a literal).
_MIXED_CASE = {"raw_credit_bureau": {"report_date": "ReportDate", "bureau_score": "信用分"},
               "raw_mobile_payments": {"txn_time": "TxnTime", "amount": "Amount%",
                                       "txn_type": "Txn'Type", "days_past_due": "DaysPastDue"}}
_MIXED_CASE_YAML = [(r"time: report_date\b", "time: ReportDate"),
                    (r"column: bureau_score\b", "column: 信用分"),
                    (r"time: txn_time\b", "time: TxnTime"),
                    (r"column: amount\b", "column: Amount%"),
                    (r"\btxn_type:", "Txn'Type:"),
                    (r"column: days_past_due\b", "column: DaysPastDue"),
                    (r"\bdays_past_due: \{gt", "DaysPastDue: {gt")]


@pytest.mark.parametrize("partitions", [1, 8])
def test_mixed_case_source_columns_build_the_same_features(
        features_env: str, tmp_path: Path, partitions: int) -> None:
    """Feature sources were refused unless lower-case (a partner column CustomerID could not
    be one). The same warehouse with its columns renamed in mixed case, read through a
    features.yaml naming them so, gives every feature bit for bit (whole-table builder and
    partitioned; 8 partitions split the phone feeds on PostgreSQL)."""
    import re

    from puhui.config import load_config_file

    engine = get_engine(features_env)
    _, requests, want = _whole_table(engine, split=partitions == 8)

    source = (load_settings().config_dir / "features.yaml").read_text(encoding="utf-8")
    for pattern, spelled in _MIXED_CASE_YAML:
        source, count = re.subn(pattern, spelled, source)
        assert count > 0, pattern
    (tmp_path / "features.yaml").write_text(source, encoding="utf-8")
    mixed = load_config_file(tmp_path / "features.yaml", FeaturesConfig)
    if partitions == 8:
        mixed = split_always(mixed)
    quote = engine.dialect.identifier_preparer.quote
    with engine.begin() as conn:
        for table, renames in _MIXED_CASE.items():
            for old, new in renames.items():
                # Not text(): its % would reach psycopg doubled, as Amount%%.
                conn.exec_driver_sql(f"ALTER TABLE {table} RENAME COLUMN {old} TO {quote(new)}")
    whole = build_features(load_source_frames(engine, mixed, AS_OF), requests, mixed)
    _assert_identical(whole, want)
    _assert_identical(build_features_partitioned(engine, mixed, AS_OF, requests, partitions),
                      want)
