"""The long format every monitoring figure takes, and its traffic light."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date

from puhui.config import Threshold

ORDER = {"ok": 0, "watch": 1, "act": 2}


@dataclass(frozen=True)
class Finding:
    """One figure: (as-of, model, version, metric, segment) -> value, threshold, status."""

    as_of: date
    model: str  # model name, or "service" / "portfolio" for figures of the lender
    version: str
    metric: str
    segment: str
    value: float | None
    threshold: float | None = None
    status: str = "ok"
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["as_of"] = self.as_of.isoformat()
        return out


def judged(as_of: date, model: str, version: str, metric: str, segment: str,
           value: float | None, threshold: Threshold, note: str = "") -> Finding:
    """A finding with the status its threshold gives (threshold shown: the act level)."""
    value = None if value is None or value != value else float(value)
    return Finding(as_of, model, version, metric, segment, value, threshold.act,
                   threshold.status(value), note)


def worst(findings: list[Finding]) -> str:
    return max((f.status for f in findings), key=ORDER.__getitem__, default="ok")
