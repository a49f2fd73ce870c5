"""What the person at the terminal sees: one line per stage, progress bars on long steps.

Library code reports through ``stage``, ``detail`` and ``progress`` without knowing who
listens. Until the CLI calls ``configure`` (tests, workers, other programs), they print nothing
and cost nothing. Under the CLI:

- ``stage`` lines always print (one per stage of a flow);
- ``detail`` lines (one per file, Prefect's state lines) only with ``--verbose``;
- ``notice`` lines (a warning: something not done, a fallback taken) always, configured or
  not, as one line on stderr;
- ``progress`` shows a Rich bar only on a terminal and never with ``--json``; piped output
  stays a plain, countable log.

This module does not import Prefect; ``quiet_prefect_logging`` sets the environment that
Prefect reads when it is imported later, and adjusts its handlers if it already is.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


@dataclass
class _State:
    console: Console | None = None
    verbose: bool = False
    bars: bool = False
    progress: Progress | None = None
    open_bars: int = 0


_state = _State()
_lock = threading.RLock()


def configure(console: Console | None, *, verbose: bool = False,
              json_output: bool = False) -> None:
    """Turn reporting on (``console``) or off (``None``); bars only on a terminal, not JSON."""
    with _lock:
        _state.console = None if json_output else console
        _state.verbose = verbose
        _state.bars = bool(console is not None and console.is_terminal and not json_output)


def is_verbose() -> bool:
    return _state.verbose


def stage(line: str) -> None:
    """One line for a stage that finished (printed above any live bar)."""
    if _state.console is not None:
        _state.console.print(line, markup=False, highlight=False)


def notice(line: str) -> None:
    """A warning the person must see whoever runs the code (also before ``configure``, under
    ``--json`` and in workers): one line on stderr, or, while a live bar is shown, above the
    bar (Rich's live display then sends stderr to the bar's console: the terminal's stdout).
    Bars are shown only on a terminal and never under ``--json``, so a JSON reader's stdout
    never gets it."""
    with _lock:
        print(" ".join(line.splitlines()), file=sys.stderr, flush=True)


def detail(line: str) -> None:
    """A line only ``--verbose`` shows (per file, per step internals)."""
    if _state.verbose:
        stage(line)


class Bar:
    """A handle on one progress bar; every method is a no-op when bars are off."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, amount: float = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, amount)

    def update(self, *, total: float | None = None, completed: float | None = None,
               description: str | None = None) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total, completed=completed,
                                  description=description)


@contextmanager
def progress(description: str, total: float | None = None) -> Iterator[Bar]:
    """A transient progress bar for a long step (files, rows, rounds, pages).

    Bars may nest (files outside, rows inside): they share one live display, which
    disappears when the last bar closes, so a finished run leaves only its stage lines.
    """
    if not _state.bars or _state.console is None:
        yield Bar(None, None)
        return
    with _lock:
        if _state.progress is None:
            _state.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=_state.console, transient=True,
            )
            _state.progress.start()
        live = _state.progress
        task = live.add_task(description, total=total)
        _state.open_bars += 1
    try:
        yield Bar(live, task)
    finally:
        with _lock:
            live.remove_task(task)
            _state.open_bars -= 1
            if _state.open_bars == 0:
                live.stop()
                _state.progress = None


# --------------------------------------------------------------------------- third parties
class _NoTracebacks(logging.Formatter):
    """Format library log records (Prefect's failure logs) as their message line only.

    A formatter, not a filter: a record is shared by every handler, and a filter that cleared
    its traceback would take it from the other handlers (Prefect's API log) too."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class _DropMessages(logging.Filter):
    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# Each entry: logger, the start of the message dropped, and why it is noise for us. (Python
# warnings need no entry: none of our dependencies raises one on our paths today.)
FILTERED_LOG_MESSAGES: list[tuple[str, str, str]] = [
    ("mlflow.pyfunc", "Passing a Python object as `python_model`",
     "our pyfunc wrapper is our own class, logged and loaded only through our own registry; "
     "the pickle risk MLflow warns about is loading models from untrusted stores"),
    ("mlflow.store.db.utils", "Creating initial MLflow database tables",
     "first use of the embedded SQLite store, not an event worth a line"),
    ("mlflow.store.db.utils", "Updating database tables",
     "MLflow migrating its own embedded store on first use"),
]

# MLflow prints these with print(file=sys.stderr), past logging: the register step's own
# line names the model and version already.
MLFLOW_REGISTRY_PRINTS = ("Successfully registered model '", "Created version '")


class _LineDropper(io.TextIOBase):
    """A stderr stand-in that drops ``print`` calls starting with one of ``prefixes``."""

    def __init__(self, target: TextIO, prefixes: tuple[str, ...]) -> None:
        self.target, self.prefixes, self._dropped = target, prefixes, False

    def write(self, text: str) -> int:
        if text.startswith(self.prefixes) or (self._dropped and text == "\n"):
            self._dropped = text != "\n"  # print() writes its end separately
            return len(text)
        self._dropped = False
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()


@contextmanager
def dropping_prints(prefixes: tuple[str, ...]) -> Iterator[None]:
    """Drop third-party ``print`` lines to stderr that start with ``prefixes`` (shown with
    ``--verbose``)."""
    if _state.verbose:
        yield
        return
    with redirect_stderr(_LineDropper(sys.stderr, prefixes)):
        yield


def filter_third_party_noise() -> None:
    """Drop known third-party log lines (each listed above with its reason)."""
    by_logger: dict[str, list[str]] = {}
    for name, prefix, _reason in FILTERED_LOG_MESSAGES:
        by_logger.setdefault(name, []).append(prefix)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(*prefixes))


def quiet_prefect_logging(*, verbose: bool, tracebacks: bool) -> None:
    """Prefect's console lines at WARNING (INFO with ``--verbose``); its API logs stay INFO.

    Only the console handler is raised, so the Prefect UI still shows every INFO line of a
    run. Without ``--debug`` the console shows a failure's message, not its traceback.
    """
    level = "INFO" if verbose else "WARNING"
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = level
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    for name in ("", "prefect", "uvicorn", "fastapi"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(level)
                if not tracebacks and not isinstance(handler.formatter, _NoTracebacks):
                    handler.setFormatter(_NoTracebacks(handler.formatter))
