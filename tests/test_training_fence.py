"""Fencing tokens on the training lock: a training whose lock was lost *during* its register
or gate step (after its ``still_held()`` check), while a second training took the lock,
writes nothing more: no registration intent (so no MLflow version), no gate verdict, no
alias move, no ``model_evaluations`` rows. Real PostgreSQL (the lock session ended by
``pg_terminate_backend``) and SQLite (the lock file replaced), real MLflow registry; no
training: a constant pyfunc model is registered (~1 s)."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import date
from pathlib import Path

import mlflow
import pytest
from sqlalchemy import Engine, select, text, update

from flows import recommender as recommender_flows
from flows import train as train_flows
from puhui import registry
from puhui.audit import events_of
from puhui.config import ModelsConfig, load_config
from puhui.crashpoints import CRASH_ENV
from puhui.errors import PuhuiError
from puhui.lifecycle import publish
from puhui.lifecycle.fencing import (
    GATE_STEP,
    REGISTRATION,
    Fence,
    FencedOut,
    fenced,
    take_generation,
)
from puhui.lifecycle.gates import ChampionCheck, GateResult
from puhui.lifecycle.publish import (
    HeldTraining,
    apply_checked_verdict,
    apply_verdict,
    training_lock,
    write_evaluations,
)
from puhui.recommender.publish import PublishedRecommender
from puhui.registry import (
    ALIAS_INTENT,
    GATES,
    REGISTER_INTENT,
    REGISTERED,
    current_aliases,
    mlflow_client,
    model_versions,
    reconcile_model_changes,
    register_version,
    use_experiment,
)
from puhui.registry_read import read_only_registry
from puhui.runtime import open_runtime
from puhui.throwaway_postgres import PostgresServer
from puhui.warehouse.engine import (
    _lock_key,
    create_warehouse_engine,
    dispose_engines,
    upgrade_schema,
)
from puhui.warehouse.schema import model_evaluations, training_generations
from tasks.recommender import gate_recommender, register_recommender
from tasks.train import apply_gates, register_risk_model, restore_lost_challenger
from tests.conftest import RISK_AS_OF, RiskTemplates, risk_env

NAME = "fenced_model"
AS_OF = date(2026, 9, 30)
ROWS = [{"metric": "auc_oot", "segment": "all", "value": 0.7}]


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, model_input: list[float], params: dict | None = None) -> list[float]:
        return [0.1] * len(model_input)


def _lose(engine: Engine) -> None:
    """End the training lock under its holder, as the server or an operator would."""
    if engine.dialect.name == "postgresql":
        key = _lock_key(f"puhui.training.{NAME}") & (2**64 - 1)
        with engine.connect() as other:
            ended = other.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid::bigint = :hi AND objid::bigint = :lo AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ), {"hi": key >> 32, "lo": key & (2**32 - 1)}).scalars().all()
            other.commit()
        assert ended == [True]
    else:
        Path(f"{engine.url.database}.puhui.training.{NAME}.lock").unlink()


def _log_model() -> tuple[str, str]:
    runtime = open_runtime()
    use_experiment(NAME, runtime.settings.mlflow_tracking_uri,
                   runtime.settings.home / "mlartifacts")
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(),
                                       pip_requirements=["mlflow"])
    return info.model_uri, run.info.run_id


def _actions(engine: Engine, *actions: str) -> list[tuple[str, str]]:
    return [(e["action"], e["subject"]) for e in events_of(engine, actions)]


def _mlflow_versions(run_id: str) -> list[str]:
    client = mlflow.MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    return [str(v.version) for v in model_versions(client, f"run_id='{run_id}'")]


def test_a_training_that_lost_its_lock_during_a_step_writes_nothing_after(
        puhui_env: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime = open_runtime()
    engine, client = runtime.engine, mlflow_client(runtime.settings.mlflow_tracking_uri)
    uri, run_id = _log_model()
    later = ExitStack()  # the second training's hold of the lock, taken mid-step
    second: list[HeldTraining] = []

    def lose_at(point: str) -> None:
        def crash_point(name: str) -> None:
            if name == point:
                _lose(engine)
                second.append(later.enter_context(training_lock(engine, NAME, print)))
        monkeypatch.setattr(registry, "crash_point", crash_point)

    with later, training_lock(engine, NAME, print) as first:
        # 1. Lost while the model files are copied, before the registration's intent.
        first()
        lose_at("register.model_copy")
        with pytest.raises(FencedOut, match=(
                f"^the training lock of {NAME} was lost during the registration: another "
                "training started; nothing written$")):
            register_version(engine, fenced(runtime.audit, first.fence, REGISTRATION),
                             name=NAME, model_uri=uri, run_id=run_id, tags={}, details={})
        assert _actions(engine, REGISTER_INTENT, REGISTERED) == []
        assert _mlflow_versions(run_id) == []  # MLflow never asked
        with pytest.raises(PuhuiError, match=f"^lost the lock puhui.training.{NAME} "):
            first()
        assert second[0].fence.generation == first.fence.generation + 1

    # 2. The second training registers; it loses its lock during its gate step.
    monkeypatch.setattr(registry, "crash_point", lambda name: None)
    with ExitStack() as later, training_lock(engine, NAME, print) as held:
        second.clear()
        audit = fenced(runtime.audit, held.fence, REGISTRATION)
        version = register_version(engine, audit, name=NAME, model_uri=uri, run_id=run_id,
                                   tags={}, details={})
        assert write_evaluations(engine, NAME, version, AS_OF, ROWS, run_id, audit) == 1
        lose_at("gate.verdict")
        with pytest.raises(FencedOut, match="was lost during the gate step: another "):
            apply_verdict(client, engine, fenced(runtime.audit, held.fence, GATE_STEP), NAME,
                          version, GateResult(passed=True), auto_promote=True)
        assert _actions(engine, GATES, ALIAS_INTENT) == []
        assert registry.GATES_PASSED_TAG not in client.get_model_version(NAME, version).tags
        assert current_aliases(client, NAME) == {}
        # Its evaluation rows again (a retried step) are refused too.
        with pytest.raises(FencedOut, match="lost during the registration"):
            write_evaluations(engine, NAME, version, AS_OF, [], run_id, audit)
        with engine.connect() as conn:
            assert conn.execute(select(model_evaluations.c.value)).scalars().all() == [0.7]
        # The newest training writes: its generation is the newest.
        monkeypatch.setattr(registry, "crash_point", lambda name: None)
        newest = second[0]
        assert apply_verdict(client, engine, fenced(runtime.audit, newest.fence, GATE_STEP),
                             NAME, version, GateResult(passed=True), auto_promote=False
                             ).startswith(f"gate: v{version} passed every gate")
        assert current_aliases(client, NAME) == {"challenger": version}

    with engine.connect() as conn:
        assert conn.execute(select(training_generations.c.generation)).scalar() == 4


def test_a_version_registered_before_the_loss_stays_ungated_and_is_reported(
        puhui_env: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lost between MLflow's registration and the evaluation rows: MLflow's version cannot
    be taken back in a transaction. Its completion event is written (it happened), then the
    fenced rows are refused: the version stays ungated (nothing promotes it), and the next
    training's reconcile lists it."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime = open_runtime()
    engine, client = runtime.engine, mlflow_client(runtime.settings.mlflow_tracking_uri)
    uri, run_id = _log_model()

    def crash_point(name: str) -> None:
        if name == "register.after_mlflow":
            _lose(engine)
            later.enter_context(training_lock(engine, NAME, print))
    monkeypatch.setattr(registry, "crash_point", crash_point)
    with ExitStack() as later, training_lock(engine, NAME, print) as first:
        audit = fenced(runtime.audit, first.fence, REGISTRATION)
        version = register_version(engine, audit, name=NAME, model_uri=uri, run_id=run_id,
                                   tags={}, details={})
        with pytest.raises(FencedOut, match="lost during the registration"):
            write_evaluations(engine, NAME, version, AS_OF, ROWS, run_id, audit)
        settled = reconcile_model_changes(client, engine, runtime.audit)
    assert settled.ungated == [f"{NAME} v{version}"]
    with engine.connect() as conn:
        assert conn.execute(select(model_evaluations)).all() == []


def test_a_refused_verdict_leaves_no_gates_json_in_the_run(
        puhui_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The champion moved since the evaluation, so the gates are checked again under the
    model lock; a newer training takes the lock's generation there. The verdict is refused,
    and the run keeps no ``gates.json`` of it (it was logged before the refusal: a verdict
    never recorded). The newest training's verdict is recorded with its checks, and the
    run's ``gates.json`` is written from that event."""
    runtime = open_runtime()
    engine, client = runtime.engine, mlflow_client(runtime.settings.mlflow_tracking_uri)
    first_uri, first_run = _log_model()
    with training_lock(engine, NAME, print) as held:
        champion = register_version(engine, fenced(runtime.audit, held.fence, REGISTRATION),
                                    name=NAME, model_uri=first_uri, run_id=first_run,
                                    tags={}, details={})
        apply_verdict(client, engine, fenced(runtime.audit, held.fence, GATE_STEP), NAME,
                      champion, GateResult(passed=True), auto_promote=True)
    uri, run_id = _log_model()
    asked: list[str | None] = []

    def recheck(current: str | None) -> GateResult:
        asked.append(current)
        return GateResult(False, [f"auc_drop_vs_champion 0.05 > 0.02 (v{current})"],
                          [{"gate": "max_auc_drop_vs_champion", "passed": False}])

    check = ChampionCheck(None, recheck)

    def newer_training(point: str) -> None:
        if point == "gate.verdict":
            take_generation(engine, NAME)
    with training_lock(engine, NAME, print) as held:
        version = register_version(engine, fenced(runtime.audit, held.fence, REGISTRATION),
                                   name=NAME, model_uri=uri, run_id=run_id, tags={},
                                   details={})
        monkeypatch.setattr(registry, "crash_point", newer_training)
        with pytest.raises(FencedOut, match="was lost during the gate step: another "):
            apply_checked_verdict(client, engine, fenced(runtime.audit, held.fence, GATE_STEP),
                                  NAME, version, GateResult(passed=True), False, check)
        assert asked == [champion]  # the recheck ran: its result was there to log
        assert _actions(engine, GATES)[-1] == (GATES, f"{NAME}/v{champion}")
        assert "gates.json" not in {a.path for a in client.list_artifacts(run_id)}
        monkeypatch.setattr(registry, "crash_point", lambda name: None)
        newest = Fence(NAME, held.fence.generation + 1)
        gates, _ = apply_checked_verdict(client, engine, fenced(runtime.audit, newest,
                                                                GATE_STEP),
                                         NAME, version, GateResult(passed=True), False, check)
    assert not gates.passed and _actions(engine, GATES)[-1] == (GATES, f"{NAME}/v{version}")
    assert events_of(engine, [GATES])[-1]["details"]["checks"] == gates.checks
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/gates.json") == gates.as_dict()


