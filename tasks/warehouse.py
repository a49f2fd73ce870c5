"""Prefect tasks around the warehouse and the audit trail.

``NO_CACHE``: they take the settings, whose keys must not go into a cache key.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from puhui.runtime import open_runtime
from puhui.settings import Settings
from puhui.warehouse.engine import current_revision
from tasks.prefect_ui import dated_run_name


@task(name="prepare-warehouse", task_run_name=dated_run_name("prepare-warehouse"), retries=2,
      retry_delay_seconds=5, cache_policy=NO_CACHE)
def prepare_warehouse(settings: Settings) -> str:
    """Migrate the warehouse to the code's schema (no-op when current); returns the revision."""
    runtime = open_runtime(settings)
    return current_revision(runtime.engine) or ""


@task(name="record-audit-event", task_run_name=dated_run_name("record-audit-event"),
      retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record_audit_event(settings: Settings, action: str, subject: str,
                       details: dict[str, Any]) -> int:
    """Append one event to the audit trail; returns its sequence number."""
    runtime = open_runtime(settings)
    return runtime.audit.record(runtime.engine, action, subject, details)["seq"]
