"""The one exception type users see as a single clear line (no traceback unless --debug)."""


class PuhuiError(Exception):
    """An expected failure with a message meant for the person at the terminal."""


class NotBuiltYet(PuhuiError):
    """A contract command whose capability has not been built yet; never faked."""

    def __init__(self, command: str, issue: str) -> None:
        super().__init__(f"'{command}' is not built yet (planned in the issue: {issue})")
