"""The model owner's commands (issue 15): ``models show`` and ``models compare`` for both
models from the same code, and ``run train`` ending Failed (exit 1) on a failed gate unless
``--allow-gate-failure``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from puhui.cli import main
from puhui.config import ModelsConfig, load_config
from puhui.lifecycle.gates import GateChecks, GateResult
from puhui.lifecycle.publish import apply_verdict, write_evaluations
from puhui.registry import mlflow_client
from puhui.runtime import open_runtime
from puhui.settings import load_settings, repo_root
from tests.conftest import RiskTemplates, risk_env
from tests.test_lifecycle import AS_OF, _register

CALIBRATION_CSV = ("grade,max_pd,n,defaults,expected,observed,interval_low,interval_high,"
                   "p_value,ok\nA,0.02,400,6,0.012,{a},0.007,0.03,0.4,True\n"
                   "E,1.0,50,20,0.30,{e},0.28,0.55,0.004,{ok}\n")


@pytest.fixture
def any_warehouse(risk_templates: RiskTemplates, dialect: str, puhui_env: Path,
                  monkeypatch: pytest.MonkeyPatch) -> str:
    return risk_env(risk_templates, "clean", dialect, puhui_env, monkeypatch)


def _gates(value: float, limit: float) -> GateResult:
    checks = GateChecks()
    checks.check("min_headline", "all", value, limit, value >= limit)
    checks.check("calibration", "grade=E", value, 0.03, value >= limit,
                 rule="one-sided test: fails only if observed is above predicted")
    return checks.result()


def _version(model: str, name: str, headline: float, segment: float, limit: float = 0.4,
             observed_e: float = 0.32) -> str:
    """A registered, gated version with a headline metric, a gates.json, per-segment rows
    and (for the graded risk model) a calibration table."""
    runtime = open_runtime()
    gates = _gates(headline, limit)
    artifacts = {}
    if model == "credit_risk":
        artifacts["evaluation/calibration.csv"] = CALIBRATION_CSV.format(
            a=0.015, e=observed_e, ok=observed_e < 0.4)
    version = _register(name, f"fp-{headline}", headline, gates, artifacts)
    segment_metric = "adverse_impact_ratio" if model == "credit_risk" else "ndcg_at_3_oot"
    write_evaluations(runtime.engine, name, version, AS_OF, [
        {"metric": segment_metric, "segment": "region_type=rural", "value": segment},
        {"metric": segment_metric, "segment": "region_type=urban", "value": 1.0}], "run")
    client = mlflow_client(runtime.settings.mlflow_tracking_uri)
    apply_verdict(client, runtime.engine, runtime.audit, name, version, gates, False)
    return version


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("model", ["credit_risk", "product_recommender"])
def test_models_show_and_compare(model: str, any_warehouse: str,
                                 capsys: pytest.CaptureFixture) -> None:
    name = getattr(load_config(load_settings().config_dir, ModelsConfig), model).registered_name
    headline = "auc_oot" if model == "credit_risk" else "ndcg_at_3_oot"
    v1 = _version(model, name, 0.70, 0.85)
    code, _, err = _run(capsys, "models", "compare", name)
    assert code == 1 and "has no champion" in err and len(err.strip().splitlines()) == 1
    assert _run(capsys, "models", "promote", name, "--version", v1, "--reason", "first")[0] == 0
    code, _, err = _run(capsys, "models", "compare", name)
    assert code == 1 and "has no challenger" in err and len(err.strip().splitlines()) == 1
    v2 = _version(model, name, 0.75, 0.78, observed_e=0.45)

    code, out, _ = _run(capsys, "models", "show", name, "--version", v1, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["aliases"] == ["champion"] and shown["headline"] == [headline]
    assert shown["metrics"][headline] == pytest.approx(0.70)
    assert shown["segments"]["region_type=rural"] == pytest.approx(
        {"adverse_impact_ratio" if model == "credit_risk" else "ndcg_at_3_oot": 0.85})
    assert shown["lineage"]["training.as_of"] == AS_OF.isoformat()
    rules = {c["gate"]: c["rule"] for c in shown["gates"]["checks"]}
    assert rules["min_headline"] == "≥ 0.4 (higher is better)"
    assert rules["calibration"].startswith("one-sided")
    assert bool(shown["calibration"]) == (model == "credit_risk")

    code, out, _ = _run(capsys, "models", "show", name, "--version", v2)
    assert code == 0 and "challenger" in out and "≥ 0.4 (higher is better)" in out
    assert ("calibration per grade" in out) == (model == "credit_risk")

    # Default: champion (A) against the challenger (B); the difference is B - A.
    code, out, _ = _run(capsys, "models", "compare", name, "--json")
    found = json.loads(out)
    assert code == 0 and (found["a"]["version"], found["b"]["version"]) == (v1, v2)
    assert found["metrics"][0]["metric"] == headline
    assert found["metrics"][0]["diff"] == pytest.approx(0.05)
    rural = [r for r in found["segments"] if r["segment"] == "region_type=rural"]
    assert rural[0]["diff"] == pytest.approx(-0.07)
    gates = {r["gate"]: r for r in found["gates"]}
    assert gates["min_headline"]["passed_a"] is True and gates["min_headline"]["diff"] == \
        pytest.approx(0.05)
    if model == "credit_risk":
        grade_e = [r for r in found["calibration"] if r["grade"] == "E"][0]
        assert grade_e["ok_a"] is True and grade_e["ok_b"] is False
        assert grade_e["diff"] == pytest.approx(0.13)
    else:
        assert found["calibration"] == []
    code, out, _ = _run(capsys, "models", "compare", name, v2, v1)
    assert code == 0 and "B - A" in out and "-0.0500" in out
    code, _, err = _run(capsys, "models", "show", name, "--version", "99")
    assert code == 1 and "has no version 99" in err


def test_read_only_model_commands_import_neither_prefect_nor_mlflow(any_warehouse: str) -> None:
    """Read-only: no command imports Prefect, nor MLflow (~2-3 s of CPU of its own; a process
    of its own to tell): they read MLflow's tables, and the artifacts of a local store, the
    same facts as MlflowClient gives. Nor pandas (~0.4 s) or Arrow: the warehouse's schema
    came with the bulk loader's imports."""
    from puhui.lifecycle.views import version_facts, view_for
    from puhui.registry_read import read_only_registry

    name = load_config(load_settings().config_dir, ModelsConfig).credit_risk.registered_name
    v1 = _version("credit_risk", name, 0.70, 0.85)
    runtime = open_runtime()
    uri, view = runtime.settings.mlflow_tracking_uri, view_for(name, runtime.settings.config_dir)
    facts = version_facts(read_only_registry(uri), runtime.engine, name, v1, view)
    assert facts == version_facts(mlflow_client(uri), runtime.engine, name, v1, view)
    assert facts["gates"]["checks"] and facts["calibration"] and facts["run_name"]
    script = ("import sys; from puhui.cli import main; rc = main(sys.argv[1:]); "
              "print(rc, *(m in sys.modules for m in ('prefect', 'mlflow', 'pandas', 'pyarrow')))")
    for argv in (["models", "show", name, "--version", v1, "--json"],
                 ["models", "compare", name, v1, v1, "--json"],
                 ["audit", "lineage", name, "--version", v1, "--json"],
                 ["quarantine", "list"], ["audit", "log"], ["audit", "verify"]):
        done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True,
                              text=True, env=os.environ.copy(), cwd=repo_root(), timeout=120)
        assert done.stdout.strip().splitlines()[-1] == "0 False False False False", (
            argv, done.stderr[-2000:])
    assert "MLflow agrees with the trail: 1 version(s), 1 alias(es)" in done.stdout


