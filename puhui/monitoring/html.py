"""The monitoring report as one self-contained HTML file a branch manager can read.

Inline CSS, plots as base64 PNG (matplotlib), no scripts, fonts or links to fetch: it opens
offline and can be mailed as one file. Plain words first (headline, alerts), figures after.
"""

from __future__ import annotations

import base64
import html
from datetime import date
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from puhui.monitoring.findings import Finding  # noqa: E402
from puhui.risk.report import _png  # noqa: E402 - the project's one figure-to-PNG helper

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{margin-top:2rem;border-bottom:1px solid #ddd}
.sub{color:#555} .cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;min-width:11rem}
.card b{display:block;font-size:1.5rem} .card span{color:#555;font-size:.85rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.ok{background:#e6f4ea} .watch{background:#fef7e0} .act{background:#fce8e6;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:1rem} .plots img{width:34rem;max-width:100%}
.note{color:#555;font-size:.9rem} .alert{color:#b3261e}
"""
LIGHT = {"ok": "#4c8c4a", "watch": "#e8a33d", "act": "#b3261e"}


def _img(name: str, data: bytes) -> str:
    return (f'<img alt="{html.escape(name)}" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode()}">')


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return html.escape(str(value))


def _table(frame: pd.DataFrame, status: str | None = "status") -> str:
    if frame.empty:
        return '<p class="note">nothing to show</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.to_dict("records"):
        css = f' class="{row[status]}"' if status and status in row else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{_fmt(v)}</td>" for v in row.values())
                    + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _bar(series: pd.Series, title: str, xlabel: str, line: float | None = None,
         line_label: str = "") -> bytes:
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(series) + 1.3))
    ax.barh([str(i) for i in series.index], series.to_numpy(), color="#5b7db1")
    if line is not None:
        ax.axvline(line, color="#b3261e", linestyle="--", linewidth=1, label=line_label)
        ax.legend(loc="lower right")
    ax.set(title=title, xlabel=xlabel)
    ax.invert_yaxis()
    return _png(fig)


def _trend(frame: pd.DataFrame, title: str, ylabel: str, lines: dict[str, float] | None = None
           ) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for column in frame.columns:
        ax.plot([str(d) for d in frame.index], frame[column], marker="o", label=str(column))
    for label, y in (lines or {}).items():
        ax.axhline(y, color="#999", linestyle=":", linewidth=1)
        ax.text(0, y, f" {label}", fontsize=7, color="#666", va="bottom")
    ax.set(title=title, ylabel=ylabel)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=7)
    return _png(fig)


def plots(service: pd.DataFrame, trend_service: pd.DataFrame, trend_drift: pd.DataFrame,
          fairness: pd.DataFrame, calibration: pd.DataFrame, drift: pd.DataFrame,
          thresholds: dict[str, float]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    coverage = service[(service["metric"] == "coverage")
                       & service["segment"].str.startswith(("region_type=", "age_band=",
                                                            "thin_file="))]
    if len(coverage):
        out["coverage_by_segment"] = _bar(
            coverage.set_index("segment")["value"], "Coverage: share of customers eligible "
            "for an offer", "share of customers")
    if len(fairness):
        air = fairness.assign(label=fairness["dimension"] + "=" + fairness["segment"])
        out["approval_by_segment"] = _bar(
            air.set_index("label")["adverse_impact_ratio"],
            "Approval rate relative to the reference group", "adverse impact ratio",
            line=0.8, line_label="four-fifths rule")
    if len(trend_service):
        wide = trend_service[trend_service["segment"].isin(
            ["all", "region_type=rural", "region_type=urban"])
            & trend_service["metric"].isin(["coverage", "approval_rate"])]
        if len(wide):
            table = wide.assign(series=wide["metric"] + " " + wide["segment"]).pivot_table(
                index="as_of_date", columns="series", values="value")
            out["service_trend"] = _trend(table, "Coverage and approval over time", "share")
    if len(trend_drift):
        table = trend_drift.assign(series=trend_drift["model_name"] + " v"
                                   + trend_drift["model_version"]).pivot_table(
            index="as_of_date", columns="series", values="psi")
        out["score_psi_trend"] = _trend(table, "Score PSI against the training window",
                                        "PSI", {"watch": thresholds["watch"],
                                                "act": thresholds["act"]})
    if len(calibration):
        cal = calibration[calibration["n"] > 0]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        x = range(len(cal))
        ax.bar([i - 0.2 for i in x], cal["expected"], width=0.4, label="predicted (mean PD)")
        ax.bar([i + 0.2 for i in x], cal["observed"], width=0.4, label="observed")
        ax.set_xticks(list(x), cal["grade"])
        ax.set(title="Defaults by risk grade, newly matured loans", ylabel="default rate")
        ax.legend()
        out["calibration"] = _png(fig)
    if len(drift):
        top = drift.head(15).iloc[::-1]
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(top) + 1.2))
        ax.barh(top["variable"], top["psi"], color=[LIGHT[s] for s in top["status"]])
        for bound in (thresholds["watch"], thresholds["act"]):
            ax.axvline(bound, color="#666", linestyle="--", linewidth=0.8)
        ax.set(title="Population shift (PSI/CSI) vs training", xlabel="PSI")
        ax.tick_params(axis="y", labelsize=7)
        out["drift"] = _png(fig)
    return out


def render(*, as_of: date, headline: list[tuple[str, str, str]], alerts: list[Finding],
           watch: list[Finding], sections: list[tuple[str, str, str]],
           images: dict[str, bytes], notes: list[str], facts: dict[str, Any]) -> str:
    """``headline``: (value, label, status); ``sections``: (title, intro, table HTML)."""
    cards = "".join(f'<div class="card {html.escape(s)}"><b>{html.escape(v)}</b>'
                    f"<span>{html.escape(label)}</span></div>" for v, label, s in headline)
    if alerts:
        alert_html = "<ul>" + "".join(
            f'<li class="alert">{html.escape(_plain(a))}</li>' for a in alerts) + "</ul>"
    else:
        alert_html = "<p>No red lights: nothing needs action today.</p>"
    watch_html = ("<ul>" + "".join(f"<li>{html.escape(_plain(w))}</li>" for w in watch[:20])
                  + "</ul>") if watch else "<p>Nothing on the watch list.</p>"
    body = [
        f"<h1>Puhui model and service report, as of {as_of.isoformat()}</h1>",
        f'<p class="sub">{html.escape(facts.get("models_line", ""))}</p>',
        f'<div class="cards">{cards}</div>',
        "<h2>Alerts (red: act now)</h2>", alert_html,
        "<h2>Watch list (amber)</h2>", watch_html,
        "<h2>Charts</h2>",
        '<div class="plots">' + "".join(_img(n, d) for n, d in images.items()) + "</div>",
    ]
    for title, intro, table in sections:
        body += [f"<h2>{html.escape(title)}</h2>", f'<p class="note">{html.escape(intro)}</p>',
                 table]
    if notes:
        body += ["<h2>What this report could not assess</h2>",
                 "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"]
    body.append("<h2>Facts</h2>" + _table(pd.DataFrame(
        [{"fact": k, "value": str(v)} for k, v in facts.items()]), status=None))
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>Puhui report {as_of.isoformat()}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(body)}</body></html>")


PLAIN = {
    "score_psi": "the population being scored has shifted from the one the model learned on",
    "feature_csi": "an input of the model has shifted",
    "auc_drop": "the model ranks good and bad payers less well than when it was approved",
    "calibration_rejected_grades": "predicted default rates miss the observed ones",
    "adverse_impact_ratio": "a group is approved much less often than the reference group",
    "missing_rate_increase": "an input is missing much more often than in training",
    "approval_rate_drop": "fewer applications are approved than on the last report",
    "coverage_drop": "fewer customers are eligible for an offer than on the last report",
    "default_rate_rise": "more loans default than on the last report",
}


def _plain(f: Finding) -> str:
    what = PLAIN.get(f.metric, f.metric)
    who = f.model if f.version in ("-", "") else f"{f.model} v{f.version}"
    value = "n/a" if f.value is None else f"{f.value:.3f}"
    return (f"{who}, {f.segment}: {what} ({f.metric} {value}, "
            f"{f.status} at {f.threshold}){'; ' + f.note if f.note else ''}")
