"""The generator's one error type for an argument it cannot use."""

from __future__ import annotations

from puhui.errors import PuhuiError


class BadArgument(PuhuiError, ValueError):
    """An argument the generator cannot use: a ``ValueError`` to Python callers, and the
    command line names its option (``--`` and ``argument`` with dashes)."""

    def __init__(self, argument: str, problem: str) -> None:
        super().__init__(f"{argument} {problem}")
        self.argument, self.problem = argument, problem
