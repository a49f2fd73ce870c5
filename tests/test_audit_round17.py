"""Round 17: the MLflow side of `audit verify` and the model lifecycle, on a real MLflow
registry (SQLite store, models registered through the audited path) and both warehouse
dialects: a version's source run deleted by hand (`MlflowClient.delete_run`, as `mlflow runs
delete` does; then `mlflow gc`), and the monitoring report's champion and challenger held to
the trail (a real Prefect flow run of the report)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import mlflow
import pytest

from puhui.errors import PuhuiError
from puhui.lifecycle.publish import write_evaluations
from puhui.registry import (
    ALIAS_SET,
    CHALLENGER,
    CHAMPION,
    LOST_RUN_ADVICE,
    MODEL_LOCK,
    _record_gate_verdict,
    current_aliases,
    load_registered_pyfunc,
    mlflow_client,
    register_version,
    use_experiment,
)
from puhui.runtime import open_runtime
from puhui.settings import load_settings
from puhui.warehouse.engine import dispose_engines, held_lock
from tests import test_crash_model_changes as crash_tests
from tests.conftest import RISK_AS_OF, RiskTemplates
from tests.test_crash_model_changes import Ran

empty_mlflow_store = crash_tests.empty_mlflow_store
registry_env = crash_tests.registry_env
puhui = crash_tests.puhui
AS_OF = date.fromisoformat(RISK_AS_OF)
MODELS = ["credit_risk", "product_recommender"]


class _Constant(mlflow.pyfunc.PythonModel):
    features: list[str] = []  # what the risk scorer's load reads
    ranker = None  # what the recommender's load returns

    def predict(self, model_input: list[float], params: dict | None = None) -> list[float]:
        return [0.1] * len(model_input)


def _register(name: str) -> str:
    """A real version of ``name`` (a trivial model) through the audited path, with a headline
    metric on its run and in its registration event, and a passing gate verdict."""
    runtime = open_runtime()
    uri = runtime.settings.mlflow_tracking_uri
    use_experiment(name, uri, runtime.settings.home / "mlartifacts")
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(
            name="model", python_model=_Constant(), pip_requirements=["mlflow"]
        )
        mlflow.log_metric("auc_oot", 0.7)
    version = register_version(
        runtime.engine,
        runtime.audit,
        name=name,
        model_uri=info.model_uri,
        run_id=run.info.run_id,
        tags={},
        details={"as_of": RISK_AS_OF, "metrics": {"auc_oot": 0.7}},
    )
    write_evaluations(
        runtime.engine,
        name,
        version,
        date.fromisoformat(RISK_AS_OF),
        [{"metric": "auc_oot", "segment": "all", "value": 0.7}],
        run.info.run_id,
    )
    with held_lock(runtime.engine, MODEL_LOCK):
        _record_gate_verdict(
            mlflow_client(uri), runtime.engine, runtime.audit, name, version, True, []
        )
    return version


@pytest.fixture
def three_versions(
    model: str,
    warehouse_url: str,
    puhui_env: Path,
    empty_mlflow_store: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[list[str]]:
    """Three passing versions of ``model`` in a fresh MLflow store and warehouse."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    puhui_env.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_mlflow_store, puhui_env / "mlflow.db")
    yield [_register(model) for _ in range(3)]
    dispose_engines()


def _load(model: str, version: str) -> None:
    """Load ``model``'s champion ``version`` as its scoring does: the risk scorer (profile
    refresh, monitoring, the recommender's risk grades) or the recommender's ranker."""
    from puhui.profiles.models import load_risk_scorer, resolve_models
    from puhui.recommender.scoring import load_recommender

    engine, uri = open_runtime().engine, load_settings().mlflow_tracking_uri
    slot = resolve_models(uri, {"m": model}, engine=engine)["m"]
    assert slot.version == version
    if model == "credit_risk":
        load_risk_scorer(engine, uri, slot)
    else:
        load_recommender(engine, uri, model, version)


