"""Writing monitoring figures to the warehouse, replacing a re-run of the same as-of date.

``drift_reports`` takes PSI/CSI per (model, version, as-of, variable) with its threshold and
status. ``model_evaluations`` takes the other model figures as ``monitor.<metric>`` per
(model, version, as-of, metric, segment) with threshold and status, so every date's report
stays queryable (registration figures are the rows without a status).
``service_metrics`` takes service and portfolio figures per (as-of, segment, metric).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pandas as pd
from sqlalchemy import Engine, and_, delete, select

from puhui.audit import AuditWriter
from puhui.monitoring.findings import Finding
from puhui.monitoring.service import PORTFOLIO, SERVICE
from puhui.table_digests import (
    DRIFT,
    MONITOR_EVALUATIONS,
    MONITORING_RECORDED,
    ROWS_DIGESTS,
    SERVICE_METRICS,
    recorded,
    scope_of,
    writer_subkey,
)
from puhui.warehouse.schema import drift_reports, model_evaluations, service_metrics

DRIFT_METRICS = ("score_psi", "feature_csi")
MONITOR_PREFIX = "monitor."


def write_findings(engine: Engine, as_of: date, findings: list[Finding],
                   mlflow_run_id: str | None, audit: AuditWriter) -> dict[str, int]:
    """Replace the as-of date's figures, and append ``monitoring.recorded`` in the same
    transaction with each scope's count and keyed digest (``audit verify`` compares them)."""
    now = datetime.now(UTC)
    drift = [f for f in findings if f.metric in DRIFT_METRICS and f.value is not None]
    model = [f for f in findings if f.model not in (SERVICE, PORTFOLIO)
             and f.metric not in DRIFT_METRICS and f.metric != "role" and f.value is not None]
    service = [f for f in findings if f.model in (SERVICE, PORTFOLIO) and f.value is not None
               and f.metric != "npl_benchmark"]
    service_rows = {(f.segment[:64], (f.metric if f.model == SERVICE
                                      else f"{PORTFOLIO}.{f.metric}")[:64]): f.value
                    for f in service}
    with engine.begin() as conn:
        versions = {(f.model, f.version) for f in drift}
        for name, version in versions:
            conn.execute(delete(drift_reports).where(and_(
                drift_reports.c.model_name == name, drift_reports.c.model_version == version,
                drift_reports.c.as_of_date == as_of)))
        if drift:
            conn.execute(drift_reports.insert(), [
                {"model_name": f.model, "model_version": f.version, "as_of_date": as_of,
                 "feature": f.segment[:128], "psi": f.value, "threshold": f.threshold,
                 "status": f.status, "reported_at": now} for f in drift])
        m = model_evaluations
        # A re-run of the date replaces that date's monitoring rows, nothing else.
        conn.execute(delete(m).where(and_(m.c.as_of_date == as_of,
                                          m.c.metric.like(MONITOR_PREFIX + "%"))))
        rows = {(f.model, f.version, MONITOR_PREFIX + f.metric, f.segment[:64]): f
                for f in model}
        if rows:
            conn.execute(m.insert(), [
                {"model_name": k[0], "model_version": k[1], "as_of_date": as_of,
                 "metric": k[2], "segment": k[3], "value": f.value, "threshold": f.threshold,
                 "status": f.status, "mlflow_run_id": mlflow_run_id, "evaluated_at": now}
                for k, f in rows.items()])
        conn.execute(delete(service_metrics).where(service_metrics.c.as_of_date == as_of))
        if service_rows:
            conn.execute(service_metrics.insert(), [
                {"as_of_date": as_of, "segment": s, "metric": m, "value": v, "computed_at": now}
                for (s, m), v in service_rows.items()])
        subkey = writer_subkey(audit)
        day = as_of.isoformat()
        digests = {
            DRIFT.name: recorded(conn, DRIFT, subkey, drift_reports.c.as_of_date == as_of,
                                 [scope_of(v + (day,)) for v in versions]),
            MONITOR_EVALUATIONS.name: recorded(conn, MONITOR_EVALUATIONS, subkey,
                                               m.c.as_of_date == as_of, [day]),
            SERVICE_METRICS.name: recorded(conn, SERVICE_METRICS, subkey,
                                           service_metrics.c.as_of_date == as_of, [day])}
        audit.append(conn, MONITORING_RECORDED, f"report/{day}", {
            "as_of": day, "mlflow_run_id": mlflow_run_id, ROWS_DIGESTS: digests},
            mlflow_run_id=mlflow_run_id)
    return {"drift_reports": len(drift), "model_evaluations": len(rows),
            "service_metrics": len(service_rows)}


def previous_service(engine: Engine, as_of: date) -> dict[tuple[str, str], float]:
    """The service figures of the latest as-of date before ``as_of``."""
    s = service_metrics
    with engine.connect() as conn:
        day = conn.execute(select(s.c.as_of_date).where(s.c.as_of_date < as_of)
                           .order_by(s.c.as_of_date.desc()).limit(1)).scalar()
        if day is None:
            return {}
        rows = conn.execute(select(s.c.metric, s.c.segment, s.c.value)
                            .where(s.c.as_of_date == day)).all()
    return {(m, seg): v for m, seg, v in rows if v is not None}


def trends(engine: Engine, until: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Service figures and score PSI over every as-of date up to ``until`` (for charts)."""
    with engine.connect() as conn:
        service = pd.read_sql_query(select(service_metrics).where(
            service_metrics.c.as_of_date <= until), conn)
        drift = pd.read_sql_query(select(drift_reports).where(
            (drift_reports.c.as_of_date <= until) & (drift_reports.c.feature == "score")),
            conn)
    return service, drift
