"""The one exception type users see as a single clear line (no traceback unless --debug)."""


class PuhuiError(Exception):
    """An expected failure with a message meant for the person at the terminal."""


class UsageError(PuhuiError):
    """A command-line value not of the form its option or argument takes (a malformed date,
    a model ``run train`` does not know): exit 2, as click's usage errors, in their words
    (``Invalid value for '--as-of': must be a date YYYY-MM-DD, not '2026-13-40'``). Raised
    by the parsers the commands share, which need not import typer to say it."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"Invalid value for '{option}': {problem}")


def infrastructure_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the infrastructure failed (the warehouse, the registry, the
    network, the disk) rather than the thing being worked on: a database error, an OS or
    ``requests`` error, or an MLflow error of a 5xx kind (a server error, and MLflow's own
    default: its REST client raises a failed request with it). Such a failure may pass on a
    retry, so it must not become a recorded outcome; when unsure (an error raised while
    handling one of these), it counts as one. ``tasks/retries.py`` retries a subset (lost
    connections, timeouts). Modules never imported cannot have raised, so none is imported
    here (the read-only commands start without SQLAlchemy or MLflow)."""
    import sys

    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    mlflow_exc = sys.modules.get("mlflow.exceptions")
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError):  # ConnectionError, TimeoutError, requests' errors
            return True
        if sqlalchemy_exc and isinstance(link, (sqlalchemy_exc.DBAPIError,
                                                sqlalchemy_exc.DisconnectionError)):
            return True
        if mlflow_exc and isinstance(link, mlflow_exc.MlflowException) \
                and link.get_http_status_code() >= 500:
            return True
        link = link.__cause__ or link.__context__
    return False
