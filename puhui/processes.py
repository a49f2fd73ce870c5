"""Watching and stopping local processes by pid (no Prefect, no workflow: the server and the
warm worker both use these, and read-only commands import them)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return status != "Z"


def signal_process(pid: int, sig: signal.Signals, *, group: bool = False) -> None:
    """Send ``sig`` to ``pid`` (with ``group``: to the process group it leads, falling back
    to the process alone); a process already gone is not an error."""
    if group:
        try:
            os.killpg(pid, sig)
            return
        except (ProcessLookupError, PermissionError):
            pass
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop_process(pid: int, timeout: float, *, group: bool = False,
                 poll_seconds: float = 0.1) -> None:
    """SIGTERM, up to ``timeout`` seconds for the process to go, then SIGKILL."""
    signal_process(pid, signal.SIGTERM, group=group)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(poll_seconds)
    if pid_alive(pid):
        signal_process(pid, signal.SIGKILL, group=group)
