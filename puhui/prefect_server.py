"""A local Prefect server (API and UI) under ``PUHUI_HOME``, and which server a command uses.

``puhui server start`` runs ``prefect server start`` as a detached process with its own
``PREFECT_HOME`` (``$PUHUI_HOME/prefect``: its SQLite database, the UI build), on 127.0.0.1 and
a free or configured port, and writes a state file (pid, port) and a log file beside it.
Every other ``puhui`` command looks at that state file (no Prefect import, no network beyond
one local health check) and points ``PREFECT_API_URL`` at the server when it runs, so flows
skip the 8-17 s start of a temporary server and their runs stay visible in the UI.

Nothing here imports Prefect: read-only commands call this module too and must stay fast.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from puhui.errors import PuhuiError
from puhui.privacy import printable
from puhui.processes import pid_alive, stop_process
from puhui.settings import Settings

HOST = "127.0.0.1"
DEFAULT_PORT = 4200
PORT_ENV = "PUHUI_PREFECT_PORT"
STATE_FILE = "server.json"
LOG_FILE = "server.log"
START_TIMEOUT_SECONDS = 180.0  # a first start builds the UI and migrates the database


@dataclass(frozen=True)
class ServerInfo:
    """A server started by ``puhui server start``."""

    pid: int
    port: int
    log: Path

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"


@dataclass(frozen=True)
class PrefectTarget:
    """The Prefect API a command talks to, and the one line that says so."""

    kind: str  # "server" (puhui server start), "external" (PREFECT_API_URL), "ephemeral"
    api_url: str | None
    line: str

    @property
    def ephemeral(self) -> bool:
        return self.kind == "ephemeral"


def _state_path(settings: Settings) -> Path:
    return settings.prefect_home / STATE_FILE


def read_server(settings: Settings) -> ServerInfo | None:
    """The server recorded under ``PUHUI_HOME`` if its process is alive (stale state removed)."""
    path = _state_path(settings)
    try:
        state = json.loads(path.read_text())
        info = ServerInfo(int(state["pid"]), int(state["port"]), Path(state["log"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not pid_alive(info.pid):
        path.unlink(missing_ok=True)
        return None
    return info


def is_healthy(api_url: str, timeout: float = 1.0) -> bool:
    """True if the Prefect API at ``api_url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as reply:
            return reply.status == 200 and reply.read().strip() == b"true"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def port_number(text: str, source: str) -> int:
    """A TCP port from ``source``: ASCII digits, 1-65535. `int` took 'abc' as a ValueError
    and 99999 or -1 as bind's OverflowError, both naming no setting, full-width '１２３' as
    port 123 and 5,000 digits as its own "Exceeds the limit" error. 0 is refused too: it was
    never documented, and read as unset by accident (leave the setting out for 4200 or a
    free port)."""
    text = text.strip()
    if not (len(text) <= 5 and text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        unset = " (leave it out to get 4200 or a free port)" if text == "0" else ""
        raise PuhuiError(f"{source} must be a port number from 1 to 65535{unset}, "
                         f"not '{printable(text[:40])}'")
    return int(text)


def choose_port(requested: int | None = None) -> int:
    """``requested`` (or ``PUHUI_PREFECT_PORT``) if free, else 4200 if free, else any free port."""
    configured = (port_number(str(requested), "--port") if requested is not None
                  else port_number(os.environ[PORT_ENV], PORT_ENV) if os.environ.get(PORT_ENV)
                  else None)
    if configured:
        if not _port_free(configured):
            raise PuhuiError(f"port {configured} on {HOST} is in use: pick another with --port "
                             f"or {PORT_ENV}, or stop what listens there")
        return configured
    if _port_free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def server_environment(settings: Settings, port: int) -> dict[str, str]:
    """The server's environment: its own home and database, UI on, nothing phoning home."""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # the server is not a client of another one
    env.update({
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_UI_ENABLED": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": env.get("PREFECT_SERVER_LOGGING_LEVEL", "WARNING"),
    })
    return env


def start_server(settings: Settings, port: int | None = None,
                 timeout: float = START_TIMEOUT_SECONDS,
                 on_launch: Callable[[ServerInfo], None] | None = None,
                 ) -> tuple[ServerInfo, bool]:
    """Start the server (or find it running); wait until it is healthy.

    ``on_launch`` is called once the process is started, before the wait (to start what
    can start alongside). Returns the server and whether this call started it.
    """
    running = read_server(settings)
    if running is not None:
        if not _wait_healthy(running, timeout):
            raise PuhuiError(f"a Prefect server (pid {running.pid}) is recorded but does not "
                             f"answer at {running.api_url}; see {running.log} or "
                             "'puhui server stop'")
        return running, False
    chosen = choose_port(port)
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    log = settings.prefect_home / LOG_FILE
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", HOST,
             "--port", str(chosen)],
            env=server_environment(settings, chosen), cwd=settings.prefect_home,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # survives this command; stopped as a process group
        )
    info = ServerInfo(process.pid, chosen, log)
    _state_path(settings).write_text(json.dumps(
        {"pid": info.pid, "port": info.port, "log": str(log), "started_at": time.time()}))
    if on_launch is not None:
        on_launch(info)
    if not _wait_healthy(info, timeout, process):
        stop_server(settings)
        raise PuhuiError(f"the Prefect server did not become healthy within {timeout:.0f}s: "
                         f"{_last_log_line(log)} (log: {log})")
    return info, True


