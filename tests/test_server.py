"""Prefect as a real service: `puhui server`, commands using it, deployments run by a worker.

Every test drives the real CLI in subprocesses against a real local Prefect server (started
by `puhui server start` under a temporary PUHUI_HOME, on a free port) and reads the outcome
back from the server's API.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from puhui.generate import generate_landing_zone
from puhui.processes import pid_alive
from puhui.scheduling import load_deployment_specs
from puhui.settings import repo_root
from tests.conftest import TEST_PSEUDONYM_KEY, demo_env

AS_OF = "2026-09-30"
PUHUI = [sys.executable, "-m", "puhui"]
READ_ONLY_COMMANDS = [
    ["models", "list"],
    ["quarantine", "list"],
    ["audit", "log"],
    ["audit", "verify"],
    ["config", "check"],
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _env(home: Path, landing: Path | None = None, **extra: str) -> dict[str, str]:
    """A first-time user's environment (conftest's ``demo_env``) with the test key and actor
    and a free port for the server."""
    env = {**demo_env(home), "PUHUI_PSEUDONYM_KEY": TEST_PSEUDONYM_KEY,
           "PUHUI_ACTOR": "test-runner", "PUHUI_PREFECT_PORT": str(_free_port())}
    if landing is not None:
        env["PUHUI_LANDING"] = str(landing)
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = 600,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env=env, cwd=repo_root(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and done.returncode != 0:
        pytest.fail(f"{args} exited {done.returncode}: {done.stdout[-2000:]}"
                    f"{done.stderr[-2000:]}")
    return done


def _api(url: str, path: str, body: dict | None = None, method: str | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data,
                                     method=method or ("POST" if data else "GET"),
                                     headers={"content-type": "application/json"})
    for attempt in range(6):
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                text = reply.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            # The server's SQLite answers 503 when it is busy (seen at load 30 on 2 cores);
            # Prefect's own client retries these too.
            if exc.code not in (429, 502, 503) or attempt == 5:
                raise
            time.sleep(2 * (attempt + 1))
    raise AssertionError("unreachable")


def _status(env: dict[str, str]) -> dict:
    return json.loads(_run([*PUHUI, "server", "status", "--json"], env, check=False).stdout)


@pytest.fixture(scope="module")
def tiny_landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-landing")
    # 40 days of back history: the monthly credit bureau snapshot of the 1st is in it. The
    # daily flow's profile refresh needs raw_credit_bureau (with none it fails the run).
    generate_landing_zone(out, users=100, days=1, seed=3, history_days=40,
                          end_date=date.fromisoformat(AS_OF))
    return out


@dataclass(frozen=True)
class Server:
    """The file's one `puhui server` (a start costs the server's and the warm worker's
    imports: each test starting its own made this file the suite's fourth longest)."""

    env: dict[str, str]
    api_url: str
    home: Path
    status_before: subprocess.CompletedProcess[str]  # `server status` before the start
    started: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_landing: Path) -> Iterator[Server]:
    """A running `puhui server` (scheduler every 2 s) and the environment that uses it.
    test_server_stop_stops_it_and_its_warm_worker, the file's last test, stops it."""
    home = tmp_path_factory.mktemp("server-home") / "home"
    env = _env(home, tiny_landing, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2")
    before = _run([*PUHUI, "server", "status"], env, check=False)
    started = _run([*PUHUI, "server", "start"], env)
    yield Server(env, _status(env)["api_url"], home, before, started)
    _run([*PUHUI, "server", "stop"], env, check=False)


@pytest.mark.slow
def test_server_start_and_status(server: Server) -> None:
    env = server.env
    assert server.status_before.returncode == 1
    assert "Prefect server started: UI http://127.0.0.1:" in server.started.stdout
    state = _status(env)
    assert state["running"] and state["healthy"]
    assert state["port"] == int(env["PUHUI_PREFECT_PORT"])
    assert pid_alive(state["warm_worker_pid"])  # started with the server
    with urllib.request.urlopen(state["ui_url"], timeout=10) as page:  # the UI is served
        assert b"<html" in page.read(2000).lower()
    assert (server.home / "prefect" / "prefect.db").exists()  # its own database
    again = _run([*PUHUI, "server", "start"], env)
    assert "already running" in again.stdout and str(state["pid"]) in again.stdout
    began = time.monotonic()
    plain = _run([*PUHUI, "server", "status"], env)
    assert f"pid {state['pid']}" in plain.stdout and state["ui_url"] in plain.stdout
    assert time.monotonic() - began < 10  # no Prefect import, one local health check


def test_the_fast_schema_check_agrees_with_alembic() -> None:
    """Every command checks the warehouse's revision without importing Alembic."""
    from puhui.warehouse.engine import _declared_head, head_revision

    assert _declared_head() == head_revision()


def test_models_list_reads_the_registry_without_mlflow(tmp_path: Path) -> None:
    """`models list` reads MLflow's tables itself: the same rows as MlflowClient gives, in a
    process that never imports MLflow (2 s of a command that should take under 2)."""
    import mlflow
    from mlflow import MlflowClient

    from puhui.registry_read import SqlRegistry, list_versions

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    client.create_registered_model("credit_risk")
    runs = []
    for auc in (0.71, 0.74, 0.69):
        run = client.create_run(experiment)
        client.log_batch(run.info.run_id, metrics=[
            mlflow.entities.Metric("auc_oot", auc, 0, 0),
            mlflow.entities.Metric("ks_oot", auc / 2, 0, 0),
            mlflow.entities.Metric("auc_oot", auc + 0.01, 0, 1)])  # the latest step counts
        runs.append(client.create_model_version(
            "credit_risk", f"runs:/{run.info.run_id}/model", run.info.run_id,
            tags={"training.as_of": "2026-09-30"}))
    client.set_model_version_tag("credit_risk", "1", "gates.failed", "[]")
    client.set_model_version_tag("credit_risk", "1", "gates.passed", "true")
    client.set_model_version_tag("credit_risk", "2", "gates.failed", '["calibration"]')
    client.set_model_version_tag("credit_risk", "2", "gates.passed", "false")
    client.set_registered_model_alias("credit_risk", "champion", "1")
    client.set_registered_model_alias("credit_risk", "challenger", "2")
    client.delete_model_version("credit_risk", "3")  # MLflow keeps it, marked deleted
    client.create_registered_model("product_recommender")  # no versions yet

    expected = [r.as_dict() for r in list_versions(client)]
    assert [(r["version"], r["aliases"]) for r in expected] == [
        ("2", ["challenger"]), ("1", ["champion"])]
    assert expected[1]["metrics"] == {"auc_oot": 0.72, "ks_oot": 0.355}
    assert [r.as_dict() for r in list_versions(SqlRegistry(uri))] == expected

    probe = ("import sys; from puhui.cli import main; rc = main(sys.argv[1:]); "
             "print(rc, 'mlflow' in sys.modules, 'great_expectations' in sys.modules)")
    env = _env(tmp_path / "home", MLFLOW_TRACKING_URI=uri)
    done = _run([sys.executable, "-c", probe, "models", "list", "--json"], env)
    listed, _, status = done.stdout.rpartition("]")
    assert json.loads(listed + "]") == json.loads(json.dumps(expected))
    assert status.split() == ["0", "False", "False"]


def test_read_only_commands_never_start_prefect(tmp_path: Path) -> None:
    """Not even imported: no Prefect module, no ephemeral database; nor MLflow or GX, the
    other libraries whose import alone costs seconds (speed is in the README)."""
    env = _env(tmp_path / "home")
    # A warehouse to read: the audit and quarantine reads refuse a missing one.
    _run([*PUHUI, "db", "upgrade"], env)
    probe = ("import sys; from puhui.cli import main; rc = main(sys.argv[1:]); "
             "print(rc, *(m in sys.modules for m in ('prefect', 'mlflow', "
             "'great_expectations')))")
    for command in READ_ONLY_COMMANDS:
        done = _run([sys.executable, "-c", probe, *command], env)
        status = done.stdout.strip().splitlines()[-1].split()
        assert status == ["0", "False", "False", "False"], (command, done.stdout, done.stderr)
    prefect_home = tmp_path / "home" / "prefect"
    assert not list(prefect_home.glob("*.db"))  # no ephemeral server ever ran


@pytest.mark.slow
def test_prefect_deploy_all_and_a_process_worker_run_the_daily_deployment(
        server: Server) -> None:
    env, api_url = server.env, server.api_url
    client_env = {**env, "PREFECT_API_URL": api_url}
    prefect = [sys.executable, "-m", "prefect"]
    deployed = _run([*prefect, "--no-prompt", "deploy", "--all"], client_env)
    assert "daily/daily" in deployed.stdout
    pool = _api(api_url, "/work_pools/puhui-process")
    assert pool["type"] == "process"  # created by `puhui server start` from prefect.yaml
    _run([*prefect, "deployment", "run", "daily/daily", "--param", f"as_of={AS_OF}"],
         client_env)
    _run([*prefect, "worker", "start", "--pool", "puhui-process", "--run-once"], client_env)
    runs = _api(api_url, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [
        f"daily {AS_OF}", f"ingest {AS_OF}"]}}})
    by_name = {r["name"]: r for r in runs}
    assert by_name[f"daily {AS_OF}"]["state_type"] == "COMPLETED"
    assert by_name[f"daily {AS_OF}"]["deployment_id"]
    assert by_name[f"ingest {AS_OF}"]["state_type"] == "COMPLETED"  # the subflow, dated
    tasks = _api(api_url, "/task_runs/filter", {"task_runs": {"name": {"any_": [
        f"ingest mobile_payments {AS_OF}"]}}})
    assert tasks and tasks[0]["state_type"] == "COMPLETED"
    artifacts = _api(api_url, "/artifacts/filter", {"artifacts": {"key": {"any_": [
        "daily-summary", "ingest-summary"]}}})
    daily = [a for a in artifacts if a["key"] == "daily-summary"]
    assert daily and daily[0]["type"] == "markdown" and "| ingest |" in daily[0]["data"]


