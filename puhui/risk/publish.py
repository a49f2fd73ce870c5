"""Publishing a trained risk model: one MLflow run, a registered version, warehouse rows.

The run carries what a reviewer needs to trust the version: parameters, overall and
per-segment metrics, the HTML report and its plots, the model with signature and input
example, and tags that tie it to its data (ingest batch ids, feature as-of range), the
configuration hash and the code version. The same figures go to ``model_evaluations``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from sqlalchemy import Engine

from puhui.audit import AuditWriter
from puhui.config import GatesSpec
from puhui.errors import infrastructure_error
from puhui.files import write_text_atomically
from puhui.lifecycle.gates import ChampionCheck
from puhui.lifecycle.publish import (
    FINGERPRINT_TAG,
    lineage_tags,
    log_configuration,
    model_signature,
    refuse_unreproducible,
    training_fingerprint,
    write_evaluations,
)
from puhui.monitoring.bins import log_monitoring_bins
from puhui.registry import (
    load_registered_pyfunc,
    mlflow_client,
    register_version,
    registered_from_run,
    step_run,
    use_experiment,
)
from puhui.registry_read import metric_name, version_source_run_problem
from puhui.risk.evaluation import Evaluation, against_champion
from puhui.risk.gates import GateResult, check_gates
from puhui.risk.model import TrainedModel
from puhui.risk.pyfunc import SCORER_ARTIFACT, RiskModelPyfunc
from puhui.risk.report import render_report, report_plots
from puhui.risk.training_set import OOT, TRAIN, TrainingSet
from puhui.scratch import scratch_dir

# Explicit requirements: inferring them costs seconds and can pick up the whole venv.
PIP_REQUIREMENTS = ["lightgbm==4.7.0", "pandas==3.1.1", "numpy==2.4.6", "mlflow==3.17.2",
                    "scikit-learn==1.9.1"]


@dataclass(frozen=True)
class Published:
    name: str
    version: str
    run_id: str
    report_path: Path


def risk_fingerprint(training: TrainingSet, config_hash: str, code_version: str,
                     seed: int) -> str:
    return training_fingerprint(training.as_of, training.batch_ids, config_hash, code_version,
                                seed)


def registration_details(training: TrainingSet, evaluation: Evaluation,
                         fingerprint: str) -> dict[str, Any]:
    """What the audit trail records about a version: its data, windows and key metrics."""
    summary = training.summary()
    return {
        "as_of": summary["as_of"], "feature_as_of_range": summary["feature_as_of_range"],
        "train_range": summary["train_range"], "oot_range": summary["oot_range"],
        "metrics": {k: round(evaluation.metrics[k], 6) for k in
                    ("auc_oot", "auc_oot_benchmark", "ks_oot", "score_psi")},
        "fingerprint": fingerprint, "ingest_batches": sorted(training.batch_ids),
    }


def publish_risk_model(
    *, engine: Engine, tracking_uri: str, name: str, training: TrainingSet,
    trained: TrainedModel, evaluation: Evaluation, gates: GateResult, tags: dict[str, str],
    fingerprint: str, report_dir: Path, artifact_root: Path, audit: AuditWriter,
    profile: str, config_dir: Path, expectations_dir: Path,
) -> Published:
    """Log the run, register the model as ``name`` (audited) and record the evaluation rows.

    The gate verdict is in the run (report, ``gates.json``) but not yet on the version: the
    gate step sets it (``puhui.registry.settle_gate_verdict``). ``profile`` and
    ``config_dir`` / ``expectations_dir`` are the flow's settings (the refusal of a dirty
    tree, the configs and suites logged).
    """
    refuse_unreproducible(engine, audit, name, profile)
    use_experiment(name, tracking_uri, artifact_root)
    summary = training.summary()
    batch_ids = sorted(training.batch_ids)
    run_tags = lineage_tags(tags, batch_ids, training.as_of,
                            {"feature_as_of_range": summary["feature_as_of_range"],
                             "oot_range": summary["oot_range"]}, fingerprint)
    oot = training.split(OOT)
    example = oot[training.features].head(5).reset_index(drop=True)
    # Numbers as float: a feature that is whole in these rows may be missing in others.
    example = example.astype({c: object if c in training.categorical else "float64"
                              for c in training.features})
    with scratch_dir("publish") as tmp, step_run(f"{name} as of {training.as_of}",
                                                 run_tags) as run:
        work = Path(tmp)
        # A retried step resumes after the registration its failed attempt made.
        version = registered_from_run(engine, audit, name, run.info.run_id,
                                      training.as_of.isoformat())
        if version is None:
            version = _log_and_register(engine, audit, name, run.info.run_id, work, training,
                                        trained, evaluation, fingerprint, example,
                                        (config_dir, expectations_dir))
        plots = report_plots(evaluation)
        facts: dict[str, Any] = {
            "model": name, "version": version, "mlflow_run_id": run.info.run_id,
            **{k: v for k, v in summary.items() if k != "as_of"},
            "training_as_of": training.as_of.isoformat(), "ingest_batches": len(batch_ids),
            **{k: v for k, v in tags.items()},
        }
        # Kept under PUHUI_HOME as well as in the run: readers without MLflow open it there.
        report = report_dir / f"{name}_v{version}_evaluation.html"
        # Aside and renamed: a kill mid-write left a truncated page under the final name.
        write_text_atomically(report, render_report(evaluation, gates, facts, plots))
        mlflow.log_artifact(str(report), artifact_path="report")
        for file_name, data in plots.items():
            (work / file_name).write_bytes(data)
            mlflow.log_artifact(str(work / file_name), artifact_path="plots")
        tables = {"calibration": evaluation.calibration,
                  "calibration_before": evaluation.calibration_before,
                  "gains": evaluation.gains,
                  "feature_stability": evaluation.feature_stability,
                  "importance": evaluation.importance, "fairness": evaluation.fairness,
                  "reasons": evaluation.reasons}
        for table_name, frame in tables.items():
            path = work / f"{table_name}.csv"
            frame.to_csv(path, index=False)
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        mlflow.log_dict({"ingest_batches": batch_ids, **summary}, "lineage.json")
        mlflow.log_dict(gates.as_dict(), "gates.json")
        # The candidate's choice, calibration map, constraints and resolved sizes.
        mlflow.log_dict(evaluation.model_facts, "model_facts.json")
        mlflow.log_dict({"reason_examples": evaluation.reason_examples,
                         "trials": evaluation.trials}, "evaluation/details.json")
    write_evaluations(engine, name, str(version), training.as_of, evaluation.rows(),
                      run.info.run_id, audit)
    return Published(name, str(version), run.info.run_id, report)


def _log_and_register(engine: Engine, audit: AuditWriter, name: str, run_id: str, work: Path,
                      training: TrainingSet, trained: TrainedModel, evaluation: Evaluation,
                      fingerprint: str, example: Any, configs: tuple[Path, Path]) -> str:
    """The run's parameters, metrics and model, then its registration (in the active run)."""
    summary = training.summary()
    config_dir, expectations_dir = configs  # the settings' configs and suites
    log_configuration(config_dir, expectations_dir=expectations_dir)
    mlflow.log_params({k: v for k, v in trained.params.items()} | {
        "best_iteration": trained.best_iteration, "features": len(training.features),
        "train_rows": summary["train_rows"], "valid_rows": summary["valid_rows"],
        "oot_rows": summary["oot_rows"], "search_trials": len(trained.trials)})
    metrics = dict(evaluation.metrics)
    for row in evaluation.segment_metrics:
        metrics[metric_name(str(row["metric"]), str(row["segment"]))] = float(row["value"])
    mlflow.log_metrics(metrics)
    scorer_dir = work / SCORER_ARTIFACT
    trained.scorer.save(scorer_dir)
    model_info = mlflow.pyfunc.log_model(
        name="model", python_model=RiskModelPyfunc(),
        artifacts={SCORER_ARTIFACT: str(scorer_dir)},
        signature=model_signature(training.features, training.categorical, example,
                                  trained.scorer.predict_pd(example)),
        input_example=example, pip_requirements=PIP_REQUIREMENTS,
    )
    log_monitoring_bins(model_info.model_uri, training.split(TRAIN), training.features,
                        training.categorical)
    return register_version(
        engine, audit, name=name, model_uri=model_info.model_uri, run_id=run_id,
        tags={FINGERPRINT_TAG: fingerprint, "training.as_of": training.as_of.isoformat()},
        details=registration_details(training, evaluation, fingerprint))


