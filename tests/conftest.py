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
from pathlib import Path

import pytest

# Quiet, offline defaults before any test imports Prefect, GX or MLflow.
from puhui.settings import QUIET_ENVIRONMENT

for _name, _value in QUIET_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="puhui-test-session-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.pop("PREFECT_API_URL", None)

from puhui.throwaway_postgres import PostgresServer, find_postgres_bin_dir, throwaway_postgres  # noqa: E402
from puhui.warehouse.engine import dispose_engines  # noqa: E402

TEST_PSEUDONYM_KEY = "test-key-" + "0123456789abcdef" * 3


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