@pytest.mark.slow
def test_commands_use_the_running_server_and_say_so(
        server: Server) -> None:
    env, api_url = server.env, server.api_url
    done = _run([*PUHUI, "run", "ingest", "--partner", "mobile_payments", "--as-of", AS_OF],
                env)
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"Prefect: local server {api_url.removesuffix('/api')}")
    assert lines[-1].startswith(f"ingest {AS_OF}:")
    assert "Finished in state" not in done.stdout + done.stderr  # Prefect's INFO lines
    assert len(lines) == 2  # nothing held: no per-file line without --verbose
    verbose_ingest = _run([*PUHUI, "run", "ingest", "--partner", "mobile_payments",
                           "--as-of", AS_OF, "--verbose"], env)
    assert "mobile_payments_20260930.csv" in verbose_ingest.stdout  # the file's line
    assert "Finished in state Completed()" in verbose_ingest.stderr  # Prefect's state lines
    runs = _api(api_url, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [
        f"ingest mobile_payments {AS_OF}"]}}})
    assert runs and runs[0]["state_type"] == "COMPLETED"
    verbose = _run([*PUHUI, "models", "list", "--verbose"], env)
    assert verbose.stdout.startswith(f"Prefect: local server {api_url.removesuffix('/api')}")


# Runs the CLI as the `puhui` command does (main() reads sys.argv), then says what the
# command's own process imported.
CLIENT_PROBE = ("import sys; from puhui.cli import main; rc = main(); print('CLIENT', rc, "
                "*(m in sys.modules for m in ('prefect', 'great_expectations', 'pandas')))")


