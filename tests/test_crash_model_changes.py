"""kill -9 at named points of model changes; the next command repairs or reports the gap.

Each crash runs a real ``puhui`` command in a process of its own with
``PUHUI_CRASH_AT=<point>`` (``SIGKILL`` to itself, as ``kill -9`` would), on a real MLflow
SQLite store and warehouse, forked from a parent that imported its libraries once
(tests/forkserver.py); training runs a real Prefect flow against the session's Prefect
server. After each crash the invariants are checked: every intent has an outcome, ``audit
verify`` passes, MLflow and the trail agree, and no version is tagged ``gates.passed``
without the trail's gate results.

Before intent/completion events, a crash between MLflow and the audit write left a version
with no registration event (tagged ``gates.passed=true`` before the gate step) that
``models promote`` accepted, and a promotion killed before its event moved ``champion``
with no record.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from puhui.audit import events_of, verify_audit_chain
from puhui.cli import main
from puhui.registry import (
    ALIAS_INTENT,
    ALIAS_SET,
    CHALLENGER,
    CHAMPION,
    GATES,
    GATES_PASSED_TAG,
    MODEL_ACTIONS,
    MODEL_LOCK,
    REGISTER_ABORTED,
    REGISTER_INTENT,
    REGISTERED,
    _record_gate_verdict,
    current_aliases,
    mlflow_client,
    register_version,
    registry_problems,
    use_experiment,
)
from puhui.runtime import open_runtime
from puhui.settings import load_settings
from puhui.warehouse.engine import dispose_engines, held_lock
from tests.conftest import RISK_AS_OF, TEST_AUDIT_KEY, RiskTemplates, no_search_config, risk_env
from tests.forkserver import ForkServer

NAME = "credit_risk"
OUTCOMES = {REGISTERED, REGISTER_ABORTED, ALIAS_SET, "model.alias.aborted", "model.alias.removed"}


# What `models promote` and `models rollback` import (`-X importtime`: MLflow's store ~3.5 s).
MODEL_COMMAND_IMPORTS = ("puhui.cli", "puhui.registry", "mlflow",
                         "mlflow.store.tracking.sqlalchemy_store",
                         "mlflow.store.model_registry.sqlalchemy_store")


@pytest.fixture(scope="module")
def model_commands(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    """Where the killed promote and rollback commands start: forked from one parent for the
    file that imported the CLI's libraries once (each cold ``puhui models promote`` spent
    ~4 s of CPU on imports before); module-scoped, so it starts before the first test's
    registrations, which its imports overlap. Each command is still a process of its own,
    with the test's environment, killed at its crash point (``PUHUI_CRASH_AT``)."""
    env = {k: v for k, v in os.environ.items() if k != "PUHUI_CRASH_AT"}
    server = ForkServer(env, tmp_path_factory.mktemp("model-commands"), MODEL_COMMAND_IMPORTS)
    yield server
    server.close()


def _crash(server: ForkServer, *args: str, point: str) -> subprocess.CompletedProcess:
    """Run ``puhui ARGS`` in its own (forked) process, killed at ``point``."""
    return server.run(list(args), {**os.environ, "PUHUI_CRASH_AT": point})


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def puhui(capsys: pytest.CaptureFixture) -> Callable[..., Ran]:
    """The next command, run in this process (the real CLI; a fresh interpreter per command
    would only add MLflow's start-up to every step)."""
    def run(*args: str) -> Ran:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return run


def _model_events(action: str | None = None) -> list[dict]:
    events = events_of(open_runtime().engine, MODEL_ACTIONS)
    return [e for e in events if action is None or e["action"] == action]


def assert_invariants(puhui: Callable[..., Ran]) -> None:
    """What must hold after any crash, once the next command has run."""
    verified = puhui("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    runtime = open_runtime()
    client = mlflow_client(runtime.settings.mlflow_tracking_uri)
    events = _model_events()
    intents = {e["seq"] for e in events if e["action"] in (REGISTER_INTENT, ALIAS_INTENT)}
    outcomes = {e["details"]["intent"] for e in events if e["action"] in OUTCOMES}
    assert intents <= outcomes, "an interrupted change was left without an outcome"
    assert registry_problems(client, runtime.engine)[0] == []
    gated = {(e["details"]["version"], e["details"]["passed"]) for e in events
             if e["action"] == GATES}
    for version in client.search_model_versions(f"name='{NAME}'"):
        tag = version.tags.get(GATES_PASSED_TAG)
        if tag == "true":
            assert (str(version.version), True) in gated, "gates.passed without gate results"
    assert verify_audit_chain(runtime.engine, TEST_AUDIT_KEY.encode()).ok


# --------------------------------------------------------------------------- promote
class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, model_input: list[float], params: dict | None = None) -> list[float]:
        return [0.1] * len(model_input)


