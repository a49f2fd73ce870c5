"""The one exception type users see as a single clear line (no traceback unless --debug)."""


class PuhuiError(Exception):
    """An expected failure with a message meant for the person at the terminal."""

