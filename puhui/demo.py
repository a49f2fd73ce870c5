"""The demo: a synthetic landing zone and the daily pipeline on the embedded default."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path

from rich.console import Console

from puhui.config import ProductsConfig, load_config
from puhui.generate import GenerateSummary, generate_landing_zone
from puhui.generate.truth import TRUTH_FILE
from puhui.privacy import scrub_text
from puhui.settings import DEMO_KEY_FILE, Settings, ensure_local_audit_key


def ensure_demo_pseudonym_key(settings: Settings, console: Console) -> Settings:
    """Use PUHUI_PSEUDONYM_KEY if set; else make (once) a random demo key under PUHUI_HOME.

    The key file lives outside git (PUHUI_HOME is ignored) and is readable by its owner only.
    The production profile never gets here: it refuses to start without the variable.
    """
    if settings.pseudonym_key:
        return settings
    key_path = settings.home / DEMO_KEY_FILE
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        console.print(
            f"demo: made a random pseudonymization key in {key_path} "
            "(production sets PUHUI_PSEUDONYM_KEY instead)"
        )
    key = key_path.read_text().strip()
    os.environ["PUHUI_PSEUDONYM_KEY"] = key
    return replace(settings, pseudonym_key=key)


def generate_with_progress(
    settings: Settings,
    out: Path,
    *,
    console: Console,
    users: int,
    days: int,
    seed: int,
    faults: bool = False,
    end_date: date | None = None,
    history_days: int = 365,
    penalize_segment: str | None = None,
    drift: bool = False,
    rural_agri_boost: float = 0.0,
) -> GenerateSummary:
    """Run the generator with a live status line."""
    products = load_config(settings.config_dir, ProductsConfig).codes
    kwargs = {"end_date": end_date} if end_date else {}
    with console.status("generating synthetic partner data...") as status:
        return generate_landing_zone(
            out,
            users=users,
            days=days,
            seed=seed,
            faults=faults,
            history_days=history_days,
            products=products,
            penalize_segment=penalize_segment,
            drift=drift,
            rural_agri_boost=rural_agri_boost,
            progress=lambda message: status.update(f"generating: {message}"),
            **kwargs,
        )


def _clear_generated_landing(landing: Path) -> None:
    """Remove a previous demo landing zone (recognized by its truth.json) before regenerating."""
    if (landing / TRUTH_FILE).exists():
        shutil.rmtree(landing)


# Two years of back history: a risk model needs a year and more of matured outcomes (labels
# arrive 180 days late) and of behaviour before each application to learn from.
DEMO_HISTORY_DAYS = 730
DEMO_PROMOTION_REASON = (
    "demo: first version to pass its gates, promoted by the demo in the model owner's place"
)


def promote_first_champion(name: str, version: str, console: Console) -> None:
    """With no champion yet, the demo promotes a passing version as a model owner would."""
    from puhui.registry import CHAMPION, mlflow_client, promote, version_of
    from puhui.runtime import open_runtime

    runtime = open_runtime()
    client = mlflow_client(runtime.settings.mlflow_tracking_uri)
    if version_of(client, name, CHAMPION) is not None:
        return
    promote(client, runtime.engine, runtime.audit, name, version, DEMO_PROMOTION_REASON)
    console.print(f"demo: promoted {name} v{version} to champion (audited; "
                  "`puhui models promote` is how a model owner does it)")


def run_demo(settings: Settings, *, users: int, days: int, seed: int, console: Console,
             history_days: int = DEMO_HISTORY_DAYS) -> None:
    """Generate, run the daily pipeline and train both models (risk, then the recommender)
    for the last delivery date, promote a passing one, say where things are."""
    from puhui.pipeline import (
        run_daily_pipeline,
        run_train_recommender_flow,
        run_train_risk_flow,
    )

    started = time.monotonic()
    settings = ensure_demo_pseudonym_key(settings, console)
    settings, made = ensure_local_audit_key(settings)
    if made is not None:
        console.print(f"demo: made a random audit key in {made} (production sets "
                      "PUHUI_AUDIT_KEY instead)")
    landing = Path(settings.landing)
    _clear_generated_landing(landing)
    summary = generate_with_progress(
        settings, landing, users=users, days=days, seed=seed, console=console,
        history_days=history_days,
    )
    truth = json.loads((landing / TRUTH_FILE).read_text())
    console.print(
        f"generated {summary.files} partner files, "
        f"{sum(summary.rows_by_partner.values()):,} rows for {users:,} customers "
        f"x {days} days in {summary.seconds:.1f}s "
        f"(risk AUC ceiling of the data: {truth['risk_auc_ceiling']:.3f})"
    )
    end_date = date.fromisoformat(truth["end_date"])
    console.print(f"running the daily pipeline as of {end_date}...")
    result = run_daily_pipeline(end_date)
    console.print(result["line"])
    console.print(f"training the credit-risk model as of {end_date}...")
    # A failed gate is a result the demo shows (its closing lines name the gate), not a
    # reason to stop: the flow runs end Failed in Prefect, the demo goes on and exits 0.
    trained = _allowing_failed_gates(run_train_risk_flow, end_date)  # lines as steps finish
    console.print(trained["line"], markup=False)
    if not trained["skipped"] and trained["gates"]["passed"]:
        promote_first_champion(trained["name"], trained["version"], console)
    console.print(f"training the product recommender as of {end_date} "
                  f"(NDCG@3 ceiling of the data: {truth['recommender_ndcg3_ceiling']})...")
    ranked = _allowing_failed_gates(run_train_recommender_flow, end_date)
    console.print(ranked["line"], markup=False)
    if not ranked["skipped"] and ranked["gates"]["passed"]:
        promote_first_champion(ranked["name"], ranked["version"], console)
    # The daily run above had no champion yet: refresh profiles and the report with it.
    from puhui.pipeline import run_profiles_flow, run_report_flow

    console.print(run_profiles_flow(end_date)["line"], markup=False)
    monitoring = run_report_flow(end_date)
    console.print(monitoring["line"], markup=False)
    console.print(f"demo done in {time.monotonic() - started:.0f}s")
    console.print(f"  landing zone : {landing}")
    console.print(f"  warehouse    : {scrub_text(settings.warehouse_url)}")
    mlflow_file = settings.mlflow_tracking_uri.removeprefix("sqlite:///")
    unused = mlflow_file != settings.mlflow_tracking_uri and not Path(mlflow_file).exists()
    console.print(
        f"  MLflow store : {scrub_text(settings.mlflow_tracking_uri)}"
        + (" (created when the first model is trained)" if unused else "")
    )
    console.print(f"  HTML report  : {monitoring['report']} (monitoring and service)")
    report = trained.get("report") or _latest_report(settings.reports_dir)
    console.print(f"  evaluation   : {report or 'none yet'} (model evaluation)")
    for line in recommender_summary(ranked):
        console.print(line, markup=False)
    for line in model_summary(trained, report):
        console.print(line, markup=False)


def _allowing_failed_gates(train: Callable[[date], dict], as_of: date) -> dict:
    """The training flow's summary, also when its version failed the gates."""
    from puhui.lifecycle.gates import GatesFailed

    try:
        return train(as_of)
    except GatesFailed as failed:
        return failed.summary


