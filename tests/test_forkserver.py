"""The crash test's fork parent (tests/forkserver.py): one parent serves several tests, so a
command that timed out or was refused must leave it ready for the next one."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.forkserver import ForkServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ForkServer]:
    # The CLI only: its commands import the rest themselves (a stopped one never gets there).
    forks = ForkServer(dict(os.environ), tmp_path, ("puhui.cli",))
    yield forks
    forks.close()


def test_a_timed_out_command_is_killed_and_the_next_one_gets_its_own_reply(
    server: ForkServer,
) -> None:
    # `models list` imports MLflow (seconds); stopped at once, it can only time out.
    pid = server.start(["models", "list"], dict(os.environ))
    os.kill(pid, signal.SIGSTOP)
    with pytest.raises(TimeoutError) as timed_out:
        server.finish(timeout=1)
    # The killed command's exit was read: the next reply is the next command's own (it was
    # read as the next pid: `KeyError: 'pid'`).
    ran = server.run(["--help"], dict(os.environ))
    assert ran.returncode == 0 and "Usage" in ran.stdout, ran.stderr
    assert "`puhui models list` still ran after 1 s; killed (exit -9)" in str(timed_out.value)


def test_a_different_mlflow_import_time_variable_is_refused_by_name(server: ForkServer) -> None:
    # MLflow sets up its logging at import, from the parent's environment.
    with pytest.raises(RuntimeError, match=r"differs from the parent's in MLFLOW_LOGGING_LEVEL;"):
        server.run(["--help"], {**os.environ, "MLFLOW_LOGGING_LEVEL": "DEBUG"})
    # Where MLflow stores is read per call (each test has its own): not a refusal.
    other_store = {**os.environ, "MLFLOW_TRACKING_URI": "sqlite:////nonexistent/mlflow.db"}
    assert server.run(["--help"], other_store).returncode == 0
