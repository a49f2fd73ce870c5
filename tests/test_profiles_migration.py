"""Migration 0004 on a 0003 warehouse that holds data: data kept, columns added, re-run safe."""

from __future__ import annotations

from datetime import UTC, date, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from puhui.warehouse.engine import (
    _alembic_config,
    create_warehouse_engine,
    current_revision,
    head_revision,
    upgrade_schema,
)
from puhui.warehouse.schema import metadata

WHEN = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def _at(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)


def _fill_0003(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO model_evaluations (model_name, model_version, as_of_date, metric, "
            "segment, value, evaluated_at) VALUES "
            "('credit_risk', '1', :d, 'auc_oot', 'all', 0.71, :t), "
            "('credit_risk', '1', NULL, 'monitor.ks', 'all', 0.3, :t)"),
            {"d": date(2026, 11, 1), "t": WHEN})
        conn.execute(text(
            "INSERT INTO drift_reports (model_name, model_version, as_of_date, feature, psi, "
            "status, reported_at) VALUES ('credit_risk', '1', :d, 'score', 0.04, 'ok', :t)"),
            {"d": date(2026, 11, 30), "t": WHEN})
        for table in ("user_profiles", "user_profile_history"):
            conn.execute(text(
                f"INSERT INTO {table} (person_key, as_of_date, risk_score, risk_grade, "
                "refreshed_at) VALUES ('ab12', :d, 0.02, 'B', :t)"),
                {"d": date(2026, 11, 30), "t": WHEN})


def _schema_diff(engine: Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


def test_0004_upgrades_a_0003_warehouse_with_data_and_reruns(warehouse_url: str) -> None:
    engine = create_warehouse_engine(warehouse_url)
    _at(engine, "0003")
    _fill_0003(engine)
    assert upgrade_schema(engine) == head_revision()
    assert _schema_diff(engine) == []
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT metric, as_of_date, threshold, status FROM model_evaluations "
            "ORDER BY metric")).all()
        profile = conn.execute(text(
            "SELECT risk_grade, personalisation_opt_out, model_versions FROM user_profiles"
        )).one()
        drift = conn.execute(text("SELECT psi, threshold FROM drift_reports")).one()
    # The row that had no as-of date takes the day it was evaluated; nothing is lost.
    assert [(m, str(d)[:10], t, s) for m, d, t, s in rows] == [
        ("auc_oot", "2026-11-01", None, None), ("monitor.ks", "2026-11-30", None, None)]
    assert tuple(profile) == ("B", None, None)
    assert drift[0] == 0.04 and drift[1] is None

    # The same as-of date twice was impossible before; now a new date is a new row.
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO model_evaluations (model_name, model_version, as_of_date, metric, "
            "segment, value, threshold, status, evaluated_at) VALUES "
            "('credit_risk', '1', :d, 'monitor.ks', 'all', 0.2, 0.1, 'watch', :t)"),
            {"d": date(2026, 12, 1), "t": WHEN})

    # Re-running 0004 over a database that already has its columns and key changes nothing.
    with engine.begin() as conn:
        command.stamp(_alembic_config(conn), "0003")
    assert upgrade_schema(engine) == head_revision()
    assert current_revision(engine) == head_revision()
    assert _schema_diff(engine) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM model_evaluations")).scalar() == 3
    names = {u["name"] for u in inspect(engine).get_unique_constraints("model_evaluations")}
    assert "uq_model_evaluations_key" in names
    engine.dispose()


def test_0004_downgrades_and_upgrades_again(warehouse_url: str) -> None:
    engine = create_warehouse_engine(warehouse_url)
    upgrade_schema(engine)
    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0003")
    assert "threshold" not in {c["name"] for c in inspect(engine).get_columns("drift_reports")}
    assert upgrade_schema(engine) == head_revision()
    assert _schema_diff(engine) == []
    engine.dispose()
