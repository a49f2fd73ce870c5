"""A pre-imported parent that forks the crash test's ``puhui`` commands.

A fresh ``python -m puhui run train risk`` spends ~7 s importing Prefect, MLflow, LightGBM
and scikit-learn before it trains; the crash test's SQLite case killed six of them. This
process imports them once; each command is then a child forked from it that runs the very
same CLI code (``puhui.cli.main``) with its own environment, so a ``PUHUI_CRASH_AT`` kill
still ends a real, separate process, and one killed from outside is a real process too.

Safety of ``fork`` as in ``puhui.warm_worker``: this parent only imports (no thread, no
connection; checked before it says it is ready). Prefect reads its settings once, at import:
so, as the warm worker, the parent first applies the CLI's own setup (``configure_runtime``:
quiet defaults and ``PREFECT_HOME``; ``choose_prefect_target``: a running server's
``PREFECT_API_URL``), then imports, and refuses a command whose Prefect/GX/MLflow environment
after that same setup differs from its own (MLflow configures its logging at import).

Protocol (JSON lines on stdin/stdout): ``ready`` once; then per request ``{"argv", "env",
"out", "err"}`` the reply ``{"pid"}`` at once and ``{"returncode"}`` (``-9``: SIGKILL) when the
child ended, or ``{"error"}`` alone for a refused request.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

# What `run train risk` imports on its way (lazily imported ones included); a module left
# out is imported by the child itself: slower, not wrong.
PRELOAD = (
    "puhui.cli",
    "puhui.pipeline",
    "flows.train",
    "tasks.train",
    "puhui.risk.report",
    "mlflow",
    "mlflow.pyfunc",
    "mlflow.models",
    "lightgbm",
    "sklearn.linear_model",
    "sklearn.isotonic",
    "sklearn.metrics",
    "scipy.stats",
    "prefect.artifacts",
    "fastapi.encoders",
    "prefect.utilities.visualization",
    "prefect.concurrency.sync",
    "anyio._backends._asyncio",
    "jinja2.ext",
    "typer",
)
# The longest a command may run (as the subprocess's timeout was).
COMMAND_TIMEOUT = 600.0
# MLflow reads these at each call (``mlflow.get_tracking_uri``), not at import, and each test
# has its own store; its other variables are compared (``MLFLOW_CONFIGURE_LOGGING`` and
# ``MLFLOW_LOGGING_LEVEL`` are read at import, and the parent preloads MLflow).
# ``mlflow.set_experiment`` writes MLFLOW_EXPERIMENT_ID into the test's environment (read at
# each run start): a server started before a test's registrations refused every command.
_MLFLOW_PER_COMMAND = frozenset(
    {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"}
)


def _effective_environment(environ: dict[str, str]) -> dict[str, str]:
    """The Prefect/GX/MLflow variables a command run with ``environ`` has when it imports
    them (after the CLI's setup, as ``puhui.warm_worker.delegate`` computes Prefect's and
    GX's); this process's own environment is left as it was."""
    from puhui.prefect_server import choose_prefect_target
    from puhui.settings import configure_runtime, load_settings
    from puhui.warm_worker import import_time_environment

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(environ)
        settings = load_settings()
        configure_runtime(settings)
        choose_prefect_target(settings)
        mlflow = {
            k: v
            for k, v in os.environ.items()
            if k.startswith("MLFLOW_") and k not in _MLFLOW_PER_COMMAND
        }
        return {**import_time_environment(os.environ), **mlflow}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _serve(preload: tuple[str, ...]) -> None:
    from puhui.warm_worker import run_command_in_child

    environment = _effective_environment(dict(os.environ))
    # Prefect, imported below, keeps what it reads now: the commands' effective values.
    os.environ.update(environment)
    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError:  # moved in a newer library: the child imports what it needs
            continue
    gc.freeze()  # the children do not copy the imported pages by walking them
    if threading.active_count() != 1:
        raise SystemExit("forkserver: an import started threads; forking would be unsafe")
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        wanted = _effective_environment(request["env"])
        if wanted != environment:
            differing = sorted(
                k for k in wanted.keys() | environment.keys() if wanted.get(k) != environment.get(k)
            )
            refusal = (  # names only: a value may be a secret
                "forkserver: the command's import-time environment differs from the parent's "
                f"in {', '.join(differing)}; start a ForkServer with that environment"
            )
            print(json.dumps({"error": refusal}), flush=True)
            continue
        # stdin from /dev/null, stdout and stderr to the request's files
        fds = [os.open(os.devnull, os.O_RDONLY)]
        fds += [
            os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            for name in ("out", "err")
        ]
        pid = os.fork()
        if pid == 0:
            run_command_in_child(request["argv"], request["env"], fds)  # never returns
        for fd in fds:
            os.close(fd)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


class ForkServer:
    """The test's side: start it (with the commands' environment), then run commands."""

    def __init__(
        self, env: dict[str, str], folder: Path, preload: tuple[str, ...] = PRELOAD
    ) -> None:
        """``preload``: the modules the parent imports (the commands' own; default: those
        of ``run train risk``)."""
        self.folder = folder
        root = Path(__file__).resolve().parents[1]
        # Its own session: ``close`` ends it with whatever it forked (a failed test's command).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver", *preload],
            env=env,
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in, self._out = self.process.stdin, self.process.stdout.fileno()
        self._buffer = b""  # read unbuffered: ``finished`` polls the pipe itself
        self._ready = False
        self._running = False
        self._broken = ""  # why the parent can take no more commands
        self._count = 0

    def _read(self, timeout: float = COMMAND_TIMEOUT) -> str:
        """The parent's next line, waiting at most ``timeout`` s."""
        while b"\n" not in self._buffer:
            if not select.select([self._out], [], [], timeout)[0]:
                raise TimeoutError(f"forkserver: nothing from the command in {timeout:.0f} s")
            chunk = os.read(self._out, 4096)
            if not chunk:
                self._kill_group()  # a command it forked would run on, orphaned
                raise RuntimeError(f"forkserver ended (exit {self.process.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def _reply(self, key: str, timeout: float = COMMAND_TIMEOUT) -> int:
        """The parent's next reply, which must carry ``key``; its refusal is raised as is."""
        line = self._read(timeout)
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        if key not in reply:
            raise RuntimeError(f"forkserver: expected {key!r} from the parent, got {line!r}")
        return int(reply[key])

    def start(self, argv: list[str], env: dict[str, str]) -> int:
        """Fork ``puhui ARGV`` and return its pid (``finish`` gives its exit)."""
        if self._broken:
            raise RuntimeError(f"forkserver: no more commands: {self._broken}")
        if self._running:  # a test that failed before ``finish``: its command must not run on
            self._abandon()
        if not self._ready:
            assert self._read() == "ready"
            self._ready = True
        self._count += 1
        self.argv = argv
        self.out = self.folder / f"command{self._count}.out"
        self.err = self.folder / f"command{self._count}.err"
        self._in.write(
            json.dumps(
                {"argv": argv, "env": env, "out": str(self.out), "err": str(self.err)}
            ).encode()
            + b"\n"
        )
        self._in.flush()
        self.pid = self._reply("pid")
        self._running = True
        return self.pid

    def _abandon(self) -> int | None:
        """SIGKILL the last command and read its exit, so the parent's next reply is the next
        command's; a parent that does not give it is ended (and the server refuses more)."""
        with contextlib.suppress(ProcessLookupError):  # ended (and reaped) meanwhile
            os.kill(self.pid, signal.SIGKILL)
        self._running = False
        try:
            return self._reply("returncode", 60)
        except (TimeoutError, RuntimeError, ValueError) as error:
            self._broken = f"the parent did not report a killed command's exit ({error})"
            self._kill_group()
            return None

    def finished(self) -> bool:
        """Whether the last command has ended (and been reaped), without waiting."""
        return b"\n" in self._buffer or bool(select.select([self._out], [], [], 0)[0])

    def finish(self, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        """The last command's exit (negative: killed by that signal) and its output; one
        still running after ``timeout`` s is killed (as subprocess.run's timeout did) and
        raises ``TimeoutError``, its exit read so that the next command starts clean."""
        try:
            code = self._reply("returncode", timeout)
        except TimeoutError:
            exit_code = self._abandon()
            ended = self._broken if exit_code is None else f"exit {exit_code}"
            raise TimeoutError(
                f"forkserver: `puhui {' '.join(self.argv)}` still ran after "
                f"{timeout:.0f} s; killed ({ended})"
            ) from None
        self._running = False
        return subprocess.CompletedProcess([], code, self.out.read_text(), self.err.read_text())

    def run(
        self, argv: list[str], env: dict[str, str], timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess:
        self.start(argv, env)
        return self.finish(timeout)

    def _kill_group(self) -> None:
        """SIGKILL the parent and every command it forked (its session's process group; the
        parent is not reaped yet, so its id still names that group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def close(self) -> None:
        """End the parent, and a command still running (a failed or interrupted test's),
        which would otherwise go on writing into the next test's servers."""
        self._in.close()
        if self._running:
            self._kill_group()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._kill_group()
            self.process.wait()


if __name__ == "__main__":
    _serve(tuple(sys.argv[1:]) or PRELOAD)
