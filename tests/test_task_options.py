"""Every pipeline task takes its retry and cache options from tasks.retries.step_options."""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE

from tasks.ingest import ingest_partner_feed, validate_warehouse_tables
from tasks.retries import retry_on_transient_error


def test_ingest_tasks_use_the_step_options() -> None:
    for step in (ingest_partner_feed, validate_warehouse_tables):
        assert step.retries == 2
        assert step.retry_condition_fn is retry_on_transient_error
        assert step.cache_policy is NO_CACHE  # partner/as_of inputs never replay a cached run
