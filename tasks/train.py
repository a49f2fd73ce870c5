"""Prefect tasks of the risk training flow: one per step, each logging one summary line.

The steps pass frames and models in memory (``NO_CACHE``): hashing them for Prefect's cache
would cost more than recomputing, and a re-run recomputes from the warehouse anyway.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date

from prefect import get_run_logger, task
from prefect.states import Failed, State
from sqlalchemy import Engine

from puhui import console
from puhui.config import (
    FeaturesConfig,
    ModelsConfig,
    RecommenderSpec,
    RiskModelSpec,
    load_config,
)
from puhui.features.store import write_user_features
from puhui.generate.truth import load_true_pd
from puhui.lifecycle.fencing import GATE_STEP, REGISTRATION, Fence, fenced
from puhui.lifecycle.gates import GatesFailed, gates_failed_message
from puhui.lifecycle.publish import (
    HeldTraining,
    apply_checked_verdict,
    find_version_by_fingerprint,
    provenance_tags,
    training_lock,
)
from puhui.registry import (
    CHALLENGER,
    CHAMPION,
    load_registered_pyfunc,
    mlflow_client,
    reconcile_model_changes,
    restore_challenger,
    version_of,
)
from puhui.registry_read import version_source_run_problem
from puhui.risk.evaluation import Evaluation, evaluate_risk_model
from puhui.risk.gates import GateResult, check_gates
from puhui.risk.model import LIGHTGBM, Scorer, TrainedModel, train_candidate
from puhui.risk.publish import (
    Published,
    champion_check,
    publish_risk_model,
    risk_fingerprint,
)
from puhui.risk.training_set import (
    TRAIN,
    VALID,
    ApplicantFeatures,
    TrainingSet,
    applicant_features,
    build_training_set,
)
from puhui.runtime import open_runtime
from puhui.settings import Settings
from tasks.prefect_ui import dated_run_name
from tasks.retries import step_options

STEP = step_options(retry_delay_seconds=10)


def _say(line: str, started: float) -> str:
    line = f"{line} ({time.perf_counter() - started:.1f}s)"
    get_run_logger().info(line)
    console.stage(line)  # as it happens, not after the flow
    return line


@dataclass
class FeatureStep:
    applicants: ApplicantFeatures
    line: str


@task(name="risk-config", **STEP)
def check_risk_config(settings: Settings) -> tuple[FeaturesConfig, RiskModelSpec]:
    """The flow's first step: read the configs it trains from, so a bad one (a LightGBM
    value of the wrong type) fails a scheduled run in its first seconds, in one line, and
    not after the features are built (``puhui run train`` checks before the flow starts;
    ``puhui serve`` and deployments start the flow directly). Returns them for the other
    steps, which read no YAML themselves."""
    configs = (load_config(settings.config_dir, FeaturesConfig),
               load_config(settings.config_dir, ModelsConfig).credit_risk)
    get_run_logger().info("configs read: features.yaml, models.yaml credit_risk")
    return configs


@task(name="risk-features", task_run_name=dated_run_name("risk-features"), **STEP)
def build_risk_features(settings: Settings, as_of: date, spec: FeaturesConfig) -> FeatureStep:
    """Point-in-time features of every applicant as of the day before each application,
    one customer partition at a time (memory follows the partition, not the population)."""
    started = time.perf_counter()
    runtime = open_runtime(settings)
    with console.progress("features"):
        applicants = applicant_features(runtime.engine, spec, as_of)
    features = applicants.features
    written = write_user_features(runtime.engine, features, spec.feature_set,
                                  runtime.audit)
    # No batch count here: the training set adds the applications' and outcomes' batches,
    # and its count is the one the report, MLflow and the audit trail carry.
    line = _say(
        f"features as of {as_of}: {written:,} (customer, as-of) rows x "
        f"{features.shape[1] - 2} features -> user_features", started)
    return FeatureStep(applicants, line)


def _window(name: str, rows: int, defaults: int, span: list[str]) -> str:
    return f"{name} {rows:,} ({defaults:,} defaults, {span[0]}..{span[1]})"


@task(name="risk-training-set", task_run_name=dated_run_name("risk-training-set"), **STEP)
def assemble_training_set(settings: Settings, step: FeatureStep, spec: FeaturesConfig,
                          model: RiskModelSpec) -> tuple[TrainingSet, str]:
    """Applications joined to features, matured labels, three out-of-time windows."""
    started = time.perf_counter()
    runtime = open_runtime(settings)
    training = build_training_set(runtime.engine, spec, model, step.applicants)
    s = training.summary()
    line = _say(
        "training set: "
        + _window("train", s["train_rows"], s["train_defaults"], s["train_range"]) + ", "
        + _window("validation", s["valid_rows"], s["valid_defaults"], s["valid_range"]) + ", "
        + _window("untouched test", s["oot_rows"], s["oot_defaults"], s["oot_range"])
        + f" applications, {s['features']} features, from {len(training.batch_ids)} ingest "
        "batches", started)
    return training, line


def describe_training(trained: TrainedModel) -> str:
    """The train step's line: resolved sizes, trials, the choice of candidate, calibration."""
    r, sel = trained.resolved, trained.selection
    assert r is not None and trained.calibration is not None
    p = trained.params
    sizes = (f"num_leaves {p['num_leaves']}, min_data_in_leaf {p['min_data_in_leaf']}, "
             f"rounds <= {r.num_boost_round} (patience {r.early_stopping_rounds}) for "
             f"{r.size.rows:,} rows / {r.size.defaults:,} defaults")
    if trained.kind == LIGHTGBM:
        chosen = (f"LightGBM at iteration {trained.best_iteration} ({sel['compared']} "
                  f"validation AUC {sel['auc_valid_lightgbm_compared']:.4f} vs benchmark "
                  f"{sel['auc_valid_benchmark']:.4f})")
    else:
        chosen = (f"the logistic BENCHMARK (validation AUC {sel['auc_valid_benchmark']:.4f} "
                  f"vs best LightGBM {sel['compared']} "
                  f"{sel['auc_valid_lightgbm_compared']:.4f})")
    monotone = f", {len(trained.monotone)} monotone constraints" if trained.monotone else ""
    # The configured parameters are always tried; the search adds its draws to them.
    drawn = len(trained.trials) - 1
    trials = (f"{len(trained.trials)} LightGBM trial(s): the configured parameters"
              + (f" + {drawn} drawn by the search" if drawn else ""))
    return (f"train: {trials} ({sizes}{monotone}); "
            f"candidate {chosen}; calibration {trained.calibration.describe()}")