def _client(args: list[str], env: dict[str, str]) -> tuple[list[str], str, str]:
    done = _run([sys.executable, "-c", CLIENT_PROBE, *args], env, check=False)
    *lines, status = done.stdout.strip().splitlines()
    assert status.startswith("CLIENT "), (done.stdout, done.stderr)
    return status.split()[1:], "\n".join(lines), done.stderr


@pytest.mark.slow
def test_run_ingest_runs_in_the_warm_worker(server: Server) -> None:
    """`puhui server start` started the warm worker; `run ingest` runs there (the command's
    own process imports neither Prefect nor GX nor pandas), with the same output and exit
    codes; a command whose Prefect settings differ from the worker's runs in its own process."""
    env, api_url = server.env, server.api_url
    assert pid_alive(_status(env)["warm_worker_pid"])
    status, out, err = _client(["run", "ingest", "--partner", "mobile_payments", "--as-of",
                                AS_OF], env)
    assert status == ["0", "False", "False", "False"], err
    assert out.splitlines()[0].startswith(f"Prefect: local server {api_url.removesuffix('/api')}")
    assert out.splitlines()[-1].startswith(f"ingest {AS_OF}:")
    status, out, err = _client(["run", "ingest", "--partner", "nope"], env)
    assert status == ["1", "False", "False", "False"]
    assert "puhui: error: unknown partner 'nope'" in err and "Traceback" not in err
    # Prefect read its settings when the worker imported it: other settings, own process
    # (it imports Prefect to run the flow; a typo'd partner is refused before any import).
    status, out, err = _client(["run", "ingest", "--partner", "mobile_payments", "--as-of",
                                AS_OF], {**env, "PREFECT_CLIENT_MAX_RETRIES": "4"})
    assert status[:2] == ["0", "True"], err
    assert out.splitlines()[-1].startswith(f"ingest {AS_OF}:")


