"""Early warning: findings past their `act` light become alerts, posted to a webhook."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from puhui.monitoring.findings import Finding

WEBHOOK_ENV = "PUHUI_ALERT_WEBHOOK"


def alerts_of(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.status == "act"]


def describe(alert: Finding) -> str:
    who = alert.model if alert.version in ("-", "") else f"{alert.model} v{alert.version}"
    value = "n/a" if alert.value is None else f"{alert.value:.3f}"
    return f"{alert.metric} {who} {alert.segment} {value} (act at {alert.threshold})"


def why(alerts: list[Finding], limit: int = 5) -> str:
    text = "; ".join(describe(a) for a in alerts[:limit])
    more = f" (+{len(alerts) - limit} more)" if len(alerts) > limit else ""
    return f"{len(alerts)} early-warning alert(s): {text}{more}"


def post_alerts(payload: dict[str, Any], url: str | None = None,
                timeout: float = 10.0) -> str:
    """POST ``payload`` as JSON to the webhook; returns what happened, in words."""
    url = url if url is not None else os.environ.get(WEBHOOK_ENV)
    if not url:
        return f"no webhook ({WEBHOOK_ENV} not set)"
    request = urllib.request.Request(
        url, data=json.dumps(payload, ensure_ascii=False, default=str).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return f"webhook answered {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        return f"webhook delivery FAILED: {getattr(exc, 'reason', exc)}"