@task(name="risk-train", task_run_name=dated_run_name("risk-train"), **STEP)
def train_risk_models(training: TrainingSet,
                      model: RiskModelSpec) -> tuple[TrainedModel, object, str]:
    """LightGBM (with the bounded search, if configured), the logistic benchmark, the
    candidate between them and its calibration map, all on train + validation windows."""
    started = time.perf_counter()
    trained, benchmark = train_candidate(training.split(TRAIN), training.split(VALID),
                                         training.features, training.categorical, model)
    return trained, benchmark, _say(describe_training(trained), started)


def load_champion(engine: Engine, tracking_uri: str,
                  name: str) -> tuple[Scorer | None, str | None, str | None]:
    """The current champion's scorer and version, if there is one, and why it is not
    compared (None: it is): its source run deleted in MLflow.

    Loaded at the version the alias was read as (not by alias again: a move in between would
    pair one version's scorer with another's number), from files checked against its
    registration event (unpickling runs code).
    """
    client = mlflow_client(tracking_uri)
    version = version_of(client, name, CHAMPION)
    if version is None:
        return None, None, None
    if lost := version_source_run_problem(client, name, version):
        # Its lineage is gone, and refusing it here would stop every training of the model
        # for good (a replacement is the remedy): not compared, so the champion gate is not
        # checked, as for a champion whose features this training set lacks.
        return None, version, lost
    pyfunc = load_registered_pyfunc(engine, tracking_uri, name, version)
    return pyfunc.unwrap_python_model().scorer, version, None


