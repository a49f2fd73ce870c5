"""A step that writes, retried after a transient error, resumes instead of writing again.

MLflow's transient errors (and a lost database connection) are retried by the steps' retry
condition. Before, the retry of ``risk-register`` after the registration started a second
MLflow run and registered a second version of the same model (a second ``model.registered``),
and the retry of ``risk-gate`` after the verdict recorded a second ``model.gates``. The fault
is ``PUHUI_FAIL_ONCE_AT``: a ``ConnectionError`` raised once at a crash point, in a real
Prefect task run with the steps' retry options, against a real MLflow store and warehouse.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prefect import task

from puhui.audit import events_of
from puhui.crashpoints import FAIL_ONCE_ENV
from puhui.lifecycle.gates import GateResult
from puhui.lifecycle.publish import apply_checked_verdict
from puhui.registry import ALIAS_SET, GATES, REGISTERED, mlflow_client
from puhui.risk.publish import publish_risk_model
from puhui.runtime import open_runtime
from puhui.settings import load_settings
from puhui.warehouse.engine import get_engine
from tasks.retries import step_options
from tests.conftest import RiskTemplates, SmallRiskModel, risk_env
from tests.test_risk_model import NAME


def test_retried_register_and_gate_steps_write_one_version_and_one_verdict(
    risk_templates: RiskTemplates, small_risk_model: SmallRiskModel, puhui_env: Path,
    monkeypatch: pytest.MonkeyPatch, prefect_harness: None,
) -> None:
    url = risk_env(risk_templates, "clean", "sqlite", puhui_env, monkeypatch)
    engine = get_engine(url)
    settings = load_settings()
    training, trained = small_risk_model.training, small_risk_model.trained
    evaluation, gates = small_risk_model.evaluation, small_risk_model.gates
    uri = settings.mlflow_tracking_uri
    audit = open_runtime(settings).audit

    @task(**step_options(0))
    def register() -> str:
        return publish_risk_model(
            engine=engine, tracking_uri=uri, name=NAME, training=training, trained=trained,
            evaluation=evaluation, gates=gates, tags={}, fingerprint="retried",
            report_dir=settings.home / "reports", artifact_root=settings.home / "mlartifacts",
            audit=audit, profile=settings.profile, config_dir=settings.config_dir,
            expectations_dir=settings.expectations_dir).version

    monkeypatch.setenv(FAIL_ONCE_ENV, "register.after_mlflow")
    version = register()
    assert FAIL_ONCE_ENV not in os.environ  # the first attempt did fail there
    client = mlflow_client(uri)
    assert [str(v.version) for v in client.search_model_versions(f"name='{NAME}'")] == [version]
    experiment = client.get_experiment_by_name(NAME).experiment_id
    assert len(client.search_runs([experiment])) == 1
    registered = events_of(engine, [REGISTERED])
    assert [e["details"]["version"] for e in registered] == [version]

    @task(**step_options(0))
    def gate() -> bool:
        return apply_checked_verdict(client, engine, audit, NAME, version, gates,
                                     auto_promote=False)[0].passed

    monkeypatch.setenv(FAIL_ONCE_ENV, "gate.after_tag")
    passed = gate()
    assert FAIL_ONCE_ENV not in os.environ
    assert [e["details"]["version"] for e in events_of(engine, [GATES])] == [version]
    assert len(events_of(engine, [ALIAS_SET])) == (1 if passed else 0)
    tags = client.get_model_version(NAME, version).tags
    assert tags["gates.passed"] == str(passed).lower()
    # A retry's step returns the verdict recorded, not the one it was handed (the first
    # attempt's may have been against a champion that moved).
    other = GateResult(not passed, [] if passed else ["auc_oot made up"])
    again = apply_checked_verdict(client, engine, audit, NAME, version, other,
                                  auto_promote=False)[0]
    assert again.passed == passed and len(events_of(engine, [GATES])) == 1


def test_a_retried_step_reopens_its_mlflow_run(puhui_env: Path, prefect_harness: None) -> None:
    """``report-publish``'s case (``step_run``): a transient error after the run started;
    the retry logs into the same run, which ends finished, and a new step gets a new run."""
    import mlflow

    from puhui.registry import step_run, use_experiment

    settings = load_settings()
    experiment = use_experiment("monitoring", settings.mlflow_tracking_uri,
                                settings.home / "mlartifacts")
    attempts: list[str] = []

    @task(**step_options(0))
    def publish() -> str:
        with step_run("report as of 2026-09-30", {"puhui.as_of": "2026-09-30"}) as run:
            mlflow.log_metric("alerts", 1.0)
            attempts.append(run.info.run_id)
            if len(attempts) == 1:
                raise ConnectionError("the tracking server went away")
        return run.info.run_id

    first = publish()
    assert attempts == [first, first]
    assert publish() != first
    runs = mlflow_client(settings.mlflow_tracking_uri).search_runs([experiment])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
