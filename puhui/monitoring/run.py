"""One monitoring run as plain functions: gather, judge, and lay out the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from puhui.config import (
    FeaturesConfig,
    ModelsConfig,
    MonitoringConfig,
    RiskModelSpec,
    SegmentsConfig,
    load_config,
)
from puhui.monitoring import html as report_html
from puhui.monitoring.alerts import alerts_of
from puhui.monitoring.bins import NoFrozenBins, load_frozen_bins
from puhui.monitoring.data import load_monitoring_data, profile_grades, thin_file
from puhui.monitoring.findings import Finding
from puhui.monitoring.model import ModelMonitoring, monitor_model
from puhui.monitoring.service import portfolio, service_metrics
from puhui.monitoring.stats import hhi
from puhui.monitoring.store import previous_service, trends
from puhui.profiles.models import ModelSlot, load_risk_scorer, resolve_champion
from puhui.registry import CHALLENGER, CHAMPION, mlflow_client


@dataclass
class MonitoringResult:
    as_of: date
    findings: list[Finding]
    models: dict[str, ModelSlot]  # "champion" / "challenger" -> slot
    per_model: dict[str, ModelMonitoring]
    service: pd.DataFrame
    portfolio: pd.DataFrame
    migration: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def alerts(self) -> list[Finding]:
        return alerts_of(self.findings)

    def long_table(self) -> pd.DataFrame:
        return pd.DataFrame([f.as_dict() for f in self.findings])


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _migration(engine: Engine, as_of: date, name: str, version: str,
               grades: list[str]) -> tuple[list[Finding], pd.DataFrame, list[str]]:
    frame, previous = profile_grades(engine, as_of)
    now = frame[frame["as_of_date"] == as_of]
    findings, notes = [], []
    if now.empty:
        return [], pd.DataFrame(), [f"no profiles as of {as_of}: run `puhui run profiles`"]
    counts = now["risk_grade"].value_counts().reindex(grades, fill_value=0)
    findings.append(Finding(as_of, name, version, "grade_hhi", "all", hhi(counts.to_numpy()),
                            note=f"even spread over {len(grades)} grades: {1 / len(grades):.2f}"))
    for grade, n in counts.items():
        findings.append(Finding(as_of, name, version, "grade_share", f"grade={grade}",
                                float(n / max(counts.sum(), 1))))
    if previous is None:
        notes.append("no earlier profile date: grade migration starts with the next refresh")
        return findings, pd.DataFrame(), notes
    before = frame[frame["as_of_date"] == previous][["person_key", "risk_grade"]]
    pair = before.merge(now[["person_key", "risk_grade"]], on="person_key",
                        suffixes=("_from", "_to")).dropna()
    matrix = pd.crosstab(pair["risk_grade_from"], pair["risk_grade_to"], normalize="index")
    matrix = matrix.reindex(index=grades, columns=grades, fill_value=0.0)
    for g_from in grades:
        for g_to in grades:
            findings.append(Finding(as_of, name, version, "grade_migration",
                                    f"{g_from}>{g_to}", float(matrix.loc[g_from, g_to])))
    matrix.index.name = f"from {previous} \\ to {as_of}"
    return findings, matrix.reset_index(), notes


@dataclass(frozen=True)
class MonitoringConfigs:
    """What a monitoring run reads from configs/: read once, by the report flow."""

    features: FeaturesConfig
    risk: RiskModelSpec
    monitoring: MonitoringConfig
    segments: SegmentsConfig

    @classmethod
    def read(cls, config_dir: Path) -> MonitoringConfigs:
        return cls(load_config(config_dir, FeaturesConfig),
                   load_config(config_dir, ModelsConfig).credit_risk,
                   load_config(config_dir, MonitoringConfig),
                   load_config(config_dir, SegmentsConfig))


def monitor(engine: Engine, tracking_uri: str, configs: MonitoringConfigs,
            as_of: date) -> MonitoringResult:
    spec, risk, mon = configs.features, configs.risk, configs.monitoring
    name = configs.segments.profile.models.get("risk", risk.registered_name)
    client = mlflow_client(tracking_uri)
    # Each alias held to the trail's last move, as scoring holds the champion: one moved by
    # hand in MLflow would have the report describe a model no promotion vouched for.
    slots = {alias: resolve_champion(client, "risk", name, alias, engine)
             for alias in (CHAMPION, CHALLENGER)}
    data = load_monitoring_data(engine, spec, risk, mon, as_of)
    findings: list[Finding] = []
    per_model: dict[str, ModelMonitoring] = {}
    notes: list[str] = []
    champion_pd: tuple[np.ndarray, np.ndarray] | None = None
    seen: set[str] = set()
    for alias, slot in slots.items():
        if not slot.available:
            notes.append(slot.reason or f"no {alias}")
            continue
        if slot.version in seen:  # champion and challenger the same version: once
            continue
        seen.add(slot.version)
        scorer = load_risk_scorer(engine, tracking_uri, slot)
        try:
            bins = load_frozen_bins(tracking_uri, slot.run_id, slot.name, slot.version)
        except NoFrozenBins as exc:  # a registry error fails the run: PSI/CSI never go missing
            bins = None
            notes.append(str(exc))
        registered = client.get_run(slot.run_id).data.metrics if slot.run_id else {}
        result = monitor_model(as_of=as_of, name=slot.name, version=slot.version, role=alias,
                               scorer=scorer, bins=bins, registered=registered,
                               window=data.window, matured=data.matured, risk=risk, mon=mon)
        per_model[alias] = result
        findings += result.findings
        notes += result.notes
        if alias == CHAMPION:
            champion_pd = (scorer.predict_pd(data.window) if len(data.window) else np.zeros(0),
                           scorer.predict_pd(data.matured) if len(data.matured)
                           else np.zeros(0))
    champion = slots[CHAMPION]
    migration = pd.DataFrame()
    if champion.available:
        found, migration, more = _migration(engine, as_of, champion.name, champion.version,
                                            [g.grade for g in risk.grades])
        findings += found
        notes += more
    frame, _ = profile_grades(engine, as_of)
    profiles = frame[frame["as_of_date"] == as_of].copy()
    profiles["decision"] = [(_json(r) or {}).get("decision") for r in
                            _profile_reasons(engine, as_of, profiles)]
    # The top offer ("" when none is eligible; None when no recommender champion filled it).
    profiles["top_offer"] = [_top_offer(_json(r)) for r in profiles["recommended_products"]]
    customers = data.customers.copy()
    tags = profiles.set_index("person_key")["segment_tags"].map(_json)
    customers["thin_file"] = customers["person_key"].map(
        tags.map(lambda t: "yes" if t and "thin_file" in t else "no"))
    window, matured = data.window.copy(), data.matured.copy()
    if champion_pd is not None:
        window["pd"], matured["pd"] = champion_pd
    for part in (window, matured):
        part["thin_file"] = thin_file(part) if len(part) else []
    s_findings, service = service_metrics(
        as_of=as_of, profiles=profiles[["person_key", "decision", "top_offer"]], window=window,
        matured=matured, events=data.events, customers=customers, risk=risk, mon=mon,
        previous=previous_service(engine, as_of))
    p_findings, vintages = portfolio(data.outcomes, as_of, risk.outcome_window_days)
    findings += s_findings + p_findings
    return MonitoringResult(as_of, findings, slots, per_model, service, vintages, migration,
                            notes)


def _top_offer(offers: Any) -> str | None:
    if not offers or not offers.get("version"):
        return None
    products = offers.get("products") or []
    return products[0]["product"] if products else ""


def _profile_reasons(engine: Engine, as_of: date, profiles: pd.DataFrame) -> list[Any]:
    from sqlalchemy import select

    from puhui.warehouse.schema import user_profile_history as h

    with engine.connect() as conn:
        rows = dict(conn.execute(select(h.c.person_key, h.c.reasons)
                                 .where(h.c.as_of_date == as_of)).all())
    return [rows.get(k) for k in profiles["person_key"]]


def render_report(engine: Engine, result: MonitoringResult, mon: MonitoringConfig,
                  facts: dict[str, Any]) -> tuple[str, dict[str, bytes]]:
    """The HTML report and its plots."""
    as_of = result.as_of
    champion = result.per_model.get(CHAMPION)
    f = {(x.model, x.metric, x.segment): x for x in result.findings}
    svc = result.service

    def service_value(metric: str, segment: str = "all") -> float | None:
        rows = svc[(svc["metric"] == metric) & (svc["segment"] == segment)] if len(svc) else svc
        return float(rows["value"].iloc[0]) if len(rows) else None

    def pct(value: float | None) -> str:
        return "n/a" if value is None or value != value else f"{value:.1%}"

    slot = result.models[CHAMPION]
    psi = f.get((slot.name, "score_psi", "score")) if slot.available else None
    auc = f.get((slot.name, "auc", "all")) if slot.available else None
    default = service_value("default_rate")
    headline = [
        (f"{len(result.alerts)}", "red alerts", "act" if result.alerts else "ok"),
        (pct(service_value("coverage")), "customers eligible for an offer", "ok"),
        (f"{pct(service_value('coverage', 'region_type=rural'))} / "
         f"{pct(service_value('coverage', 'region_type=urban'))}", "coverage rural / urban",
         "ok"),
        (pct(service_value("approval_rate")), "applications approved (last "
         f"{mon.population.window_days} days)", "ok"),
        (pct(default), f"default rate of matured loans (benchmark "
         f"{mon.service.npl_benchmark:.1%})",
         "watch" if default is not None and default > mon.service.npl_benchmark else "ok"),
        ("n/a" if psi is None else f"{psi.value:.3f}", "score PSI vs training",
         psi.status if psi else "ok"),
        ("n/a" if auc is None else f"{auc.value:.3f}", "AUC on newly matured loans"
         + (f" ({auc.note.split(',')[0]})" if auc else ""), "ok"),
    ]
    watch = [x for x in result.findings if x.status == "watch"]
    trend_service, trend_drift = trends(engine, as_of)
    images = report_html.plots(
        svc, trend_service, trend_drift,
        champion.fairness if champion else pd.DataFrame(),
        champion.calibration if champion else pd.DataFrame(),
        champion.drift if champion else pd.DataFrame(),
        {"watch": mon.thresholds["score_psi"].watch, "act": mon.thresholds["score_psi"].act})
    sections = []
    if champion is not None:
        sections += [
            ("Population shift against the training window", "PSI of the score and CSI of "
             "each input, on bins frozen when the model was registered. Below 0.10 stable, "
             "0.10-0.25 watch, 0.25 and above act.", report_html._table(champion.drift)),
            ("Fairness of approvals", "Approval rate of each group at the policy cut-off and "
             "its ratio to the reference group (four-fifths rule: below 0.80 is a red light; "
             "small groups are judged by their interval).",
             report_html._table(champion.fairness, status=None)),
            ("Calibration by risk grade", "Predicted against observed default rates of newly "
             "matured loans, with the Jeffreys test.",
             report_html._table(champion.calibration, status=None)),
        ]
    if len(result.migration):
        sections.append(("Grade migration", "Share of customers of each grade on the "
                         "previous profile date who are in each grade now.",
                         report_html._table(result.migration, status=None)))
    if len(result.portfolio):
        sections.append(("Portfolio by disbursement month", "Share of each month's loans "
                         "in default (90+ days past due) by months on book, and PAR30/PAR90: "
                         "the share of the outstanding balance more than 30/90 days past due "
                         "when the outcome was observed.",
                         report_html._table(result.portfolio, status=None)))
    if len(svc):
        overview = svc[svc["segment"].str.startswith(("all", "region_type=", "age_band=",
                                                      "gender=", "thin_file="))]
        sections.append(("Service by segment", "Coverage, approval, default and uptake per "
                         "segment.", report_html._table(overview.pivot_table(
                             index="segment", columns="metric", values="value")
                             .reset_index(), status=None)))
    table = result.long_table()
    if len(table):
        model_rows = table[(table["status"] != "ok")]
        sections.append(("Every amber and red figure", "Long format as stored.",
                         report_html._table(model_rows[["model", "version", "metric", "segment",
                                                        "value", "threshold", "status",
                                                        "note"]])))
    page = report_html.render(as_of=as_of, headline=headline, alerts=result.alerts,
                              watch=watch, sections=sections, images=images,
                              notes=result.notes, facts=facts)
    return page, images
