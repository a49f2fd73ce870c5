"""The profile refresh flow: champions -> context -> one task per partition -> atomic swap."""

from __future__ import annotations

import time
from datetime import date

from prefect import flow, get_run_logger

from puhui.dates import today_local
from puhui.privacy import install_log_scrubbing
from puhui.runtime import flow_settings
from tasks.prefect_ui import dated_run_name
from tasks.profiles import (
    ProfileConfigs,
    prepare_context,
    record_refresh,
    resolve_profile_models,
    score_and_stage,
    split_phone_feeds,
    staged,
    swap,
)
from tasks.warehouse import prepare_warehouse


@flow(name="profiles", flow_run_name=dated_run_name("profiles"), log_prints=False)
def profiles_flow(as_of: date | None = None) -> dict:
    """Refresh ``user_profiles`` (current) and ``user_profile_history`` as of ``as_of``."""
    install_log_scrubbing()  # before anything can fail: Prefect logs its tracebacks
    started = time.perf_counter()
    as_of = as_of or today_local()
    settings = flow_settings()
    configs = ProfileConfigs.read(settings.config_dir)
    prepare_warehouse(settings)
    slots = resolve_profile_models(settings, configs.segments.profile.models)
    ctx, key = prepare_context(settings, as_of, slots, configs)
    partitions = ctx.segments.profile.partitions
    done = staged(settings.home, as_of, key)
    if len(done) < partitions:
        get_run_logger().info(
            f"profiles {as_of}: {split_phone_feeds(settings, ctx, key).line}")
    for partition in range(partitions):
        if partition not in done:
            score_and_stage(settings, ctx, key, partition)
    result = swap(settings, as_of, key, partitions)
    line = record_refresh(settings, as_of, slots, result, partitions, len(done), key, started)
    get_run_logger().info(line)
    return {"as_of": as_of.isoformat(), "rows": result.rows, "partitions": partitions,
            "reused": len(done), "current_replaced": result.current_replaced,
            "models": {s.name: s.version for s in slots.values()},
            "missing_models": {s.name: s.reason for s in slots.values() if not s.available},
            "line": line}
