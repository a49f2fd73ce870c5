"""The daily pipeline: compose the stages that exist, in order, and summarize in one line."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger

from puhui.dates import today_local
from tasks.landing import survey_landing
from tasks.warehouse import prepare_warehouse, record_audit_event

# Stages of the daily pipeline that later issues build; listed so the summary never implies
# that they ran.
NOT_BUILT_STAGES = ("ingest", "train", "profiles", "report")


@flow(name="daily", log_prints=False)
def daily_pipeline(as_of: date | None = None) -> dict:
    """Run the daily pipeline for ``as_of`` (default: today in the lender's timezone)."""
    as_of = as_of or today_local()
    logger = get_run_logger()
    revision = prepare_warehouse()
    arrivals = survey_landing(as_of)
    late = [a["partner"] for a in arrivals if a["late"]]
    summary = {
        "as_of": as_of.isoformat(),
        "schema_revision": revision,
        "files_landed": sum(a["files"] for a in arrivals),
        "bytes_landed": sum(a["bytes"] for a in arrivals),
        "late_feeds": late,
        "not_built": list(NOT_BUILT_STAGES),
    }
    summary["line"] = (
        f"daily {as_of}: {summary['files_landed']} files landed "
        f"({summary['bytes_landed'] / 1e6:,.1f} MB), late feeds: {', '.join(late) or 'none'}; "
        f"not built yet: {', '.join(NOT_BUILT_STAGES)}"
    )
    record_audit_event("pipeline.daily", f"daily/{as_of.isoformat()}", summary)
    logger.info(summary["line"])
    return summary
