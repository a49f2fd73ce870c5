"""Migrations 0005 (ingest_batches.mtime_ns), 0006 (path_pseudonymized), 0007
(change_marker) and 0010 (path_settled) on a warehouse with ledger rows."""

from __future__ import annotations

from datetime import UTC, date, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from puhui.warehouse.engine import (
    _alembic_config,
    create_warehouse_engine,
    head_revision,
    upgrade_schema,
)
from puhui.warehouse.schema import metadata


def _schema_diff(engine: Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


def at_revision_with_a_batch(engine: Engine, revision: str) -> None:
    """``engine``'s warehouse migrated to ``revision`` only, with one ledger row: batch
    ``b1``, 120 bytes, accepted."""
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)
        conn.execute(text(
            "INSERT INTO ingest_batches (batch_id, partner, source_path, delivery_date, "
            "checksum, bytes, status, landed_at) VALUES ('b1', 'mobile_payments', "
            "'/l/a.csv', :d, 'c1', 120, 'accepted', :t)"),
            {"d": date(2026, 9, 30), "t": datetime(2026, 9, 30, 8, tzinfo=UTC)})


def test_0005_keeps_ledger_rows_with_no_time_reruns_and_downgrades(warehouse_url: str) -> None:
    engine = create_warehouse_engine(warehouse_url)
    at_revision_with_a_batch(engine, "0004")
    assert upgrade_schema(engine) == head_revision()
    assert _schema_diff(engine) == []
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT bytes, mtime_ns, change_marker FROM ingest_batches")).one()
    assert tuple(row) == (120, None, None), "rows from before keep the size-only comparison"

    with engine.begin() as conn:  # re-run over a database that already has the column
        command.stamp(_alembic_config(conn), "0004")
    assert upgrade_schema(engine) == head_revision()
    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0004")
    assert "mtime_ns" not in {c["name"] for c in inspect(engine).get_columns("ingest_batches")}
    assert upgrade_schema(engine) == head_revision()
    assert _schema_diff(engine) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ingest_batches")).scalar() == 1
    engine.dispose()


def test_0006_marks_rows_with_a_time_settled_and_leaves_the_rest_to_ingest(
        warehouse_url: str) -> None:
    engine = create_warehouse_engine(warehouse_url)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0005")
        for batch_id, mtime in (("timed", 1_700_000_000_000_000_000), ("untimed", None)):
            conn.execute(text(
                "INSERT INTO ingest_batches (batch_id, partner, source_path, delivery_date, "
                "checksum, bytes, mtime_ns, status, landed_at) VALUES (:b, 'mobile_payments', "
                ":p, :d, :b, 120, :m, 'accepted', :t)"),
                {"b": batch_id, "p": f"/l/{batch_id}.csv", "m": mtime,
                 "d": date(2026, 9, 30), "t": datetime(2026, 9, 30, 8, tzinfo=UTC)})
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0009")
        marks = dict(conn.execute(text(
            "SELECT batch_id, path_pseudonymized FROM ingest_batches")).all())
    assert marks == {"timed": True, "untimed": None}
    indexes = {i["name"] for i in inspect(engine).get_indexes("ingest_batches")}
    assert "ix_ingest_batches_unsettled_paths" in indexes  # ingest's look for unsettled rows
    # 0010: the boolean becomes a level, 1 (settled by the finder before round 14's shapes).
    assert upgrade_schema(engine) == head_revision()
    assert _schema_diff(engine) == []
    with engine.connect() as conn:
        levels = dict(conn.execute(text(
            "SELECT batch_id, path_settled FROM ingest_batches")).all())
    assert levels == {"timed": 1, "untimed": None}
    columns = {c["name"] for c in inspect(engine).get_columns("ingest_batches")}
    assert "path_pseudonymized" not in columns
    with engine.begin() as conn:  # down to 0009 gives the boolean back, twice over
        command.downgrade(_alembic_config(conn), "0009")
        command.stamp(_alembic_config(conn), "0010")
        command.downgrade(_alembic_config(conn), "0009")
        marks = dict(conn.execute(text(
            "SELECT batch_id, path_pseudonymized FROM ingest_batches")).all())
    assert marks == {"timed": True, "untimed": None}
    assert upgrade_schema(engine) == head_revision()

    with engine.begin() as conn:  # re-run over a database that already has the column
        command.stamp(_alembic_config(conn), "0005")
    assert upgrade_schema(engine) == head_revision()
    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0005")
    columns = {c["name"] for c in inspect(engine).get_columns("ingest_batches")}
    assert "path_pseudonymized" not in columns and "mtime_ns" in columns
    engine.dispose()


def test_the_downgrades_of_0005_to_0010_run_again(warehouse_url: str) -> None:
    """A downgrade stopped after its DDL and before alembic stamped it (SQLite's DDL is not
    transactional there) is run again over tables, columns and an index already gone."""
    engine = create_warehouse_engine(warehouse_url)
    assert upgrade_schema(engine) == head_revision()
    for target in ("0009", "0008", "0007", "0006", "0005", "0004"):
        with engine.begin() as conn:
            command.downgrade(_alembic_config(conn), target)
        with engine.begin() as conn:  # the stamp lost: the same downgrade again
            command.stamp(_alembic_config(conn), "0010")
        with engine.begin() as conn:
            command.downgrade(_alembic_config(conn), target)
    columns = {c["name"] for c in inspect(engine).get_columns("ingest_batches")}
    assert not columns & {"mtime_ns", "path_pseudonymized", "change_marker", "path_settled"}
    assert not {"ingest_keys", "ingest_key_backfills", "training_generations"} & set(
        inspect(engine).get_table_names())
    assert upgrade_schema(engine) == head_revision()
    assert _schema_diff(engine) == []
    engine.dispose()