@task(name="risk-evaluate", task_run_name=dated_run_name("risk-evaluate"), **STEP)
def evaluate_risk(settings: Settings, training: TrainingSet, trained: TrainedModel,
                  benchmark: object, spec: FeaturesConfig,
                  model: RiskModelSpec) -> tuple[Evaluation, GateResult, str]:
    """The reviewer's figures on the untouched test window, and the gates' verdict."""
    started = time.perf_counter()
    runtime = open_runtime(settings)
    champion, champion_version, lost = load_champion(runtime.engine,
                                                     runtime.settings.mlflow_tracking_uri,
                                                     model.registered_name)
    evaluation = evaluate_risk_model(training, trained, benchmark, model, spec, champion,
                                     load_true_pd(runtime.settings.landing))
    if lost:  # the report's champion column and the line say why it was not compared
        evaluation = replace(evaluation, champion={"note": f"not compared: {lost}"})
    gates = check_gates(evaluation, model.gates)
    if evaluation.champion is not None:  # the report's champion column names the version
        evaluation.champion["version"] = champion_version
    m = evaluation.metrics
    versus = (f", champion v{champion_version} {m['auc_oot_champion']:.4f}"
              if "auc_oot_champion" in m else f", {lost}: champion not compared (its gate "
              "not checked)" if lost else ", no champion yet")
    if "auc_ceiling_test_window" in m:
        versus += f", true-PD ceiling of this window {m['auc_ceiling_test_window']:.4f}"
    worst = evaluation.fairness[evaluation.fairness["gated"]].sort_values(
        "adverse_impact_ratio").head(1)
    fairness = (f"lowest adverse impact ratio {worst.iloc[0]['adverse_impact_ratio']:.2f} "
                f"({worst.iloc[0]['dimension']}={worst.iloc[0]['segment']})"
                if len(worst) else "no segment large enough to gate")
    calibration = evaluation.calibration[evaluation.calibration["n"] > 0]
    missed = calibration[~calibration["ok"]]["grade"].tolist()
    line = _say(
        f"evaluate on the untouched test window: AUC {m['auc_oot']:.4f} (benchmark "
        f"{m['auc_oot_benchmark']:.4f}{versus}), KS {m['ks_oot']:.3f}, Brier "
        f"{m['brier_oot_uncalibrated']:.4f} -> {m['brier_oot']:.4f} calibrated, calibration "
        + (f"misses grade(s) {', '.join(missed)}" if missed else
           f"within tolerance in all {len(calibration)} grades")
        + f", score PSI {m['score_psi']:.3f}, {fairness}", started)
    return evaluation, gates, line


@task(name="risk-register", task_run_name=dated_run_name("risk-register"), **STEP)
def register_risk_model(settings: Settings, training: TrainingSet, trained: TrainedModel,
                        evaluation: Evaluation, gates: GateResult, fingerprint: str,
                        model: RiskModelSpec, fence: Fence
                        ) -> tuple[Published, str]:
    """One MLflow run, a registered version (audited), model_evaluations rows; ``fence``:
    the training lock's generation its writes check (``puhui.lifecycle.fencing``)."""
    started = time.perf_counter()
    runtime = open_runtime(settings)
    settings, audit = runtime.settings, fenced(runtime.audit, fence, REGISTRATION)
    tags = provenance_tags(audit)
    with console.dropping_prints(console.MLFLOW_REGISTRY_PRINTS):
        published = publish_risk_model(
            engine=runtime.engine, audit=audit, tracking_uri=settings.mlflow_tracking_uri,
            name=model.registered_name, training=training, trained=trained,
            evaluation=evaluation, gates=gates, tags=tags, fingerprint=fingerprint,
            report_dir=settings.reports_dir, artifact_root=settings.home / "mlartifacts",
            profile=settings.profile, config_dir=settings.config_dir,
            expectations_dir=settings.expectations_dir,
        )
    line = _say(f"register: {published.name} v{published.version} (MLflow run "
                f"{published.run_id[:12]}), report {published.report_path}", started)
    return published, line


