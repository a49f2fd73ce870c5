"""Prefect tasks of the report flow: monitor, store, render and log, alert."""

from __future__ import annotations

import os
import time
from datetime import date
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from puhui.audit import current_flow_run_id
from puhui.config import MonitoringConfig
from puhui.files import write_text_atomically
from puhui.monitoring.alerts import WEBHOOK_ENV, describe, post_alerts, why
from puhui.monitoring.automation import AUTOMATION_NAME, ensure_report_automation
from puhui.monitoring.run import MonitoringConfigs, MonitoringResult, monitor, render_report
from puhui.monitoring.store import write_findings
from puhui.registry import step_run, use_experiment
from puhui.runtime import open_runtime
from puhui.scratch import scratch_dir
from puhui.settings import Settings
from tasks.retries import step_options

STEP = step_options(retry_delay_seconds=5)
EXPERIMENT = "monitoring"


@task(name="alert-automation", **STEP)
def ensure_alert_automation() -> str:
    """Where a Prefect server is used, the automation on the report flow's Flagged/Failed
    states (:mod:`puhui.monitoring.automation`); returns what it did, in words."""
    url = os.environ.get(WEBHOOK_ENV)
    if not os.environ.get("PREFECT_API_URL"):
        line = "no Prefect server: alerts go out from the flow only"
    elif not url:
        line = f"no Prefect automation ({WEBHOOK_ENV} not set)"
    else:
        try:
            automation_id, created = ensure_report_automation(url)
            line = (f"Prefect automation {AUTOMATION_NAME} "
                    f"{'created' if created else 'updated'} ({automation_id})")
        except Exception as exc:  # noqa: BLE001 - the flow's own alert path still works
            line = (f"Prefect automation {AUTOMATION_NAME} NOT ensured "
                    f"({type(exc).__name__}); alerts go out from the flow only")
    get_run_logger().info(line)
    return line


@task(name="monitor", **STEP)
def run_monitoring(settings: Settings, as_of: date,
                   configs: MonitoringConfigs) -> MonitoringResult:
    runtime = open_runtime(settings)
    result = monitor(runtime.engine, runtime.settings.mlflow_tracking_uri, configs, as_of)
    get_run_logger().info(f"monitor {as_of}: {len(result.findings)} figures, "
                          f"{len(result.alerts)} act")
    return result


@task(name="report-publish", **STEP)
def publish_report(settings: Settings, result: MonitoringResult,
                   mon: MonitoringConfig) -> tuple[Path, str, dict[str, int]]:
    """The HTML report under PUHUI_HOME/reports, logged with the long table to MLflow; the
    figures written to the warehouse with that run's id."""
    import mlflow

    runtime = open_runtime(settings)
    settings = runtime.settings
    models = [f"{s.name} v{s.version} ({alias})" if s.available else (s.reason or alias)
              for alias, s in result.models.items()]
    facts: dict[str, Any] = {
        "as_of": result.as_of.isoformat(), "models_line": "; ".join(models),
        "code_version": runtime.audit.code_version, "config_hash": runtime.audit.config_hash,
        "flow_run_id": current_flow_run_id() or "", "actor": runtime.audit.actor,
    }
    use_experiment(EXPERIMENT, settings.mlflow_tracking_uri, settings.home / "mlartifacts")
    with scratch_dir("report") as tmp, step_run(
            f"report as of {result.as_of}",
            {"puhui.as_of": result.as_of.isoformat(),
             "puhui.flow_run_id": facts["flow_run_id"]}) as run:
        facts["mlflow_run_id"] = run.info.run_id
        page, _ = render_report(runtime.engine, result, mon, facts)
        path = settings.reports_dir / f"report_{result.as_of.isoformat()}.html"
        # Its temporary name is per process and thread: two reports of one date at once
        # wrote the same report_<date>.tmp, one renaming the other's half-written bytes.
        write_text_atomically(path, page)
        mlflow.log_artifact(str(path), artifact_path="report")
        table = Path(tmp) / "monitoring.csv"
        result.long_table().to_csv(table, index=False)
        mlflow.log_artifact(str(table), artifact_path="monitoring")
        mlflow.log_metrics({"alerts": float(len(result.alerts)),
                            "figures": float(len(result.findings))})
    counts = write_findings(runtime.engine, result.as_of, result.findings, run.info.run_id,
                            runtime.audit)
    return path, run.info.run_id, counts


# NO_CACHE (here and below): the settings they take hold keys that must not go into a
# cache key.
@task(name="report-alert", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def raise_alerts(settings: Settings, result: MonitoringResult, report: Path) -> str | None:
    """Every `act` finding: one audit event and one webhook POST; returns why, or None."""
    if not result.alerts:
        return None
    runtime = open_runtime(settings)
    message = why(result.alerts)
    delivery = post_alerts({"as_of": result.as_of.isoformat(), "message": message,
                            "report": str(report),
                            "alerts": [a.as_dict() for a in result.alerts]})
    runtime.audit.record(runtime.engine, "monitoring.alert", f"report/{result.as_of}", {
        "as_of": result.as_of.isoformat(), "alerts": [describe(a) for a in result.alerts],
        "webhook": delivery, "report": str(report)})
    get_run_logger().warning(f"{message}; {delivery}")
    return f"{message}; {delivery}"


@task(name="report-audit", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record_report(settings: Settings, result: MonitoringResult, report: Path, run_id: str,
                  counts: dict[str, int], started: float) -> str:
    runtime = open_runtime(settings)
    runtime.audit.record(runtime.engine, "report.published", f"report/{result.as_of}", {
        "as_of": result.as_of.isoformat(), "report": str(report), "rows": counts,
        "models": {a: s.version for a, s in result.models.items()},
        "alerts": len(result.alerts)}, mlflow_run_id=run_id)
    watch = sum(f.status == "watch" for f in result.findings)
    return (f"report {result.as_of}: {len(result.findings)} figures ({len(result.alerts)} act, "
            f"{watch} watch) -> drift_reports {counts['drift_reports']}, model_evaluations "
            f"{counts['model_evaluations']}, service_metrics {counts['service_metrics']}; "
            f"{report} ({time.perf_counter() - started:.1f}s)")