def _refused(model: str, version: str, said: str) -> None:
    """Each way to score ``version`` refuses it in one line starting ``said``: the profile
    refresh's model step (before its run logger), any resolution of the champion, and the
    loader every scoring path goes through."""
    from tasks.profiles import resolve_profile_models

    engine, uri = open_runtime().engine, load_settings().mlflow_tracking_uri
    for step, outcome in (
        (lambda: resolve_profile_models.fn(load_settings(), {"m": model}), "not scored"),
        (lambda: _load(model, version), "not scored"),
        (lambda: load_registered_pyfunc(engine, uri, model, version), "not loaded"),
    ):
        with pytest.raises(
            PuhuiError, match=f"^{re.escape(said)}.*: {outcome}; restore the run"
        ) as e:
            step()
        assert "\n" not in str(e.value)


def _problems(out: str, model: str, version: str) -> list[str]:
    return [line for line in out.splitlines() if f"{model} v{version}" in line]


@pytest.mark.parametrize("model", MODELS)
def test_a_source_run_deleted_by_hand_is_reported_and_refused_until_restored(
    model: str, three_versions: list[str], puhui: Callable[..., Ran]
) -> None:
    """Before: a registered version's source run deleted in MLflow (`mlflow runs delete`,
    then `mlflow gc`) passed `audit verify` (its metrics still read: deleted runs are
    searched too), the champion loaded and scored, and promote and rollback moved to it: a
    model no one could trace to its data any more. Then (round 17's review) promote refused
    to move the champion away from it, locking the model until a backup was restored."""
    v1, v2, v3 = three_versions
    for version in (v1, v2):
        assert (
            puhui("models", "promote", model, "--version", version, "--reason", "r").returncode == 0
        )
    assert puhui("audit", "verify").returncode == 0
    client = mlflow_client(load_settings().mlflow_tracking_uri)
    run_id = client.get_model_version(model, v2).run_id
    client.delete_run(run_id)  # by hand, as `mlflow runs delete --run-id` does

    deleted = f"{model} v{v2}: its source run is deleted in MLflow"
    verified = puhui("audit", "verify")
    assert verified.returncode == 1
    assert _problems(verified.stdout + verified.stderr, model, v2) == [f"  {deleted}{_RESTORABLE}"]
    _refused(model, v2, deleted)
    # Moving the champion away from it is the remedy (before: refused, which locked the
    # model's promotion, rollback and training for good); the move says what it replaced.
    assert puhui("models", "promote", model, "--version", v3, "--reason", "r").returncode == 0
    assert _last_move()["replaced_lost_version"] == deleted + _RESTORABLE
    _load(model, v3)
    refused = puhui("models", "rollback", model, "--reason", "r")  # to v2: refused
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr.count("\n") == 1 and deleted in refused.stderr, refused.stderr
    assert "nothing moved" in refused.stderr
    assert current_aliases(client, model)[CHAMPION] == v3

    client.restore_run(run_id)  # `mlflow runs restore`: everything passes again
    assert puhui("audit", "verify").returncode == 0
    assert puhui("models", "rollback", model, "--reason", "r").returncode == 0  # to v2
    _load(model, v2)
    assert "replaced_lost_version" not in _last_move()
    assert puhui("models", "promote", model, "--version", v1, "--reason", "r").returncode == 0

    # Hard-deleted: `mlflow gc` removes the run (its artifacts with it; the model's files,
    # logged apart, stay and would load). The command itself, in a process of its own (in
    # this one, click's runner left MLflow's tracking URI on the first test's store).
    gone_run = client.get_model_version(model, v1).run_id
    client.delete_run(gone_run)
    uri = load_settings().mlflow_tracking_uri
    collected = subprocess.run(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "gc",
            "--backend-store-uri",
            uri,
            "--run-ids",
            gone_run,
        ],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert collected.returncode == 0, collected.stderr
    gone = f"{model} v{v1}: its source run is gone from MLflow (hard-deleted"
    verified = puhui("audit", "verify")
    assert verified.returncode == 1
    # One line: not one more per metric the run took with it.
    found = _problems(verified.stdout + verified.stderr, model, v1)
    assert len(found) == 1 and found[0].startswith(f"  {gone}"), found
    _refused(model, v1, gone)
    # No backup needed to leave it: promote a good version, and scoring works again.
    assert puhui("models", "promote", model, "--version", v3, "--reason", "r").returncode == 0
    assert _last_move()["replaced_lost_version"].startswith(gone)
    _load(model, v3)
    refused = puhui("models", "rollback", model, "--reason", "r")  # to v1: refused
    assert refused.returncode == 1 and gone in refused.stderr, refused.stderr
    assert current_aliases(client, model)[CHAMPION] == v3


