"""The model-risk evaluation report: one self-contained HTML file with its plots.

Plots (ROC, calibration by grade, reliability before and after calibration, gains, PSI) are
drawn with matplotlib and embedded as PNG, so the file opens anywhere (MLflow's artifact
viewer, a browser, an e-mail) with nothing to download. Tables carry every figure the gates read.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from puhui.risk.evaluation import Evaluation  # noqa: E402
from puhui.risk.gates import GateResult  # noqa: E402
from puhui.risk.metrics import PSI_ACT, PSI_WATCH  # noqa: E402

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:70rem;color:#222}
h1{margin-bottom:.2rem} h2{margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.pass{color:#137333;font-weight:600} .fail{color:#b3261e;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:1rem} .plots img{width:32rem}
.note{color:#555;font-size:.9rem}
"""


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def roc_plot(evaluation: Evaluation) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 4.2))
    labels = {"roc_candidate": f"candidate ({_kind(evaluation)})",
              "roc_benchmark": "logistic benchmark", "roc_champion": "current champion"}
    metric = {"roc_candidate": "auc_oot", "roc_benchmark": "auc_oot_benchmark",
              "roc_champion": "auc_oot_champion"}
    for key, curve in evaluation.curves.items():
        auc = evaluation.metrics.get(metric[key], float("nan"))
        ax.plot(curve["fpr"], curve["tpr"], label=f"{labels[key]} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="#999", linestyle=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           title="ROC, untouched test window")
    ax.legend(loc="lower right")
    return _png(fig)


def _kind(evaluation: Evaluation) -> str:
    return {"lightgbm": "LightGBM", "logistic": "logistic benchmark"}.get(
        str(evaluation.model_facts.get("candidate")), "LightGBM")


def calibration_plot(evaluation: Evaluation) -> bytes:
    table = evaluation.calibration[evaluation.calibration["n"] > 0]
    before = evaluation.calibration_before.set_index("grade") if len(
        evaluation.calibration_before) else None
    fig, ax = plt.subplots(figsize=(5, 4.2))
    x = range(len(table))
    if before is not None:
        ax.bar([i - 0.27 for i in x], before["expected"].reindex(table["grade"]).fillna(0),
               width=0.27, label="predicted, before calibration", color="#c9c9c9")
    ax.bar(list(x), table["expected"], width=0.27, label="predicted (calibrated PD)")
    low = (table["observed"] - table["interval_low"]).clip(lower=0)
    high = (table["interval_high"] - table["observed"]).clip(lower=0)
    ax.bar([i + 0.27 for i in x], table["observed"], width=0.27, label="observed",
           yerr=[low, high], capsize=3)
    ax.set_xticks(list(x), table["grade"])
    ax.set(xlabel="risk grade (of the calibrated PD)", ylabel="default rate",
           title="Calibration by grade (Jeffreys interval)")
    ax.legend(fontsize=8)
    return _png(fig)


def reliability_plot(evaluation: Evaluation) -> bytes:
    """Predicted against observed default rate in ten equal-count bins, before and after
    the calibration map, with Jeffreys intervals."""
    fig, ax = plt.subplots(figsize=(5, 4.2))
    top = 0.0
    for key, style in (("before", {"color": "#999", "marker": "o", "mfc": "none"}),
                       ("after", {"color": "#1f77b4", "marker": "s"})):
        table = evaluation.reliability.get(key)
        if table is None or not len(table):
            continue
        err = [(table["observed"] - table["interval_low"]).clip(lower=0),
               (table["interval_high"] - table["observed"]).clip(lower=0)]
        ax.errorbar(table["predicted"], table["observed"], yerr=err, capsize=2,
                    linestyle="-", label=f"{key} calibration", **style)
        top = max(top, float(table["interval_high"].max()), float(table["predicted"].max()))
    ax.plot([0, top], [0, top], color="#666", linestyle=":", label="perfect calibration")
    ax.set(xlabel="mean predicted PD (decile of applicants)", ylabel="observed default rate",
           title="Reliability, untouched test window")
    ax.legend(fontsize=8)
    return _png(fig)


def gains_plot(evaluation: Evaluation) -> bytes:
    gains = evaluation.gains
    fig, ax = plt.subplots(figsize=(5, 4.2))
    share = [0.0, *(gains["n"].cumsum() / gains["n"].sum())]
    ax.plot(share, [0.0, *gains["cumulative_capture"]], marker="o", label=_kind(evaluation))
    ax.plot([0, 1], [0, 1], color="#999", linestyle=":", label="random")
    ax.set(xlabel="share of applicants (riskiest first)", ylabel="share of defaults captured",
           title="Cumulative gains")
    ax.legend(loc="lower right")
    return _png(fig)


def psi_plot(evaluation: Evaluation, top: int = 20) -> bytes:
    table = evaluation.feature_stability.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(5, 0.25 * len(table) + 1.2))
    colors = ["#b3261e" if p >= PSI_ACT else "#e8a33d" if p >= PSI_WATCH else "#4c8c4a"
              for p in table["psi"]]
    ax.barh(table["name"], table["psi"], color=colors)
    for bound in (PSI_WATCH, PSI_ACT):
        ax.axvline(bound, color="#666", linestyle="--", linewidth=0.8)
    ax.set(xlabel="PSI, train vs test window", title=f"Stability: top {len(table)} PSI")
    ax.tick_params(axis="y", labelsize=7)
    return _png(fig)