@task(name="risk-gate", task_run_name=dated_run_name("risk-gate"), **STEP)
def apply_gates(settings: Settings, published: Published, gates: GateResult,
                training: TrainingSet, evaluation: Evaluation,
                model: RiskModelSpec, fence: Fence) -> tuple[GateResult, str]:
    """The verdict is recorded (audit event, then version tags); a passing version becomes
    the challenger (and champion, if configured), a failing one gets no alias. Against the
    champion at verdict time: if it moved since the evaluation, the gates are checked again
    against it (``puhui.risk.publish.champion_check``). Returns the verdict and the line.
    ``fence``: as ``register_risk_model``'s (the verdict and alias moves check it)."""
    started = time.perf_counter()
    runtime = open_runtime(settings)
    uri = runtime.settings.mlflow_tracking_uri
    check = champion_check(runtime.engine, uri, published, training, evaluation, model.gates)
    gates, line = apply_checked_verdict(mlflow_client(uri), runtime.engine,
                                        fenced(runtime.audit, fence, GATE_STEP),
                                        published.name, published.version, gates,
                                        model.auto_promote, check)
    return gates, _say(line, started)


@task(name="reconcile-models", **STEP)
def reconcile_models(settings: Settings) -> list[str]:
    """Settle model changes an earlier run left half-done (a crash between MLflow and the
    audit trail) before this run changes anything."""
    runtime = open_runtime(settings)
    client = mlflow_client(runtime.settings.mlflow_tracking_uri)
    result = reconcile_model_changes(client, runtime.engine, runtime.audit)
    for line in result.repaired:
        get_run_logger().warning(line)
    for line in result.swept:
        get_run_logger().info(line)
    # Killed, or fenced out after MLflow registered them (puhui.lifecycle.fencing).
    for version in result.ungated:
        get_run_logger().info(f"ungated (promote refuses it): {version}")
    return result.repaired


@task(name="restore-challenger", **STEP)
def restore_lost_challenger(settings: Settings, version: str,
                            spec: RiskModelSpec | RecommenderSpec,
                            fence: Fence) -> str | None:
    """What an unchanged version's own run left undone after its verdict when it was killed:
    the challenger alias and, with ``auto_promote``, the champion
    (``puhui.registry.restore_challenger``); the step's line, or None. ``spec``: the risk
    model's or the recommender's; ``fence``: the training's (its moves check it)."""
    started = time.perf_counter()
    runtime = open_runtime(settings)
    client = mlflow_client(runtime.settings.mlflow_tracking_uri)
    audit = fenced(runtime.audit, fence, GATE_STEP)
    moved = restore_challenger(client, runtime.engine, audit, spec.registered_name,
                               version, spec.auto_promote)
    if not moved:
        return None
    if CHAMPION not in moved and f"{CHALLENGER} removed" not in moved:
        return _say(f"gate: v{version} passed every gate -> {CHALLENGER} (its run stopped "
                    "before this move)", started)
    return _say(f"gate: v{version} passed every gate -> {CHAMPION} (auto_promote is on; its "
                f"run stopped before these moves: {', '.join(moved)})", started)


@contextmanager
def one_training_at_a_time(settings: Settings, name: str) -> Iterator[HeldTraining]:
    """``puhui.lifecycle.publish.training_lock`` for the registered model ``name``,
    held by the flow's own process: not a task, since with Dask or a worker a task runs
    elsewhere and the lock must last from the fingerprint check to the gate verdict. Yields
    ``still_held`` with the training's ``fence`` (see ``training_lock``)."""
    runtime = open_runtime(settings)

    def say(line: str) -> None:
        get_run_logger().info(line)
        console.stage(line)

    with training_lock(runtime.engine, name, say) as still_held:
        yield still_held


def training_outcome(model: str, summary: dict, gates: GateResult,
                     allow_gate_failure: bool) -> dict | State:
    """A training flow's return: its summary, or, when the version failed its gates (and
    that is not allowed), a Failed state naming them whose data raises ``GatesFailed``
    (carrying the summary) for an in-process caller."""
    if gates.passed or allow_gate_failure:
        return summary
    message = gates_failed_message(model, summary["name"], summary["version"], gates.failed)
    return Failed(message=message, data=GatesFailed(message, summary))


def fingerprint_of(settings: Settings, training: TrainingSet, model: RiskModelSpec) -> str:
    runtime = open_runtime(settings)
    return risk_fingerprint(training, runtime.audit.config_hash, runtime.audit.code_version,
                                model.seed)


def existing_version(settings: Settings, model: RiskModelSpec, fingerprint: str) -> str | None:
    return find_version_by_fingerprint(settings.mlflow_tracking_uri, model.registered_name,
                                       fingerprint)
