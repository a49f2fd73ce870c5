"""Model monitoring and early warning: PSI on frozen bins cross-checked, traffic lights, and
the report flow end to end (real MLflow, Prefect, warehouse) with and without planted drift,
the alert delivered to a local HTTP receiver."""

from __future__ import annotations

import json
import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from puhui.audit import read_audit_events
from puhui.config import MonitoringConfig, Threshold, load_config
from puhui.monitoring.bins import freeze_bins, freeze_variable
from puhui.monitoring.stats import bootstrap_auc, hhi
from puhui.settings import load_settings
from puhui.warehouse.engine import get_engine
from puhui.warehouse.schema import drift_reports, model_evaluations, service_metrics
from tests.conftest import RISK_AS_OF, RiskTemplates, no_search_config, risk_env
from tests.test_profiles import champion_env, train_and_promote

AS_OF = date.fromisoformat(RISK_AS_OF)
# The drifted score PSI's bound, 2x the 0.25 'act' level: measured 1.448 at 4,000 users,
# 1.375 at 2,000.
PSI_BOUND = 0.5


def test_a_registry_error_is_not_read_as_a_version_without_bins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: any MLflow error read as "registered before bins were frozen ... retrain", so
    # a tracking server down sent the model owner to retrain. Only "not found" means none.
    from puhui.errors import PuhuiError
    from puhui.monitoring.bins import load_frozen_bins

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(PuhuiError) as refused:
        load_frozen_bins("http://ops:s3cr3t-pw@127.0.0.1:9", "0" * 32, "credit_risk", "1")
    message = str(refused.value)
    assert message.startswith("model registry error reading the bins of credit_risk v1: ")
    assert "\n" not in message and "s3cr3t-pw" not in message, message


def test_an_artifact_store_outage_is_not_read_as_a_version_without_bins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: MLflow's runs:/ download turned any artifact-store failure into "does not
    # exist", so with the tracking store up and the artifact store down the model owner was
    # told to retrain. Only a listing that succeeds without bins.json means none.
    import mlflow

    from puhui.errors import PuhuiError
    from puhui.monitoring.bins import BINS_ARTIFACT, load_frozen_bins

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    down = mlflow.create_experiment(
        "down", artifact_location="http://ops:s3cr3t-pw@127.0.0.1:9/api/2.0/mlflow-artifacts/"
                                  "artifacts/down")
    local = mlflow.create_experiment("local", artifact_location=(tmp_path / "art").as_uri())
    runs = {}
    for key, experiment in (("down", down), ("none", local), ("bins", local)):
        with mlflow.start_run(experiment_id=experiment) as run:
            if key == "bins":
                mlflow.log_dict(freeze_bins(pd.DataFrame({"x": [1.0, 2.0]}),
                                            np.array([0.1, 0.2]), ["x"], []), BINS_ARTIFACT)
        runs[key] = run.info.run_id
    with pytest.raises(PuhuiError) as refused:
        load_frozen_bins(uri, runs["down"], "credit_risk", "3")
    message = str(refused.value)
    assert message.startswith("model registry error reading the bins of credit_risk v3: ")
    assert "\n" not in message and "s3cr3t-pw" not in message, message
    with pytest.raises(PuhuiError, match="has no monitoring/bins.json") as none:
        load_frozen_bins(uri, runs["none"], "credit_risk", "2")
    assert type(none.value).__name__ == "NoFrozenBins"  # the one failure monitoring notes
    assert load_frozen_bins(uri, runs["bins"], "credit_risk", "1").rows == 2


