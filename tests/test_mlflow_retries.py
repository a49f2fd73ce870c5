"""A pipeline step retries a tracking server's transient failure (5xx, 429, a reset
connection), never a 4xx or a data error. Before, only database and connection errors were
retried: a 503 from the tracking server in a step (the gate re-check) failed the run.

The server is a tiny real HTTP server speaking MLflow's REST paths (a tracking server, a
restart and a proxy in one): MLflow's own client, HTTP session and exceptions are real, and
the steps are real Prefect task runs with the pipeline's step options.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect.states import State

from tasks.retries import step_options

_SEARCH_MODELS = "/api/2.0/mlflow/registered-models/search"
_SEARCH_EXPERIMENTS = "/api/2.0/mlflow/experiments/search"
_GET_MODEL = "/api/2.0/mlflow/registered-models/get"


class _Flaky(BaseHTTPRequestHandler):
    """503 twice then the answer for model searches; a reset connection once for experiment
    searches; 404 (MLflow's JSON error) for a model lookup; 429 for everything else, always."""

    hits: Counter[str] = Counter()

    def _answer(self) -> None:
        path = self.path.split("?")[0]
        self.hits[path] += 1
        if path == _SEARCH_MODELS and self.hits[path] <= 2:
            self._send(503, b"<html>upstream restarting</html>", "text/html")
        elif path == _SEARCH_MODELS:
            self._send(200, json.dumps({"registered_models": []}).encode())
        elif path == _SEARCH_EXPERIMENTS and self.hits[path] == 1:
            # An RST, as a server killed mid-request or a proxy dropping it sends.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
        elif path == _SEARCH_EXPERIMENTS:
            self._send(200, json.dumps({"experiments": []}).encode())
        elif path == _GET_MODEL:
            self._send(404, json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST",
                                        "message": "Registered Model not found"}).encode())
        else:
            self._send(429, b"slow down", "text/plain")

    do_GET = do_POST = _answer

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # quiet: the counts are what matter
        pass


@pytest.fixture
def flaky_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # MLflow's own HTTP retries off (each costs seconds of backoff): the step's retries are
    # what is tested, as when MLflow's are spent.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    _Flaky.hits = Counter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_step_retries_a_tracking_server_s_5xx_and_reset_but_not_a_4xx_or_bad_data(
    flaky_server: str, prefect_harness: None
) -> None:
    from mlflow import MlflowClient
    from prefect import flow, task

    @task(**step_options(0))
    def ask(what: str) -> object:
        client = MlflowClient(tracking_uri=flaky_server, registry_uri=flaky_server)
        if what == "bad data":
            raise ValueError("column amount: not a number")
        return {"models": client.search_registered_models,
                "experiments": client.search_experiments,
                "missing": lambda: client.get_registered_model("nope"),
                "throttled": lambda: client.get_model_version("m", "1")}[what]()

    @flow
    def steps(what: str) -> object:
        return ask(what)

    def step(what: str) -> State:
        return steps(what, return_state=True)

    assert step("models").is_completed() and _Flaky.hits[_SEARCH_MODELS] == 3
    assert step("experiments").is_completed() and _Flaky.hits[_SEARCH_EXPERIMENTS] == 2
    assert step("missing").is_failed() and _Flaky.hits[_GET_MODEL] == 1  # a 404: once
    assert step("bad data").is_failed()
    throttled = step("throttled")  # a 429 every time: retried twice, then it fails
    assert throttled.is_failed() and sum(
        n for p, n in _Flaky.hits.items() if p.endswith("model-versions/get")) == 3
