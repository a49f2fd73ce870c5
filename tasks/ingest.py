"""Prefect tasks for partner ingestion: one task per feed, one log line per file."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from functools import cache
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from puhui import console
from puhui.audit import current_flow_run_id
from puhui.config import PartnerFeed
from puhui.data_docs import build_data_docs, ledger_outcomes
from puhui.ingest.batches import FileIngestor, FileOutcome
from puhui.ingest.feeds import ingest_feed
from puhui.ingest.pseudonymize import pseudonym_key_bytes
from puhui.landing import undated_folders
from puhui.privacy import install_log_scrubbing
from puhui.runtime import open_runtime
from puhui.settings import Settings
from puhui.validation import BatchValidator
from tasks.prefect_ui import dated_run_name
from tasks.retries import step_options

STEP = step_options(retry_delay_seconds=10)


@cache
def _validator(home: Path, expectations_dir: Path) -> BatchValidator:
    # One GX context per process: building it costs seconds, reusing it costs nothing. Per
    # suites folder: a run validates with its snapshot's suites, which its config hash covers.
    return BatchValidator(results_dir=home / "gx", expectations_dir=expectations_dir)


@task(
    name="ingest-feed",
    **STEP,
    task_run_name=dated_run_name("ingest"),
)
def ingest_partner_feed(settings: Settings, partner: str, as_of: date,
                        feed: PartnerFeed) -> dict:
    """Ingest the new files of one feed up to ``as_of``; returns counts and one line per file."""
    install_log_scrubbing()  # tracebacks reaching Prefect's log table are masked too
    runtime = open_runtime(settings)
    settings = runtime.settings
    ingestor = FileIngestor(
        runtime,
        feed,
        _validator(settings.home, settings.expectations_dir),
        pseudonym_key_bytes(settings.pseudonym_key),
        flow_run_id=current_flow_run_id(),
    )
    logger = get_run_logger()
    rows = 0

    with console.progress(f"ingest {partner}") as bar:

        def log_file(outcome: FileOutcome) -> None:
            nonlocal rows
            logger.info(outcome.line())
            rows += outcome.rows
            bar.update(description=f"ingest {partner}: {rows:,} rows")
            bar.advance(1)

        result = ingest_feed(runtime, feed, ingestor, as_of, on_file=log_file)
    if result.key_note:
        logger.warning(result.key_note)
    if result.late:
        logger.warning(
            "%s: the delivery expected for %s by %s has not arrived (late)",
            partner,
            as_of,
            feed.expected_by,
        )
    undated = undated_folders(feed, settings.landing)
    for folder, entries in undated.items():
        logger.warning("%s: %d file(s) in %s/ not ingested: the folder name is not a real date "
                       "(YYYY-MM-DD); move them to their delivery date's folder", partner,
                       entries, folder)
    return {
        "partner": partner,
        "late": result.late,
        "undated_folders": undated,
        "counts": result.counts(),
        "files": [asdict(f) for f in result.files],
    }


WAREHOUSE_SUITE_PREFIX = "warehouse_"


@task(
    name="validate-warehouse-tables",
    task_run_name=dated_run_name("validate-warehouse-tables"),
    **STEP,
)
def validate_warehouse_tables(settings: Settings) -> list[dict]:
    """Run each ``warehouse_<table>`` suite on its table (in the database) and record it."""
    from sqlalchemy import inspect

    from puhui.ingest.ledger import record_validation
    from puhui.table_digests import VALIDATION_RECORDED
    from puhui.validation import suite_names

    runtime = open_runtime(settings)
    validator = _validator(runtime.settings.home, runtime.settings.expectations_dir)
    existing = set(inspect(runtime.engine).get_table_names())
    logger = get_run_logger()
    results = []
    for suite in suite_names(expectations_dir=runtime.settings.expectations_dir):
        table = suite.removeprefix(WAREHOUSE_SUITE_PREFIX)
        if not suite.startswith(WAREHOUSE_SUITE_PREFIX) or table not in existing:
            continue
        outcome = validator.validate_table(runtime.settings.warehouse_url, table, suite)
        with runtime.engine.begin() as conn:
            validated = record_validation(
                conn,
                None,
                suite,
                table_name=table,
                success=outcome.success,
                expectations_run=outcome.expectations_run,
                critical_failed=len(outcome.critical),
                warning_failed=len(outcome.warnings),
                details=outcome.summary(),
                flow_run_id=current_flow_run_id(),
                audit=runtime.audit,
            )
            # Its row's digest, in its transaction: `audit verify` compares the row with it.
            runtime.audit.append(conn, VALIDATION_RECORDED, f"table/{table}", {
                "table": table, "suite": suite, "success": outcome.success, **validated})
        state = (
            "passed"
            if outcome.success
            else "FAILED: " + "; ".join(f.description for f in outcome.failed)
        )
        logger.info(
            "table %s (%s): %d expectations %s", table, suite, outcome.expectations_run, state
        )
        results.append(
            {
                "table": table,
                "suite": suite,
                "success": outcome.success,
                "failed": [f.description for f in outcome.failed],
            }
        )
    return results


# NO_CACHE: the settings it takes hold keys that must not go into a cache key.
@task(name="build-data-docs", task_run_name=dated_run_name("build-data-docs"),
      cache_policy=NO_CACHE)
def build_validation_data_docs(settings: Settings) -> str:
    """Render this run's new GX results into the Data Docs site; returns its index path."""
    with console.progress("GX Data Docs"):
        runtime = open_runtime(settings)  # the ledger gives each batch's outcome column
        build = build_data_docs(runtime.settings.home / "gx", ledger_outcomes(runtime.engine))
    get_run_logger().info(build.line())
    return str(build.index)
