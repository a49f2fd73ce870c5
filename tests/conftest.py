"""Shared fixtures: real services only (PostgreSQL, Prefect, MLflow), each isolated per run.

- ``pg_server``: one throwaway PostgreSQL per session from the machine's binaries.
- ``warehouse_url``: parametrized over SQLite and PostgreSQL; a fresh, empty database per test.
- ``puhui_env``: an isolated PUHUI_HOME (and everything under it) per test.
- ``prefect_harness``: Prefect's test harness, once per session, with a temp PREFECT_HOME.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

# Quiet, offline defaults before any test imports Prefect, GX or MLflow.
from puhui.settings import QUIET_ENVIRONMENT, load_settings

for _name, _value in QUIET_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="puhui-test-session-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.pop("PREFECT_API_URL", None)

from puhui.throwaway_postgres import PostgresServer, find_postgres_bin_dir, throwaway_postgres  # noqa: E402
from puhui.warehouse.engine import dispose_engines  # noqa: E402

TEST_PSEUDONYM_KEY = "test-key-" + "0123456789abcdef" * 3
# The audit chain's key for every test (and the commands they start); tests of a missing or
# wrong key set their own.
TEST_AUDIT_KEY = "test-audit-key-" + "fedcba9876543210" * 3
os.environ["PUHUI_AUDIT_KEY"] = TEST_AUDIT_KEY


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


@pytest.fixture
def puhui_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated PUHUI_HOME with the embedded defaults; returns the home path."""
    home = tmp_path / "home"
    monkeypatch.setenv("PUHUI_HOME", str(home))
    monkeypatch.setenv("PUHUI_PSEUDONYM_KEY", TEST_PSEUDONYM_KEY)
    monkeypatch.setenv("PUHUI_ACTOR", "test-runner")
    for name in ("PUHUI_WAREHOUSE_URL", "MLFLOW_TRACKING_URI", "PUHUI_LANDING", "PUHUI_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


# --------------------------------------------------------------------------- risk model data
# Landing zones big enough to train on (a year and a half of history), ingested once per
# dialect into a template; each test gets its own copy, so tests never share state.
RISK_AS_OF = "2026-09-30"
RISK_DATASETS = {
    "clean": {"users": 4000, "penalize_segment": None},
    "penalized_rural": {"users": 4000, "penalize_segment": "rural"},
    "drifted": {"users": 4000, "penalize_segment": None, "drift": True},
}


def _ingest_all(as_of: str) -> None:
    """Every configured feed, in plain Python (the ingest flow's tests cover Prefect)."""
    from puhui.ingest.feeds import ingest_all_feeds
    from puhui.runtime import open_runtime

    ingest_all_feeds(open_runtime(), date.fromisoformat(as_of))


class RiskTemplates:
    """Ingested risk datasets, one template per (dataset, dialect), built on first use."""

    def __init__(self, root: Path, pg: PostgresServer | None) -> None:
        self.root, self.pg = root, pg
        self._built: dict[tuple[str, str], str] = {}

    def _build(self, dataset: str, dialect: str) -> str:
        from puhui.generate import generate_landing_zone

        landing = self.root / f"landing-{dataset}"
        if not landing.exists():
            spec = RISK_DATASETS[dataset]
            generate_landing_zone(landing, users=spec["users"], days=2, seed=7,
                                  history_days=540, end_date=date.fromisoformat(RISK_AS_OF),
                                  penalize_segment=spec["penalize_segment"],
                                  drift=spec.get("drift", False))
        home = self.root / f"home-{dataset}-{dialect}"
        if dialect == "sqlite":
            url = f"sqlite:///{home / 'warehouse.db'}"
        else:
            assert self.pg is not None
            url = self.pg.create_database(f"tpl_{dataset}")
        saved = {k: os.environ.get(k) for k in ("PUHUI_HOME", "PUHUI_WAREHOUSE_URL",
                                               "PUHUI_LANDING", "PUHUI_PSEUDONYM_KEY")}
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
        return url

    def copy(self, dataset: str, dialect: str, target: Path) -> tuple[str, Path]:
        """A private copy of the ingested warehouse; returns (url, landing zone)."""
        import shutil

        key = (dataset, dialect)
        if key not in self._built:
            self._built[key] = self._build(dataset, dialect)
        landing = self.root / f"landing-{dataset}"
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


@pytest.fixture(scope="session")
def risk_templates(tmp_path_factory: pytest.TempPathFactory,
                   request: pytest.FixtureRequest) -> RiskTemplates:
    pg = None
    if find_postgres_bin_dir() is not None:
        pg = request.getfixturevalue("pg_server")
    return RiskTemplates(tmp_path_factory.mktemp("risk"), pg)


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
    import shutil

    import yaml

    configs = tmp_path / "configs"
    shutil.copytree(load_settings().config_dir, configs)
    models = yaml.safe_load((configs / "models.yaml").read_text())
    models["credit_risk"]["lightgbm"]["search"] = None
    (configs / "models.yaml").write_text(yaml.safe_dump(models, allow_unicode=True))
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(configs))
