"""Tables outside the audit trail's own rows: profiles, their history, monitoring's figures.

Before: ``user_profiles``, ``user_profile_history``, ``drift_reports``, monitoring's
``model_evaluations`` rows and ``service_metrics`` were in no event, so a grade edited by
hand, a profile deleted or a drift figure lowered passed ``audit verify``. Now each writer
records each scope's count and keyed digest in an event of its own transaction, and verify
counts (plain) and digests (``--deep``) them. Real warehouses on both dialects; the real
writers (``swap_profiles``, ``write_findings``) on staged partitions and findings.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import text

from puhui.runtime import Runtime, open_runtime

DAY1, DAY2 = date(2026, 9, 30), date(2026, 10, 1)


def _stage(directory: Path, as_of: date, people: range, parts: int = 2) -> None:
    from puhui.profiles.refresh import stage_partition

    rows = pd.DataFrame({
        "person_key": [f"pk{i:06d}" for i in people],
        "as_of_date": [as_of] * len(people),
        "customer_id": [f"C{i:07d}" for i in people],
        "risk_score": [0.01 + i / 1e5 for i in people],
        "risk_grade": ["B"] * len(people),
        "reasons": [json.dumps(["income_low"])] * len(people),
        "recommended_products": [json.dumps([{"product": "micro_loan", "score": 0.5}])]
        * len(people),
        "non_personalised_products": [json.dumps(["savings"])] * len(people),
        "segment_tags": [json.dumps(["rural"])] * len(people),
        "model_versions": [json.dumps({"risk": "3"})] * len(people),
        "personalisation_opt_out": [i % 7 == 0 for i in people],
        "risk_model_version": ["3"] * len(people),
        "recommender_model_version": [None] * len(people),
    })
    for part in range(parts):
        stage_partition(directory, part, rows.iloc[part::parts])


def _swap(runtime: Runtime, tmp_path: Path, as_of: date, people: range) -> None:
    from puhui.profiles.refresh import swap_profiles

    directory = tmp_path / f"staged-{as_of}-{len(people)}"
    _stage(directory, as_of, people)
    swap_profiles(runtime.engine, as_of, directory, 2, None, runtime.audit)


def _findings(as_of: date, psi: float) -> list:
    from puhui.monitoring.findings import Finding

    return [Finding(as_of, "credit_risk", "3", "score_psi", "score", psi, 0.25, "ok"),
            Finding(as_of, "credit_risk", "3", "feature_csi", "income", 0.02, 0.25, "ok"),
            Finding(as_of, "credit_risk", "3", "auc", "all", 0.71, 0.65, "ok"),
            Finding(as_of, "service", "", "approval_rate", "all", 0.4, None, "ok")]


def _verify(capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, str, str]:
    from puhui.cli import main

    capsys.readouterr()
    code = main(["audit", "verify", "--no-repair", *options])
    out, err = capsys.readouterr()
    return code, out, err


def _sql(runtime: Runtime, *statements: str) -> None:
    with runtime.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


RULE = "(the keyed digest differs: rows edited or replaced by hand)"
TABLES = "warehouse tables"


def test_hand_edits_of_profiles_and_monitoring_rows_are_reported_by_verify(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from puhui.monitoring.store import write_findings

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime = open_runtime()
    # Two dates, the first refreshed again afterwards (history only: the second is current)
    # and with fewer customers; a report written twice for one date.
    _swap(runtime, tmp_path, DAY1, range(1, 301))
    _swap(runtime, tmp_path, DAY2, range(1, 401))
    _swap(runtime, tmp_path, DAY1, range(1, 251))
    write_findings(runtime.engine, DAY2, _findings(DAY2, 0.05), "run1", runtime.audit)
    write_findings(runtime.engine, DAY2, _findings(DAY2, 0.07), "run2", runtime.audit)
    code, out, err = _verify(capsys, "--deep")
    assert code == 0, err
    assert "profile, monitoring, validation, training-evaluation and watermark tables and " \
        "user_features agree with the trail: 1,054 row(s) counted, keyed digests " \
        "compared" in out, out
    code, out, err = _verify(capsys)
    assert code == 0, err
    assert "profile, monitoring, validation, training-evaluation and watermark tables agree " \
        "with the trail: 1,054 row(s) counted, the watermarks' and training evaluations' " \
        "keyed digests compared (--deep: also the others', and user_features counted and " \
        "digested)" in out, out
    assert "written before row digests" not in out

    # A grade improved, a drift figure lowered, a monitoring status eased: counts stay, so
    # plain verify passes (it counts); --deep compares the keyed digests.
    _sql(runtime, "UPDATE user_profiles SET risk_grade = 'A' WHERE person_key = 'pk000007'",
         "UPDATE drift_reports SET psi = 0.01 WHERE feature = 'score'",
         "UPDATE model_evaluations SET status = 'ok', value = 0.9 "
         "WHERE metric = 'monitor.auc'")
    code, out, err = _verify(capsys)
    assert code == 0 and "(--deep: also the others', and user_features counted and " \
        "digested)" in out, err
    code, out, err = _verify(capsys, "--deep")
    assert code == 1
    lines = [x.strip() for x in err.splitlines()]
    assert f"user_profiles: 400 row(s), not those its writer recorded {RULE}" in lines, err
    assert f"drift_reports model_name/model_version/as_of_date credit_risk/3/{DAY2}: 2 " \
        f"row(s), not those its writer recorded {RULE}" in lines
    assert f"model_evaluations as_of_date {DAY2}: 1 row(s), not those its writer recorded " \
        f"{RULE}" in lines
    assert f"{TABLES} and the audit trail DISAGREE: 3 problem(s)" in err
    assert "pk000007" not in out + err and "0.01" not in out + err

    # Rows deleted and added: plain verify counts them.
    _sql(runtime, "DELETE FROM user_profile_history WHERE person_key = 'pk000009'",
         "INSERT INTO service_metrics (as_of_date, segment, metric, value, computed_at) "
         f"VALUES ('{DAY2}', 'all', 'npl_rate', 0.01, '2026-10-01 00:00:00')")
    code, out, err = _verify(capsys)
    assert code == 1
    lines = [x.strip() for x in err.splitlines()]
    assert f"user_profile_history as_of_date {DAY1}: 249 row(s) but its writer recorded 250 " \
        "(rows deleted by hand)" in lines, err
    assert f"user_profile_history as_of_date {DAY2}: 399 row(s) but its writer recorded 400 " \
        "(rows deleted by hand)" in lines
    assert f"service_metrics as_of_date {DAY2}: 2 row(s) but its writer recorded 1 (rows " \
        "added by hand)" in lines
    assert f"{TABLES} and the audit trail DISAGREE: 3 problem(s)" in err


def test_rows_written_before_digests_are_noted_once_never_a_mismatch(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A warehouse whose profiles and figures came from the code before: no event records
    them. Verify says so once per table, exit 0; the next refresh of a date is compared."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime = open_runtime()
    _swap(runtime, tmp_path, DAY1, range(1, 101))
    from puhui.warehouse.schema import user_profile_history

    names = [c.name for c in user_profile_history.columns]
    copied = ", ".join("'2026-09-29'" if n == "as_of_date" else n for n in names)
    _sql(runtime,  # as the code before wrote it: no profiles.swapped event
         f"INSERT INTO user_profile_history ({', '.join(names)}) SELECT {copied} "
         "FROM user_profile_history",
         "INSERT INTO drift_reports (model_name, model_version, as_of_date, feature, psi, "
         "threshold, status, reported_at) VALUES ('credit_risk', '2', '2026-09-29', 'score', "
         "0.1, 0.25, 'ok', '2026-09-29 00:00:00')")
    code, out, err = _verify(capsys, "--deep")
    assert code == 0, err
    assert out.count("user_profile_history: 1 as_of_date(s) written before row digests were "
                     "recorded (not compared)") == 1, out
    assert "drift_reports: 1 model_name/model_version/as_of_date(s) written before row " \
        "digests were recorded (not compared)" in out


def test_a_validation_row_edited_or_deleted_by_hand_is_reported(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``validation_results``: each row is written in its load's (or hold's, or
    revalidation's) transaction, whose event now records its digest. A held batch's failed
    validation made to read as passed, or a loaded batch's validation deleted, passed verify."""
    from tests.test_ingest_key_index import DAY1 as FIRST
    from tests.test_ingest_key_index import DAY2 as SECOND
    from tests.test_ingest_key_index import _landed, _two_files

    runtime, feed, ingestor, landing = _two_files(
        monkeypatch, warehouse_url, tmp_path, range(1, 101), range(201, 301),
        second_options={"bogus": 250})
    loaded = ingestor.ingest(_landed(feed, landing, FIRST, "_a")).batch_id
    held = ingestor.ingest(_landed(feed, landing, SECOND, "_b"))
    assert held.status == "quarantined"
    code, out, err = _verify(capsys, "--deep")
    assert code == 0 and "written before row digests" not in out, err
    assert "agree with the trail: 2 row(s) counted, keyed digests compared" in out, out

    _sql(runtime, "UPDATE validation_results SET critical_failed = 0, expectations_failed = 0 "
         f"WHERE batch_id = '{held.batch_id}'",
         f"DELETE FROM validation_results WHERE batch_id = '{loaded}'")
    code, out, err = _verify(capsys)
    assert code == 1
    lines = [x.strip() for x in err.splitlines()]
    of = {b: f"{b}:{feed.suite}"[:40] for b in (loaded, held.batch_id)}
    assert f"validation_results validation_id {of[loaded]}: 0 row(s) but its writer recorded 1 " \
        "(rows deleted by hand)" in lines, err
    assert f"{TABLES} and the audit trail DISAGREE: 1 problem(s)" in err
    code, out, err = _verify(capsys, "--deep")
    assert code == 1
    assert f"validation_results validation_id {of[held.batch_id]}: 1 row(s), not those its " \
        f"writer recorded {RULE}" in [x.strip() for x in err.splitlines()], err


