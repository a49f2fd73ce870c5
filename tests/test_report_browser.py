"""The HTML report in a real headless Chromium (Debian's `chromium`): it renders with no
console errors and no network requests, the plots are there, and a screenshot is kept."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from puhui.monitoring import html as report_html
from puhui.monitoring.findings import Finding

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUEST = re.compile(r"NotifyBeforeURLRequest: (\S+)")
# Chromium's own background services (clock, account and component checks) ask these hosts
# whatever page is open; a request of the page itself goes anywhere else and is caught (the
# detector is tested on a page that makes one).
BROWSER_SERVICES = re.compile(r"^https?://[^/]*(google\.com|googleapis\.com|gstatic\.com|"
                              r"gvt1\.com)(/|:|$)")


def open_in_chromium(page: Path, out_dir: Path) -> dict[str, object]:
    """Load ``page`` headless (as root: no sandbox), screenshot it; return the console
    messages and every URL the browser requested other than the file itself."""
    if CHROMIUM is None:
        if __import__("os").environ.get("CI"):
            pytest.fail("CI must provide chromium (.ci/run installs it)")
        pytest.skip("NO CHROMIUM ON THIS MACHINE: browser test skipped (apt-get install chromium)")
    shot = out_dir / f"{page.stem}.png"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--no-first-run", "--disable-extensions",
         "--disable-sync", "--disable-component-update", "--no-default-browser-check",
         f"--user-data-dir={out_dir / 'chromium-profile'}", "--window-size=1400,3000",
         "--enable-logging=stderr", "--v=1", f"--screenshot={shot}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    log = done.stderr
    requests = [u for u in REQUEST.findall(log) if not u.startswith(("file:", "data:"))
                and not BROWSER_SERVICES.match(u)]
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    return {"screenshot": shot, "requests": requests, "console": console,
            "returncode": done.returncode}


def assert_renders_offline(page: Path, out_dir: Path, min_plots: int) -> Path:
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", text), "external reference"
    assert text.count('src="data:image/png;base64,') >= min_plots
    seen = open_in_chromium(page, out_dir)
    assert seen["returncode"] == 0
    assert seen["requests"] == [], seen["requests"]
    assert seen["console"] == [], seen["console"]
    shot = seen["screenshot"]
    assert isinstance(shot, Path) and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return shot


def test_the_browser_check_catches_console_errors_and_requests(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><script>console.error("boom")</script>'
                   '<img src="http://127.0.0.1:9/x.png"></body></html>')
    seen = open_in_chromium(bad, tmp_path)
    assert any("boom" in line for line in seen["console"])
    assert "http://127.0.0.1:9/x.png" in seen["requests"]


def test_report_renders_offline_with_plots(tmp_path: Path) -> None:
    as_of = date(2026, 9, 30)
    service = pd.DataFrame({
        "metric": ["coverage"] * 4 + ["approval_rate"] * 2,
        "segment": ["all", "region_type=rural", "region_type=urban", "thin_file=yes",
                    "all", "region_type=rural"],
        "value": [0.9, 0.82, 0.95, 0.7, 0.85, 0.8], "n": [100] * 6})
    trend = pd.concat([service.assign(as_of_date=d) for d in
                       (date(2026, 9, 28), date(2026, 9, 29), as_of)])
    drift_trend = pd.DataFrame({"as_of_date": [date(2026, 9, 29), as_of],
                                "model_name": "credit_risk", "model_version": "1",
                                "psi": [0.05, 0.31]})
    fairness = pd.DataFrame({"dimension": ["region_type"] * 2, "segment": ["rural", "urban"],
                             "adverse_impact_ratio": [0.86, 1.0]})
    calibration = pd.DataFrame({"grade": list("ABCDE"), "n": [10, 10, 10, 10, 10],
                                "expected": [0.01, 0.03, 0.07, 0.15, 0.4],
                                "observed": [0.0, 0.03, 0.1, 0.2, 0.5]})
    drift = pd.DataFrame({"variable": ["score", "bureau_score"], "psi": [0.31, 0.4],
                          "status": ["act", "watch"]})
    images = report_html.plots(service, trend, drift_trend, fairness, calibration, drift,
                               {"watch": 0.1, "act": 0.25})
    assert set(images) == {"coverage_by_segment", "approval_by_segment", "service_trend",
                           "score_psi_trend", "calibration", "drift"}
    alert = Finding(as_of, "credit_risk", "1", "score_psi", "score", 0.31, 0.25, "act")
    page = report_html.render(
        as_of=as_of, headline=[("1", "red alerts", "act"), ("90.0%", "coverage", "ok")],
        alerts=[alert], watch=[], images=images, notes=["nothing newly matured"],
        sections=[("Population shift", "PSI", report_html._table(drift))],
        facts={"models_line": "credit_risk v1 (champion)", "as_of": str(as_of)})
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    assert "the population being scored has shifted" in page
    assert_renders_offline(path, tmp_path, min_plots=6)
    assert np.isfinite(path.stat().st_size)