@pytest.mark.slow
def test_train_exits_non_zero_on_a_failed_gate(
        risk_templates: RiskTemplates, puhui_env: Path, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, prefect_harness: None, capsys: pytest.CaptureFixture) -> None:
    """A version failing a gate ends the training flow run Failed with the gate's name, and
    ``run train`` exits 1; with --allow-gate-failure the run completes and it exits 0.

    Slow (two real recommender trainings, cut to two windows and 20 rounds): 609 s measured
    under a load average of 20 on the shared 2-core machine."""
    import shutil

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    risk_env(risk_templates, "clean", "sqlite", puhui_env, monkeypatch)
    configs = tmp_path / "configs"
    shutil.copytree(load_settings().config_dir, configs)
    models = yaml.safe_load((configs / "models.yaml").read_text())
    reco = models["product_recommender"]
    reco["gates"]["segment_ndcg_over_chance"]["threshold"] = 0.99
    # Two windows and few rounds: the flow, not the ranker's quality, is under test.
    reco.update(train_windows=2, num_boost_round=20)
    (configs / "models.yaml").write_text(yaml.safe_dump(models, allow_unicode=True))
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(configs))

    def last_run_state() -> tuple[str, str]:
        with get_client(sync_client=True) as client:
            run = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["train-recommender"])),
                sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        return run.state.type.value, run.state.message or ""

    as_of = AS_OF.isoformat()
    code, out, err = _run(capsys, "run", "train", "recommender", "--as-of", as_of)
    assert code == 1, err
    assert "FAILED" in err and "segment_ndcg" in err and "--allow-gate-failure" in err
    assert len(err.strip().splitlines()) == 1, "one line, no traceback"
    assert "FAILED" in out.strip().splitlines()[-1], "the flow's closing line is printed"
    state, message = last_run_state()
    assert state == "FAILED" and "segment_ndcg" in message
    code, out, err = _run(capsys, "run", "train", "recommender", "--as-of", as_of, "--force",
                          "--allow-gate-failure")
    assert code == 0, err
    assert "FAILED" in out.strip().splitlines()[-1]
    assert last_run_state()[0] == "COMPLETED"


