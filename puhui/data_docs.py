"""GX Data Docs for the stored validation results, under ``$PUHUI_HOME/gx/data_docs``.

Every validation writes its GX result as JSON (``gx/validations/<suite>/<batch>.json``,
already scrubbed of personal values). This renders each one with GX's own Data Docs page
renderer into ``gx/data_docs/validations/<suite>/<batch>.html`` and writes an index of all
of them, newest first. Rendering is incremental: a page newer than its result is kept, so a
run only pays for the results it wrote (~15 ms a page). Pages are built from the scrubbed
JSON, never from live frames, so they hold no raw identifier.

The index says what became of each batch (the ledger's outcome: accepted, quarantined,
released, rejected) and how severe its failures were (a warning is not a critical failure),
and filters by feed and outcome with a few lines of inline script (no network). GX's
newsletter footer is cut from the pages.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from puhui.files import write_text_atomically

DOCS_DIR = "data_docs"
# GX's page ends with a newsletter footer (and a call-to-action footer on some pages):
# marketing with an outside link, not part of a validation record.
_FOOTER = re.compile(r"<footer\b.*?</footer>", re.DOTALL | re.IGNORECASE)
_CHUNK = re.compile(r"\.from-row-\d+$")


@dataclass(frozen=True)
class DataDocsBuild:
    """What one build did: pages rendered now, pages in the site, and its index."""

    rendered: int
    pages: int
    failed_results: int
    index: Path

    def line(self) -> str:
        return (
            f"GX Data Docs: {self.pages} validation page(s) ({self.rendered} new, "
            f"{self.failed_results} with failures): {self.index}"
        )


@dataclass(frozen=True)
class _Entry:
    suite: str
    name: str
    page: Path
    success: bool
    evaluated: int
    failed: int
    severity: str  # "critical", "warning" or "" (nothing failed)
    outcome: str  # the ledger's status of the batch, or "table check"
    written: datetime


@cache
def _page_view() -> Any:
    """One GX page view per process: its Jinja environment compiles each template once (a new
    view compiles them all again, ~0.2 s a page)."""
    from puhui.validation import import_gx

    import_gx()
    from great_expectations.render.view import DefaultJinjaPageView

    return DefaultJinjaPageView()


def _escaped(result_json: dict[str, Any]) -> dict[str, Any]:
    """The result with every string of each expectation's arguments and result HTML-escaped:
    GX's page templates print them raw, and a value's masked shape keeps its punctuation
    (`<!--` hid the rest of the page; `<a>` survives as a tag), a column name all of it."""

    def escape(value: Any) -> Any:
        if isinstance(value, str):
            return html.escape(value)
        if isinstance(value, dict):
            return {k: escape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [escape(v) for v in value]
        return value

    items = []
    for item in result_json.get("results") or []:
        item = dict(item)
        if isinstance(item.get("result"), dict):
            item["result"] = escape(item["result"])
        config = item.get("expectation_config")
        if isinstance(config, dict):
            # The suite's own strings too: GX prints an expectation's `description` raw (a
            # contributed suite's `<!--` hid the rest of the page, a tag stayed a tag).
            item["expectation_config"] = {
                k: v if k == "type" else escape(v) for k, v in config.items()
            }
        info = item.get("exception_info")
        if isinstance(info, dict):
            # GX escapes the exception's message but prints its traceback raw; a masked
            # traceback keeps the punctuation of what it quotes.
            item["exception_info"] = {
                k: _escaped_traceback(v) if k != "exception_traceback" else escape(v)
                for k, v in info.items()
            }
        items.append(item)
    escaped = {**result_json, "results": items}
    meta = result_json.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("run_id"), dict):
        run = meta["run_id"]  # the run name (suite and batch) is printed raw
        escaped["meta"] = {**meta, "run_id": {**run, "run_name": escape(run.get("run_name"))}}
    return escaped


def _escaped_traceback(info: Any) -> Any:
    """One metric's exception info (GX nests them by metric) with its traceback escaped."""
    if isinstance(info, dict) and isinstance(info.get("exception_traceback"), str):
        return {**info, "exception_traceback": html.escape(info["exception_traceback"])}
    return info


def render_validation_page(result_json: dict[str, Any]) -> str:
    """One GX validation result (its JSON form) as a GX Data Docs HTML page."""
    view = _page_view()
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResultSchema,
    )
    from great_expectations.render.renderer import ValidationResultsPageRenderer

    result = ExpectationSuiteValidationResultSchema().load(_escaped(result_json))
    page = view.render(ValidationResultsPageRenderer().render(result), show_how_to_buttons=False)
    return _FOOTER.sub("", page)


# A one-expectation result (one passed, one failed) whose rendering compiles the page templates.
_WARM_UP_RESULT: dict[str, Any] = {
    "success": False,
    "suite_name": "warm_up",
    "suite_parameters": {},
    "statistics": {
        "evaluated_expectations": 2,
        "successful_expectations": 1,
        "unsuccessful_expectations": 1,
        "success_percent": 50.0,
    },
    "meta": {"run_id": {"run_name": "warm up", "run_time": "2026-01-01T00:00:00+00:00"}},
    "results": [
        {
            "success": success,
            "expectation_config": {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {"column": "c"},
                "meta": {"severity": "critical"},
            },
            "result": {
                "element_count": 1,
                "unexpected_count": int(not success),
                "unexpected_percent": 0.0 if success else 100.0,
                "partial_unexpected_list": [],
            },
            "meta": {},
            "exception_info": {
                "raised_exception": False,
                "exception_traceback": None,
                "exception_message": None,
            },
        }
        for success in (True, False)
    ],
}


def warm_up_renderer() -> None:
    """Compile the page templates now (the warm worker does, so each run renders at once)."""
    render_validation_page(_WARM_UP_RESULT)