def report_plots(evaluation: Evaluation) -> dict[str, bytes]:
    """The report's plots as PNG bytes, by file name."""
    return {"roc.png": roc_plot(evaluation), "calibration.png": calibration_plot(evaluation),
            "reliability.png": reliability_plot(evaluation),
            "gains.png": gains_plot(evaluation), "psi.png": psi_plot(evaluation)}


def _table(frame: pd.DataFrame, digits: int = 4) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.{digits}f}"
        if isinstance(value, bool):
            return f'<span class="{"pass" if value else "fail"}">{value}</span>'
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(title: str, *parts: str) -> str:
    return f"<h2>{html.escape(title)}</h2>" + "".join(parts)


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _model_sections(evaluation: Evaluation) -> list[str]:
    """Windows, the candidate's choice, size-aware parameters, calibration and constraints."""
    facts = evaluation.model_facts
    if not facts:
        return []
    m = evaluation.metrics
    windows = pd.DataFrame([
        {"window": name, "used for": use, "applications": w["rows"], "defaults": w["defaults"],
         "from": (w["range"] or ["", ""])[0], "to": (w["range"] or ["", ""])[1]}
        for (name, w), use in zip(facts["windows"].items(), (
            "fitting", "early stopping, search, candidate choice, calibration map",
            "final evaluation and gates only (untouched)"), strict=True)])
    selection = facts["selection"]
    article = "" if facts["candidate"] == "lightgbm" else "the "
    choice = f"The candidate is {article}{_kind(evaluation)}: {selection.get('reason', '')}."
    if facts["candidate"] == "logistic":
        choice += (" On this portfolio no LightGBM trial ranked the validation window better "
                   "than the logistic benchmark, so the simpler model is registered, with its "
                   "own calibration map.")
    sizes = pd.DataFrame([{"parameter": k, "value": v,
                           "size-aware rule": facts["size_aware"].get(k, "")}
                          for k, v in facts["resolved"].items()])
    calibration = facts["calibration"] or {}
    scores = pd.DataFrame([{"map": k, **v} for k, v in
                           (calibration.get("cross_validated") or {}).items()])
    method = calibration.get("method", "none")
    cal_note = (
        f"Map in use: {method} (configured: {calibration.get('configured')}; auto picks the "
        f"lower {calibration.get('folds')}-fold cross-validated "
        f"{calibration.get('selection_metric', 'log_loss')} on the validation window). It is "
        "part of the registered model: models:/...@champion returns calibrated PDs. "
        f"On the test window: AUC {m.get('auc_oot_uncalibrated', float('nan')):.4f} before, "
        f"{m['auc_oot']:.4f} after; Brier {m.get('brier_oot_uncalibrated', float('nan')):.4f} "
        f"before, {m['brier_oot']:.4f} after; mean PD "
        f"{m.get('mean_pd_oot_uncalibrated', float('nan')):.4f} before, {m['mean_pd_oot']:.4f} "
        f"after, observed default rate {m['default_rate_oot']:.4f}.")
    if "auc_oot_isotonic_steps" in m:
        cal_note += (f" Isotonic steps alone would tie applicants and give AUC "
                     f"{m['auc_oot_isotonic_steps']:.4f}; ties are broken by the raw score "
                     "(at most 1e-6 of PD), which keeps the ranking.")
    monotone = pd.DataFrame([{"feature": f, "constraint": "increasing (never lowers the PD)"
                              if d > 0 else "decreasing (never raises the PD)"}
                             for f, d in facts["monotone"].items()],
                            columns=["feature", "constraint"])
    constraint_note = ("LightGBM's basic monotone constraints: every leaf below a split on "
                       "the feature is at most every leaf above it, so the PD and the "
                       "feature's contribution move only in that direction.")
    if facts["candidate"] == "logistic":
        constraint_note += (" The registered logistic benchmark is not constrained: its "
                            "coefficients are what the data gave.")
    return [
        _section("Windows", _table(windows)),
        _section("Candidate", _note(choice), _table(sizes),
                 _note("LightGBM's parameters as trained: the best trial (the configured "
                       "values or a search draw), size-aware ones resolved from the train "
                       "window's rows and defaults (fraction x basis, within the range). "
                       "Every trial is listed at the end.")),
        _section("Calibration map", _note(cal_note), _table(scores)),
        _section("Monotone constraints", _table(monotone), _note(constraint_note)),
    ]


