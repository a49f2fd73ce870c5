"""The daily pipeline: ingest -> profiles -> report, summarized in one line."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger
from prefect.states import Completed

from flows.ingest import ingest_flow
from flows.profiles import profiles_flow
from flows.report import FLAGGED, report_flow
from puhui.dates import today_local
from puhui.privacy import install_log_scrubbing
from puhui.runtime import flow_settings
from tasks.prefect_ui import daily_markdown, dated_run_name, publish_summary
from tasks.warehouse import prepare_warehouse, record_audit_event


@flow(name="daily", flow_run_name=dated_run_name("daily"), log_prints=False)
def daily_pipeline(as_of: date | None = None):  # noqa: ANN201 - a dict, or a Flagged state
    """Run the daily pipeline for ``as_of`` (default: today in the lender's timezone).

    An early-warning alert of the report ends this run as ``Flagged`` too (the pipeline
    completed; the date counts as done for backfills), with the report's reason.
    """
    install_log_scrubbing()  # before anything can fail: Prefect logs its tracebacks
    as_of = as_of or today_local()
    # Each flow reads its own settings: flow parameters (stored by Prefect) carry no keys.
    settings = flow_settings()
    revision = prepare_warehouse(settings)
    ingest = ingest_flow(as_of=as_of)
    profiles = profiles_flow(as_of=as_of)
    report = report_flow(as_of=as_of)
    summary = {
        "as_of": as_of.isoformat(),
        "schema_revision": revision,
        "ingest": {k: v for k, v in ingest.items() if k != "feeds"},
        "late_feeds": ingest["late_feeds"],
        "profiles": {k: profiles[k] for k in ("rows", "models", "missing_models")},
        "report": report["report"],
        "alerts": len(report["alerts"]),
    }
    summary["line"] = (f"daily {as_of}: {ingest['line']}; {profiles['line']}; "
                       f"{report['line']}")
    record_audit_event(
        settings,
        "pipeline.daily",
        f"daily/{as_of.isoformat()}",
        {k: v for k, v in summary.items() if k != "line"},
    )
    get_run_logger().info(summary["line"])
    publish_summary("daily-summary", daily_markdown(summary), summary["line"])
    if report.get("why"):
        return Completed(name=FLAGGED, message=report["why"], data=summary)
    return summary