_VERDICT_THEN_KILLED = """
import sys
from puhui.lifecycle.gates import ChampionCheck, GateResult
from puhui.lifecycle.publish import apply_checked_verdict
from puhui.registry import mlflow_client
from puhui.runtime import open_runtime

runtime = open_runtime()
client = mlflow_client(runtime.settings.mlflow_tracking_uri)
name, version, champion = sys.argv[1:]
failed = [f"auc_drop_vs_champion 0.050 > 0.02 (v{champion})"]
recheck = lambda current: GateResult(False, failed, [{"gate": "max_auc_drop_vs_champion",
                                                      "value": 0.05, "passed": False}])
apply_checked_verdict(client, runtime.engine, runtime.audit, name, version, GateResult(True),
                      False, ChampionCheck(None, recheck))
"""


def test_a_kill_between_the_verdict_and_gates_json_is_repaired_by_the_next_run(
        puhui_env: Path) -> None:
    """The champion moved since the evaluation (none then, v1 now): the gate step re-scores
    and records a FAILED verdict, then is killed (``kill -9`` at the ``gate.after_tag``
    crash point) before the run's ``gates.json`` is written. The run keeps the evaluation's
    (all passed): ``models show`` would list passing checks under a FAILED verdict. The next
    run's ``reconcile-models`` step writes it from the verdict's event (nothing re-scored),
    once; until then ``audit verify``'s read reports it."""
    runtime = open_runtime()
    engine, client = runtime.engine, mlflow_client(runtime.settings.mlflow_tracking_uri)
    first_uri, first_run = _log_model()
    champion = register_version(engine, runtime.audit, name=NAME, model_uri=first_uri,
                                run_id=first_run, tags={}, details={})
    apply_verdict(client, engine, runtime.audit, NAME, champion, GateResult(passed=True),
                  auto_promote=True)
    uri, run_id = _log_model()
    evaluated = GateResult(True, [], [{"gate": "max_auc_drop_vs_champion", "passed": True}])
    client.log_dict(run_id, evaluated.as_dict(), "gates.json")  # the publish step's
    version = register_version(engine, runtime.audit, name=NAME, model_uri=uri,
                               run_id=run_id, tags={}, details={})
    killed = subprocess.run(
        [sys.executable, "-c", _VERDICT_THEN_KILLED, NAME, version, champion],
        env={**os.environ, CRASH_ENV: "gate.after_tag"}, capture_output=True, text=True,
        timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    verdict = events_of(engine, [GATES])[-1]["details"]
    assert (verdict["version"], verdict["passed"]) == (version, False)
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/gates.json") == evaluated.as_dict()

    # audit verify's read (the registry's tables, no MLflow client) reports it, repairs nothing.
    seen = reconcile_model_changes(read_only_registry(runtime.settings.mlflow_tracking_uri),
                                   engine, runtime.audit, repair=False)
    assert seen.open == [f"{NAME} v{version}: its run's gates.json does not match the trail's "
                         "verdict"] and seen.repaired == []
    settled = reconcile_model_changes(client, engine, runtime.audit)
    assert settled.repaired == [f"repaired: {NAME} v{version} gates.json of its run restored "
                                "from the trail's verdict (a crash came between the verdict "
                                "and the file)"]
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/gates.json") == {
        "passed": False, "failed": verdict["failed"], "checks": verdict["checks"]}
    assert verdict["checks"] == [{"gate": "max_auc_drop_vs_champion", "value": 0.05,
                                  "passed": False}]
    assert reconcile_model_changes(client, engine, runtime.audit).repaired == []


