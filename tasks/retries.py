"""When a task may retry: transient infrastructure errors only, never bad data."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE
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


def step_options(retry_delay_seconds: int) -> dict[str, Any]:
    """The ``@task`` options of a pipeline step: no result cache (steps pass frames, models
    or nothing; hashing frames would cost more than recomputing them, and an Engine cannot
    be hashed) and two retries, on transient errors only."""
    return {"cache_policy": NO_CACHE, "retries": 2, "retry_delay_seconds": retry_delay_seconds,
            "retry_condition_fn": retry_on_transient_error}
