"""A warm process that runs `puhui run ingest` for the CLI while `puhui server` runs.

A one-shot `puhui run ingest` of a small file spends about 70 % of its time importing
Prefect, Great Expectations, pandas and Arrow. `puhui server start` therefore also starts this
worker: it imports them once and listens on a Unix socket beside the server's state
(``$PUHUI_HOME/prefect/warm.sock``, mode 600, same user only). The CLI sends its arguments,
working directory, environment and its stdin/stdout/stderr (passed as file descriptors); the
worker forks a child that runs the very same CLI code on those descriptors, so the output, the
progress bars, the exit code and Ctrl-C behave as if the command ran in the terminal's own
process. Each run is a fresh forked process: nothing carries over from one run to the next.

Safety of ``fork``: the parent only imports modules; it starts no Python thread and opens no
connection (checked before it listens), so a child never inherits a half-held lock. The one
native thread, jemalloc's background thread in Arrow, is fork-safe: jemalloc brings its own
fork handlers (Redis forks with it for every snapshot). Anything
the warm imports cannot honour falls back to the ordinary in-process run, decided before any
work starts: a different Prefect/GX environment (Prefect reads its settings once, at import),
another checkout or interpreter, source files changed since the worker started, or
``PUHUI_WARM_WORKER=off``.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from puhui.files import write_text_atomically
from puhui.processes import pid_alive, stop_process
from puhui.settings import Settings, repo_root

STATE_FILE = "warm.json"
SOCKET_FILE = "warm.sock"
LOG_FILE = "warm.log"
DISABLE_ENV = "PUHUI_WARM_WORKER"
# The commands the worker runs; everything else runs in the command's own process.
WARM_COMMANDS = (("run", "ingest"),)
# Environment read at import time by what the worker preloads: Prefect builds its settings
# once, GX its analytics switch. A client whose values differ runs in its own process. The
# console level is set per command (--verbose) on Prefect's handlers, after import.
_IMPORT_TIME_PREFIXES = ("PREFECT_", "GX_")
_PER_COMMAND = frozenset({"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"})
_SOURCE_DIRS = ("puhui", "flows", "tasks")
READY_TIMEOUT_SECONDS = 180.0  # imports take seconds alone, a minute on a loaded machine


@dataclass(frozen=True)
class WarmWorker:
    pid: int
    socket: Path
    started_at: float
    executable: str
    root: str


def _state_path(settings: Settings) -> Path:
    return settings.prefect_home / STATE_FILE


def disabled(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    return environ.get(DISABLE_ENV, "").strip().lower() in ("0", "off", "false", "no")


def read_worker(settings: Settings) -> WarmWorker | None:
    """The worker recorded for this ``PUHUI_HOME``, if its process is alive; a dead one's
    state file and socket are removed (as ``read_server`` removes a dead server's)."""
    path = _state_path(settings)
    try:
        state = json.loads(path.read_text())
        worker = WarmWorker(int(state["pid"]), Path(state["socket"]),
                            float(state["started_at"]), str(state["executable"]),
                            str(state["root"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not pid_alive(worker.pid):
        _remove_state(settings, worker)
        return None
    return worker


def _remove_state(settings: Settings, worker: WarmWorker) -> None:
    _state_path(settings).unlink(missing_ok=True)
    worker.socket.unlink(missing_ok=True)


def import_time_environment(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The variables a warm import has already read (they must match the client's)."""
    return {k: v for k, v in environ.items()
            if k.startswith(_IMPORT_TIME_PREFIXES) and k not in _PER_COMMAND}


def sources_changed_since(moment: float, root: Path | None = None) -> bool:
    """True if a source file of this checkout is newer than ``moment`` (a stale warm import)."""
    root = root or repo_root()
    for folder in _SOURCE_DIRS:
        for path in (root / folder).rglob("*.py"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime > moment:
                    return True
    return False


# --------------------------------------------------------------------------- wire format
def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    conn.sendall(struct.pack("!I", len(data)) + data)


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = conn.recv(size)
        if not chunk:
            raise ConnectionError("the other end closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _receive(conn: socket.socket) -> dict[str, Any]:
    (size,) = struct.unpack("!I", _recv_exact(conn, 4))
    return json.loads(_recv_exact(conn, size))


def _socket_address(path: Path) -> tuple[str, int | None]:
    """An AF_UNIX address for ``path``; a long path (a deep temporary directory) goes through
    an open descriptor of its folder, since socket paths are limited to 107 bytes."""
    if len(os.fsencode(path)) < 100:
        return str(path), None
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{folder}/{path.name}", folder


# --------------------------------------------------------------------------- client side
def delegate(argv: list[str], command: list[str]) -> int | None:
    """Run the CLI ``argv`` in the warm worker and return its exit code, or None when the
    worker cannot take it (the caller then runs the command itself).

    ``command`` is argv without the global flags, to see which command this is. None is
    only returned before the worker has started anything.
    """
    if tuple(command[:2]) not in WARM_COMMANDS or disabled() or "--help" in command:
        return None
    from puhui.prefect_server import choose_prefect_target
    from puhui.settings import configure_runtime, load_settings

    try:
        settings = load_settings()
    except Exception:  # noqa: BLE001 - the command itself reports bad settings
        return None
    worker = read_worker(settings)
    if (worker is None or worker.executable != sys.executable
            or worker.root != str(repo_root())
            or sources_changed_since(worker.started_at)):
        return None
    # The environment the command's imports would see: quiet defaults and the server's API
    # URL, as the command sets them first. Computed, then undone: the child (or this process,
    # on a fallback) sets them again itself and says which server it uses.
    raw = dict(os.environ)
    try:
        configure_runtime(settings)
        target = choose_prefect_target(settings)
        effective = import_time_environment(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(raw)
    if target.kind != "server":
        return None
    return _run_in_worker(worker, argv, raw, effective)


def _run_in_worker(worker: WarmWorker, argv: list[str], env: dict[str, str],
                   effective: dict[str, str]) -> int | None:
    address, folder = _socket_address(worker.socket)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(5.0)
        conn.connect(address)
        socket.send_fds(conn, [b"F"], [0, 1, 2])
        _send(conn, {"argv": argv, "cwd": os.getcwd(), "env": env, "effective": effective})
        conn.settimeout(120.0)
        reply = _receive(conn)
    except (OSError, ValueError, ConnectionError):
        conn.close()
        return None  # nothing was started: the command runs in this process
    finally:
        if folder is not None:
            os.close(folder)
    if not reply.get("ok"):
        conn.close()
        return None
    child = int(reply["pid"])

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    conn.settimeout(None)
    code: int | None = None
    try:
        while True:
            try:
                message = _receive(conn)
            except (ConnectionError, OSError, ValueError):
                break  # the child exited (after sending its code, or it crashed)
            if "rc" in message:
                code = int(message["rc"])
    finally:
        conn.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code is None:
        print(f"puhui: error: the warm worker's run (pid {child}) ended without an exit "
              f"code; {DISABLE_ENV}=off runs commands without it", file=sys.stderr)
        return 1
    return code


# --------------------------------------------------------------------------- worker side
# What a run imports on its way, beyond flows.ingest and GX (found by comparing sys.modules
# before and after a run): Prefect loads FastAPI's encoder for the parameters, its graph
# visualisation and its concurrency limits lazily; the CLI needs Typer. Only modules no other
# entry (nor GX) imports already: GX's engine and renderers, prefect.runtime, OpenTelemetry's
# metrics, Rich's progress and tables and puhui.ingest.batches come with them (the preloaded
# sys.modules is the same, 2,804 modules, with or without them listed).
PRELOAD = (
    "puhui.pipeline", "flows.ingest", "prefect.artifacts", "fastapi.encoders",
    "prefect.utilities.visualization", "prefect.concurrency.sync", "anyio._backends._asyncio",
    "pyarrow.pandas_compat", "jinja2.ext", "multiprocessing.synchronize", "typer",
)


def preload() -> None:
    """Import what `run ingest` uses (without running anything)."""
    import importlib

    from puhui.validation import import_gx

    import_gx()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # a newer library moved it: the run imports what it needs
            continue
    from puhui.data_docs import warm_up_renderer

    warm_up_renderer()


def serve(settings: Settings) -> None:
    """Preload, listen, and fork one child per accepted command until SIGTERM."""
    began = time.time()  # a source edited while importing makes this worker stale too
    preload()
    # What the worker imported stays put in the children: the garbage collector no longer
    # walks it (each walk would copy the pages it touches into the child).
    gc.freeze()
    if threading.active_count() != 1:
        raise SystemExit(f"puhui warm worker: an import started threads "
                         f"({', '.join(t.name for t in threading.enumerate())}); forking "
                         "would be unsafe, not starting")
    environment = import_time_environment(os.environ)
    path = settings.prefect_home / SOCKET_FILE
    path.unlink(missing_ok=True)
    address, folder = _socket_address(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is the owner's only
    try:
        listener.bind(address)
    finally:
        os.umask(old_umask)
        if folder is not None:
            os.close(folder)
    listener.listen(16)
    listener.settimeout(0.5)
    worker_pid = os.getpid()
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Atomically: the CLI, `server status` and the bench poll this file while it appears.
    write_text_atomically(_state_path(settings), json.dumps({
        "pid": os.getpid(), "socket": str(path), "started_at": began,
        "executable": sys.executable, "root": str(repo_root())}))
    print(f"puhui warm worker {os.getpid()}: listening on {path}", flush=True)
    try:
        while not stopping:
            _reap()
            try:
                conn, _ = listener.accept()
            except (TimeoutError, InterruptedError):
                continue
            try:
                _handle(conn, listener, environment)
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the worker
                print(f"puhui warm worker: request failed: {type(exc).__name__}: {exc}",
                      flush=True)
            finally:
                conn.close()
    finally:
        # A child leaves through here too (sys.exit unwinds): only the worker cleans up.
        if os.getpid() == worker_pid:
            listener.close()
            path.unlink(missing_ok=True)
            _state_path(settings).unlink(missing_ok=True)


def _reap() -> None:
    """Collect finished children (their CPU time then counts in this process's children)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _handle(conn: socket.socket, listener: socket.socket, environment: dict[str, str]) -> None:
    conn.settimeout(10.0)
    credentials = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                  struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    _marker, fds, _flags, _address = socket.recv_fds(conn, 1, 3)
    try:
        if uid != os.getuid() or len(fds) != 3:
            _send(conn, {"ok": False, "why": "not the owner, or no terminal descriptors"})
            return
        request = _receive(conn)
        if request["effective"] != environment:
            _send(conn, {"ok": False, "why": "the Prefect/GX environment differs"})
            return
        sys.stdout.flush()  # nothing of the worker's own output may reach the client
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            _run_child(conn, fds, request)  # never returns
    finally:
        for fd in fds:
            os.close(fd)


def _run_child(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> NoReturn:
    """In the forked child: become the client's command and run the CLI."""

    def started() -> None:
        conn.settimeout(None)
        # A duplicate nobody closes: the client sees the end of the connection only when
        # this process is gone, after Prefect's exit handlers sent the last logs.
        os.dup(conn.fileno())
        _send(conn, {"ok": True, "pid": os.getpid()})

    run_command_in_child(request["argv"], request["env"], fds, cwd=request["cwd"],
                         started=started, ended=lambda code: _send(conn, {"rc": code}))


def run_command_in_child(argv: list[str], env: dict[str, str], fds: Sequence[int],
                         cwd: str | None = None, started: Callable[[], None] = lambda: None,
                         ended: Callable[[int], None] = lambda _code: None) -> NoReturn:
    """In a child forked from a preloaded parent: become ``puhui ARGV`` and exit with its code.

    ``fds`` become its stdin, stdout and stderr (and are closed); ``env`` replaces the
    environment. The exit code is the interpreter's: ``SystemExit(None)`` 0, Ctrl-C 130, an
    exception (only with ``--debug``) 1 after its traceback. ``started`` runs just before the
    CLI, ``ended(code)`` after it (an OSError there is ignored: the client may be gone).
    """
    code = 1
    try:
        for signum in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in set(fds) - {0, 1, 2}:
            os.close(fd)
        for stream in (sys.stdout, sys.stderr):
            if stream.isatty():
                stream.reconfigure(line_buffering=True)
        if cwd is not None:
            os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["puhui", *argv]
        started()
        from puhui.cli import main

        code = main(list(argv))
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        print("puhui: aborted", file=sys.stderr)
        code = 130
    except BaseException:  # noqa: BLE001 - main() raises only with --debug: the traceback
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            ended(code)
    _exit_without_teardown(code)


def _exit_without_teardown(code: int) -> NoReturn:
    """Exit as the interpreter does, minus freeing every object one by one.

    Threading's exit hooks run and the run's threads are joined, then the atexit handlers
    (Prefect sends its last logs and events), then the process ends. A normal exit would
    also tear down every module and object inherited from the worker: touching each page of
    the ~245 MB makes the kernel copy it (copy-on-write), which costs CPU for nothing. The
    connection closes with the process, which tells the client the run is over.
    """
    # The interpreter's own first two steps of an exit: threading's exit hooks (Prefect and
    # concurrent.futures stop their workers there) and joining the threads, then atexit.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


# --------------------------------------------------------------------------- start / stop
def launch_worker(settings: Settings, api_url: str) -> subprocess.Popen[bytes] | None:
    """Start the worker process for the server at ``api_url`` without waiting for it; None
    when a current one runs already. It only imports at first, so it may start while the
    server itself is still starting."""
    running = read_worker(settings)
    if running is not None and not sources_changed_since(running.started_at):
        return None
    if running is not None:  # it imported older code: a new one imports the current
        stop_worker(settings)
    _state_path(settings).unlink(missing_ok=True)
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_API_URL=api_url)
    with open(settings.prefect_home / LOG_FILE, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "puhui.warm_worker"], env=env, cwd=repo_root(),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)


def wait_for_worker(settings: Settings, process: subprocess.Popen[bytes] | None,
                    timeout: float = READY_TIMEOUT_SECONDS) -> WarmWorker | None:
    """The worker once it listens; None if it did not come up in time (it is then stopped,
    and commands run in their own process, as without it)."""
    if process is None:
        return read_worker(settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker = read_worker(settings)
        if worker is not None and worker.pid == process.pid:
            return worker
        if process.poll() is not None:
            return None
        time.sleep(0.2)
    process.terminate()
    return None


def stop_worker(settings: Settings, timeout: float = 15.0) -> WarmWorker | None:
    """Stop the worker of this ``PUHUI_HOME`` (running commands finish on their own)."""
    worker = read_worker(settings)
    if worker is None:
        _state_path(settings).unlink(missing_ok=True)  # an unreadable one
        return None
    # The worker alone, not its process group: its forked children are running commands.
    stop_process(worker.pid, timeout)
    _remove_state(settings, worker)
    return worker


def _main() -> None:
    from puhui.settings import configure_runtime, load_settings

    settings = load_settings()
    configure_runtime(settings)
    serve(settings)


if __name__ == "__main__":
    _main()
