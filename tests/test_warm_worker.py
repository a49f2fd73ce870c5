"""What keeps `puhui run ingest` quick: what it imports, the deferred GX dependencies, and the
warm worker's rules for taking a command (its end-to-end run is in test_server.py, against a
real server)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from puhui.settings import repo_root
from puhui.warm_worker import disabled, import_time_environment, sources_changed_since

PRELOAD_PROBE = """
import sys, threading
from puhui.warm_worker import preload
preload()  # everything `run ingest` imports, as the warm worker does before it forks
print("heavy", *(m in sys.modules for m in ("mlflow", "lightgbm", "sklearn")))
print("threads", threading.active_count())
print("deferred", *(type(sys.modules[m]).__name__ for m in ("scipy.stats", "altair")))
import great_expectations.expectations.core.expect_column_kl_divergence_to_be_less_than as kl
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(4) as pool:  # first use from several threads at once: one real import
    values = set(pool.map(lambda _: round(kl.stats.entropy([0.5, 0.5], [0.25, 0.75]), 6),
                          range(8)))
print("entropy", *values)
print("real", type(sys.modules["scipy.stats"]).__name__, kl.alt.Chart.__name__)
"""


CHILD_EXIT_PROBE = """
import os, sys
import puhui.cli
from puhui.warm_worker import run_command_in_child

def closed(fd):
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False

def fds_closed():
    return 4 if not any(map(closed, (0, 1, 2))) and all(map(closed, given)) else 5

ends = {"none": lambda: sys.exit(), "three": lambda: sys.exit(3),
        "error": lambda: 1 / 0, "ctrl_c": lambda: os.kill(os.getpid(), 2), "fds": fds_closed}
for name, end in ends.items():
    given = [os.open(os.devnull, os.O_RDWR) for _ in range(3)]
    pid = os.fork()
    if pid == 0:
        puhui.cli.main = lambda _argv: end()
        run_command_in_child(["--help"], dict(os.environ), given)
    for fd in given:
        os.close(fd)
    print(name, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_command_run_in_a_forked_child_exits_with_the_interpreters_code() -> None:
    """The warm worker's child (b400e15): SystemExit(None) gave 1, Ctrl-C no 130, and the
    client's descriptors stayed open as fds 3-5. Forked in a fresh interpreter: a fork of
    the test session would run its atexit hooks."""
    probe = subprocess.run(
        [sys.executable, "-c", CHILD_EXIT_PROBE], capture_output=True, text=True, check=True,
        cwd=repo_root(), timeout=60,
    )
    codes = dict(line.split() for line in probe.stdout.splitlines())
    assert codes == {"none": "0", "three": "3", "error": "1", "ctrl_c": "130", "fds": "4"}


def test_ingest_imports_neither_mlflow_nor_lightgbm_and_defers_scipy() -> None:
    """Everything `run ingest` loads (the warm worker's preload: the ingest flow, GX, Prefect,
    the Data Docs renderer) leaves MLflow, LightGBM and scikit-learn alone, starts no thread
    (the worker forks), and GX's scipy.stats and altair load only when first used."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PUHUI_", "PREFECT_"))}
    done = subprocess.run([sys.executable, "-c", PRELOAD_PROBE], cwd=repo_root(), env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    assert lines["heavy"] == "False False False"
    assert lines["threads"] == "1"
    assert lines["deferred"] == "_DeferredModule _DeferredModule"
    assert lines["entropy"] == "0.143841"  # the same value from every thread
    assert lines["real"] == "module Chart"  # loaded on use, the stand-in gone


def test_worker_takes_only_what_its_imports_can_honour(tmp_path: Path) -> None:
    assert disabled({"PUHUI_WARM_WORKER": "off"}) and disabled({"PUHUI_WARM_WORKER": "0"})
    assert not disabled({}) and not disabled({"PUHUI_WARM_WORKER": "on"})
    # Prefect's and GX's variables must match; the console level is set per command.
    assert import_time_environment({
        "PREFECT_API_URL": "u", "GX_ANALYTICS_ENABLED": "false", "PUHUI_ACTOR": "a",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO", "HOME": "/root"}) == {
        "PREFECT_API_URL": "u", "GX_ANALYTICS_ENABLED": "false"}
    # Source files edited after the worker started: it runs stale code, so it is not used.
    for folder in ("puhui", "flows", "tasks"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "m.py").write_text("x = 1\n")
    started = time.time() + 5
    assert not sources_changed_since(started, tmp_path)
    os.utime(tmp_path / "flows" / "m.py", (started + 10, started + 10))
    assert sources_changed_since(started, tmp_path)


def test_one_page_view_renders_each_result_as_its_own(tmp_path: Path) -> None:
    """The GX page view is shared by every page of a process (templates compiled once); a page
    still shows only its own result."""
    from puhui.data_docs import _WARM_UP_RESULT, render_validation_page, warm_up_renderer

    warm_up_renderer()
    first = render_validation_page({**_WARM_UP_RESULT, "suite_name": "suite_alpha"})
    second = render_validation_page({**_WARM_UP_RESULT, "suite_name": "suite_beta",
                                     "results": _WARM_UP_RESULT["results"][:1], "success": True})
    assert "suite_alpha" in first and "suite_beta" not in first
    assert "suite_beta" in second and "suite_alpha" not in second
    assert first.count("expect_column_values_to_not_be_null") >= second.count(
        "expect_column_values_to_not_be_null")


@pytest.mark.parametrize("length", [40, 140])
def test_socket_address_handles_deep_directories(tmp_path: Path, length: int) -> None:
    """AF_UNIX paths stop at 107 bytes; a deep home (pytest's tmp dirs) still gets a socket."""
    import socket

    from puhui.warm_worker import _socket_address

    folder = tmp_path / ("d" * length)
    folder.mkdir()
    address, fd = _socket_address(folder / "warm.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(address)
        server.listen(1)
        assert (folder / "warm.sock").exists()
        client_address, client_fd = _socket_address(folder / "warm.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(client_address)
        if client_fd is not None:
            os.close(client_fd)
    finally:
        server.close()
        if fd is not None:
            os.close(fd)


def test_a_dead_workers_state_is_removed_and_a_live_one_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``read_worker`` removes the state file and socket a dead worker left (a worker killed
    with -9 cannot remove them itself); ``stop_worker`` ends a live one and removes them."""
    import json
    import socket

    from puhui.processes import pid_alive
    from puhui.settings import load_settings
    from puhui.warm_worker import SOCKET_FILE, STATE_FILE, read_worker, stop_worker

    monkeypatch.setenv("PUHUI_HOME", str(tmp_path))
    settings = load_settings()
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    state, sock = settings.prefect_home / STATE_FILE, settings.prefect_home / SOCKET_FILE

    def record(pid: int) -> None:
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(sock))  # a socket file left behind, as a killed worker leaves
        state.write_text(json.dumps({"pid": pid, "socket": str(sock), "started_at": 0.0,
                                     "executable": sys.executable, "root": "/"}))

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record(gone.pid)
    assert read_worker(settings) is None
    assert not state.exists() and not sock.exists()

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record(alive.pid)
        worker = read_worker(settings)
        assert worker is not None and worker.pid == alive.pid and state.exists()
        assert stop_worker(settings, timeout=10) == worker
        alive.wait(timeout=10)
        assert not pid_alive(alive.pid) and not state.exists() and not sock.exists()
    finally:
        if alive.poll() is None:
            alive.kill()
