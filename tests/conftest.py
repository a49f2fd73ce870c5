"""Shared fixtures: real services only (PostgreSQL, Prefect, MLflow), each isolated per run.

- ``pg_server``: one throwaway PostgreSQL per session from the machine's binaries.
- ``warehouse_url``: parametrized over SQLite and PostgreSQL; a fresh, empty database per test.
- ``puhui_env``: an isolated PUHUI_HOME (and everything under it) per test.
- ``prefect_harness``: Prefect's test harness, once per session, with a temp PREFECT_HOME.
- ``piped_demo``: one real ``puhui demo`` with its output piped, once per run, for the tests
  that read it (what it prints, what it leaves under PUHUI_HOME).

Under pytest-xdist (``make test`` runs two workers, one test file per worker at a time) a
"session" is one worker: each worker has its own PostgreSQL server, Prefect harness,
PREFECT_HOME and PUHUI_HOME. Only read-only things are built once per run and shared by the
workers: the risk landing zones, their SQLite templates and a dump of their PostgreSQL
templates (``RiskTemplates``), one trained
and promoted credit_risk champion per dialect (``champion_env`` in tests/test_profiles.py; each
test gets a copy; on PostgreSQL too, restored from a dump into each worker's server) and the
piped demo run (``piped_demo``).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# Quiet, offline defaults before any test imports Prefect, GX or MLflow.
from puhui.settings import QUIET_ENVIRONMENT, load_settings, repo_root

# The commands tests start may wait longer for their temporary Prefect server than a user's
# (180 s): on this shared machine a loaded hour took 150 s to start one.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")
for _name, _value in QUIET_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
# LightGBM's OpenMP threads (libgomp; the configs give num_threads: 2) spin at every barrier by
# default, on the assumption that each has a core of its own. Here two workers, their
# subprocesses and servers share 2 cores, and a spinning thread burns the time slice the thread
# it waits for needs: 3 x 400 rounds on 2,500 rows took 69.6 s wall at load 19 against 1.0 s
# with passive waits (sleep on a futex; same trees, the policy changes no arithmetic). Set
# before anything loads libgomp (it reads it once) and inherited by every command started.
# The product keeps libgomp's default: idle, passive waits made a training 8x slower
# (README, Performance, "OpenMP wait policy").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="puhui-test-session-"))
# Removed when this process ends (each xdist worker and the controller has its own): one was
# left in /tmp per test process, with a Prefect home in it.
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.pop("PREFECT_API_URL", None)
# Every test process (each xdist worker too) gets its own PUHUI_HOME in its session folder:
# a test that uses the ambient home never shares state with another process, and never falls
# back to ./.puhui (under -n 0 from the repo, tests read the repo's store and audit verify
# wrote one there).
os.environ["PUHUI_HOME"] = str(_SESSION_HOME / "puhui")
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")

from puhui.throwaway_postgres import PostgresServer, find_postgres_bin_dir, throwaway_postgres  # noqa: E402
from puhui.warehouse.engine import dispose_engines  # noqa: E402

if TYPE_CHECKING:
    from puhui.lifecycle.gates import GateResult
    from puhui.risk.evaluation import Evaluation
    from puhui.risk.model import TrainedModel
    from puhui.risk.training_set import TrainingSet

TEST_PSEUDONYM_KEY = "test-key-" + "0123456789abcdef" * 3
# The audit chain's key for every test (and the commands they start); tests of a missing or
# wrong key set their own.
TEST_AUDIT_KEY = "test-audit-key-" + "fedcba9876543210" * 3
os.environ["PUHUI_AUDIT_KEY"] = TEST_AUDIT_KEY


# The longest test files first, so that the two xdist workers finish close together (the
# files run whole on one worker: `--dist loadfile`, module fixtures built once). Files not
# listed keep their collection order after these; test_privacy.py is one of them on purpose:
# it runs late, when test_console.py has made the demo run they share (``piped_demo``).
# Figures: the per-file seconds `make test` prints at the end; README, "Tests". test_profiles.py
# moved down after its trainings went from 5 to 2 (-35 % on its SQLite half, measured loaded);
# test_risk_model.py below test_crash_model_changes.py after its planted-bias test stopped
# running the whole search (-22 % for the file, measured loaded).
LONGEST_FILES_FIRST = (
    "test_console.py", "test_crash_model_changes.py", "test_risk_model.py", "test_server.py",
    "test_daily_flow.py", "test_profiles.py", "test_ingest.py",
    "test_partitioned_features.py", "test_sql_aggregates.py",
    "test_training_set_partitioned.py", "test_monitoring.py", "test_lifecycle.py",
    "test_recommender.py", "test_hostile_files.py", "test_models_cli.py", "test_features.py",
    "test_profiles_offers.py", "test_audit.py", "test_dask_runner.py", "test_training_lock.py",
    "test_attack_round10.py", "test_attack_round10_races.py", "test_quarantine_cli.py",
)


@pytest.hookimpl(trylast=True)  # after pytest's own reordering
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not XDIST_WORKER:
        return  # one process: keep the plain order
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps the rest


# Seconds per test file (setup, call and teardown of its tests, its module fixtures included)
# and per worker, summed by the xdist controller from the workers' reports and printed at the
# end: the figures to keep LONGEST_FILES_FIRST in order with.
_FILE_SECONDS: dict[str, float] = defaultdict(float)
_WORKER_SECONDS: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if XDIST_WORKER:
        return  # the controller gets the same report
    node = getattr(report, "node", None)
    _FILE_SECONDS[report.nodeid.split("::")[0]] += report.duration
    _WORKER_SECONDS[node.gateway.id if node else "main"] += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FILE_SECONDS:
        return
    longest = sorted(_FILE_SECONDS.items(), key=lambda item: -item[1])
    terminalreporter.write_sep("=", "seconds per test file (tests, fixtures included)")
    for path, seconds in longest:
        if seconds >= 10:
            terminalreporter.write_line(f"{seconds:8.1f}s {path}")
    workers = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in
                        sorted(_WORKER_SECONDS.items()))
    terminalreporter.write_line(f"busy per worker: {workers}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    if find_postgres_bin_dir() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide PostgreSQL server binaries (.ci/run installs them)")
        pytest.skip(
            "NO POSTGRESQL SERVER BINARIES ON THIS MACHINE: PostgreSQL tests skipped",
            allow_module_level=False,
        )
    with throwaway_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh empty warehouse on each dialect."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'warehouse.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("pg_server")
        yield server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    dispose_engines()


def use_test_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point this process at an isolated PUHUI_HOME with the embedded defaults (through
    ``monkeypatch``, so a module fixture can hold it with ``MonkeyPatch.context()``)."""
    monkeypatch.setenv("PUHUI_HOME", str(home))
    monkeypatch.setenv("PUHUI_PSEUDONYM_KEY", TEST_PSEUDONYM_KEY)
    monkeypatch.setenv("PUHUI_ACTOR", "test-runner")
    for name in ("PUHUI_WAREHOUSE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                 "PUHUI_LANDING", "PUHUI_PROFILE"):
        # Set, then deleted: monkeypatch records a variable it deletes only if it was there,
        # and the runtime (os.environ.setdefault) and mlflow.set_tracking_uri write these
        # during a module fixture, before any test's own restore runs: this way the fixture's
        # end removes them again (test_profiles' champion leaked into test_audit's CLI).
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return home


@pytest.fixture(autouse=True)
def mlflow_uri_stays_in_its_test() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` (and the runtime's ``setdefault``) write
    MLFLOW_TRACKING_URI into this process's environment, where the settings of later tests
    and every CLI subprocess they start would find a finished test's MLflow store (the audit
    cross-check then saw its versions without their registration events)."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {name: os.environ.get(name) for name in names}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def puhui_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated PUHUI_HOME with the embedded defaults; returns the home path."""
    return use_test_home(tmp_path / "home", monkeypatch)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=600):  # see the timeout above
        yield


# --------------------------------------------------------------------------- risk model data
# Landing zones big enough to train on (a year and a half of history), ingested once per
# dialect into a template; each test gets its own copy, so tests never share state.
RISK_AS_OF = "2026-09-30"
RISK_DATASETS = {
    "clean": {"users": 4000, "penalize_segment": None},
    "penalized_rural": {"users": 4000, "penalize_segment": "rural"},
    # The drift alert needs the shifted bureau population, not a model that passes its
    # gates (test_monitoring trains it with allow_gate_failure and promotes it forced): half
    # the users, a smaller ingest and training (round 16 measured about 15-20 % off the
    # drift test). The planted bias needs its 4,000: at 2,000 the rural gap no longer
    # failed the gate.
    "drifted": {"users": 2000, "penalize_segment": None, "drift": True},
}


def _ingest_all(as_of: str) -> None:
    """Every configured feed, in plain Python (the ingest flow's tests cover Prefect)."""
    from puhui.ingest.feeds import ingest_all_feeds
    from puhui.runtime import open_runtime

    ingest_all_feeds(open_runtime(), date.fromisoformat(as_of))


def build_once(target: Path, build: Callable[[], None]) -> None:
    """Build ``target`` unless a build of it finished; the xdist workers of one run take
    turns through a file lock, so the first one builds and the others wait and reuse it."""
    done = target.with_name(f"{target.name}.done")
    if done.exists():
        return
    with open(target.with_name(f"{target.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)  # a build that failed part-way
            build()
            done.touch()


def run_shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder of this run that every xdist worker sees (the workers' base temps are
    siblings in the run's folder); in a single process, a plain temporary folder."""
    if not XDIST_WORKER:
        return tmp_path_factory.mktemp(name)
    shared = tmp_path_factory.getbasetemp().parent / name
    shared.mkdir(exist_ok=True)
    return shared


class RiskTemplates:
    """Ingested risk datasets, one template per (dataset, dialect), built on first use.

    Landing zones and SQLite templates live under ``shared`` (one per run, seen by every
    xdist worker, built once); PostgreSQL templates are per worker, on its own server: the
    first worker ingests and leaves a dump under ``shared``, the others restore it."""

    def __init__(self, root: Path, pg: PostgresServer | None, shared: Path | None = None) -> None:
        self.root, self.pg, self.shared = root, pg, shared or root
        self._built: dict[tuple[str, str], str] = {}

    def _landing(self, dataset: str) -> Path:
        from puhui.generate import generate_landing_zone

        landing = self.shared / f"landing-{dataset}"
        spec = RISK_DATASETS[dataset]
        build_once(landing, lambda: generate_landing_zone(
            landing, users=spec["users"], days=2, seed=7, history_days=540,
            end_date=date.fromisoformat(RISK_AS_OF), penalize_segment=spec["penalize_segment"],
            drift=spec.get("drift", False)))
        return landing

    def _build(self, dataset: str, dialect: str) -> str:
        landing = self._landing(dataset)
        if dialect == "sqlite":
            home = self.shared / f"home-{dataset}-sqlite"
            url = f"sqlite:///{home / 'warehouse.db'}"
            build_once(home, lambda: self._ingest(home, url, landing))
            return url
        assert self.pg is not None
        pg, name = self.pg, f"tpl_{dataset}"
        dump = self.shared / f"pg-{dataset}"
        built: list[str] = []

        def ingest_and_dump() -> None:
            url = pg.create_database(name)  # drops one a failed build of this process left
            self._ingest(self.root / f"home-{dataset}-postgres", url, landing)
            dump_database(pg, name, dump)
            mark_whole(pg, name)
            built.append(url)

        # The first worker ingests into its server and dumps the result; the others restore
        # the dump into their own (seconds, against ~30 s of ingest).
        build_once(dump, ingest_and_dump)
        return built[0] if built else restore_database(pg, name, dump)

    @staticmethod
    def _ingest(home: Path, url: str, landing: Path) -> None:
        # MLflow's URIs too: the ingest's runtime fills MLFLOW_TRACKING_URI in (setdefault)
        # with this template's store, where the test that built it then registered models.
        saved = {k: os.environ.get(k) for k in ("PUHUI_HOME", "PUHUI_WAREHOUSE_URL",
                                               "PUHUI_LANDING", "PUHUI_PSEUDONYM_KEY",
                                               "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        os.environ.update({"PUHUI_HOME": str(home), "PUHUI_WAREHOUSE_URL": url,
                           "PUHUI_LANDING": str(landing),
                           "PUHUI_PSEUDONYM_KEY": TEST_PSEUDONYM_KEY})
        try:
            _ingest_all(RISK_AS_OF)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            dispose_engines()

    def copy(self, dataset: str, dialect: str, target: Path) -> tuple[str, Path]:
        """A private copy of the ingested warehouse; returns (url, landing zone)."""
        key = (dataset, dialect)
        if key not in self._built:
            self._built[key] = self._build(dataset, dialect)
        landing = self._landing(dataset)
        if dialect == "sqlite":
            source = Path(self._built[key].removeprefix("sqlite:///"))
            target.mkdir(parents=True, exist_ok=True)
            for suffix in ("", "-wal"):  # a WAL left behind holds committed pages too
                if Path(f"{source}{suffix}").exists():
                    shutil.copy(f"{source}{suffix}", target / f"warehouse.db{suffix}")
            return f"sqlite:///{target / 'warehouse.db'}", landing
        assert self.pg is not None
        name = f"t_{uuid.uuid4().hex[:12]}"
        return self.pg.create_database(name, template=f"tpl_{dataset}"), landing


def _pg_run(pg: PostgresServer, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one of the server's client programs (pg_dump, pg_restore, ...) against it."""
    return subprocess.run([str(pg.bin_dir / tool), *args], capture_output=True, text=True,
                          check=False, env={**os.environ, "PGHOST": pg.host,
                                            "PGPORT": str(pg.port), "PGUSER": pg.user})


def _pg_tool(pg: PostgresServer, tool: str, *args: str) -> None:
    """``_pg_run``, failing the test on a non-zero exit."""
    done = _pg_run(pg, tool, *args)
    assert done.returncode == 0, f"{tool}: {done.stderr[-2000:]}"


def dump_database(pg: PostgresServer, name: str, dump: Path) -> None:
    """Dump database ``name`` of ``pg`` and the server's roles into the folder ``dump``,
    for another worker's server (``restore_database``)."""
    if not XDIST_WORKER:
        return  # one process: no other server to restore it into
    dump.mkdir(parents=True, exist_ok=True)
    _pg_tool(pg, "pg_dumpall", "--roles-only", "-f", str(dump / "roles.sql"))
    _pg_tool(pg, "pg_dump", "-Fc", "-f", str(dump / "database.dump"), pg.libpq_url(name))


# (server port, database) built or restored by this process: only these are whole. A
# database of that name found on the server otherwise (an ingest or a restore that failed
# part-way) is dropped and made again.
_WHOLE_DATABASES: set[tuple[int, str]] = set()


def restore_database(pg: PostgresServer, name: str, dump: Path) -> str:
    """Database ``name`` on ``pg`` as ``dump_database`` left it (rows, sequences, grants),
    unless this process built (``mark_whole``) or restored it already; returns its URL.
    The restore goes into a temporary name, renamed only once pg_restore succeeded, so a
    restore that fails part-way never leaves a usable-looking ``name``. The roles are the
    cluster's, not the database's, so they go first."""
    import psycopg

    if (pg.port, name) in _WHOLE_DATABASES:
        return pg.url(name)
    restoring = f"{name}_restoring"
    pg.create_database(restoring)  # drops one a failed restore left
    _restore_roles(pg, dump / "roles.sql")
    _pg_tool(pg, "pg_restore", "--exit-on-error", "-d", pg.libpq_url(restoring),
             str(dump / "database.dump"))
    with psycopg.connect(pg.libpq_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # a half-built one
        conn.execute(f'ALTER DATABASE "{restoring}" RENAME TO "{name}"')
    mark_whole(pg, name)
    return pg.url(name)


def mark_whole(pg: PostgresServer, name: str) -> None:
    """Record that this process built database ``name`` on ``pg`` completely."""
    _WHOLE_DATABASES.add((pg.port, name))


def _restore_roles(pg: PostgresServer, roles: Path) -> None:
    """Create the roles of ``roles`` (pg_dumpall --roles-only) on ``pg``. The server has
    some already (its superuser; the app's roles from an earlier restore): those errors, and
    only those, are expected."""
    done = _pg_run(pg, "psql", "-q", "-v", "ON_ERROR_STOP=0", "-f", str(roles), pg.libpq_url())
    errors = [line for line in done.stderr.splitlines() if "ERROR:" in line or "FATAL:" in line]
    unexpected = [line for line in errors if not re.search(r"role .* already exists", line)]
    assert done.returncode == 0 and not unexpected, f"psql roles: {done.stderr[-2000:]}"


@pytest.fixture(scope="session")
def risk_templates(tmp_path_factory: pytest.TempPathFactory,
                   request: pytest.FixtureRequest) -> RiskTemplates:
    pg = None
    if find_postgres_bin_dir() is not None:
        pg = request.getfixturevalue("pg_server")
    return RiskTemplates(tmp_path_factory.mktemp("risk"), pg,
                         run_shared_dir(tmp_path_factory, "risk-shared"))


@dataclass(frozen=True, repr=False)  # a failing test would print the whole frame
class SmallRiskModel:
    """A credit_risk candidate trained and evaluated on a thousand labelled loans of the
    clean template (as a small co-operative's portfolio): seconds to publish."""

    training: TrainingSet
    trained: TrainedModel
    evaluation: Evaluation
    gates: GateResult


def risk_training_set(url: str) -> TrainingSet:
    """The risk training set of the warehouse at ``url`` as of ``RISK_AS_OF`` (shipped
    configs)."""
    from puhui.config import FeaturesConfig, ModelsConfig, load_config
    from puhui.risk.training_set import applicant_features, build_training_set
    from puhui.warehouse.engine import get_engine

    engine = get_engine(url)
    config_dir = load_settings().config_dir
    spec = load_config(config_dir, FeaturesConfig)
    model = load_config(config_dir, ModelsConfig).credit_risk
    return build_training_set(engine, spec, model,
                              applicant_features(engine, spec, date.fromisoformat(RISK_AS_OF)))


def small_portfolio(full: TrainingSet, draw: int) -> TrainingSet:
    """A co-operative's thousand labelled loans: ``full`` with its other labelled rows dropped
    (the unlabelled ones stay), drawn with seed ``draw``."""
    import copy

    import numpy as np

    training = copy.copy(full)
    labelled = full.frame.index[full.frame["label"].notna()]
    dropped = np.random.default_rng(draw).choice(labelled, len(labelled) - 1000, replace=False)
    training.frame = full.frame.drop(index=dropped).reset_index(drop=True)
    return training


@pytest.fixture(scope="session")
def small_risk_model(risk_templates: RiskTemplates,
                     tmp_path_factory: pytest.TempPathFactory) -> SmallRiskModel:
    """Built once per worker for the tests that publish one (in memory; each test publishes
    into its own home): the retried register step and the publisher's fence. The portfolio is
    test_risk_model's first small draw."""
    from puhui.config import FeaturesConfig, ModelsConfig, load_config
    from puhui.risk.evaluation import evaluate_risk_model
    from puhui.risk.gates import check_gates
    from puhui.risk.model import train_candidate
    from puhui.risk.training_set import TRAIN, VALID

    url, _ = risk_templates.copy("clean", "sqlite", tmp_path_factory.mktemp("small-risk"))
    training = small_portfolio(risk_training_set(url), draw=1)
    dispose_engines()
    config_dir = load_settings().config_dir
    spec = load_config(config_dir, FeaturesConfig)
    model = load_config(config_dir, ModelsConfig).credit_risk
    trained, benchmark = train_candidate(training.split(TRAIN), training.split(VALID),
                                         training.features, training.categorical, model)
    evaluation = evaluate_risk_model(training, trained, benchmark, model, spec)
    return SmallRiskModel(training, trained, evaluation, check_gates(evaluation, model.gates))


@pytest.fixture(params=["sqlite", "postgres"])
def dialect(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("pg_server")  # skips loudly without PostgreSQL binaries
    return request.param


def risk_env(templates: RiskTemplates, dataset: str, dialect: str, home: Path,
             monkeypatch: pytest.MonkeyPatch) -> str:
    """Point PUHUI_* at a private copy of an ingested risk dataset; returns the URL."""
    url, landing = templates.copy(dataset, dialect, home)
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", url)
    monkeypatch.setenv("PUHUI_LANDING", str(landing))
    return url


def no_search_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private copy of configs/ whose risk model has no search: one training per run."""
    import yaml

    configs = tmp_path / "configs"
    shutil.copytree(load_settings().config_dir, configs)
    models = yaml.safe_load((configs / "models.yaml").read_text())
    models["credit_risk"]["lightgbm"]["search"] = None
    (configs / "models.yaml").write_text(yaml.safe_dump(models, allow_unicode=True))
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(configs))


# --------------------------------------------------------------------------- the demo
DEMO_ARGS = ["--users", "1500", "--days", "3"]
# ~2 min on an idle machine; a shared one under a load of 20 took over 25 min.
DEMO_TIMEOUT = 2700


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def demo_env(home: Path) -> dict[str, str]:
    """The environment of a first-time user's demo: nothing of ours set but PUHUI_HOME.

    One difference a user does not have: it inherits the suite's ``OMP_WAIT_POLICY=PASSIVE``
    (set at the top of this file), so LightGBM's threads sleep instead of spinning while the
    other xdist worker and its servers share the 2 cores; the demo's timings here are the
    suite's, not what ``make demo`` takes. The policy changes no results."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PUHUI_", "PREFECT_API_URL", "MLFLOW_TRACKING_URI"))}
    env.update({"PUHUI_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
                "COLUMNS": "120"})
    return env


@dataclass(frozen=True)
class DemoRun:
    """A finished ``puhui demo`` child process: its exit code, what it printed on each
    stream, its PUHUI_HOME and its landing zone (outside the home)."""

    returncode: int
    stdout: str
    stderr: str
    home: Path
    landing: Path

    @property
    def output(self) -> str:
        """Both streams, as a pipe of both would hold them (stdout first)."""
        return self.stdout + self.stderr


@pytest.fixture(scope="session")
def piped_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One demo (the generator, Prefect, GX, warehouse, both models) with its output piped,
    shared by the tests that read it rather than each running its own (~2 min each). It is
    read-only for them; the first xdist worker to need it runs it, the other reuses it."""
    root = run_shared_dir(tmp_path_factory, "piped-demo") / "run"
    home, landing = root / "home", root / "landing"

    def run() -> None:
        root.mkdir(parents=True)
        env = {**demo_env(home), "PUHUI_LANDING": str(landing)}
        try:
            done = subprocess.run([sys.executable, "-m", "puhui", "demo", *DEMO_ARGS],
                                  env=env, cwd=repo_root(), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=DEMO_TIMEOUT,
                                  check=False)
            result = {"returncode": done.returncode, "stdout": done.stdout,
                      "stderr": done.stderr}
        except subprocess.TimeoutExpired as late:  # recorded: the other worker must not retry
            result = {"returncode": -1, "stdout": _text(late.stdout),
                      "stderr": _text(late.stderr) + f"\n(killed after {DEMO_TIMEOUT} s)"}
        (root.parent / "result.json").write_text(json.dumps(result))

    build_once(root, run)
    result = json.loads((root.parent / "result.json").read_text())
    return DemoRun(result["returncode"], result["stdout"], result["stderr"], home, landing)
