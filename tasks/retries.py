"""When a task may retry: transient infrastructure errors only, never bad data."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import DisconnectionError, OperationalError

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    DisconnectionError,
    ConnectionError,
    TimeoutError,
)


def retry_on_transient_error(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry a lost connection or a lock timeout, not a data error."""
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except BaseException:  # noqa: BLE001 - anything else is not worth retrying
        return False
    return False