def test_a_migration_adding_a_column_is_no_edit_and_edits_are_still_caught(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: the digest covered every column the code's table had, so a migration adding
    one (0004 did, to these tables) turned every scope recorded before it into "rows edited
    by hand" under ``--deep``. Now each event records the columns it digested and verify
    digests those; a write after the migration records the new set, and both are compared."""
    from sqlalchemy import Column, String

    from puhui.monitoring.store import write_findings
    from puhui.warehouse.schema import drift_reports, user_profile_history, user_profiles

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime = open_runtime()
    _swap(runtime, tmp_path, DAY1, range(1, 101))
    write_findings(runtime.engine, DAY1, _findings(DAY1, 0.05), "run1", runtime.audit)
    tables = (user_profile_history, user_profiles, drift_reports)
    added = [Column("churn_band", String(8), nullable=True) for _ in tables]
    # As a migration does: the column in the database and in the code's tables.
    _sql(runtime, *(f"ALTER TABLE {t.name} ADD COLUMN churn_band VARCHAR(8)" for t in tables))
    for table, column in zip(tables, added, strict=True):
        table.append_column(column)
    try:
        code, out, err = _verify(capsys, "--deep")
        assert code == 0, err
        assert "keyed digests compared" in out and "written before" not in out, out
        # Written after it: recorded over the new columns; the old scopes over the old.
        write_findings(runtime.engine, DAY2, _findings(DAY2, 0.05), "run2", runtime.audit)
        _sql(runtime, f"UPDATE drift_reports SET churn_band = 'x' WHERE as_of_date = '{DAY1}'")
        code, out, err = _verify(capsys, "--deep")
        assert code == 0, err  # the column DAY1's writer did not digest
        _sql(runtime, f"UPDATE drift_reports SET churn_band = 'x' WHERE as_of_date = '{DAY2}'",
             "UPDATE user_profile_history SET risk_grade = 'A' WHERE person_key = 'pk000007'")
        code, out, err = _verify(capsys, "--deep")
        assert code == 1
        lines = [x.strip() for x in err.splitlines()]
        assert f"drift_reports model_name/model_version/as_of_date credit_risk/3/{DAY2}: 2 " \
            f"row(s), not those its writer recorded {RULE}" in lines, err
        assert f"user_profile_history as_of_date {DAY1}: 100 row(s), not those its writer " \
            f"recorded {RULE}" in lines, err
        assert f"{TABLES} and the audit trail DISAGREE: 2 problem(s)" in err
        # --since leaves the dates before it to the counts.
        code, out, err = _verify(capsys, "--deep", "--since", DAY2.isoformat())
        assert code == 1 and "user_profile_history" not in err, err
        assert f"{TABLES} and the audit trail DISAGREE: 1 problem(s)" in err
    finally:
        for table, column in zip(tables, added, strict=True):
            table._columns.remove(column)


def test_a_rows_text_is_the_same_from_either_dialects_driver() -> None:
    """The digest's text per value by its column's type, not the driver's ``repr``: SQLite
    returns dates and times as text, booleans as 0/1, a REAL's 1 as 1.0 and NaN as NULL;
    psycopg dates, aware datetimes, bools, floats. Both spell each value alike."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import Boolean, Column, Date, DateTime, Float, Integer, String

    from puhui.table_digests import _encoder, row_text

    encoders = [_encoder(Column(n, t)) for n, t in (
        ("a", Date()), ("b", DateTime()), ("c", Boolean()), ("d", Float()), ("e", Float()),
        ("f", Integer()), ("g", String()), ("h", Float()))]
    sqlite_row = ("2026-09-30", "2026-09-30 12:00:00.000001", 1, 1.0, None, 3, None, -0.0)
    postgres_row = (DAY1, datetime(2026, 9, 30, 20, 0, 0, 1, tzinfo=timezone(timedelta(hours=8))),
                    True, 1, float("nan"), 3, None, 0.0)
    assert row_text(encoders, sqlite_row) == row_text(encoders, postgres_row)
    naive = (DAY1, datetime(2026, 9, 30, 12, 0, 0, 1), True, 1.0, None, 3, None, 0)
    assert row_text(encoders, naive) == row_text(encoders, sqlite_row)
    assert row_text(encoders, (*sqlite_row[:6], "", -0.0)) != row_text(encoders, sqlite_row)
    assert row_text(encoders, (*sqlite_row[:3], 1.5, *sqlite_row[4:])) \
        != row_text(encoders, sqlite_row)


def test_sqlite_verify_reads_one_moment_without_holding_writers(
    puhui_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: verify's reads ran in ``BEGIN IMMEDIATE``, holding SQLite's write lock for as
    long as ``--deep`` streamed (21.9 s per 600 k history rows, measured by the review): a
    refresh or a load waited, and past the 60 s busy timeout failed. Now a deferred read
    transaction: a writer commits its rows and event meanwhile, and the reads still see the
    moment before both (none of them, not half)."""
    from puhui.audit import events_of
    from puhui.table_digests import PROFILES_HISTORY, WRITERS, rows_counts
    from puhui.warehouse.engine import snapshot

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'warehouse.db'}")
    runtime = open_runtime()
    _swap(runtime, tmp_path, DAY1, range(1, 51))
    with snapshot(runtime.engine) as conn:
        before = len(events_of(conn, WRITERS))
        # Before, this waited out the busy timeout and failed: "database is locked".
        _swap(runtime, tmp_path, DAY2, range(1, 41))
        assert len(events_of(conn, WRITERS)) == before
        assert rows_counts(conn, PROFILES_HISTORY) == {DAY1.isoformat(): 50}
    with snapshot(runtime.engine) as conn:
        assert rows_counts(conn, PROFILES_HISTORY) == {DAY1.isoformat(): 50,
                                                       DAY2.isoformat(): 40}


def test_a_scope_added_by_hand_after_digests_began_is_a_problem(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: any scope no event recorded was "written before row digests were recorded",
    a note, so a whole as-of date or a drift row for a new (model, version, date) inserted
    by hand passed. A run's date is never after its day, so a scope dated after the first
    event recording its table is no older code's: reported. Older dates stay a note."""
    from datetime import timedelta

    from puhui.dates import today_local
    from puhui.monitoring.store import write_findings
    from puhui.warehouse.schema import user_profile_history

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime = open_runtime()
    _swap(runtime, tmp_path, DAY1, range(1, 21))
    write_findings(runtime.engine, DAY1, _findings(DAY1, 0.05), "run1", runtime.audit)
    later = today_local() + timedelta(days=1)
    names = [c.name for c in user_profile_history.columns]
    copied = ", ".join(f"'{later}'" if n == "as_of_date" else n for n in names)
    _sql(runtime,
         f"INSERT INTO user_profile_history ({', '.join(names)}) SELECT {copied} "
         "FROM user_profile_history",
         "INSERT INTO drift_reports (model_name, model_version, as_of_date, feature, psi, "
         f"threshold, status, reported_at) VALUES ('credit_risk', '9', '{later}', 'score', "
         "0.1, 0.25, 'ok', '2026-09-29 00:00:00')",
         "INSERT INTO drift_reports (model_name, model_version, as_of_date, feature, psi, "
         "threshold, status, reported_at) VALUES ('credit_risk', '2', '2026-09-29', 'score', "
         "0.1, 0.25, 'ok', '2026-09-29 00:00:00')")
    code, out, err = _verify(capsys)
    assert code == 1, out
    lines = [x.strip() for x in err.splitlines()]
    began = today_local().isoformat()
    assert f"user_profile_history as_of_date {later}: 20 row(s) no writer recorded, dated " \
        f"after its writers began recording them ({began}): rows added by hand" in lines, err
    assert f"drift_reports model_name/model_version/as_of_date credit_risk/9/{later}: 1 " \
        f"row(s) no writer recorded, dated after its writers began recording them " \
        f"({began}): rows added by hand" in lines, err
    assert f"{TABLES} and the audit trail DISAGREE: 2 problem(s)" in err
    assert "drift_reports: 1 model_name/model_version/as_of_date(s) written before row " \
        "digests were recorded (not compared)" in out  # the older date: a note still