def test_frozen_bin_psi_matches_a_hand_computation() -> None:
    reference = pd.Series([1.0, 2, 3, 4, 5, 6, 7, 8, np.nan, np.nan])
    frozen = freeze_variable(reference, bins=2, categorical=False)
    assert frozen.edges == [4.5] and frozen.reference == [4, 4, 2]
    current = pd.Series([1.0, 1, 1, 1, 1, 1, 9, 9, np.nan, np.nan])
    e, a = np.array([0.4, 0.4, 0.2]), np.array([0.6, 0.2, 0.2])
    assert frozen.psi(current) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    # Bins stay frozen: a value beyond the training range lands in the last bin, not a new one.
    assert list(frozen.counts(pd.Series([100.0]))) == [0, 1, 0]
    cats = freeze_variable(pd.Series(["a", "a", "b", None]), 10, categorical=True)
    assert cats.categories == ["a", "b"] and cats.reference == [2, 1, 0, 1]
    assert list(cats.counts(pd.Series(["c", "a", None]))) == [1, 0, 1, 1]


def test_frozen_bin_psi_matches_feature_engine_on_the_same_bins() -> None:
    """feature-engine's DropHighPSIFeatures is an independent PSI implementation; fed the
    bin labels of our frozen bins as categories, it must give the same PSI."""
    from feature_engine.selection import DropHighPSIFeatures

    rng = np.random.default_rng(3)
    train = pd.Series(rng.normal(0, 1, 5000))
    frozen = freeze_variable(train, bins=10, categorical=False)
    for shift in (0.0, 0.3, 1.0):
        current = pd.Series(rng.normal(shift, 1, 5000))
        labels = [np.searchsorted(frozen.edges, v, side="right") for v in (train, current)]
        both = pd.DataFrame({"bin": np.concatenate(labels).astype(str),
                             "period": [0] * len(train) + [1] * len(current)})
        check = DropHighPSIFeatures(split_col="period", cut_off=0.5, variables=["bin"],
                                    threshold=10.0, bins=10, strategy="equal_frequency",
                                    switch=False)
        check.fit(both)
        assert frozen.psi(current) == pytest.approx(check.psi_values_["bin"], rel=1e-6,
                                                    abs=1e-9), shift


def test_traffic_lights_and_stats() -> None:
    above = Threshold(watch=0.1, act=0.25, direction="above")
    assert [above.status(v) for v in (0.05, 0.1, 0.3, None)] == ["ok", "watch", "act", "ok"]
    below = Threshold(watch=0.85, act=0.8, direction="below")
    assert [below.status(v) for v in (0.9, 0.82, 0.79)] == ["ok", "watch", "act"]
    capped = Threshold(watch=0.1, act=0.25, direction="above", max_status="watch")
    assert capped.status(0.9) == "watch"
    assert hhi(np.array([1, 1, 1, 1])) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.2).astype(int)
    low, high = bootstrap_auc(y, y + rng.normal(0, 1, 2000), 100)
    assert 0.6 < low < high < 0.85
    mon = load_config(load_settings().config_dir, MonitoringConfig)
    assert mon.thresholds["score_psi"].act == 0.25


class Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PUHUI_ALERT_WEBHOOK", f"http://127.0.0.1:{server.server_port}/alerts")
    yield Receiver.received
    server.shutdown()


