"""One lifecycle, two models (issue 12): the same code registers, gates, aliases, finds an
unchanged version and lists both the credit-risk model and the recommender; then the
recommender's whole flow on ingested data."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import mlflow
import pytest
from sqlalchemy import select

from puhui.cli import main
from puhui.config import ModelsConfig, load_config
from puhui.lifecycle.gates import GateResult
from puhui.lifecycle.publish import (
    FINGERPRINT_TAG,
    apply_verdict,
    find_version_by_fingerprint,
    training_fingerprint,
    write_evaluations,
)
from puhui.registry import (
    CHALLENGER,
    current_aliases,
    mlflow_client,
    register_version,
    use_experiment,
)
from puhui.runtime import open_runtime
from puhui.settings import load_settings
from puhui.warehouse.schema import model_evaluations
from tests.conftest import RISK_AS_OF, RiskTemplates, risk_env

AS_OF = date.fromisoformat(RISK_AS_OF)


@pytest.fixture
def warehouse(risk_templates: RiskTemplates, puhui_env: Path,
              monkeypatch: pytest.MonkeyPatch) -> str:
    return risk_env(risk_templates, "clean", "sqlite", puhui_env, monkeypatch)


@pytest.fixture
def any_warehouse(risk_templates: RiskTemplates, dialect: str, puhui_env: Path,
                  monkeypatch: pytest.MonkeyPatch) -> str:
    return risk_env(risk_templates, "clean", dialect, puhui_env, monkeypatch)


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, model_input: list[float], params: dict | None = None) -> list[float]:
        return [0.1] * len(model_input)


def _register(name: str, fingerprint: str, headline: float = 0.5,
              gates: GateResult | None = None,
              artifacts: dict[str, str] | None = None) -> str:
    """A version of ``name`` with a constant model: ``headline`` as its headline metric,
    ``gates`` as the run's gates.json, ``artifacts`` (path -> text) in the run."""
    runtime = open_runtime()
    uri = runtime.settings.mlflow_tracking_uri
    use_experiment(name, uri, runtime.settings.home / "mlartifacts")
    with mlflow.start_run() as run:
        mlflow.log_metric("ndcg_at_3_oot" if "recommender" in name else "auc_oot", headline)
        if gates is not None:
            mlflow.log_dict(gates.as_dict(), "gates.json")
        for path, text in (artifacts or {}).items():
            mlflow.log_text(text, path)
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(),
                                       pip_requirements=["mlflow"])
    return register_version(runtime.engine, runtime.audit, name=name,
                            model_uri=info.model_uri, run_id=run.info.run_id,
                            tags={FINGERPRINT_TAG: fingerprint,
                                  "training.as_of": RISK_AS_OF},
                            details={"as_of": RISK_AS_OF})


def _json(capsys: pytest.CaptureFixture, *argv: str) -> list[dict]:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("model", ["credit_risk", "product_recommender"])
def test_one_lifecycle_for_both_models(model: str, any_warehouse: str,
                                       capsys: pytest.CaptureFixture) -> None:
    models = load_config(load_settings().config_dir, ModelsConfig)
    spec = getattr(models, model)
    name = spec.registered_name
    runtime = open_runtime()
    client = mlflow_client(runtime.settings.mlflow_tracking_uri)
    fingerprint = training_fingerprint(AS_OF, {"b2", "b1"}, "cfg", "code", spec.seed)
    assert fingerprint == training_fingerprint(AS_OF, ["b1", "b2"], "cfg", "code", spec.seed)

    v1 = _register(name, fingerprint)
    # ungated: an unchanged run must not be skipped in favour of it
    assert find_version_by_fingerprint(runtime.settings.mlflow_tracking_uri, name,
                                       fingerprint) is None
    line = apply_verdict(client, runtime.engine, runtime.audit, name, v1,
                         GateResult(passed=True), spec.auto_promote)
    assert line.startswith(f"gate: v{v1} passed every gate -> {CHALLENGER}")
    assert find_version_by_fingerprint(runtime.settings.mlflow_tracking_uri, name,
                                       fingerprint) == v1
    v2 = _register(name, "other")
    line = apply_verdict(client, runtime.engine, runtime.audit, name, v2,
                         GateResult(passed=False, failed=["x all 0.1 < 0.2"]),
                         spec.auto_promote)
    assert "FAILED" in line and "no alias" in line
    assert current_aliases(client, name) == {CHALLENGER: v1}

    listed = _json(capsys, "models", "list", name, "--json")
    assert [(r["version"], r["aliases"], r["gates"]["passed"]) for r in listed] == [
        (v2, [], False), (v1, [CHALLENGER], True)]
    capsys.readouterr()
    assert main(["models", "promote", name, "--version", v1, "--reason", "test"]) == 0
    assert main(["models", "promote", name, "--version", v2, "--reason", "test"]) == 1
    listed = _json(capsys, "models", "list", name, "--json")
    assert listed[1]["aliases"] == ["champion"]  # promotion took the challenger alias off
    rows = [{"metric": "m", "segment": "all", "value": 0.5},
            {"metric": "m", "segment": "region_type=rural", "value": 0.4}]
    assert write_evaluations(runtime.engine, name, v1, AS_OF, rows, "run") == 2
    # Monitoring's row of the version (its own writer records it): never the training's.
    with runtime.engine.begin() as conn:
        conn.execute(model_evaluations.insert(), {
            "model_name": name, "model_version": v1, "as_of_date": AS_OF,
            "metric": "monitor.auc", "segment": "all", "value": 0.7, "mlflow_run_id": "m",
            "evaluated_at": datetime.now(UTC)})
    assert write_evaluations(runtime.engine, name, v1, AS_OF, rows[:1], "run") == 1
    with runtime.engine.connect() as conn:
        stored = conn.execute(select(model_evaluations.c.metric, model_evaluations.c.segment)
                              .where(model_evaluations.c.model_name == name)
                              .order_by(model_evaluations.c.metric)).all()
    # A version's rows are replaced, not added to; monitoring's stay.
    assert [tuple(r) for r in stored] == [("m", "all"), ("monitor.auc", "all")]