def _wait_healthy(info: ServerInfo, timeout: float,
                  process: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_healthy(info.api_url, timeout=2.0):
            return True
        if process is not None and process.poll() is not None:
            return False
        if process is None and not pid_alive(info.pid):
            return False
        time.sleep(0.3)
    return False


def _last_log_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip()[:300] if lines else "the log is empty"


def stop_server(settings: Settings, timeout: float = 30.0) -> ServerInfo | None:
    """Stop the recorded server (its whole process group); None if none was running."""
    info = read_server(settings)
    if info is None:
        _state_path(settings).unlink(missing_ok=True)
        return None
    # The server was started as the leader of its own group: stop the group.
    stop_process(info.pid, timeout, group=True)
    _state_path(settings).unlink(missing_ok=True)
    return info


def choose_prefect_target(settings: Settings) -> PrefectTarget:
    """Which Prefect API this process uses; points ``PREFECT_API_URL`` at a running server.

    An operator's ``PREFECT_API_URL`` wins. Otherwise the server of ``puhui server start``
    under this ``PUHUI_HOME`` if it runs, else Prefect's temporary (ephemeral) server, which
    each command starts for itself. Call before Prefect is imported: it reads its settings
    once.
    """
    external = os.environ.get("PREFECT_API_URL")
    if external:
        return PrefectTarget("external", external, f"Prefect: server at {external} "
                             "(PREFECT_API_URL)")
    info = read_server(settings)
    if info is not None:
        os.environ["PREFECT_API_URL"] = info.api_url
        return PrefectTarget("server", info.api_url, f"Prefect: local server {info.ui_url} "
                             f"(pid {info.pid}; UI there)")
    return PrefectTarget("ephemeral", None, "Prefect: temporary server for this command "
                         "('puhui server start' keeps one running, with its UI)")


def ensure_process_work_pools(api_url: str, names: list[str]) -> list[str]:
    """Create the process work pools ``prefect.yaml`` deploys to, if missing; returns the new.

    ``prefect deploy`` refuses a deployment whose pool does not exist, and Prefect's own CLI
    fills in the process worker's job template, so it creates them.
    """
    created = []
    for name in names:
        try:
            # A just-started server on a loaded machine answers in tens of seconds.
            with urllib.request.urlopen(f"{api_url}/work_pools/{name}", timeout=60):
                continue  # exists
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise PuhuiError(f"work pool {name!r}: the server answered {exc.code}") from None
        env = dict(os.environ, PREFECT_API_URL=api_url)
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "work-pool", "create", name, "--type", "process"],
            env=env, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PuhuiError(f"could not create the work pool {name!r}: {last[0]}")
        created.append(name)
    return created
