"""Service effect (服务效果评估) per as-of date and segment, and the portfolio's vintages.

Whether inclusive finance reaches the people it is for, and whether risk stays in bounds:
coverage (share of customers with a profile and at least one eligible offer; without a
recommender champion, eligibility for credit), approval rate of recent applications, default
rate (by grade as outcomes mature; the NPL benchmark in config), offer uptake (uptakes per
impression), thin-file customers served and each product's share of the profiles' top offer.
The portfolio's vintage curves and PAR30 / PAR90: :func:`portfolio`.
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
    offers = "top_offer" in people.columns and people["top_offer"].notna().any()
    people["served"] = (people["top_offer"].fillna("").astype(str) != "") if offers else (
        people["decision"] == "approve")
    people["served"] = people["served"].astype(float)
    people["profiled"] = people["person_key"].isin(set(profiles["person_key"])).astype(float)
    for segment, value, n in _by_segment(people, dims, "profiled"):
        rows.append(("profiled_share", segment, value, n))
    # Without a risk decision (no champion) coverage is unknown, not zero.
    if people["decision"].notna().any():
        for segment, value, n in _by_segment(people, dims, "served"):
            rows.append(("coverage", segment, value, n))
        if offers:
            offered = people[people["top_offer"].fillna("").astype(str) != ""]
            for product in sorted(set(offered["top_offer"])):
                offered = offered.assign(share=(offered["top_offer"] == product).astype(float))
                for segment, value, n in _by_segment(offered, mon.fairness.dimensions,
                                                     "share"):
                    rows.append((f"top1_share.{product}", segment, value, n))
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


MONTH_DAYS = 30  # instalments are monthly; a month on book is 30 days, as DPD counts them


def portfolio(outcomes: pd.DataFrame, as_of: date,
              window_days: int) -> tuple[list[Finding], pd.DataFrame]:
    """Vintage default curves and PAR30 / PAR90 by outstanding balance, from loan_outcomes.

    ``loan_outcomes`` observes each disbursed loan once, ``window_days`` after disbursement,
    with its days past due (``max_dpd``) and default flag; it carries no balance. So, per
    loan: the vintage is the month of disbursement (observation date minus the window); a
    default (90+ days past due) reached 90 DPD ``max_dpd - 90`` days before the observation,
    which dates it in months on book; the outstanding balance at observation is the
    contractual equal-principal schedule (amount over ``term_months`` monthly instalments)
    stopped at the last instalment due before the delinquency began. PAR30 / PAR90 are the
    balance of loans more than 30 / 90 days past due over the balance of all loans on book.
    """
    if outcomes.empty:
        return [], pd.DataFrame()
    lent = outcomes.dropna(subset=["observation_date"]).copy()
    if "legacy_decision" in lent.columns:
        lent = lent[lent["legacy_decision"] == "approved"]
    if lent.empty:
        return [], pd.DataFrame()
    observed = pd.to_datetime(lent["observation_date"])
    lent["vintage"] = (observed - pd.Timedelta(days=window_days)).dt.strftime("%Y-%m")
    dpd = lent["max_dpd"].fillna(0).clip(lower=0).to_numpy(dtype=float)
    books = window_days // MONTH_DAYS
    default = lent["label"].to_numpy(dtype=float) > 0.5
    default_day = window_days - np.maximum(dpd - 90, 0)
    lent["mob_default"] = np.where(default, np.clip(np.ceil(default_day / MONTH_DAYS), 1,
                                                    books), np.nan)
    term = lent["term_months"].astype(float).clip(lower=1).to_numpy()
    paid = np.clip(np.floor((window_days - dpd) / MONTH_DAYS), 0, term)
    lent["balance"] = lent["amount_requested_yuan"].astype(float).to_numpy() * (term - paid) / term
    lent["par30_balance"] = np.where(dpd > 30, lent["balance"], 0.0)
    lent["par90_balance"] = np.where(dpd > 90, lent["balance"], 0.0)
    table = lent.groupby("vintage").agg(
        loans=("label", "size"), balance=("balance", "sum"),
        par30=("par30_balance", "sum"), par90=("par90_balance", "sum")).reset_index()
    table["par30"] = table["par30"] / table["balance"].where(table["balance"] > 0)
    table["par90"] = table["par90"] / table["balance"].where(table["balance"] > 0)
    for mob in range(1, books + 1):
        hit = (lent["mob_default"] <= mob).groupby(lent["vintage"]).mean()
        table[f"default_mob{mob}"] = table["vintage"].map(hit).to_numpy(dtype=float)
    total = float(lent["balance"].sum())
    findings = [
        Finding(as_of, PORTFOLIO, "-", "par30", "all",
                float(lent["par30_balance"].sum()) / total if total else None),
        Finding(as_of, PORTFOLIO, "-", "par90", "all",
                float(lent["par90_balance"].sum()) / total if total else None),
        Finding(as_of, PORTFOLIO, "-", "default_rate", "all", float(default.mean())),
    ]
    for row in table.to_dict("records"):
        segment = f"vintage={row['vintage']}"
        note = f"{row['loans']} loans"
        findings.append(Finding(as_of, PORTFOLIO, "-", "vintage_default_rate", segment,
                                row[f"default_mob{books}"], note=note))
        for metric in ("par30", "par90", *(f"default_mob{m}" for m in range(1, books + 1))):
            value = row[metric]
            findings.append(Finding(as_of, PORTFOLIO, "-", f"vintage_{metric}", segment,
                                    None if value != value else float(value), note=note))
    return findings, table
