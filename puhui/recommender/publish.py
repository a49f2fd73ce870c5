"""Publishing a trained recommender: the model's adapter to the shared lifecycle.

What is the recommender's own: its run contents (parameters, metrics overall and per
segment, the segment and top-1 tables, the ranker as a pyfunc). Fingerprints, lineage
tags, registration (audited, crash-safe), ``model_evaluations`` rows and the verdict are
the shared code of puhui/lifecycle/ and puhui/registry.py, as for the risk model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from sqlalchemy import Engine

from puhui.audit import AuditWriter
from puhui.lifecycle import publish as lifecycle
from puhui.recommender.model import load_ranker, save_ranker
from puhui.recommender.train import RecommenderRun
from puhui.recommender.training_set import TRAIN, RankingSet
from puhui.registry import register_version, registered_from_run, step_run, use_experiment
from puhui.registry_read import metric_name
from puhui.scratch import scratch_dir

RANKER_ARTIFACT = "ranker"
PIP_REQUIREMENTS = ["lightgbm==4.7.0", "pandas==3.1.1", "numpy==2.4.6", "mlflow==3.17.2"]


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """``models:/product_recommender@champion``: (customer, product) rows in, scores out
    (higher first); eligibility and opt-outs are the caller's, before ranking."""

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's PythonModelContext
        self.ranker = load_ranker(Path(context.artifacts[RANKER_ARTIFACT]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:  # noqa: ANN001
        return self.ranker.score(model_input)


@dataclass(frozen=True)
class PublishedRecommender:
    name: str
    version: str
    run_id: str


def ranges(data: RankingSet) -> dict[str, list[str]]:
    days = data.frame.groupby("split")["as_of_date"].agg(["min", "max"])
    return {"feature_as_of_range": [str(data.frame["as_of_date"].min()),
                                    str(data.frame["as_of_date"].max())],
            "oot_range": [str(days.loc["oot", "min"]), str(data.as_of)]}


def run_params(data: RankingSet, run: RecommenderRun) -> dict[str, Any]:
    """The MLflow params of a run: the LightGBM parameters as trained (size-aware ones
    resolved against ``rows_train_eligible``, the rows the ranker saw), ``rows_train`` (the
    training window's rows before eligibility), the eligibility rules' removals and the
    evaluation's counts."""
    evaluation = run.evaluation
    return {**{f"lightgbm.{k}": v for k, v in run.ranker.params.items()},
            "rows_train": int((data.frame["split"] == TRAIN).sum()),
            "rows_train_eligible": run.rows_train_eligible,
            "features": len(run.ranker.features),
            **{f"eligibility_removed.{k}": v
               for k, v in evaluation.eligibility_removed.items()},
            **evaluation.counts}


def publish_recommender(
    *, engine: Engine, audit: AuditWriter, tracking_uri: str, name: str, data: RankingSet,
    run: RecommenderRun, tags: dict[str, str], fingerprint: str, artifact_root: Path,
    profile: str, config_dir: Path, expectations_dir: Path,
) -> PublishedRecommender:
    """Log the run, register ``name`` (audited) and record the evaluation rows; ``profile``
    and ``config_dir`` are the flow's settings (the refusal of a dirty tree, the configs
    logged)."""
    lifecycle.refuse_unreproducible(engine, audit, name, profile)
    use_experiment(name, tracking_uri, artifact_root)
    evaluation = run.evaluation
    example = run.oot[run.ranker.features].head(5).reset_index(drop=True)
    example = example.astype({c: object if c in run.ranker.categories else "float64"
                              for c in run.ranker.features})
    with scratch_dir("publish") as tmp, step_run(
        f"{name} as of {data.as_of}",
        lifecycle.lineage_tags(tags, data.batch_ids, data.as_of, ranges(data), fingerprint),
    ) as mlrun:
        # A retried step resumes after the registration its failed attempt made.
        version = registered_from_run(engine, audit, name, mlrun.info.run_id,
                                      data.as_of.isoformat())
        if version is None:
            version = _log_and_register(engine, audit, name, mlrun.info.run_id, Path(tmp),
                                        data, run, fingerprint, example,
                                        (config_dir, expectations_dir))
    rows = [r for r in evaluation.rows() if r["value"] is not None]
    lifecycle.write_evaluations(engine, name, str(version), data.as_of, rows, mlrun.info.run_id,
                                audit)
    return PublishedRecommender(name, str(version), mlrun.info.run_id)


def _log_and_register(engine: Engine, audit: AuditWriter, name: str, run_id: str, work: Path,
                      data: RankingSet, run: RecommenderRun, fingerprint: str,
                      example: pd.DataFrame, configs: tuple[Path, Path]) -> str:
    """The run's parameters, metrics, model and tables, then its registration (in the
    active run)."""
    evaluation = run.evaluation
    config_dir, expectations_dir = configs  # the settings' configs and suites
    lifecycle.log_configuration(config_dir, expectations_dir=expectations_dir)
    mlflow.log_params(run_params(data, run))
    metrics = dict(evaluation.metrics)
    for row in evaluation.rows():
        metrics[metric_name(str(row["metric"]), str(row["segment"]))] = float(
            row["value"] if row["value"] is not None else np.nan)
    mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
    ranker_dir = work / RANKER_ARTIFACT
    save_ranker(run.ranker, ranker_dir)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=RecommenderPyfunc(),
        artifacts={RANKER_ARTIFACT: str(ranker_dir)}, input_example=example,
        signature=lifecycle.model_signature(run.ranker.features, run.ranker.categories,
                                            example, run.ranker.score(example)),
        pip_requirements=PIP_REQUIREMENTS)
    for table, frame in (("segments", evaluation.segments),
                         ("top1_share", evaluation.top1_share)):
        path = work / f"{table}.csv"
        frame.to_csv(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="evaluation")
    mlflow.log_dict(run.gates.as_dict(), "gates.json")
    mlflow.log_dict({"ingest_batches": sorted(data.batch_ids), **ranges(data)},
                    "lineage.json")
    return register_version(
        engine, audit, name=name, model_uri=info.model_uri, run_id=run_id,
        tags={lifecycle.FINGERPRINT_TAG: fingerprint, "training.as_of": data.as_of.isoformat()},
        details={"as_of": data.as_of.isoformat(), "fingerprint": fingerprint,
                 "metrics": {k: round(evaluation.metrics[k], 6) for k in
                             ("ndcg_at_3_oot", "ndcg_at_3_oot_popularity",
                              "ndcg_at_3_oot_segment_popularity")
                             if k in evaluation.metrics},
                 "ingest_batches": sorted(data.batch_ids)})
