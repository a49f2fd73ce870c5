"""A throwaway local MLflow tracking server (``mlflow server``) over a given backend store, for
tests and benches of puhui reading the registry through HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from puhui.processes import stop_process


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_mlflow_server(backend_uri: str, artifacts: Path, log: Path,
                          timeout: float = 120.0) -> Iterator[str]:
    """An ``mlflow server`` on ``backend_uri`` until the block ends; yields its URL. Its
    access log (one line per request) goes to ``log``."""
    port = _free_port()
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
             "--default-artifact-root", str(artifacts), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        stop_process(server.pid, 15, group=True)
        server.wait(timeout=30)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def requests_logged(log: Path, url: str, since: int) -> str:
    """The server's access-log lines from offset ``since`` on, once every request made
    before this call is in it (the server logs a request after answering it: a health check
    of its own, logged last, marks the end)."""
    healthy(url)
    deadline = time.monotonic() + 10
    while True:
        text = log.read_text()[since:]
        if "GET /health" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)
