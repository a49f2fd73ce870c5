"""The daily pipeline as real Prefect flow runs, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from puhui.audit import read_audit_events, verify_audit_chain
from puhui.config import PartnersConfig, load_config
from puhui.generate import generate_landing_zone
from puhui.landing import list_landed_files
from puhui.pipeline import backfill_daily, run_daily_pipeline
from puhui.settings import load_settings
from puhui.warehouse.engine import get_engine

END = date(2026, 9, 30)


@pytest.fixture(scope="module")
def small_landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("landing")
    # What these tests check (statuses, late feeds, the trail, a backfill's order) does not
    # grow with the users; 300 (was 600) shortens every flow run's ingest, profiles, report.
    generate_landing_zone(out, users=300, days=4, seed=7, end_date=END, history_days=40)
    return out


@pytest.fixture
def pipeline_env(
    puhui_env: Path,
    warehouse_url: str,
    small_landing: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefect_harness: None,
) -> str:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setenv("PUHUI_LANDING", str(small_landing))
    return warehouse_url


@pytest.mark.slow
def test_daily_flow_ingests_the_landing_zone_and_audits(
    pipeline_env: str, small_landing: Path
) -> None:
    summary = run_daily_pipeline(END)
    settings = load_settings()
    partners = load_config(settings.config_dir, PartnersConfig)
    on_disk = sum(len(list_landed_files(feed, str(small_landing))) for feed in partners.partners)
    ingest = summary["ingest"]
    assert on_disk > 0 and sum(ingest["statuses"].values()) == on_disk
    assert ingest["statuses"].get("quarantined", 0) == 0  # no faults planted
    assert ingest["rows"] == ingest["rows_loaded"] + ingest["rows_duplicate"] > 0
    assert summary["late_feeds"] == []  # the 30th: no monthly feed due, daily ones arrived
    assert summary["line"].startswith(f"daily {END}: ingest {END}:")
    assert "; profiles " in summary["line"] and "; report " in summary["line"]
    assert summary["profiles"]["missing_models"]["credit_risk"].startswith("no champion")
    assert Path(summary["report"]).exists()
    engine = get_engine(pipeline_env)
    events = read_audit_events(engine, action="pipeline.daily")
    assert [e["subject"] for e in events] == [f"daily/{END}"]
    assert events[0]["flow_run_id"], "the audit event must name the Prefect flow run"
    assert events[0]["details"]["ingest"]["rows_loaded"] == ingest["rows_loaded"]
    accepted = read_audit_events(engine, action="ingest.accepted")
    assert len(accepted) == ingest["statuses"]["accepted"]
    assert all(e["flow_run_id"] for e in accepted)
    assert verify_audit_chain(engine).ok


@pytest.mark.slow
def test_missing_expected_delivery_is_reported_late(pipeline_env: str) -> None:
    after_last_delivery = END + timedelta(days=1)  # a 1st of the month with nothing landed
    summary = run_daily_pipeline(after_last_delivery)
    assert "credit_bureau" in summary["late_feeds"] and "mobile_payments" in summary["late_feeds"]
    late = read_audit_events(get_engine(pipeline_env), action="ingest.late")
    assert {e["subject"] for e in late} >= {f"credit_bureau/{after_last_delivery}"}


@pytest.mark.slow
def test_backfill_runs_in_order_and_resumes(pipeline_env: str) -> None:
    start = END - timedelta(days=2)
    first = list(backfill_daily(start, END - timedelta(days=1)))
    assert len(first) == 2 and all("ingest" in line for line in first)
    second = list(backfill_daily(start, END))
    assert ["skipped" in line for line in second] == [True, True, False]
    subjects = [
        e["subject"] for e in read_audit_events(get_engine(pipeline_env), action="pipeline.daily")
    ]
    assert subjects == [f"daily/{start + timedelta(days=i)}" for i in range(3)]