def test_a_registry_that_cannot_be_reached_is_an_error_not_no_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's "not found" reads as absent; any other MLflow error (here a tracking server
    that is down) propagates: it once read as "no aliases" / "no version", so audit verify
    reported versions missing from MLflow instead of the outage."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from puhui.registry import current_aliases
    from puhui.registry_read import NotInRegistry, SqlRegistry, is_not_found

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    local = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert current_aliases(local, "no_such_model") == {}
    with pytest.raises(MlflowException) as missing:
        local.get_model_version("no_such_model", "1")
    assert is_not_found(missing.value)
    with pytest.raises(NotInRegistry):  # a run the store does not hold, as MLflow says
        SqlRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run("0" * 32)

    down_uri = "http://127.0.0.1:9"  # the discard port: refused
    # Both URIs: a client given only the tracking URI takes the registry from the
    # process's MLflow state, which an earlier test in this process may have set.
    down = MlflowClient(tracking_uri=down_uri, registry_uri=down_uri)
    with pytest.raises(MlflowException) as outage:
        current_aliases(down, "credit_risk")
    assert not is_not_found(outage.value)


@pytest.mark.parametrize("argv", [
    ["models", "list"], ["models", "show", "credit_risk", "--version", "1"],
    ["audit", "verify"], ["models", "promote", "credit_risk", "--version", "1", "--reason", "r"]])
def test_an_unreachable_mlflow_database_is_one_line_without_retries(
    puhui_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    """An MLflow database that refuses connections: MLflow's store retried for ~110 s, then
    printed three lines; one that never answers (a silent host) waited for the OS. A command
    at the terminal says so in one line, after at most the connect timeout."""
    open_runtime()  # the warehouse exists (`audit verify` refuses a missing one first)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the kernel completes the handshake; nothing ever answers
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            refused = probe.getsockname()[1]  # closed when the block ends: refused
        ports = [refused, silent.getsockname()[1]] if argv == ["models", "list"] else [refused]
        # A password in the query (libpq takes one there) was printed as written.
        uris = [f"postgresql+psycopg://app:pw@127.0.0.1:{port}/mlflow?password=s3cret"
                "&sslpassword=s3cret&sslmode=disable" for port in ports]
        if argv == ["models", "list"]:  # a ProgrammingError of the driver was a traceback
            uris.append(f"postgresql+psycopg://app:pw@127.0.0.1:{refused}/mlflow?bogus=1")
        for uri in uris:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
            capsys.readouterr()
            started = time.monotonic()
            assert main(argv) == 1
            # The connect timeout (5 s) and the command's start, on a loaded machine.
            assert time.monotonic() - started < 15
            err = capsys.readouterr().err
            [line] = err.strip().splitlines()
            port = uri.split(":")[3].split("/")[0]
            assert line.startswith("puhui: error: cannot reach the MLflow database "
                                   f"postgresql+psycopg://app@127.0.0.1:{port}/mlflow: ")
            assert line.endswith("check MLFLOW_TRACKING_URI and that the database is up")
            assert "s3cret" not in err and ":pw@" not in err


def test_the_connect_timeout_is_named_as_the_driver_names_it() -> None:
    """The timeout argument was chosen by the database, not the driver: pg8000 refuses
    connect_timeout (a TypeError, not a one-line error), mysqlconnector calls it
    connection_timeout; a driver not known here gets none."""
    from sqlalchemy import make_url

    from puhui.registry_read import CONNECT_TIMEOUT_SECONDS, connect_timeout_args

    named = {f"{database}://u@h/d": connect_timeout_args(make_url(f"{database}://u@h/d"))
             for database in ("postgresql", "postgresql+psycopg", "postgresql+pg8000",
                              "mysql", "mysql+pymysql", "mysql+mysqlconnector",
                              "mssql+pyodbc", "sqlite")}
    seconds = CONNECT_TIMEOUT_SECONDS
    assert named == {
        "postgresql://u@h/d": {"connect_timeout": seconds},
        "postgresql+psycopg://u@h/d": {"connect_timeout": seconds},
        "postgresql+pg8000://u@h/d": {"timeout": seconds},
        "mysql://u@h/d": {"connect_timeout": seconds},
        "mysql+pymysql://u@h/d": {"connect_timeout": seconds},
        "mysql+mysqlconnector://u@h/d": {"connection_timeout": seconds},
        "mssql+pyodbc://u@h/d": {}, "sqlite://u@h/d": {}}
