"""Running the daily pipeline flow now, or for a range of dates (backfill), from Python."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

from puhui.audit import read_audit_events
from puhui.dates import date_range
from puhui.runtime import open_runtime

DAILY_COMPLETED = "pipeline.daily"


def run_daily_pipeline(as_of: date | None = None) -> dict:
    """Run the ``daily`` Prefect flow in this process and return its summary."""
    from flows.daily import daily_pipeline

    return daily_pipeline(as_of=as_of)


def run_ingest_flow(as_of: date | None = None, partner: str | None = None) -> dict:
    """Run the ``ingest`` Prefect flow in this process and return its summary."""
    from flows.ingest import ingest_flow

    return ingest_flow(as_of=as_of, partner=partner)


def run_train_risk_flow(as_of: date | None = None, force: bool = False,
                        allow_gate_failure: bool = False) -> dict:
    """Run the ``train-risk`` Prefect flow in this process and return its summary; raises
    ``GatesFailed`` (with the summary) when the version failed its gates, unless allowed."""
    from flows.train import train_risk_flow

    return train_risk_flow(as_of=as_of, force=force, allow_gate_failure=allow_gate_failure)


def run_profiles_flow(as_of: date | None = None) -> dict:
    """Run the ``profiles`` Prefect flow in this process and return its summary."""
    from flows.profiles import profiles_flow

    return profiles_flow(as_of=as_of)


def run_report_flow(as_of: date | None = None) -> dict:
    """Run the ``report`` Prefect flow in this process and return its summary."""
    from flows.report import report_flow

    return report_flow(as_of=as_of)


def run_train_recommender_flow(as_of: date | None = None, force: bool = False,
                               allow_gate_failure: bool = False) -> dict:
    """Run the ``train-recommender`` Prefect flow in this process and return its summary;
    raises ``GatesFailed`` like ``run_train_risk_flow``."""
    from flows.recommender import train_recommender_flow

    return train_recommender_flow(as_of=as_of, force=force, allow_gate_failure=allow_gate_failure)


def completed_daily_dates() -> set[date]:
    """As-of dates whose daily pipeline ran to the end (it audits only on completion)."""
    events = read_audit_events(open_runtime().engine, action=DAILY_COMPLETED)
    return {date.fromisoformat(e["subject"].split("/", 1)[1]) for e in events}


def backfill_daily(start: date, end: date, force: bool = False) -> Iterator[str]:
    """Run the daily pipeline for each date in order, skipping completed ones unless ``force``.

    A crash stops the backfill at the failing date; re-running resumes from there because
    completed dates are skipped.
    """
    dates = date_range(start, end)
    done = set() if force else completed_daily_dates()
    for index, day in enumerate(dates, start=1):
        prefix = f"[{index}/{len(dates)}]"
        if day in done:
            yield f"{prefix} {day}: already completed, skipped (--force re-runs it)"
            continue
        yield f"{prefix} {run_daily_pipeline(day)['line']}"