def test_a_lock_lost_before_its_generation_is_taken_stops_the_training(
        puhui_env: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lost between the lock and its generation, while a second training takes both: the
    first owns the newer generation without the lock. It must stop there, not write (the
    holder's older generation is fenced out too: both stop; the next training goes through)."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    engine = open_runtime().engine
    take = publish.take_generation
    second: list[HeldTraining] = []

    def racing(engine_: Engine, name: str) -> Fence:
        monkeypatch.setattr(publish, "take_generation", take)
        _lose(engine)
        second.append(later.enter_context(training_lock(engine, NAME, print)))
        return take(engine_, name)
    monkeypatch.setattr(publish, "take_generation", racing)
    with ExitStack() as later:
        with (pytest.raises(PuhuiError, match=f"^lost the lock puhui.training.{NAME} "),
              training_lock(engine, NAME, print)):
            pytest.fail("the training went on without its lock")
        assert second[0].fence.generation == 1


def _waits_for_a_lock(engine: Engine) -> bool:
    """Whether some session of this database is waiting for a lock, within 10 s."""
    deadline = time.monotonic() + 10
    with engine.connect() as watcher:
        while time.monotonic() < deadline:
            if watcher.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()")).scalar():
                return True
            watcher.rollback()
            time.sleep(0.05)
    return False


def test_postgres_orders_a_fence_check_and_a_new_generation(pg_server: PostgresServer) -> None:
    """Two sessions (the sequential tests above pass with a plain SELECT too): a generation
    taken while a write's transaction holds its check waits for that write to commit; a
    check made while a generation is being taken waits for it, then refuses."""
    engine = create_warehouse_engine(pg_server.create_database("fence_for_share"))
    upgrade_schema(engine)
    fence = take_generation(engine, NAME)
    with ThreadPoolExecutor(1) as other:
        with engine.connect() as writer, writer.begin():
            fence.check(writer, REGISTRATION)
            taking = other.submit(take_generation, engine, NAME)
            assert _waits_for_a_lock(engine), "a generation was taken under a write's check"
            assert not taking.done()
        newer = taking.result(timeout=30)
        assert newer.generation == fence.generation + 1

        def write() -> None:
            with engine.begin() as conn:
                newer.check(conn, GATE_STEP)

        with engine.connect() as taker, taker.begin():
            taker.execute(update(training_generations).values(generation=newer.generation + 1))
            checking = other.submit(write)
            assert _waits_for_a_lock(engine), "the check read past a generation being taken"
        with pytest.raises(FencedOut, match="lost during the gate step"):
            checking.result(timeout=30)
    engine.dispose()


def test_the_training_tasks_pass_their_fence_on(
        puhui_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tasks (``.fn``, no flow) given a fence a second training made stale write nothing:
    a task that dropped it (or wrote through the unwrapped writer) would move the aliases.
    The version's verdict is recorded and its run stopped before its alias moves, so the gate
    step's retry and an unchanged re-run's restore both have moves to make."""
    runtime = open_runtime()
    engine, client = runtime.engine, mlflow_client(runtime.settings.mlflow_tracking_uri)
    spec = load_config(runtime.settings.config_dir, ModelsConfig).product_recommender
    assert spec is not None
    spec = spec.model_copy(update={"registered_name": NAME, "auto_promote": True})
    uri, run_id = _log_model()

    def stop(name: str) -> None:
        if name == "gate.after_tag":
            raise RuntimeError("killed after the verdict")
    with ExitStack() as later, training_lock(engine, NAME, print) as first:
        audit = fenced(runtime.audit, first.fence, REGISTRATION)
        version = register_version(engine, audit, name=NAME, model_uri=uri, run_id=run_id,
                                   tags={}, details={})
        monkeypatch.setattr(registry, "crash_point", stop)
        with pytest.raises(RuntimeError, match="killed after the verdict"):
            apply_verdict(client, engine, fenced(runtime.audit, first.fence, GATE_STEP), NAME,
                          version, GateResult(passed=True), auto_promote=True)
        monkeypatch.setattr(registry, "crash_point", lambda name: None)
        _lose(engine)
        later.enter_context(training_lock(engine, NAME, print))
        published = PublishedRecommender(NAME, version, run_id)
        with pytest.raises(FencedOut, match="lost during the gate step"):
            gate_recommender.fn(runtime.settings, published, GateResult(passed=True), spec,
                                first.fence)
        with pytest.raises(FencedOut, match="lost during the gate step"):
            restore_lost_challenger.fn(runtime.settings, version, spec, first.fence)
    assert _actions(engine, ALIAS_INTENT) == []
    assert current_aliases(client, NAME) == {}
    # Required: a flow that dropped ``held.fence`` fails (TypeError) instead of going unfenced.
    for step in (register_risk_model, apply_gates, restore_lost_challenger,
                 register_recommender, gate_recommender):
        assert inspect.signature(step.fn).parameters["fence"].default is inspect.Parameter.empty


@pytest.mark.parametrize(
    "model",
    [
        "credit_risk",
        # 11-29 s under load: the recommender's ranking set of the 4,000-user template.
        pytest.param("product_recommender", marks=pytest.mark.slow),
    ],
)
def test_a_flow_that_lost_its_lock_does_not_restore_the_challenger(
        model: str, risk_templates: RiskTemplates, puhui_env: Path, prefect_harness: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real training flow run (``train_risk_flow``, ``train_recommender_flow``) that finds
    its version unchanged, the version passed with its alias moves left undone (its run
    killed after the verdict), and the training lock lost right before
    ``restore_lost_challenger`` (the SQLite lock file deleted while the flow looked the
    version up; the real lookup then finds it): the flow's ``held()`` stops it there, Failed
    in one line, the aliases untouched. Without that call the fence (still the newest
    generation: nobody took the lock since) lets the restore move ``challenger``. The
    version is a constant model tagged with the fingerprint the flow computed: no
    training."""
    url = risk_env(risk_templates, "clean", "sqlite", puhui_env, monkeypatch)
    runtime = open_runtime()
    engine, client = runtime.engine, mlflow_client(runtime.settings.mlflow_tracking_uri)
    spec = getattr(load_config(runtime.settings.config_dir, ModelsConfig), model)
    assert spec is not None
    name = spec.registered_name
    found: list[str] = []

    def unchanged_then_lost(settings: object, config: object, fingerprint: str) -> str:
        use_experiment(name, runtime.settings.mlflow_tracking_uri,
                       runtime.settings.home / "mlartifacts")
        with mlflow.start_run() as run:
            info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(),
                                           pip_requirements=["mlflow"])
        version = register_version(engine, runtime.audit, name=name, model_uri=info.model_uri,
                                   run_id=run.info.run_id,
                                   tags={publish.FINGERPRINT_TAG: fingerprint}, details={})

        def killed(point: str) -> None:
            if point == "gate.after_tag":
                raise RuntimeError("killed after the verdict")
        with monkeypatch.context() as patch:
            patch.setattr(registry, "crash_point", killed)
            with pytest.raises(RuntimeError, match="killed after the verdict"):
                apply_verdict(client, engine, runtime.audit, name, version,
                              GateResult(passed=True), auto_promote=False)
        Path(f"{url.removeprefix('sqlite:///')}.puhui.training.{name}.lock").unlink()
        found.append(publish.find_version_by_fingerprint(
            runtime.settings.mlflow_tracking_uri, name, fingerprint))
        return found[-1]
    if model == "credit_risk":
        monkeypatch.setattr(train_flows, "existing_version", unchanged_then_lost)
        train_flow = train_flows.train_risk_flow
    else:
        monkeypatch.setattr(recommender_flows, "existing_recommender", unchanged_then_lost)
        train_flow = recommender_flows.train_recommender_flow
    try:
        state = train_flow(as_of=date.fromisoformat(RISK_AS_OF), return_state=True)
        assert state.is_failed() and found == ["1"]  # the real lookup found it unchanged
        assert f"lost the lock puhui.training.{name} " in state.message, state.message
        assert "\n" not in state.message
        assert _actions(engine, ALIAS_INTENT) == [] and current_aliases(client, name) == {}
    finally:
        dispose_engines()
