"""The report flow: monitoring -> warehouse + HTML report + MLflow -> early warning.

An `act` light ends the flow run in a state named ``Flagged`` (type COMPLETED: the report
itself succeeded, so a backfill goes on) whose message says why; the alerts are also in the
audit trail and posted to ``PUHUI_ALERT_WEBHOOK``. Where a Prefect server is used, the flow
first makes sure the server's automation on Flagged/Failed/Crashed runs of this flow exists
(:mod:`puhui.monitoring.automation`), so the server pages even when the flow cannot.
"""

from __future__ import annotations

import time
from datetime import date

from prefect import flow, get_run_logger
from prefect.states import Completed

from puhui.dates import today_local
from puhui.monitoring.run import MonitoringConfigs
from puhui.privacy import install_log_scrubbing
from puhui.runtime import flow_settings
from tasks.prefect_ui import dated_run_name
from tasks.report import (
    ensure_alert_automation,
    publish_report,
    raise_alerts,
    record_report,
    run_monitoring,
)
from tasks.warehouse import prepare_warehouse

FLAGGED = "Flagged"


@flow(name="report", flow_run_name=dated_run_name("report"), log_prints=False)
def report_flow(as_of: date | None = None):  # noqa: ANN201 - a dict, or a Flagged state
    """Monitoring, service effect and early warning as of ``as_of``; the HTML report."""
    install_log_scrubbing()  # before anything can fail: Prefect logs its tracebacks
    started = time.perf_counter()
    as_of = as_of or today_local()
    settings = flow_settings()
    configs = MonitoringConfigs.read(settings.config_dir)
    prepare_warehouse(settings)
    ensure_alert_automation()
    result = run_monitoring(settings, as_of, configs)
    report, run_id, counts = publish_report(settings, result, configs.monitoring)
    alert = raise_alerts(settings, result, report)
    line = record_report(settings, result, report, run_id, counts, started)
    if alert:
        line += f"; ALERT: {alert}"
    get_run_logger().info(line)
    summary = {"as_of": as_of.isoformat(), "report": str(report), "mlflow_run_id": run_id,
               "rows": counts, "alerts": [a.as_dict() for a in result.alerts],
               "why": alert, "notes": result.notes, "line": line}
    if alert:
        return Completed(name=FLAGGED, message=alert, data=summary)
    return summary