def champion_check(engine: Engine, tracking_uri: str, published: Published,
                   training: TrainingSet, evaluation: Evaluation,
                   gates: GatesSpec) -> ChampionCheck:
    """The risk gates' comparison with the champion, for the gate step: the version
    evaluated against, and the gates again with another champion re-scored on the same test
    window (loaded from files checked against its registration, as for the evaluation); the
    run's ``gates.json`` then holds the checks of the verdict (from its event). The report and
    metrics keep the champion of the evaluation, named there. ``prepare`` loads a champion
    ahead (the gate step calls it before the model lock); a load that failed is raised by
    ``recheck``, but one the infrastructure failed (``infrastructure_error``) raises at once
    and is not kept: it says nothing of the champion, and the step's retry loads again."""
    loaded: dict[str, Any] = {}  # champion version -> its scorer, or why it failed to load

    def prepare(champion: str | None) -> None:
        if champion is None or champion in loaded:
            return
        try:
            # One whose source run is lost is not compared, as in the evaluation
            # (``tasks.train.load_champion``): its gate is not checked.
            loaded[champion] = None if version_source_run_problem(
                mlflow_client(tracking_uri), published.name, champion) else \
                load_registered_pyfunc(engine, tracking_uri, published.name,
                                       champion).unwrap_python_model().scorer
        except Exception as exc:
            if infrastructure_error(exc):
                raise
            loaded[champion] = exc  # raised again by recheck, under the lock

    def recheck(champion: str | None) -> GateResult:
        scorer = None
        if champion is not None:
            prepare(champion)  # done already unless the champion moved again meanwhile
            scorer = loaded[champion]
            if isinstance(scorer, Exception):
                raise scorer
        return check_gates(against_champion(evaluation, training, scorer), gates)

    compared = (evaluation.champion or {}).get("version")
    return ChampionCheck(None if compared is None else str(compared), recheck, prepare)