_RESTORABLE = " (its lineage: restorable with 'mlflow runs restore' until 'mlflow gc')"


def _last_move() -> dict:
    """The details of the trail's last completed alias move."""
    return crash_tests._model_events(ALIAS_SET)[-1]["details"]


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)  # no dialect code here
def test_a_registry_error_reading_a_run_is_no_deleted_run(
    registry_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source-run check reads "no such run" as gone, and any other registry error (a
    tracking server down) as the error it is: never as a run deleted, nor as one there."""
    from mlflow.exceptions import MlflowException

    from puhui.registry_read import version_source_run_problem

    client = mlflow_client(load_settings().mlflow_tracking_uri)

    def down(run_id: str) -> None:
        raise MlflowException("connection refused", error_code="TEMPORARILY_UNAVAILABLE")

    monkeypatch.setattr(client, "get_run", down)
    with pytest.raises(MlflowException, match="connection refused"):
        version_source_run_problem(client, "credit_risk", registry_env["passed1"])


def _report(as_of: date) -> object:
    from flows.report import report_flow

    return report_flow(as_of=as_of, return_state=True)


@pytest.mark.slow
def test_the_monitoring_report_refuses_aliases_moved_by_hand_or_a_deleted_source_run(
    registry_env: dict[str, str], puhui: Callable[..., Ran], prefect_harness: None
) -> None:
    """Before: the report flow resolved champion and challenger from MLflow's aliases alone:
    a challenger (or champion) set by hand was monitored and reported as if promoted, and a
    champion whose source run was deleted was scored."""
    v1, v2 = registry_env["passed1"], registry_env["passed2"]
    name = "credit_risk"
    assert puhui("models", "promote", name, "--version", v1, "--reason", "r").returncode == 0
    client = mlflow_client(load_settings().mlflow_tracking_uri)
    client.set_registered_model_alias(name, CHALLENGER, v2)  # by hand
    state = _report(date.fromisoformat(RISK_AS_OF))
    assert state.is_failed()
    said = (
        f"{name}@challenger is v{v2} in MLflow but the trail's last move says unset (no "
        "move): changed outside puhui: not scored;"
    )
    with pytest.raises(PuhuiError, match=f"^{re.escape(said)}"):
        state.result()
    client.delete_registered_model_alias(name, CHALLENGER)

    client.delete_run(client.get_model_version(name, v1).run_id)
    state = _report(date.fromisoformat(RISK_AS_OF))
    assert state.is_failed()
    with pytest.raises(PuhuiError, match=f"^{name} v{v1}: its source run is deleted in MLflow"):
        state.result()


@pytest.mark.slow
def test_a_lost_run_does_not_stop_training_nor_the_champions_report(
    risk_templates: RiskTemplates,
    puhui_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    prefect_harness: None,
    puhui: Callable[..., Ran],
) -> None:
    """Real trainings (the flow) and reports. A challenger set by a training is reported
    beside the champion; once its source run is deleted the champion is still reported and
    the challenger named in one note (before: the whole report failed). A champion whose run
    is deleted is not compared by the next training, which completes with its gate not
    checked (before: every credit_risk training failed loading it, for good), and versions
    whose runs are deleted do not count as "unchanged" (before: the retrain did nothing)."""
    from flows.profiles import profiles_flow
    from flows.train import train_risk_flow
    from tests.test_profiles import champion_env

    champion_env(risk_templates, puhui_env, monkeypatch, tmp_path)  # search off: quick
    profiles_flow(as_of=AS_OF)
    client = mlflow_client(load_settings().mlflow_tracking_uri)
    trained = train_risk_flow(as_of=AS_OF, force=True)
    v1, v2 = "1", trained["version"]
    assert current_aliases(client, "credit_risk") == {CHAMPION: v1, CHALLENGER: v2}

    summary = _report(AS_OF).result()
    assert [n for n in summary["notes"] if "credit_risk" in n] == [], summary["notes"]
    reported = _evaluated_versions()
    assert {v1, v2} <= reported, reported

    client.delete_run(client.get_model_version("credit_risk", v2).run_id)
    summary = _report(AS_OF).result()
    lost = f"credit_risk v{v2}: its source run is deleted in MLflow"
    assert [n for n in summary["notes"] if "credit_risk" in n] == [
        f"{lost}{_RESTORABLE}: challenger not scored; {LOST_RUN_ADVICE}"
    ]

    client.delete_run(client.get_model_version("credit_risk", v1).run_id)
    retrained = train_risk_flow(as_of=AS_OF)  # same data: v1 and v2 have its fingerprint
    assert not retrained.get("skipped"), retrained["line"]
    v3 = retrained["version"]
    assert v3 not in (v1, v2)
    said = f"credit_risk v{v1}: its source run is deleted in MLflow"
    assert any(f"{said}{_RESTORABLE}: champion not compared" in s for s in retrained["steps"])
    assert current_aliases(client, "credit_risk") == {CHAMPION: v1, CHALLENGER: v3}
    promoted = puhui("models", "promote", "credit_risk", "--version", v3, "--reason", "r")
    assert promoted.returncode == 0, promoted.stderr


def _evaluated_versions() -> set[str]:
    """The versions the monitoring report wrote evaluation rows for."""
    import pandas as pd
    from sqlalchemy import select

    from puhui.warehouse.schema import model_evaluations

    with open_runtime().engine.connect() as conn:
        rows = pd.read_sql(select(model_evaluations), conn)
    monitored = rows[rows["metric"].str.startswith("monitor.")]
    return set(monitored["model_version"].astype(str))


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)  # no dialect code here
def test_an_unreadable_runs_table_is_a_registry_error_never_a_lost_run(
    registry_env: dict[str, str], puhui: Callable[..., Ran], puhui_env: Path
) -> None:
    """A real registry failure where the source run is read (the store's ``runs`` table made
    unreadable; versions and aliases still read): verify, promote, champion resolution and
    the loader fail with the registry's error, never read it as a run deleted or gone (a
    broader "not found" would have them report, refuse or replace a version for nothing)."""
    import sqlite3

    from puhui.profiles.models import resolve_models
    from puhui.registry import ALIAS_REFUSED

    v1, v2 = registry_env["passed1"], registry_env["passed2"]
    assert (
        puhui("models", "promote", "credit_risk", "--version", v1, "--reason", "r").returncode == 0
    )
    with sqlite3.connect(puhui_env / "mlflow.db") as conn:
        conn.execute("ALTER TABLE runs RENAME TO runs_unreadable")
    engine, uri = open_runtime().engine, load_settings().mlflow_tracking_uri
    refusals = len(crash_tests._model_events(ALIAS_REFUSED))

    verified = puhui("audit", "verify")
    assert verified.returncode != 0
    assert "source run" not in verified.stdout + verified.stderr
    promoted = puhui("models", "promote", "credit_risk", "--version", v2, "--reason", "r")
    assert promoted.returncode != 0 and "source run" not in promoted.stderr, promoted.stderr
    assert len(crash_tests._model_events(ALIAS_REFUSED)) == refusals
    for step in (
        lambda: resolve_models(uri, {"m": "credit_risk"}, engine=engine),
        lambda: load_registered_pyfunc(engine, uri, "credit_risk", v1),
    ):
        with pytest.raises(Exception) as failed:  # noqa: PT011 (any error but "lost")
            step()
        assert "source run" not in str(failed.value)
        assert "runs" in str(failed.value), failed.value  # the store's own error
    assert current_aliases(mlflow_client(uri), "credit_risk")[CHAMPION] == v1
