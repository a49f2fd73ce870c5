"""Release gates shared by every model: each check names what failed and by how much.

A model's adapter (puhui/risk/gates.py, puhui/recommender/gates.py) decides which values
to check; recording, verdict and wording are here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from puhui.config import MetricThreshold


@dataclass
class GateResult:
    passed: bool
    failed: list[str] = field(default_factory=list)
    checks: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "failed": self.failed, "checks": self.checks}


class GateChecks:
    """Collects checks; ``result()`` is the verdict (every check must pass)."""

    def __init__(self) -> None:
        self.checks: list[dict[str, object]] = []

    def check(self, gate: str, subject: str, value: float | None, limit: float,
              ok: bool) -> None:
        self.checks.append({"gate": gate, "subject": subject, "value": value, "limit": limit,
                            "passed": bool(ok)})

    def threshold(self, gate: str, subject: str, value: float | None,
                  limit: MetricThreshold) -> None:
        """``value`` against a threshold given as data; a missing value fails."""
        ok = value is not None and (value >= limit.threshold if limit.higher_is_better
                                    else value <= limit.threshold)
        self.check(gate, subject, value, limit.threshold, ok)

    def result(self, describe: Callable[[dict[str, object]], str] | None = None) -> GateResult:
        say = describe or describe_check
        failed = [say(c) for c in self.checks if not c["passed"]]
        return GateResult(passed=not failed, failed=failed, checks=self.checks)


def describe_check(check: dict[str, object]) -> str:
    gate, subject, value, limit = check["gate"], check["subject"], check["value"], check["limit"]
    shown = "missing" if value is None else f"{value:.3f}"
    sign = ">" if str(gate).startswith("max") else "<"
    return f"{str(gate).removeprefix('min_').removeprefix('max_')} {subject} {shown} " \
           f"{sign} {limit:.2f}"
