"""The ingest flow: every configured feed (or one), for an as-of date."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger

from puhui.config import PartnersConfig, load_config
from puhui.dates import today_local
from puhui.privacy import install_log_scrubbing
from puhui.runtime import flow_settings
from tasks.ingest import (
    build_validation_data_docs,
    ingest_partner_feed,
    validate_warehouse_tables,
)
from tasks.prefect_ui import dated_run_name, ingest_markdown, publish_summary
from tasks.warehouse import prepare_warehouse


def summarize_ingest(as_of: date, feeds: list[dict], tables: list[dict]) -> dict:
    """Totals over feeds and the one summary line."""
    totals: dict[str, int] = {}
    rows = {"rows": 0, "rows_loaded": 0, "rows_held": 0, "rows_duplicate": 0}
    for feed in feeds:
        for status, count in feed["counts"].items():
            totals[status] = totals.get(status, 0) + count
        for outcome in feed["files"]:
            if not outcome["skipped"]:
                for key in rows:
                    rows[key] += outcome[key]
    late = [f["partner"] for f in feeds if f["late"]]
    decided = {s: n for s, n in sorted(totals.items()) if s != "skipped"}
    states = ", ".join(f"{n} {s}" for s, n in decided.items()) or "no new files"
    if totals.get("skipped"):
        states += f" ({totals['skipped']} already ingested by an earlier run)"
    failed_tables = [t["table"] for t in tables if not t["success"]]
    line = (
        f"ingest {as_of}: {states}; rows {rows['rows']:,} landed = {rows['rows_loaded']:,} "
        f"loaded + {rows['rows_held']:,} held + {rows['rows_duplicate']:,} duplicate; "
        f"late feeds: {', '.join(late) or 'none'}; table checks: "
        f"{len(tables) - len(failed_tables)}/{len(tables)} passed"
        + (f" (FAILED: {', '.join(failed_tables)})" if failed_tables else "")
    )
    # Files under a folder named like a date that is none are in no ledger: said here.
    undated = [f"{f['partner']}/{folder}/ ({n})" for f in feeds
               for folder, n in f.get("undated_folders", {}).items()]
    if undated:
        line += f"; NOT INGESTED, folder not a real date: {', '.join(undated)}"
    return {
        "as_of": as_of.isoformat(),
        "statuses": totals,
        **rows,
        "late_feeds": late,
        "feeds": feeds,
        "tables": tables,
        "line": line,
    }


@flow(name="ingest", flow_run_name=dated_run_name("ingest"), log_prints=False)
def ingest_flow(as_of: date | None = None, partner: str | None = None) -> dict:
    """Ingest and validate landed partner files up to ``as_of`` (default today)."""
    install_log_scrubbing()  # before anything can fail: Prefect logs its tracebacks
    as_of = as_of or today_local()
    settings = flow_settings()
    partners = load_config(settings.config_dir, PartnersConfig)
    names = [partner] if partner else [f.name for f in partners.partners]
    for name in names:
        partners.get(name)  # unknown partner: one clear error before any work
    prepare_warehouse(settings)
    feeds = [ingest_partner_feed(settings, name, as_of, partners.get(name)) for name in names]
    tables = validate_warehouse_tables(settings)
    summary = summarize_ingest(as_of, feeds, tables)
    summary["data_docs"] = build_validation_data_docs(settings)
    get_run_logger().info(summary["line"])
    publish_summary("ingest-summary", ingest_markdown(summary), summary["line"])
    return summary