@pytest.mark.slow
def test_serve_cleans_up_its_scheduled_runs_on_sigterm(
        server: Server) -> None:
    env, api_url = server.env, server.api_url
    for deployment in _deployments(api_url):  # left by `prefect deploy`: serve makes its own
        _api(api_url, f"/deployments/{deployment['id']}", method="DELETE")
    serving = subprocess.Popen([*PUHUI, "serve"], env=env, cwd=repo_root(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        scheduled: list = []
        while time.monotonic() < deadline and not scheduled:
            time.sleep(2)
            assert serving.poll() is None, serving.stdout.read() if serving.stdout else ""
            scheduled = _scheduled_runs(api_url)
        assert scheduled, "the server scheduled no run for the served deployments"
    finally:
        serving.send_signal(signal.SIGTERM)
        output, _ = serving.communicate(timeout=120)
    assert serving.returncode == 0, output
    assert "removed" in output and "scheduled run(s)" in output
    assert _scheduled_runs(api_url) == []
    # Paused, so the server (scheduler loop 2 s) does not schedule them again.
    assert all(d["paused"] for d in _deployments(api_url))
    time.sleep(6)
    assert _scheduled_runs(api_url) == []


def _deployments(api_url: str) -> list[dict]:
    """The deployments of prefect.yaml on the server."""
    names = {spec.name for spec in load_deployment_specs()}
    return [d for d in _api(api_url, "/deployments/filter", {}) if d["name"] in names]


def _scheduled_runs(api_url: str) -> list:
    ids = [d["id"] for d in _deployments(api_url)]
    if not ids:
        return []
    return _api(api_url, "/flow_runs/filter", {
        "deployments": {"id": {"any_": ids}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})


def test_serve_refuses_a_temporary_server(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    began = time.monotonic()
    done = _run([*PUHUI, "serve"], env, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "puhui: error: no Prefect server is running: start one with 'puhui server start' (or "
        "pass --ephemeral for a temporary one without UI, whose schedules die with this "
        "process)"]
    assert time.monotonic() - began < 60
    assert not (tmp_path / "home" / "prefect" / "prefect.db").exists()


def test_settings_are_checked_before_any_flow_starts(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    env.pop("PUHUI_PSEUDONYM_KEY")
    missing = _run([*PUHUI, "run", "daily", "--as-of", AS_OF], env, check=False)
    assert missing.returncode == 1
    assert missing.stderr.startswith("puhui: error: PUHUI_PSEUDONYM_KEY is not set: export")
    assert len(missing.stderr.strip().splitlines()) == 1
    bad_url = _run([*PUHUI, "run", "ingest"], {**env, "PUHUI_PSEUDONYM_KEY": "k" * 40,
                                               "PUHUI_WAREHOUSE_URL": "postgres//nohost"},
                   check=False)
    assert bad_url.returncode == 1
    assert bad_url.stderr.strip().splitlines() == [
        "puhui: error: PUHUI_WAREHOUSE_URL is not a usable SQLAlchemy URL: set it like "
        "postgresql+psycopg://user:***@host:5432/dbname (*** the password), or unset it for "
        "the embedded SQLite warehouse"]
    closed_port = _free_port()
    no_db = _run([*PUHUI, "run", "ingest"], {
        **env, "PUHUI_PSEUDONYM_KEY": "k" * 40,
        "PUHUI_WAREHOUSE_URL": f"postgresql+psycopg://puhui:secret@127.0.0.1:{closed_port}/w"},
        check=False)
    assert no_db.returncode == 1
    [line] = no_db.stderr.strip().splitlines()
    assert line.startswith(f"puhui: error: cannot reach the warehouse postgresql+psycopg://"
                           f"puhui:***@127.0.0.1:{closed_port}/w: ")
    assert line.endswith("check PUHUI_WAREHOUSE_URL and that the database is up")
    dead_api = _run([*PUHUI, "run", "ingest"], {
        **env, "PUHUI_PSEUDONYM_KEY": "k" * 40,
        "PREFECT_API_URL": f"http://127.0.0.1:{_free_port()}/api"}, check=False)
    assert dead_api.returncode == 1
    assert "does not answer" in dead_api.stderr and "Traceback" not in dead_api.stderr
    assert not (tmp_path / "home" / "prefect" / "prefect.db").exists()  # no flow started


def test_prefect_target_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's PREFECT_API_URL wins; else a live recorded server; else a temporary one."""
    from puhui.prefect_server import STATE_FILE, choose_prefect_target, read_server
    from puhui.settings import load_settings

    monkeypatch.setenv("PUHUI_HOME", str(tmp_path / "home"))
    # Recorded first, so that the variable the code sets is undone after the test too.
    monkeypatch.setenv("PREFECT_API_URL", "recorded")
    monkeypatch.delenv("PREFECT_API_URL")
    settings = load_settings()
    assert choose_prefect_target(settings).ephemeral
    settings.prefect_home.mkdir(parents=True)
    state = settings.prefect_home / STATE_FILE
    state.write_text(json.dumps({"pid": os.getpid(), "port": 4999, "log": "server.log"}))
    target = choose_prefect_target(settings)
    assert (target.kind, target.api_url) == ("server", "http://127.0.0.1:4999/api")
    assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:4999/api"
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    assert choose_prefect_target(settings).kind == "external"
    monkeypatch.delenv("PREFECT_API_URL")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state.write_text(json.dumps({"pid": dead.pid, "port": 4999, "log": "server.log"}))
    assert read_server(settings) is None and not state.exists()  # stale state removed


# Last in the file: it stops the module's server, which the tests above use.
@pytest.mark.slow
def test_server_stop_stops_it_and_its_warm_worker(server: Server) -> None:
    env = server.env
    state = _status(env)
    assert state["running"] and pid_alive(state["warm_worker_pid"])
    stopped = _run([*PUHUI, "server", "stop"], env)
    assert f"pid {state['pid']}" in stopped.stdout
    assert not pid_alive(state["pid"])  # gone (or a zombie init has not reaped yet)
    assert not pid_alive(state["warm_worker_pid"])
    assert not _status(env)["running"]
