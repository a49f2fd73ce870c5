"""GX Data Docs for the stored validation results, under ``$PUHUI_HOME/gx/data_docs``.

Every validation writes its GX result as JSON (``gx/validations/<suite>/<batch>.json``,
already scrubbed of personal values). This renders each one with GX's own Data Docs page
renderer into ``gx/data_docs/validations/<suite>/<batch>.html`` and writes an index of all
of them, newest first, failures marked. Rendering is incremental: a page newer than its
result is kept, so a run only pays for the results it wrote (~15 ms a page). Pages are
built from the scrubbed JSON, never from live frames, so they hold no raw identifier.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from puhui.files import write_text_atomically

DOCS_DIR = "data_docs"


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
    written: datetime


def render_validation_page(result_json: dict[str, Any]) -> str:
    """One GX validation result (its JSON form) as a GX Data Docs HTML page."""
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResultSchema,
    )
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    result = ExpectationSuiteValidationResultSchema().load(result_json)
    return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))


def _index_html(entries: list[_Entry], docs: Path) -> str:
    rows = []
    for entry in entries:
        state = "passed" if entry.success else f"{entry.failed} failed"
        link = html.escape(entry.page.relative_to(docs).as_posix())
        rows.append(
            f'<tr class="{"ok" if entry.success else "bad"}">'
            f"<td>{entry.written:%Y-%m-%d %H:%M:%S}</td><td>{html.escape(entry.suite)}</td>"
            f'<td><a href="{link}">{html.escape(entry.name)}</a></td>'
            f"<td>{entry.evaluated}</td><td>{state}</td></tr>"
        )
    failed = sum(not e.success for e in entries)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Puhui GX Data Docs</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}"
        "tr.bad td{background:#fdecea}</style></head><body>"
        "<h1>Validation results</h1>"
        f"<p>{len(entries)} result(s), {failed} with failed expectations, newest first "
        "(times UTC). Each page is GX's own rendering of the stored result; failing row "
        "numbers are source rows of the file.</p>"
        "<table><tr><th>written</th><th>suite</th><th>batch / table</th>"
        "<th>expectations</th><th>result</th></tr>" + "".join(rows) + "</table></body></html>"
    )


def build_data_docs(gx_dir: Path) -> DataDocsBuild:
    """Render new or changed results under ``gx_dir/validations`` and rewrite the index."""
    docs = gx_dir / DOCS_DIR
    entries: list[_Entry] = []
    rendered = 0
    for source in sorted((gx_dir / "validations").glob("*/*.json")):
        page = docs / "validations" / source.parent.name / f"{source.stem}.html"
        try:
            payload = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # gone since the listing, or not a result: the next build sees it again
        written = source.stat().st_mtime
        if not page.exists() or page.stat().st_mtime < written:
            write_text_atomically(page, render_validation_page(payload))
            rendered += 1
        statistics = payload.get("statistics") or {}
        entries.append(
            _Entry(
                suite=str(payload.get("suite_name") or source.parent.name),
                name=source.stem,
                page=page,
                success=bool(payload.get("success")),
                evaluated=int(statistics.get("evaluated_expectations") or 0),
                failed=int(statistics.get("unsuccessful_expectations") or 0),
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