def _register(verdict: bool | None) -> str:
    """A real registered version (a trivial model) through the audited path, with a gate
    verdict unless ``verdict`` is None (ungated)."""
    runtime = open_runtime()
    uri = runtime.settings.mlflow_tracking_uri
    use_experiment(NAME, uri, runtime.settings.home / "mlartifacts")
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(),
                                       pip_requirements=["mlflow"])
    version = register_version(runtime.engine, runtime.audit, name=NAME,
                               model_uri=info.model_uri, run_id=run.info.run_id,
                               tags={}, details={"as_of": RISK_AS_OF})
    if verdict is not None:  # the verdict alone: settle_gate_verdict would move challenger too
        with held_lock(runtime.engine, MODEL_LOCK):
            _record_gate_verdict(mlflow_client(uri), runtime.engine, runtime.audit, NAME,
                                 version, verdict, [] if verdict else ["auc_oot all 0.600 < 0.75"])
    return version


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new MLflow SQLite store, made once: creating its tables costs seconds per test."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    mlflow_client(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def registry_env(warehouse_url: str, puhui_env: Path, empty_mlflow_store: Path,
                 monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    import shutil

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    puhui_env.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_mlflow_store, puhui_env / "mlflow.db")
    versions = {"passed1": _register(True), "passed2": _register(True),
                "failed": _register(False), "ungated": _register(None)}
    yield versions
    dispose_engines()


