"""Release gates shared by every model: each check names what failed and by how much.

A model's adapter (puhui/risk/gates.py, puhui/recommender/gates.py) decides which values
to check; recording, verdict and wording are here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from puhui.config import MetricThreshold
from puhui.errors import PuhuiError


@dataclass
class GateResult:
    passed: bool
    failed: list[str] = field(default_factory=list)
    checks: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "failed": self.failed, "checks": self.checks}


@dataclass(frozen=True)
class ChampionCheck:
    """For gates that compare a version with the champion: the champion version they were
    evaluated against (None: there was none) and ``recheck(version)``, the gates' result
    against another champion (None: none), for a champion that moved before the verdict.
    ``prepare(version)`` does the slow part of ``recheck`` (loading that champion's files)
    ahead, outside the model lock; ``recheck`` then only scores under it. The recheck's
    checks go into the verdict's event, and the run's ``gates.json`` is written from it
    (``puhui.registry.keep_verdict_file``)."""
    compared_with: str | None
    recheck: Callable[[str | None], GateResult]
    prepare: Callable[[str | None], None] | None = None


class GateChecks:
    """Collects checks; ``result()`` is the verdict (every check must pass)."""

    def __init__(self) -> None:
        self.checks: list[dict[str, object]] = []

    def check(self, gate: str, subject: str, value: float | None, limit: float,
              ok: bool, rule: str | None = None) -> None:
        """One check; ``rule`` says what passing means (default: from a ``min_``/``max_``
        name, e.g. "≥ 0.75 (higher is better)")."""
        self.checks.append({"gate": gate, "subject": subject, "value": value, "limit": limit,
                            "rule": rule or gate_rule(gate, limit), "passed": bool(ok)})

    def threshold(self, gate: str, subject: str, value: float | None,
                  limit: MetricThreshold) -> None:
        """``value`` against a threshold given as data; a missing value fails."""
        ok = value is not None and (value >= limit.threshold if limit.higher_is_better
                                    else value <= limit.threshold)
        self.check(gate, subject, value, limit.threshold, ok,
                   rule=direction_rule(limit.threshold, limit.higher_is_better))

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


def direction_rule(limit: float, higher_is_better: bool) -> str:
    return (f"≥ {limit:g} (higher is better)" if higher_is_better
            else f"≤ {limit:g} (lower is better)")


def gate_rule(gate: str, limit: float) -> str:
    """What passing a check means, for checks recorded without a rule (versions gated before
    rules were recorded, or a gate named ``min_...``/``max_...``)."""
    if gate.startswith("min_"):
        return direction_rule(limit, True)
    if gate.startswith("max_"):
        return direction_rule(limit, False)
    return f"limit {limit:g}"


class GatesFailed(PuhuiError):
    """A training run whose version failed its gates: ``summary`` is the run's summary (the
    version is registered, without an alias). Raised by a training flow's caller unless
    gate failures are allowed."""

    def __init__(self, message: str, summary: dict) -> None:
        super().__init__(message)
        self.summary = summary

    def __reduce__(self) -> tuple:  # Prefect may pickle a state's data
        return (GatesFailed, (str(self), self.summary))


def gates_failed_message(model: str, name: str, version: str, failed: list[str]) -> str:
    return (f"train {model}: {name} v{version} FAILED {len(failed)} gate(s): "
            f"{'; '.join(failed)} (registered without an alias; --allow-gate-failure ends "
            "the run Completed)")
