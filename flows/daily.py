"""The daily pipeline: compose the stages that exist, in order, and summarize in one line."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger

from flows.ingest import ingest_flow
from puhui.dates import today_local
from tasks.prefect_ui import daily_markdown, dated_run_name, publish_summary
from tasks.warehouse import prepare_warehouse, record_audit_event

# Stages of the daily pipeline that later issues build; listed so the summary never implies
# that they ran.
NOT_BUILT_STAGES = ("profiles", "report")


@flow(name="daily", flow_run_name=dated_run_name("daily"), log_prints=False)
def daily_pipeline(as_of: date | None = None) -> dict:
    """Run the daily pipeline for ``as_of`` (default: today in the lender's timezone)."""
    as_of = as_of or today_local()
    revision = prepare_warehouse()
    ingest = ingest_flow(as_of=as_of)
    summary = {
        "as_of": as_of.isoformat(),
        "schema_revision": revision,
        "ingest": {k: v for k, v in ingest.items() if k != "feeds"},
        "late_feeds": ingest["late_feeds"],
        "not_built": list(NOT_BUILT_STAGES),
    }
    summary["line"] = f"daily {as_of}: {ingest['line']}; not built yet: " + ", ".join(
        NOT_BUILT_STAGES
    )
    record_audit_event(
        "pipeline.daily",
        f"daily/{as_of.isoformat()}",
        {k: v for k, v in summary.items() if k != "line"},
    )
    get_run_logger().info(summary["line"])
    publish_summary("daily-summary", daily_markdown(summary), summary["line"])
    return summary