def _prepare(templates: RiskTemplates, dataset: str, home: Path,
             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    if dataset == "clean":  # the run's one clean champion, copied
        url = champion_env(templates, home, monkeypatch, tmp_path)
    else:
        url = risk_env(templates, dataset, "sqlite", home, monkeypatch)
        no_search_config(tmp_path, monkeypatch)
        # The drift alert is about the scored population, not the model: a version that
        # failed a gate is promoted all the same (forced), as a model owner may.
        train_and_promote(allow_gate_failure=True)
    from flows.profiles import profiles_flow

    profiles_flow(as_of=AS_OF)
    return url


@pytest.mark.slow
def test_report_without_drift_raises_no_alert(
    risk_templates: RiskTemplates, puhui_env: Path, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, prefect_harness: None, webhook: list,
) -> None:
    from flows.report import report_flow

    url = _prepare(risk_templates, "clean", puhui_env, monkeypatch, tmp_path)
    state = report_flow(as_of=AS_OF, return_state=True)
    summary = state.result()
    assert state.name == "Completed", state.message
    assert summary["alerts"] == [] and webhook == []
    report = Path(summary["report"])
    assert report.parent == puhui_env / "reports" and report.exists()
    from tests.test_report_browser import assert_renders_offline

    assert_renders_offline(report, tmp_path, min_plots=3)
    engine = get_engine(url)
    with engine.connect() as conn:
        drift = pd.read_sql(select(drift_reports), conn)
        evaluations = pd.read_sql(select(model_evaluations), conn)
        service = pd.read_sql(select(service_metrics), conn)
    score = drift[drift["feature"] == "score"]
    assert len(score) == 1 and score["psi"].iloc[0] < 0.25 and score["status"].iloc[0] != "act"
    assert len(drift) > 20  # score + every feature
    assert score["threshold"].iloc[0] == 0.25  # the act level, in its own column (0004)
    monitor = evaluations[evaluations["metric"].str.startswith("monitor.")]
    assert set(monitor["status"]) <= {"ok", "watch", "act"} and monitor["status"].notna().all()
    assert (monitor["as_of_date"].astype(str).str[:10] == AS_OF.isoformat()).all()
    monitored = set(evaluations["metric"])
    assert {"monitor.auc", "monitor.approval_rate", "monitor.adverse_impact_ratio",
            "monitor.calibration_rejected_grades", "monitor.grade_hhi"} <= monitored
    assert {"coverage", "approval_rate", "default_rate", "offer_uptake",
            "thin_file_served", "portfolio.par30"} <= set(service["metric"])
    assert {"region_type=rural", "province=四川", "thin_file=yes"} & set(service["segment"])
    assert "default_rate" in set(service[service["segment"] == "grade=E"]["metric"])
    events = read_audit_events(engine, action="report.published")
    assert events and events[-1]["details"]["report"] == str(report)
    # The figures' writer recorded their count and keyed digest in its transaction.
    from puhui.audit import AuditWriter
    from puhui.table_digests import (
        DRIFT,
        MONITOR_EVALUATIONS,
        SERVICE_METRICS,
        WRITERS,
        table_problems,
        writer_subkey,
    )

    checked = table_problems(engine, (DRIFT, MONITOR_EVALUATIONS, SERVICE_METRICS), WRITERS,
                             writer_subkey(AuditWriter("verify", "")))
    assert (checked.problems, checked.notes) == ([], [])
    assert checked.rows == len(drift) + len(monitor) + len(service)

    # The champion's bins listed but unreadable (a dangling file in its store): a registry
    # error fails the monitoring run; before, it became a note and PSI/CSI went missing.
    from puhui.errors import PuhuiError
    from puhui.monitoring.run import MonitoringConfigs, monitor
    from puhui.registry import mlflow_client
    from puhui.registry_read import local_artifact_path

    settings = load_settings()
    client = mlflow_client(settings.mlflow_tracking_uri)
    champion = client.get_model_version_by_alias("credit_risk", "champion")
    store = local_artifact_path(client.get_run(champion.run_id).info.artifact_uri)
    assert store is not None
    # The copy's own store, never the shared champion's (a missed relocation would break
    # the original's bins for every later copy while this test still passed).
    assert store.resolve().is_relative_to(puhui_env.resolve()), store
    bins = store / "monitoring" / "bins.json"
    bins.unlink()
    bins.symlink_to(tmp_path / "gone.json")
    with pytest.raises(PuhuiError) as failed:
        monitor(engine, settings.mlflow_tracking_uri, MonitoringConfigs.read(settings.config_dir),
                AS_OF)
    message = str(failed.value)
    assert message.startswith(
        f"model registry error reading the bins of credit_risk v{champion.version}: "), message
    assert "\n" not in message


@pytest.mark.slow
def test_drift_raises_the_score_psi_alert_and_the_webhook_receives_it(
    risk_templates: RiskTemplates, puhui_env: Path, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, prefect_harness: None, webhook: list,
) -> None:
    from flows.report import FLAGGED, report_flow

    url = _prepare(risk_templates, "drifted", puhui_env, monkeypatch, tmp_path)
    state = report_flow(as_of=AS_OF, return_state=True)
    assert state.name == FLAGGED and "score_psi" in state.message
    assert len(webhook) == 1
    posted = webhook[0]
    assert any(a["metric"] == "score_psi" and a["status"] == "act" for a in posted["alerts"])
    assert posted["report"].endswith(".html")
    engine = get_engine(url)
    alert = read_audit_events(engine, action="monitoring.alert")[-1]
    assert any(a.startswith("score_psi") for a in alert["details"]["alerts"])
    assert "webhook answered 204" in alert["details"]["webhook"]
    score = select(drift_reports.c.status, drift_reports.c.psi, drift_reports.c.threshold)
    with engine.connect() as conn:
        status, psi, act = conn.execute(score.where(drift_reports.c.feature == "score")).one()
    assert status == "act" and act == 0.25
    assert psi >= PSI_BOUND, psi  # a clear margin over 'act', not noise at the edge


def test_coverage_is_unknown_without_a_risk_decision_not_zero() -> None:
    from puhui.config import ModelsConfig
    from puhui.monitoring.service import service_metrics

    settings = load_settings()
    mon = load_config(settings.config_dir, MonitoringConfig)
    risk = load_config(settings.config_dir, ModelsConfig).credit_risk
    customers = pd.DataFrame({"person_key": ["a", "b", "c", "d"], "customer_id": list("ABCD"),
                              "region_type": ["rural", "rural", "urban", "urban"],
                              "thin_file": ["yes", "no", "no", "yes"]})
    empty = pd.DataFrame(columns=["person_key", "label"])
    args = {"as_of": AS_OF, "window": None, "matured": empty, "events": pd.DataFrame(),
            "customers": customers, "risk": risk, "mon": mon, "previous": {}}
    undecided = pd.DataFrame({"person_key": list("abcd"), "decision": [None] * 4})
    _, table = service_metrics(profiles=undecided, **args)
    assert "coverage" not in set(table["metric"])
    assert table.set_index(["metric", "segment"]).loc[("profiled_share", "all"), "value"] == 1
    decided = undecided.assign(decision=["approve", "decline", "approve", "approve"])
    _, table = service_metrics(profiles=decided, **args)
    values = table.set_index(["metric", "segment"])["value"]
    assert values[("coverage", "all")] == 0.75
    assert values[("coverage", "region_type=rural")] == 0.5
    assert values[("thin_file_served", "all")] == 2


def test_portfolio_vintage_curves_and_par_by_outstanding_balance() -> None:
    """Three loans disbursed in January 2026, observed 180 days later (one row each, as
    loan_outcomes delivers them); a declined application is not lent."""
    from puhui.monitoring.service import portfolio

    observed = date(2026, 1, 10) + pd.Timedelta(days=180)
    outcomes = pd.DataFrame({
        "observation_date": [observed] * 4,
        "legacy_decision": ["approved"] * 3 + ["declined"],
        "label": [1, 0, 0, 0], "max_dpd": [150, 45, 0, 0],
        "amount_requested_yuan": [1200.0, 1200.0, 1200.0, 9999.0],
        "term_months": [12, 12, 6, 12],
    })
    findings, table = portfolio(outcomes, observed, 180)
    row = table.iloc[0]
    assert row["vintage"] == "2026-01" and row["loans"] == 3
    # The default reached 90 DPD 60 days before observation: day 120, month on book 4.
    assert [row[f"default_mob{m}"] for m in range(1, 7)] == pytest.approx(
        [0, 0, 0, 1 / 3, 1 / 3, 1 / 3])
    # Balances: 150 DPD -> 1 instalment paid, 1100 left; 45 DPD -> 4 paid, 800 left; the
    # 6-month loan is repaid (0). PAR30 = (1100 + 800) / 1900, PAR90 = 1100 / 1900.
    got = {f.metric: f.value for f in findings if f.segment == "all"}
    assert got["par30"] == pytest.approx(1.0) and got["par90"] == pytest.approx(1100 / 1900)
    assert got["default_rate"] == pytest.approx(1 / 3)
    curve = {f.metric: f.value for f in findings if f.segment == "vintage=2026-01"}
    assert curve["vintage_default_mob3"] == 0 and curve["vintage_default_mob4"] == 1 / 3


def test_report_automation_is_created_once_on_a_real_prefect_server(
    prefect_harness: None,
) -> None:
    """Against the harness's real Prefect API: created, then updated in place (one only),
    matching the report flow's Flagged/Failed/Crashed runs and calling the webhook block."""
    from prefect.automations import Automation
    from prefect.blocks.webhook import Webhook

    from puhui.monitoring.automation import (
        AUTOMATION_NAME,
        WEBHOOK_BLOCK,
        ensure_report_automation,
    )

    first, created = ensure_report_automation("http://127.0.0.1:9/first")
    second, created_again = ensure_report_automation("http://127.0.0.1:9/alerts")
    assert created and not created_again and first == second
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert len(client.read_automations_by_name(AUTOMATION_NAME)) == 1
    automation = Automation.read(name=AUTOMATION_NAME)
    trigger = automation.trigger
    assert trigger.expect == {"prefect.flow-run.Flagged", "prefect.flow-run.Failed",
                              "prefect.flow-run.Crashed"}
    related = trigger.match_related
    related = related[0] if isinstance(related, list) else related
    assert related.get("prefect.resource.name") in ("report", ["report"])
    action = automation.actions[0]
    assert action.type == "call-webhook" and "flow_run.state.message" in action.payload
    block = Webhook.load(WEBHOOK_BLOCK)
    assert action.block_document_id == block._block_document_id
    assert block.url.get_secret_value() == "http://127.0.0.1:9/alerts"


@pytest.mark.slow
def test_report_automation_fires_on_a_running_prefect_server(
    prefect_harness: None, webhook: list,
) -> None:
    """The automation against the harness's running Prefect server (a real server process
    with its event, trigger and action services): a run of the ``report`` flow that ends
    Flagged, and one that fails before it could post anything, each make the *server* call
    the local HTTP receiver with the run, state and why. The flow here posts nothing itself,
    so every POST received is the server's."""
    import os
    import time

    from prefect import flow
    from prefect.automations import Automation
    from prefect.states import Completed

    from puhui.monitoring.automation import AUTOMATION_NAME, ensure_report_automation

    @flow(name="report")
    def flagged_report() -> object:
        return Completed(name="Flagged", message="score PSI 0.31 >= 0.25 (act)")

    @flow(name="report")
    def failing_report() -> None:
        raise RuntimeError("warehouse unreachable before the alert step")

    @flow(name="not-the-report")
    def other_flow() -> object:
        return Completed(name="Flagged", message="not ours")

    ensure_report_automation(os.environ["PUHUI_ALERT_WEBHOOK"])
    try:
        time.sleep(2)  # the trigger service reloads automations when one changes
        other_flow()
        flagged_report()
        failing_report(return_state=True)
        deadline = time.monotonic() + 45
        while len(webhook) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)  # anything more (e.g. the other flow's run) would arrive by now
    finally:
        Automation.read(name=AUTOMATION_NAME).delete()  # the session's server is shared
    by_state = {p["state"]: p for p in webhook}
    assert sorted(by_state) == ["Failed", "Flagged"], webhook
    assert all(p["source"] == "prefect-automation" and p["flow"] == "report" for p in webhook)
    assert by_state["Flagged"]["why"] == "score PSI 0.31 >= 0.25 (act)"
    assert "warehouse unreachable" in (by_state["Failed"]["why"] or "")
    assert len(webhook) == 2  # not the other flow's Flagged run