def recommender_summary(ranked: dict) -> list[str]:
    """The demo's closing lines about the recommender: its verdict and, when it failed a
    gate, which one and what that means for the profiles (no champion: no offers)."""
    if ranked.get("skipped"):
        return [f"  recommender  : {ranked['line']}"]
    name, version, m = ranked["name"], ranked["version"], ranked["metrics"]
    what = (f"{name} v{version} (out-of-time NDCG@3 {m['ndcg_at_3_oot']:.4f} vs segment "
            f"popularity {m['ndcg_at_3_oot_segment_popularity']:.4f})")
    failed = ranked["gates"]["failed"]
    if not failed:
        return [f"  recommender  : {what} passed every gate"]
    return [f"  recommender  : {what} FAILED {len(failed)} gate(s): {'; '.join(failed)}; "
            "no champion, so profiles carry no offers (each row says why); a model owner "
            f"can `puhui models show {name} --version {version}` and retrain or promote "
            "with --force"]


def model_summary(trained: dict, report: str | None) -> list[str]:
    """The demo's closing lines about the model: what was registered and, when it failed a
    gate, which one and what a model owner can do. The last line always names the verdict."""
    if trained.get("skipped"):
        return [f"  model        : {trained['line']}"]
    name, version = trained["name"], trained["version"]
    kind = "LightGBM" if trained.get("candidate") == "lightgbm" else "logistic benchmark"
    what = (f"{name} v{version} ({kind}, {trained.get('calibration')} calibration, "
            f"untouched-test AUC {trained['metrics']['auc_oot']:.3f} vs benchmark "
            f"{trained['metrics']['auc_oot_benchmark']:.3f})")
    failed = trained["gates"]["failed"]
    if not failed:
        return [f"  model        : {what} passed every gate"]
    return [
        f"  model        : {what} FAILED {len(failed)} gate(s); it is registered without an "
        "alias, so nothing scores with it:",
        *(f"                   - {gate}" for gate in failed),
        "  a model owner can:",
        f"    read why   : {report or 'the evaluation report'}",
        "    retrain    : fix the data or configs/models.yaml, then "
        "`puhui run train risk --force`",
        f"    accept it  : `puhui models promote {name} --version {version} --force "
        "--reason \"...\"` (the override is audited)",
        f"demo: {name} v{version} failed its gates ({'; '.join(failed)}); no champion was "
        "promoted",
    ]


def _latest_report(reports_dir: Path) -> str | None:
    reports = sorted(reports_dir.glob("*.html"), key=lambda p: p.stat().st_mtime)
    return str(reports[-1]) if reports else None
