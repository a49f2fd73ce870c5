"""When a task may retry: transient infrastructure errors only, never bad data."""

from __future__ import annotations

import re
import sys
from typing import Any

from prefect.cache_policies import NO_CACHE
from sqlalchemy.exc import DisconnectionError, OperationalError

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    DisconnectionError,
    ConnectionError,
    TimeoutError,
)
# A tracking server's answers worth asking again: overloaded, restarting, behind a proxy
# that lost it. A 4xx other than these is the request's fault and fails the same way again.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# MLflow keeps no status on the exception it raises for an error response without a JSON
# body (a proxy's 502 page): only its message says it (mlflow.utils.rest_utils).
_STATUS_IN_MESSAGE = re.compile(r"API request to endpoint \S+ failed with error code (\d{3}) ")


def transient_mlflow_error(error: BaseException) -> bool:
    """An MLflow tracking server's transient failure: a lost or refused connection, a
    timeout, or a 5xx / 408 / 429 answer (as MLflow raises them once its own HTTP retries
    are spent); never an MLflow error of the request or the data (a 4xx, a local failure)."""
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if mlflow_exceptions is None or not isinstance(error, mlflow_exceptions.MlflowException):
        return False  # MLflow not even imported: none of its errors
    if isinstance(error, mlflow_exceptions.RestException):
        return error.get_http_status_code() in TRANSIENT_HTTP_STATUSES
    found = _STATUS_IN_MESSAGE.match(str(error.message))
    if found:
        return int(found.group(1)) in TRANSIENT_HTTP_STATUSES
    # MLflow wraps what its HTTP session raised (implicitly chained, or "from"): the
    # session's own retries exhausted on 5xx/429 (RetryError), a refused or reset
    # connection, a timeout.
    requests_exceptions = sys.modules.get("requests.exceptions")
    cause = error.__cause__ or error.__context__
    if requests_exceptions is None or cause is None:
        return False
    return isinstance(cause, (requests_exceptions.ConnectionError, requests_exceptions.Timeout,
                              requests_exceptions.RetryError,
                              requests_exceptions.ChunkedEncodingError, *TRANSIENT_ERRORS))


def retry_on_transient_error(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry a lost connection, a lock timeout or a tracking
    server's transient failure, not a data error."""
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except BaseException as error:  # noqa: BLE001 - anything else is not worth retrying
        return transient_mlflow_error(error)
    return False


def step_options(retry_delay_seconds: int) -> dict[str, Any]:
    """The ``@task`` options of a pipeline step: no result cache (steps pass frames, models
    or nothing; hashing frames would cost more than recomputing them, and an Engine cannot
    be hashed) and two retries, on transient errors only."""
    return {"cache_policy": NO_CACHE, "retries": 2, "retry_delay_seconds": retry_delay_seconds,
            "retry_condition_fn": retry_on_transient_error}
