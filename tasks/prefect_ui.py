"""What the Prefect UI shows of a run: names by flow, feed and as-of date, and a summary table.

Run names replace Prefect's random ones (``heavy-manticore``) with ``daily 2026-09-30`` or
``ingest mobile_payments 2026-09-30``, so the run list reads like the schedule. Each flow
publishes its summary as a markdown artifact (keyed, so the UI keeps its history per flow).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date
from typing import Any

from puhui.dates import today_local


def _as_of(parameters: dict[str, Any]) -> str:
    value = parameters.get("as_of")
    if isinstance(value, date):
        return value.isoformat()
    return str(value) if value else today_local().isoformat()


def dated_run_name(label: str) -> Callable[[], str]:
    """A run-name callable: ``label``, the run's ``partner`` (if any) and its as-of date.

    For a flow run the parameters are the flow's; for a task run the task's, with the as-of
    date taken from the enclosing flow run when the task has none (its inputs are frames).
    """

    def name() -> str:
        from prefect.runtime import flow_run, task_run

        flow_parameters = dict(flow_run.parameters or {})
        parameters = dict(task_run.parameters or {}) if task_run.id else flow_parameters
        as_of = _as_of(parameters if "as_of" in parameters else flow_parameters)
        partner = parameters.get("partner")
        return " ".join(str(p) for p in (label, partner, as_of) if p)

    return name


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (pipes in cells escaped)."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def ingest_markdown(summary: dict) -> str:
    """Per feed: files by outcome, rows, lateness; then the totals line."""
    statuses = ("accepted", "quarantined", "rejected", "duplicate", "deferred", "skipped")
    rows = []
    for feed in summary["feeds"]:
        counts = feed["counts"]
        files = [f for f in feed["files"] if not f["skipped"]]
        rows.append([feed["partner"], *(counts.get(s, 0) for s in statuses),
                     f"{sum(f['rows_loaded'] for f in files):,}",
                     f"{sum(f['rows_held'] for f in files):,}",
                     "LATE" if feed["late"] else ""])
    tables = [[t["table"], t["suite"], "passed" if t["success"] else
               "FAILED: " + "; ".join(t["failed"])] for t in summary.get("tables", [])]
    return "\n\n".join([
        f"# Ingest as of {summary['as_of']}",
        markdown_table(["feed", *statuses, "rows loaded", "rows held", "late"], rows),
        markdown_table(["table", "suite", "checks"], tables) if tables else "",
        summary["line"],
    ])


def daily_markdown(summary: dict) -> str:
    ingest = summary["ingest"]
    rows = [["ingest", ingest["line"]],
            ["late feeds", ", ".join(summary["late_feeds"]) or "none"],
            ["schema revision", summary["schema_revision"]],
            ["profiles", f"{summary['profiles']['rows']:,} customers; missing models: "
                         f"{', '.join(summary['profiles']['missing_models']) or 'none'}"],
            ["report", f"{summary['report']} ({summary['alerts']} alert(s))"]]
    return "\n\n".join([f"# Daily pipeline as of {summary['as_of']}",
                        markdown_table(["stage", "result"], rows)])


def train_markdown(summary: dict) -> str:
    parts = [f"# Train risk as of {summary['as_of']}",
             markdown_table(["step", "result"],
                            [[line.split(":", 1)[0], line.split(":", 1)[-1].strip()]
                             for line in summary["steps"]])]
    if summary.get("metrics"):
        parts.append(markdown_table(["metric", "value"],
                                    [[k, f"{v:.4f}"] for k, v in summary["metrics"].items()]))
    parts.append(summary["line"])
    return "\n\n".join(parts)


def publish_summary(key: str, markdown: str, description: str) -> None:
    """Attach ``markdown`` to the current flow run as the artifact ``key``.

    A failure to publish is logged, not raised: the flow's work is done and audited, and
    the summary is also its return value.
    """
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact

    try:
        create_markdown_artifact(markdown=markdown, key=key, description=description)
    except Exception as exc:  # noqa: BLE001 - the run's outcome must not depend on the UI
        get_run_logger().warning("summary artifact %s not published: %s", key, exc)
