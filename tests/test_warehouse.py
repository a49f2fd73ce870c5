"""The warehouse layer behaves the same on SQLite and PostgreSQL (real servers, no mocks)."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime

import pandas as pd
import pyarrow as pa
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select

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