def page_path(gx_dir: Path, result: Path) -> Path:
    """The Data Docs page of a stored result ``gx/validations/<suite>/<name>.json``."""
    return gx_dir / DOCS_DIR / "validations" / result.parent.name / f"{result.stem}.html"


def pages_for_batch(gx_dir: Path, batch_id: str) -> list[Path]:
    """The pages of a batch's results (one per validated chunk), built or not."""
    results = sorted((gx_dir / "validations").glob(f"*/{batch_id}.json"))
    results += sorted((gx_dir / "validations").glob(f"*/{batch_id}.from-row-*.json"))
    return [page_path(gx_dir, r) for r in results]


def _severity(payload: dict[str, Any]) -> str:
    severities = {
        ((item.get("expectation_config") or {}).get("meta") or {}).get("severity", "critical")
        for item in payload.get("results") or []
        if not item.get("success")
    }
    return "critical" if "critical" in severities else "warning" if severities else ""


_SCRIPT = """
function puhuiFilter(){var f=document.getElementById('feed').value,
o=document.getElementById('outcome').value,n=0;
document.querySelectorAll('tr[data-feed]').forEach(function(r){
var show=(!f||r.dataset.feed===f)&&(!o||r.dataset.outcome===o);
r.style.display=show?'':'none';if(show)n++;});
document.getElementById('shown').textContent=n;}
"""


def _options(name: str, label: str, values: list[str]) -> str:
    items = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)
    return (
        f'<label>{label} <select id="{name}" onchange="puhuiFilter()">'
        f'<option value="">all</option>{items}</select></label> '
    )


def _index_html(entries: list[_Entry], docs: Path) -> str:
    rows = []
    for entry in entries:
        state = "passed" if entry.success else f"{entry.failed} failed"
        kind = "ok" if entry.success else "bad" if entry.severity == "critical" else "warn"
        link = html.escape(entry.page.relative_to(docs).as_posix())
        rows.append(
            f'<tr class="{kind}" data-feed="{html.escape(entry.suite)}" '
            f'data-outcome="{html.escape(entry.outcome)}">'
            f"<td>{entry.written:%Y-%m-%d %H:%M:%S}</td><td>{html.escape(entry.suite)}</td>"
            f'<td><a href="{link}">{html.escape(entry.name)}</a></td>'
            f"<td>{html.escape(entry.outcome)}</td><td>{entry.severity or '-'}</td>"
            f"<td>{entry.evaluated}</td><td>{state}</td></tr>"
        )
    failed = sum(not e.success for e in entries)
    feeds = sorted({e.suite for e in entries})
    outcomes = sorted({e.outcome for e in entries})
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Puhui GX Data Docs</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}"
        "tr.bad td{background:#fdecea}tr.warn td{background:#fff8e1}</style>"
        f"<script>{_SCRIPT}</script></head><body>"
        "<h1>Validation results</h1>"
        f"<p>{len(entries)} result(s), {failed} with failed expectations, newest first "
        "(times UTC). Outcome: what became of the batch (the ledger's status). Severity: "
        "critical failures hold a batch (red), warnings let it load (yellow). Each page is "
        "GX's own rendering of the stored result; failing row numbers are source rows of "
        "the file.</p><p>"
        + _options("feed", "feed", feeds)
        + _options("outcome", "outcome", outcomes)
        + f'<span id="shown">{len(entries)}</span> shown</p>'
        "<table><tr><th>written</th><th>feed / suite</th><th>batch / table</th>"
        "<th>outcome</th><th>severity</th><th>expectations</th><th>result</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


def build_data_docs(gx_dir: Path, outcomes: Mapping[str, str] | None = None) -> DataDocsBuild:
    """Render new or changed results under ``gx_dir/validations`` and rewrite the index.

    ``outcomes`` maps batch ids to their ledger status (``ledger_outcomes``); results of
    table checks, or of batches not in it, show ``table check`` / ``unknown``.
    """
    docs = gx_dir / DOCS_DIR
    entries: list[_Entry] = []
    rendered = 0
    for source in sorted((gx_dir / "validations").glob("*/*.json")):
        page = page_path(gx_dir, source)
        try:
            payload = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # gone since the listing, or not a result: the next build sees it again
        written = source.stat().st_mtime
        if not page.exists() or page.stat().st_mtime < written:
            write_text_atomically(page, render_validation_page(payload))
            rendered += 1
        statistics = payload.get("statistics") or {}
        batch = _CHUNK.sub("", source.stem)
        outcome = "table check" if "@" in batch else (outcomes or {}).get(batch, "unknown")
        entries.append(
            _Entry(
                suite=str(payload.get("suite_name") or source.parent.name),
                name=source.stem,
                page=page,
                success=bool(payload.get("success")),
                evaluated=int(statistics.get("evaluated_expectations") or 0),
                failed=int(statistics.get("unsuccessful_expectations") or 0),
                severity=_severity(payload),
                outcome=outcome,
                written=datetime.fromtimestamp(written, UTC),
            )
        )
    entries.sort(key=lambda e: (e.written, e.suite, e.name), reverse=True)
    index = docs / "index.html"
    write_text_atomically(index, _index_html(entries, docs))
    return DataDocsBuild(
        rendered=rendered,
        pages=len(entries),
        failed_results=sum(not e.success for e in entries),
        index=index,
    )


def ledger_outcomes(engine: Any) -> dict[str, str]:
    """batch id -> status, from ``ingest_batches`` (for the index's outcome column)."""
    from sqlalchemy import select

    from puhui.warehouse.schema import ingest_batches

    with engine.connect() as conn:
        return {
            r.batch_id: r.status
            for r in conn.execute(select(ingest_batches.c.batch_id, ingest_batches.c.status))
        }