def _champion_column(evaluation: Evaluation) -> str:
    champion = evaluation.champion or {}
    if "version" not in champion:
        return "champion (none when trained)"
    if "auc_oot" not in champion:
        return f"champion v{champion['version']} (not re-scored: {champion.get('note', '')})"
    return f"champion v{champion['version']} (test window, re-scored)"


def _ceiling_note(m: dict[str, float]) -> str:
    if "auc_ceiling_test_window" not in m:
        return ""
    return (f" Generated data: the true PDs rank this window's loans with AUC "
            f"{m['auc_ceiling_test_window']:.4f} (its ceiling); the candidate is "
            f"{m['auc_gap_to_ceiling_test_window']:.4f} below it.")


def render_report(
    evaluation: Evaluation, gates: GateResult, facts: dict[str, Any],
    plots: dict[str, bytes],
) -> str:
    """The whole report as an HTML string. ``facts``: model, version, data and run facts."""
    m = evaluation.metrics
    verdict = ('<span class="pass">PASSED</span>' if gates.passed
               else '<span class="fail">FAILED</span>: ' + html.escape("; ".join(gates.failed)))
    images = "".join(
        f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        for name, data in plots.items()
    )
    kind = _kind(evaluation)
    headline = pd.DataFrame([
        (label, m[f"{key}_oot"], m[f"{key}_oot_benchmark"], m.get(f"{key}_oot_champion"),
         m[f"{key}_train"])
        for label, key in (("AUC", "auc"), ("Gini", "gini"), ("KS", "ks"), ("Brier", "brier"))
    ], columns=["metric", f"candidate: {kind} (test window)",
                "logistic benchmark, uncalibrated (test window)", _champion_column(evaluation),
                f"{kind} (train)"])
    facts_table = pd.DataFrame(list(facts.items()), columns=["fact", "value"])
    checks = pd.DataFrame(gates.checks)
    reasons_note = (
        "Reason codes come from the candidate's own log-odds contributions, before "
        "calibration: LightGBM's pred_contrib (exact TreeSHAP) or, for the logistic "
        "benchmark, coefficient x (value - training mean). The calibration map is monotone, "
        "so it changes the PD, never which features raise it.")
    parts: Iterable[str] = (
        f"<h1>Credit-risk model evaluation: {html.escape(str(facts.get('model')))} "
        f"v{html.escape(str(facts.get('version')))}</h1>",
        f"<p>Gates: {verdict}</p>",
        _section("Facts", _table(facts_table)),
        _section("Ranking and accuracy", _table(headline.fillna(float("nan"))),
                 _note("Test window: the most recent months of matured applications. Neither "
                       "training, early stopping, the search, the choice of candidate nor the "
                       "calibration map saw it." + _ceiling_note(m))),
        *_model_sections(evaluation),
        _section("Plots", f'<div class="plots">{images}</div>'),
        _section("Gates", _table(checks)),
        _section("Calibration by risk grade, after calibration (gated)",
                 _table(evaluation.calibration),
                 _note("Jeffreys test: posterior Beta(d+1/2, n-d+1/2) of the grade's default "
                       "rate against its mean predicted PD.")),
        _section("Calibration by risk grade, before calibration (raw model output)",
                 _table(evaluation.calibration_before)),
        _section("Reliability (deciles of predicted PD), after calibration",
                 _table(evaluation.reliability.get("after", pd.DataFrame()))),
        _section("Gains and lift by decile", _table(evaluation.gains)),
        _section("Fairness at the policy cut-off", _table(evaluation.fairness),
                 _note(f"Cut-off PD {m['policy_cutoff_pd']:.2f}. Approval rates over every "
                       "applicant in the window; error rates over labelled ones. Adverse "
                       "impact ratio: approval rate / best-treated segment of the dimension. "
                       "Protected attributes are not model features.")),
        _section("Stability (PSI, train vs test window)", _table(evaluation.feature_stability),
                 _note("Bands: < 0.1 stable, 0.1-0.25 watch, >= 0.25 act.")),
        _section("Feature importance", _table(evaluation.importance),
                 _note("LightGBM: total gain and splits; logistic: |coefficient| x spread.")),
        _section("Reason codes among declined applicants", _table(evaluation.reasons),
                 _note(reasons_note)),
        _section("Hyperparameter trials (LightGBM, validation window)", _table(pd.DataFrame(
            [{"auc_valid": t["auc_valid"], "best_iteration": t["best_iteration"],
              **t["params"]} for t in evaluation.trials]))),
    )
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>credit risk "
            f"evaluation</title><style>{STYLE}</style></head><body>{''.join(parts)}"
            "</body></html>")
