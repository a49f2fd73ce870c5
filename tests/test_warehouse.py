"""The warehouse layer behaves the same on SQLite and PostgreSQL (real servers, no mocks)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime

import pandas as pd
import pyarrow as pa
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    REAL,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Double,
    Engine,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    create_engine,
    func,
    inspect,
    select,
)

from puhui.warehouse import bulk
from puhui.warehouse.bulk import bulk_insert
from puhui.warehouse.engine import (
    create_warehouse_engine,
    current_revision,
    get_engine,
    head_revision,
    upgrade_schema,
)
from puhui.warehouse.schema import CONTRACT_TABLES, ingest_batches, metadata, service_metrics


def test_migrations_create_exactly_the_declared_schema(warehouse_url: str) -> None:
    engine = get_engine(warehouse_url)
    assert current_revision(engine) == head_revision()
    assert set(CONTRACT_TABLES) <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == [], f"migrations and schema.py disagree: {diff}"


def test_upgrade_is_idempotent_and_safe_concurrently(warehouse_url: str) -> None:
    engines = [create_warehouse_engine(warehouse_url) for _ in range(4)]
    errors: list[BaseException] = []

    def upgrade(engine) -> None:  # noqa: ANN001
        try:
            upgrade_schema(engine)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert upgrade_schema(engines[0]) == head_revision()
    for engine in engines:
        assert current_revision(engine) == head_revision()
        engine.dispose()


def _sample_batches(n: int) -> pa.Table:
    landed = datetime(2026, 9, 30, 6, 0, tzinfo=UTC)
    return pa.table(
        {
            "batch_id": [f"b{i:06d}" for i in range(n)],
            "partner": ["mobile_payments"] * n,
            "source_path": [f'/landing/p/{i},with "quotes".csv' for i in range(n)],
            "delivery_date": [date(2026, 9, 30)] * n,
            "checksum": [f"{i:064x}" for i in range(n)],
            "content_key": [None if i % 3 == 0 else f"k{i}" for i in range(n)],
            "rows": [i * 10 for i in range(n)],
            "status": ["accepted"] * n,
            "reason": ["" if i % 2 else None for i in range(n)],  # empty string vs NULL
            "warnings": [[{"fault": "extra_column", "n": i}] if i % 2 else None for i in range(n)],
            "landed_at": pa.array([landed] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def test_bulk_insert_round_trips_nulls_dates_and_json(warehouse_url: str) -> None:
    engine = get_engine(warehouse_url)
    data = _sample_batches(1_000)
    with engine.begin() as conn:
        assert bulk_insert(conn, ingest_batches, data) == 1_000
    with engine.connect() as conn:
        rows = conn.execute(select(ingest_batches).order_by(ingest_batches.c.batch_id)).all()
    assert len(rows) == 1_000
    first, second = rows[0]._mapping, rows[1]._mapping
    assert first["reason"] is None and second["reason"] == ""
    assert first["content_key"] is None and second["content_key"] == "k1"
    assert first["warnings"] is None
    assert second["warnings"] == [{"fault": "extra_column", "n": 1}]
    assert second["source_path"] == '/landing/p/1,with "quotes".csv'
    assert second["delivery_date"] == date(2026, 9, 30)
    assert second["landed_at"].replace(tzinfo=UTC) == datetime(2026, 9, 30, 6, 0, tzinfo=UTC)
    assert rows[999]._mapping["rows"] == 9_990


def test_bulk_insert_accepts_dataframes(warehouse_url: str) -> None:
    engine = get_engine(warehouse_url)
    frame = pd.DataFrame(
        {
            "as_of_date": [date(2026, 9, 30)] * 3,
            "segment": ["rural", "county", "urban"],
            "metric": ["coverage"] * 3,
            "value": [0.61, 0.70, float("nan")],
            "computed_at": [datetime(2026, 9, 30, tzinfo=UTC)] * 3,
        }
    )
    with engine.begin() as conn:
        bulk_insert(conn, service_metrics, frame)
    with engine.connect() as conn:
        values = dict(
            conn.execute(select(service_metrics.c.segment, service_metrics.c.value)).all()
        )
    assert values["rural"] == pytest.approx(0.61)
    assert values["urban"] is None or values["urban"] != values["urban"]  # NULL or NaN


def test_failed_batch_leaves_nothing_behind(warehouse_url: str) -> None:
    engine = get_engine(warehouse_url)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        bulk_insert(conn, ingest_batches, _sample_batches(500))
        raise RuntimeError("crash mid-load")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ingest_batches)).scalar() == 0


def test_content_key_makes_double_loading_impossible(warehouse_url: str) -> None:
    engine = get_engine(warehouse_url)
    with engine.begin() as conn:
        bulk_insert(conn, ingest_batches, _sample_batches(3))
    duplicate = _sample_batches(3).slice(1, 1)  # same content_key "k1", new batch id
    duplicate = duplicate.set_column(0, "batch_id", pa.array(["other"]))
    with pytest.raises(Exception, match="(?i)unique|duplicate"), engine.begin() as conn:
        bulk_insert(conn, ingest_batches, duplicate)


def test_unknown_column_is_refused(warehouse_url: str) -> None:
    engine = get_engine(warehouse_url)
    with pytest.raises(ValueError, match="no such column"), engine.begin() as conn:
        bulk_insert(conn, ingest_batches, pa.table({"nope": [1]}))


# --- binary COPY (PostgreSQL) --------------------------------------------------------------

_EVERY_TYPE = Table(
    "every_type",
    MetaData(),
    Column("id", BigInteger, primary_key=True),
    Column("big", BigInteger),
    Column("small", SmallInteger),
    Column("medium", Integer),
    Column("double", Double),
    Column("single", REAL),
    Column("flag", Boolean),
    Column("label", Text),
    Column("code", String(64)),
    Column("doc", JSON),
    Column("day", Date),
    Column("at", DateTime(timezone=True)),
    Column("local", DateTime(timezone=False)),
)


def _every_type_rows() -> pa.Table:
    """Every encoded type, with NULLs, empty strings, non-ASCII text and extreme values."""
    big = [0, 1, -1, 2**63 - 1, -(2**63), None, 42, 7]
    floats = [0.0, -0.0, 1.7976931348623157e308, 5e-324, float("inf"), float("-inf"),
              float("nan"), None]
    texts = ["", None, "plain", "中文，全角", 'comma, "quote"\nnewline\\', "emoji 💳", "\t", "x"]
    days = [date(1, 1, 1), date(1999, 12, 31), date(2000, 1, 1), date(1970, 1, 1),
            date(9999, 12, 31), None, date(2026, 9, 30), date(2000, 1, 2)]
    moments = [datetime(1, 1, 1, tzinfo=UTC), datetime(1999, 12, 31, 23, 59, 59, 999_999, UTC),
               datetime(2000, 1, 1, tzinfo=UTC), None,
               datetime(9999, 12, 31, 23, 59, 59, 999_999, UTC),
               datetime(1970, 1, 1, tzinfo=UTC), datetime(2026, 9, 30, 6, 0, 0, 1, UTC),
               datetime(1900, 2, 28, 12, tzinfo=UTC)]
    return pa.table(
        {
            "id": pa.array(range(8), pa.int64()),
            "big": pa.array(big, pa.int64()),
            "small": pa.array([0, 1, -1, 32767, -32768, None, 5, 6], pa.int16()),
            "medium": pa.array([0, 1, -1, 2**31 - 1, -(2**31), None, 5, 6], pa.int32()),
            "double": pa.array(floats, pa.float64()),
            "single": pa.array([0.5, -0.0, 3.4e38, None, float("inf"), 1.5, -2.25, 1e-40],
                               pa.float32()),
            "flag": pa.array([True, False, None, True, False, True, None, False]),
            "label": pa.array(texts, pa.string()),
            "code": pa.array(["a" * 64, "", None, "ü" * 32, "0", "z", None, "b"]),
            "doc": pa.array(['{"a": [1, "é"]}', None, "[]", '""', "null", "{}", "1", '"x"']),
            "day": pa.array(days, pa.date32()),
            "at": pa.array(moments, pa.timestamp("us", tz="UTC")),
            "local": pa.array([m.replace(tzinfo=None) if m else None for m in moments],
                              pa.timestamp("us")),
        }
    )


@pytest.fixture
def pg_engine(pg_server) -> Iterator[Engine]:  # noqa: ANN001
    engine = create_engine(pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}"))
    yield engine
    engine.dispose()


def _stored(engine: Engine, table: Table) -> list[tuple]:
    with engine.connect() as conn:
        rows = conn.execute(select(table).order_by(table.c.id)).all()
    # NaN != NaN: compare floats by their text so that NaN rows still compare equal.
    return [tuple(repr(v) if isinstance(v, float) else v for v in row) for row in rows]


def test_binary_copy_round_trips_every_type(pg_engine: Engine) -> None:
    data = _every_type_rows()
    _EVERY_TYPE.create(pg_engine)
    with pg_engine.begin() as conn:
        assert bulk._binary_plan(conn, _EVERY_TYPE, data) is not None, "binary path not taken"
        assert bulk_insert(conn, _EVERY_TYPE, data) == 8
    with pg_engine.connect() as conn:
        rows = conn.execute(select(_EVERY_TYPE).order_by(_EVERY_TYPE.c.id)).all()
    for row, expected in zip(rows, data.to_pylist(), strict=True):
        for name, value in row._mapping.items():
            want = expected[name]
            if name == "doc" and want is not None:
                want = json.loads(want)
            if name == "single" and want is not None:
                assert value == pytest.approx(want, rel=1e-6), name
            elif isinstance(want, float) and want != want:
                assert value != value, name  # NaN
            elif isinstance(want, float) and want == 0:
                assert value == 0 and str(value) == str(want), name  # keeps the sign of -0.0
            else:
                assert value == want, (name, value, want)


def test_binary_and_csv_copy_store_the_same_values(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _every_type_rows()
    csv_table = _EVERY_TYPE.to_metadata(MetaData(), name="every_type_csv")
    _EVERY_TYPE.create(pg_engine)
    csv_table.create(pg_engine)
    with pg_engine.begin() as conn:
        bulk_insert(conn, _EVERY_TYPE, data)
    monkeypatch.setattr(bulk, "_binary_plan", lambda *args: None)
    with pg_engine.begin() as conn:
        bulk_insert(conn, csv_table, data)
    assert _stored(pg_engine, _EVERY_TYPE) == _stored(pg_engine, csv_table)


def test_binary_copy_of_many_rows_in_blocks(pg_engine: Engine) -> None:
    """Several COPY blocks, sliced arrays and NULL patterns that differ between blocks."""
    rows = bulk.COPY_CHUNK_ROWS * 2 + 17
    many = pa.concat_tables([_every_type_rows()] * (rows // 16 + 1)).combine_chunks()
    data = pa.concat_tables([many, many.slice(5)]).slice(3, rows)  # two chunks, offsets
    data = data.set_column(0, "id", pa.array(range(rows), pa.int64()))
    _EVERY_TYPE.create(pg_engine)
    with pg_engine.begin() as conn:
        assert bulk_insert(conn, _EVERY_TYPE, data) == rows
    with pg_engine.connect() as conn:
        count, labels, nulls, last = conn.execute(
            select(
                func.count(),
                func.count(_EVERY_TYPE.c.label),
                func.count().filter(_EVERY_TYPE.c.day.is_(None)),
                func.max(_EVERY_TYPE.c.id),
            )
        ).one()
    assert (count, last) == (rows, rows - 1)
    assert labels == sum(v is not None for v in data["label"].to_pylist())
    assert nulls == data["day"].null_count


@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("at", pa.array([datetime(2026, 9, 30, 6)] * 2, pa.timestamp("us"))),  # naive -> tz
        ("medium", pa.array([1.0, None], pa.float64())),  # a float into an integer
        ("code", pa.array([1, 2], pa.int64())),  # a number into text
    ],
)
def test_columns_binary_does_not_encode_go_through_csv(
    pg_engine: Engine, column: str, values: pa.Array
) -> None:
    _EVERY_TYPE.create(pg_engine)
    data = pa.table({"id": pa.array([1, 2], pa.int64()), column: values})
    with pg_engine.begin() as conn:
        assert bulk._binary_plan(conn, _EVERY_TYPE, data) is None
        assert bulk_insert(conn, _EVERY_TYPE, data) == 2


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_look_ups_by_more_ids_than_one_in_list_holds(warehouse_url: str) -> None:
    """Reads by a list of ids go in ``in_list_chunks`` of 500: 1,201 ids are three lists,
    every id answered once."""
    from sqlalchemy import insert

    from puhui.ingest.ledger import suite_hashes
    from puhui.warehouse.engine import IN_LIST_SIZE, in_list_chunks
    from puhui.warehouse.schema import validation_results

    ids = [f"feed-20250101-{n:012x}" for n in range(2 * IN_LIST_SIZE + 201)]
    assert [len(chunk) for chunk in in_list_chunks(ids)] == [500, 500, 201]
    engine = get_engine(warehouse_url)
    with engine.begin() as conn:
        conn.execute(insert(validation_results), [
            {"validation_id": f"v{n}", "batch_id": batch, "suite_name": "s", "success": True,
             "expectations_run": 1, "expectations_failed": 0,
             "details": {"suite_hash": f"h{n}"}, "validated_at": datetime.now(UTC)}
            for n, batch in enumerate(ids)])
    assert suite_hashes(engine, ids) == {batch: f"h{n}" for n, batch in enumerate(ids)}


def _begins(engine: Engine) -> list[str]:
    """The BEGIN statements ``engine`` sends from now on."""
    from sqlalchemy import event

    sent: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _seen(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001 - event signature
        if statement.startswith("BEGIN"):
            sent.append(statement)

    return sent


def test_a_sqlite_snapshot_defers_only_in_wal_mode(tmp_path) -> None:  # noqa: ANN001
    """The snapshot's deferred BEGIN (writers do not wait) is safe only in WAL mode: in a
    rollback journal it keeps a SHARED lock writers fail on at COMMIT. A database whose
    ``journal_mode=WAL`` did not take (``:memory:`` answers "memory") keeps BEGIN IMMEDIATE;
    before, every snapshot sent a deferred BEGIN whatever the mode."""
    from sqlalchemy import text

    from puhui.warehouse.engine import WAL_SIZE_LIMIT, snapshot

    for url, mode, begin in ((f"sqlite:///{tmp_path / 'wal.db'}", "wal", "BEGIN"),
                             ("sqlite://", "memory", "BEGIN IMMEDIATE")):
        engine = create_warehouse_engine(url)
        sent = _begins(engine)
        with snapshot(engine) as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == mode
            assert conn.exec_driver_sql("PRAGMA journal_size_limit").scalar() == WAL_SIZE_LIMIT
        with engine.begin() as conn:  # any other transaction takes the write lock first
            conn.execute(text("SELECT 1"))
        assert sent == [begin, "BEGIN IMMEDIATE"], url
        engine.dispose()