def _champion() -> str | None:
    return current_aliases(mlflow_client(load_settings().mlflow_tracking_uri), NAME).get(
        CHAMPION)


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)  # no dialect code here
def test_an_ungated_version_is_never_promoted(registry_env: dict[str, str],
                                              puhui: Callable[..., Ran]) -> None:
    version = registry_env["ungated"]
    for extra in ((), ("--force",)):
        refused = puhui("models", "promote", NAME, "--version", version, "--reason", "x",
                         *extra)
        assert refused.returncode == 1 and "ungated" in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1
    listed = puhui("models", "list", NAME, "--json")
    row = next(r for r in json.loads(listed.stdout) if r["version"] == version)
    assert row["gated"] is False and row["gates"]["passed"] is False
    assert _champion() is None
    assert_invariants(puhui)


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_hand_set_gate_tag_does_not_promote(registry_env: dict[str, str],
                                              puhui: Callable[..., Ran]) -> None:
    """MLflow tags are a copy: promote reads the verdict from the trail, and verify reports
    a tag without gate results."""
    client = mlflow_client(load_settings().mlflow_tracking_uri)
    client.set_model_version_tag(NAME, registry_env["ungated"], GATES_PASSED_TAG, "true")
    refused = puhui("models", "promote", NAME, "--version", registry_env["ungated"],
                     "--reason", "x")
    assert refused.returncode == 1 and "ungated" in refused.stderr
    verified = puhui("audit", "verify")
    assert verified.returncode == 1 and "DISAGREE" in verified.stderr
    assert "has no gate results" in verified.stderr, verified.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("warehouse_url", "point"), [
    ("sqlite", "alias.before_mlflow"), ("sqlite", "alias.after_mlflow"),
    ("postgres", "alias.after_mlflow"),  # the case that moved champion with no record
], indirect=["warehouse_url"])
def test_promote_killed_mid_move_is_reported_then_settled(
    model_commands: ForkServer, registry_env: dict[str, str], point: str,
    puhui: Callable[..., Ran],
) -> None:
    v1, v2 = registry_env["passed1"], registry_env["passed2"]
    crashed = _crash(model_commands, "models", "promote", NAME, "--version", v1, "--reason",
                     "first", point=point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    moved = point == "alias.after_mlflow"
    assert _champion() == (v1 if moved else None)
    assert [e["action"] for e in _model_events()][-1] == ALIAS_INTENT

    # Read-only, the gap is reported, non-zero.
    reported = puhui("audit", "verify", "--no-repair")
    assert reported.returncode == 1 and "has no outcome" in reported.stderr, reported.stderr

    # The next model command settles it, says so, and goes on.
    second = puhui("models", "promote", NAME, "--version", v2, "--reason", "second")
    assert second.returncode == 0, second.stderr
    assert ("recovered" if moved else "aborted") in second.stderr
    last_intent = [e for e in _model_events() if e["action"] in OUTCOMES][-2]
    assert last_intent["details"].get("recovered", False) is moved
    assert _champion() == v2
    assert_invariants(puhui)
    # A recovered move counts in the champion history: rollback returns to it.
    back = puhui("models", "rollback", NAME, "--reason", "v2 misbehaves")
    if moved:
        assert back.returncode == 0 and f"to v{v1}" in back.stdout, back.stderr
    else:
        assert back.returncode == 1 and "no previous champion" in back.stderr
    assert_invariants(puhui)


@pytest.mark.slow
@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_rollback_killed_after_the_move_is_recovered(model_commands: ForkServer,
                                                     registry_env: dict[str, str],
                                                     puhui: Callable[..., Ran]) -> None:
    v1, v2 = registry_env["passed1"], registry_env["passed2"]
    for version in (v1, v2):
        assert puhui("models", "promote", NAME, "--version", version, "--reason",
                      "r").returncode == 0
    crashed = _crash(model_commands, "models", "rollback", NAME, "--reason", "back",
                     point="alias.after_mlflow")
    assert crashed.returncode == -signal.SIGKILL and _champion() == v1
    verified = puhui("audit", "verify")
    assert verified.returncode == 0 and "recovered" in verified.stdout, verified.stderr
    moves = _model_events(ALIAS_SET)
    assert moves[-1]["details"]["rollback"] and moves[-1]["details"]["recovered"]
    assert_invariants(puhui)


# --------------------------------------------------------------------------- train
@pytest.fixture
def train_env(risk_templates: RiskTemplates, dialect: str, puhui_env: Path,
              monkeypatch: pytest.MonkeyPatch, prefect_harness: None,
              tmp_path: Path) -> Path:
    """A private copy of the ingested risk dataset; the configured model without its search
    (each training is then a few seconds); commands use the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    risk_env(risk_templates, "clean", dialect, puhui_env, monkeypatch)
    no_search_config(tmp_path, monkeypatch)
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    yield puhui_env
    dispose_engines()


@pytest.fixture
def trainings(train_env: Path, tmp_path: Path) -> Iterator[ForkServer]:
    """Where the killed trainings start: forked from a parent that imported their libraries
    once (~7 s a training before), started here with their environment and importing while
    the test goes on. Each training is still a process of its own, killed at its crash
    point (``PUHUI_CRASH_AT``) or from outside."""
    env = {k: v for k, v in os.environ.items() if k != "PUHUI_CRASH_AT"}
    server = ForkServer(env, tmp_path)
    yield server
    server.close()


def _train_crash(server: ForkServer, point: str, *extra: str) -> subprocess.CompletedProcess:
    """``puhui run train risk`` in its own (forked) process, killed at ``point``."""
    return server.run(["run", "train", "risk", "--as-of", RISK_AS_OF, *extra],
                      {**os.environ, "PUHUI_CRASH_AT": point})


def _versions() -> dict[str, dict[str, str]]:
    client = mlflow_client(load_settings().mlflow_tracking_uri)
    return {str(v.version): dict(v.tags) for v in client.search_model_versions(f"name='{NAME}'")}


@pytest.mark.slow
def test_train_killed_at_each_model_change_point(trainings: ForkServer, dialect: str,
                                                 puhui: Callable[..., Ran]) -> None:
    # 1. Killed after the registration intent, before MLflow: nothing registered; verify
    #    records the registration as aborted. (PostgreSQL runs only the case of issue 10,
    #    point 2: each training costs half a minute and the code is the same.)
    if dialect == "sqlite":
        crashed = _train_crash(trainings, "register.before_mlflow")
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
        assert _versions() == {} and _model_events()[-1]["action"] == REGISTER_INTENT
        verified = puhui("audit", "verify")
        assert verified.returncode == 0 and "aborted" in verified.stdout, verified.stderr
        assert_invariants(puhui)

    # 2. Killed between MLflow's registration and the audit write: v1 exists, with no gate
    #    tag (before: tagged gates.passed=true and promotable). The next command recovers
    #    the registration event; v1 stays ungated and is refused.
    crashed = _train_crash(trainings, "register.after_mlflow")
    assert crashed.returncode == -signal.SIGKILL
    assert list(_versions()) == ["1"] and GATES_PASSED_TAG not in _versions()["1"]
    promote = puhui("models", "promote", NAME, "--version", "1", "--reason", "x", "--force")
    assert promote.returncode == 1 and "recovered" in promote.stderr
    assert "ungated" in promote.stderr
    assert _model_events(REGISTERED)[-1]["details"]["recovered"] is True
    assert_invariants(puhui)
    if dialect == "postgres":
        return  # the remaining points are the same code on either dialect; SQLite is cheaper

    # 3. Killed after the gate verdict and its tags, before the challenger move (one hold
    #    of the model lock, so no one else could move an alias in between): before, v2 kept
    #    no alias for good, the next run skipping it as "unchanged: v2". Now that run makes
    #    it challenger (what its run would have done) and says so in its steps.
    crashed = _train_crash(trainings, "gate.after_tag")
    assert crashed.returncode == -signal.SIGKILL
    client = mlflow_client(load_settings().mlflow_tracking_uri)
    assert _versions()["2"][GATES_PASSED_TAG] == "true" and current_aliases(client, NAME) == {}
    again = puhui("run", "train", "risk", "--as-of", RISK_AS_OF, "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    skipped = json.loads(again.stdout)
    assert skipped["skipped"] is True and skipped["version"] == "2"
    assert any("v2 passed every gate -> challenger" in step for step in skipped["steps"]), (
        skipped["steps"])
    assert current_aliases(client, NAME) == {CHALLENGER: "2"}
    assert_invariants(puhui)

    # 3b. Killed after the gate verdict was recorded, before the tags: the next command's
    #     reconcile restores the tags from the trail.
    crashed = _train_crash(trainings, "gate.before_tag", "--force")
    assert crashed.returncode == -signal.SIGKILL
    assert GATES_PASSED_TAG not in _versions()["3"] and _model_events()[-1]["action"] == GATES
    again = puhui("run", "train", "risk", "--as-of", RISK_AS_OF)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "unchanged: v" in again.stdout
    assert _versions()["3"][GATES_PASSED_TAG] == "true"
    assert_invariants(puhui)

    # 4. Killed after MLflow moved the challenger alias, before its event: recovered.
    started = time.monotonic()
    crashed = _train_crash(trainings, "alias.after_mlflow", "--force")
    nearly_full_run = time.monotonic() - started  # step 5's command, killed near its end
    assert crashed.returncode == -signal.SIGKILL
    assert current_aliases(client, NAME)[CHALLENGER] == "4"
    verified = puhui("audit", "verify")
    assert verified.returncode == 0 and "recovered" in verified.stdout
    assert_invariants(puhui)

    # 5. Killed from outside at a seeded moment (a failure can be replayed): a fraction of
    #    step 4's run, not fixed seconds, so a faster training cannot finish first and turn
    #    this into a check of a normal run.
    seconds = random.Random(10).uniform(0.3, 0.8) * nearly_full_run
    seen = _model_events()[-1]["seq"]
    pid = trainings.start(["run", "train", "risk", "--as-of", RISK_AS_OF, "--force"],
                          {k: v for k, v in os.environ.items() if k != "PUHUI_CRASH_AT"})
    time.sleep(seconds)
    alive = not trainings.finished()
    # Its parent reaps it as soon as it ends: a run that ended first is the `where` failure.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    returncode = trainings.finish().returncode
    landed = [e["action"] for e in _model_events() if e["seq"] > seen][-1:] or ["none"]
    where = (f"kill at {seconds:.1f}s of a {nearly_full_run:.1f}s run; last model event "
             f"before it: {landed[0]}")
    assert alive and returncode == -signal.SIGKILL, where
    assert_invariants(puhui)


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_verify_reports_model_changes_made_behind_the_trails_back(
    registry_env: dict[str, str], puhui: Callable[..., Ran],
) -> None:
    """MLflow changed directly (not through puhui): an alias move and a registration with no
    event in the trail are reported, non-zero."""
    assert puhui("audit", "verify").returncode == 0
    client = mlflow_client(load_settings().mlflow_tracking_uri)
    client.set_registered_model_alias(NAME, CHAMPION, registry_env["failed"])
    source = client.get_model_version(NAME, registry_env["passed1"])
    client.create_model_version(NAME, source.source, run_id=source.run_id)
    verified = puhui("audit", "verify", "--json")
    report = json.loads(verified.stdout)
    assert verified.returncode == 1 and not report["ok"]
    assert report["registry_problems"] == [
        f"{NAME} v5 is in MLflow with no registration event in the trail",
        f"{NAME}@champion is v{registry_env['failed']} in MLflow but the trail has no move "
        "for it"]
