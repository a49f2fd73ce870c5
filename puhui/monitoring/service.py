"""Service effect (服务效果评估) per as-of date and segment, and the portfolio's vintages.

Whether inclusive finance reaches the people it is for, and whether risk stays in bounds:
coverage (share of customers whose profile makes them eligible for at least one offer; until
the recommender lands, eligibility is the credit decision), approval rate of recent
applications, default rate (by grade as outcomes mature; the NPL benchmark in config), offer
uptake (uptakes per impression) and thin-file customers served. PAR30 / PAR90 are the shares
of the amount lent whose outcome window saw more than 30 / 90 days past due (the feeds carry
no balances, so the amount requested stands in for the balance), by disbursement month.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from puhui.config import MonitoringConfig, RiskModelSpec
from puhui.monitoring.findings import Finding, judged
from puhui.risk.metrics import assign_grades

SERVICE, PORTFOLIO = "service", "portfolio"


def _by_segment(frame: pd.DataFrame, dimensions: list[str], value: str,
                how: str = "mean") -> list[tuple[str, float, int]]:
    out = [("all", float(getattr(frame[value], how)()) if len(frame) else np.nan, len(frame))]
    for dimension in dimensions:
        if dimension not in frame.columns:
            continue
        for segment, part in frame.groupby(frame[dimension].fillna("(unknown)").astype(str)):
            out.append((f"{dimension}={segment}", float(getattr(part[value], how)()),
                        len(part)))
    return out


def service_metrics(
    *, as_of: date, profiles: pd.DataFrame, window: pd.DataFrame | None,
    matured: pd.DataFrame, events: pd.DataFrame, customers: pd.DataFrame,
    risk: RiskModelSpec, mon: MonitoringConfig, previous: dict[tuple[str, str], float],
) -> tuple[list[Finding], pd.DataFrame]:
    """Findings (metric per segment, with drops/rises judged against the previous as-of
    date's values) and the same as a table for ``service_metrics``."""
    dims = mon.service.dimensions
    t = mon.thresholds
    rows: list[tuple[str, str, float, int]] = []

    people = customers.merge(profiles, on="person_key", how="left")
    people["served"] = (people["decision"] == "approve").astype(float)
    people["profiled"] = people["person_key"].isin(set(profiles["person_key"])).astype(float)
    for segment, value, n in _by_segment(people, dims, "profiled"):
        rows.append(("profiled_share", segment, value, n))
    # Without a risk decision (no champion) coverage is unknown, not zero.
    if people["decision"].notna().any():
        for segment, value, n in _by_segment(people, dims, "served"):
            rows.append(("coverage", segment, value, n))
        thin = people[people["thin_file"] == "yes"]
        for segment, value, n in _by_segment(thin, [d for d in dims if d != "thin_file"],
                                             "served", "sum"):
            rows.append(("thin_file_served", segment, value, n))
    if window is not None and len(window) and "pd" in window.columns:
        w = window.assign(approved=(window["pd"] < risk.policy_cutoff_pd).astype(float))
        for segment, value, n in _by_segment(w, dims, "approved"):
            rows.append(("approval_rate", segment, value, n))
    if len(matured):
        for segment, value, n in _by_segment(matured, dims, "label"):
            rows.append(("default_rate", segment, value, n))
        if "pd" in matured.columns:
            grades = assign_grades(matured["pd"].to_numpy(), risk.grades)
            for grade, part in matured.groupby(grades):
                rows.append(("default_rate", f"grade={grade}", float(part["label"].mean()),
                             len(part)))
    if len(events):
        e = events.merge(customers[["customer_id", *[d for d in dims
                                                       if d in customers.columns]]],
                         on="customer_id", how="left")
        e["impression"] = (e["event_type"] == "impression").astype(float)
        e["uptake"] = (e["event_type"] == "uptake").astype(float)
        imp = _by_segment(e, dims, "impression", "sum")
        upt = dict((s, v) for s, v, _ in _by_segment(e, dims, "uptake", "sum"))
        for segment, shown, n in imp:
            rows.append(("offer_uptake", segment, upt.get(segment, 0.0) / shown if shown
                         else np.nan, n))

    table = pd.DataFrame(rows, columns=["metric", "segment", "value", "n"])
    findings = [Finding(as_of, SERVICE, "-", m, s, None if v != v else float(v),
                        note=f"n={n}") for m, s, v, n in rows]
    for metric, threshold, sign in (("approval_rate", "approval_rate_drop", -1),
                                    ("coverage", "coverage_drop", -1),
                                    ("default_rate", "default_rate_rise", 1)):
        for row in table[table["metric"] == metric].itertuples():
            before = previous.get((metric, row.segment))
            if before is None or row.value != row.value or row.n < mon.fairness.small_segment:
                continue
            change = sign * (row.value - before)
            findings.append(judged(as_of, SERVICE, "-", threshold, row.segment, change,
                                   t[threshold], note=f"{before:.3f} -> {row.value:.3f}"))
    npl = table[(table["metric"] == "default_rate") & (table["segment"] == "all")]
    if len(npl):
        findings.append(Finding(as_of, SERVICE, "-", "npl_benchmark", "all",
                                mon.service.npl_benchmark, note="NPL benchmark from config"))
    return findings, table


def portfolio(outcomes: pd.DataFrame, as_of: date) -> tuple[list[Finding], pd.DataFrame]:
    """Default rate, PAR30 and PAR90 by disbursement month of loans with an outcome."""
    if outcomes.empty:
        return [], pd.DataFrame()
    lent = outcomes[outcomes.get("legacy_decision", "approved") == "approved"].copy() \
        if "legacy_decision" in outcomes.columns else outcomes.copy()
    lent["vintage"] = pd.to_datetime(lent["application_date"]).dt.strftime("%Y-%m")
    amount = lent["amount_requested_yuan"].astype(float)
    lent["par30_amount"] = np.where(lent["max_dpd"].fillna(0) > 30, amount, 0.0)
    lent["par90_amount"] = np.where(lent["max_dpd"].fillna(0) > 90, amount, 0.0)
    lent["amount"] = amount
    table = lent.groupby("vintage").agg(
        loans=("label", "size"), default_rate=("label", "mean"),
        amount=("amount", "sum"), par30=("par30_amount", "sum"),
        par90=("par90_amount", "sum")).reset_index()
    table["par30"] = table["par30"] / table["amount"]
    table["par90"] = table["par90"] / table["amount"]
    total = lent["amount"].sum()
    findings = [
        Finding(as_of, PORTFOLIO, "-", "par30", "all", float(lent["par30_amount"].sum() / total)),
        Finding(as_of, PORTFOLIO, "-", "par90", "all", float(lent["par90_amount"].sum() / total)),
        Finding(as_of, PORTFOLIO, "-", "default_rate", "all", float(lent["label"].mean())),
    ]
    for row in table.itertuples():
        findings.append(Finding(as_of, PORTFOLIO, "-", "vintage_default_rate",
                                f"vintage={row.vintage}", float(row.default_rate),
                                note=f"{row.loans} loans"))
    return findings, table
