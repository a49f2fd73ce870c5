"""Named crash points for fault-injection tests: ``PUHUI_CRASH_AT=<point>`` kills the process.

The crash is ``SIGKILL`` sent to ourselves, as ``kill -9`` would: no ``finally`` block, no
exception handler and no atexit hook runs, so what is left behind is exactly what a power cut
or the OOM killer would leave. Tests run real commands in subprocesses with the variable set
and then check that the next command repairs or reports what the crash interrupted.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "PUHUI_CRASH_AT"
# A transient failure instead of a death: raised once at the named point, as a lost connection
# would be, so a test sees what a step's retry (a new attempt in the same process) does.
FAIL_ONCE_ENV = "PUHUI_FAIL_ONCE_AT"


def crash_point(name: str) -> None:
    """Die here, now, if ``PUHUI_CRASH_AT`` names this point; raise ``ConnectionError`` once
    if ``PUHUI_FAIL_ONCE_AT`` does (a no-op otherwise)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(FAIL_ONCE_ENV) == name:
        del os.environ[FAIL_ONCE_ENV]
        raise ConnectionError(f"injected transient failure at {name}")