@pytest.mark.slow
def test_train_recommender_flow_end_to_end(warehouse: str, prefect_harness: None,
                                           capsys: pytest.CaptureFixture) -> None:
    from flows.recommender import train_recommender_flow

    first = train_recommender_flow(as_of=AS_OF, allow_gate_failure=True)
    assert first["version"] == "1" and not first["skipped"]
    assert len(first["steps"]) == 4, "one line per step"
    assert "eligibility violations in the final ranking: 0" in first["steps"][1]
    m = first["metrics"]
    assert m["ndcg_at_3_oot"] > m["ndcg_at_3_oot_popularity"]
    listed = _json(capsys, "models", "list", "product_recommender", "--json")
    row = listed[0]
    assert {"ndcg_at_3_oot", "ndcg_at_3_oot_popularity",
            "ndcg_at_3_oot_segment_popularity"} <= set(row["metrics"])
    assert "passed" in row["gates"] and "aliases" in row
    again = train_recommender_flow(as_of=AS_OF, allow_gate_failure=True)
    assert again["skipped"] and again["version"] == "1"
    assert "unchanged" in again["line"]


@pytest.mark.parametrize("model", ["credit_risk", "product_recommender"])
def test_promotion_moves_aliases_rollback_and_forced_flag(
        model: str, any_warehouse: str, capsys: pytest.CaptureFixture) -> None:
    """Promotion takes ``challenger`` off the new champion; rollback brings the previous
    champion back; a forced promotion is a structured field of its audit event; MLflow and
    the trail agree throughout (the removal is an audited move too)."""
    from puhui.audit import read_audit_events
    from puhui.registry import ALIAS_REMOVED, CHAMPION, registry_problems

    name = getattr(load_config(load_settings().config_dir, ModelsConfig), model).registered_name
    runtime = open_runtime()
    client = mlflow_client(runtime.settings.mlflow_tracking_uri)
    versions = []
    for i, passed in enumerate((True, True, False)):
        version = _register(name, f"fp{i}")
        verdict = GateResult(passed=passed, failed=[] if passed else ["x all 0.1 < 0.2"])
        apply_verdict(client, runtime.engine, runtime.audit, name, version, verdict, False)
        versions.append(version)
    v1, v2, v3 = versions
    assert current_aliases(client, name) == {CHALLENGER: v2}
    assert main(["models", "promote", name, "--version", v2, "--reason", "better"]) == 0
    assert current_aliases(client, name) == {CHAMPION: v2}, "challenger left on the champion"
    assert client.get_run(client.get_model_version(name, v2).run_id).info.run_name == \
        f"{name} v{v2} as of {RISK_AS_OF}", "runs are named by their version"
    assert main(["models", "promote", name, "--version", v1, "--reason", "older"]) == 0
    assert main(["models", "promote", name, "--version", v3, "--reason", "committee",
                 "--force"]) == 0
    forced = read_audit_events(runtime.engine, action="model.alias")[-1]["details"]
    assert forced["forced"] is True and forced["failed_gates"] == ["x all 0.1 < 0.2"]
    assert forced["reason"] == "committee", "the reason is the owner's own words"
    capsys.readouterr()
    assert main(["models", "rollback", name, "--reason", "v3 misbehaves"]) == 0
    assert f"from v{v3} to v{v1}" in capsys.readouterr().out
    assert current_aliases(client, name) == {CHAMPION: v1}
    removed = read_audit_events(runtime.engine, action=ALIAS_REMOVED)
    assert [(e["details"]["alias"], e["details"]["previous"]) for e in removed] == [
        (CHALLENGER, v2)]
    assert registry_problems(client, runtime.engine)[0] == []
