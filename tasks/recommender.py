"""Prefect tasks of the recommender's training flow: thin wrappers, one line per step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date

from prefect import get_run_logger, task

from puhui import console
from puhui.config import (
    FeaturesConfig,
    ModelsConfig,
    ProductsConfig,
    RecommenderSpec,
    RiskModelSpec,
    SegmentsConfig,
    check_eligibility,
    load_config,
)
from puhui.errors import PuhuiError
from puhui.features.sources import load_source_frames
from puhui.generate.truth import read_truth
from puhui.lifecycle.fencing import GATE_STEP, REGISTRATION, Fence, fenced
from puhui.lifecycle.gates import GateResult
from puhui.lifecycle.publish import (
    apply_verdict,
    find_version_by_fingerprint,
    provenance_tags,
    training_fingerprint,
)
from puhui.recommender.publish import PublishedRecommender, publish_recommender
from puhui.recommender.risk_grades import champion_risk_grader, risk_grades
from puhui.recommender.train import RecommenderRun, build_ranking_set, fit_and_evaluate
from puhui.recommender.training_set import OOT, TRAIN, RankingSet
from puhui.registry import mlflow_client
from puhui.runtime import open_runtime
from puhui.settings import Settings
from tasks.prefect_ui import dated_run_name
from tasks.train import STEP, _say


@dataclass(frozen=True)
class RecommenderConfigs:
    """What the recommender's steps read from configs/, read once by its first step."""

    features: FeaturesConfig
    recommender: RecommenderSpec
    risk: RiskModelSpec
    products: ProductsConfig
    segments: SegmentsConfig


def truth_rural_agri_share(landing: str) -> float | None:
    """The generator's truth for the rural agri gate, when the landing zone has one."""
    truth = read_truth(landing)
    if truth is None:
        return None
    value = truth.get("recommender", {}).get("rural_top1_agri_share")
    return None if value is None else float(value)


@task(name="recommender-config", **STEP)
def check_recommender_config(settings: Settings) -> RecommenderConfigs:
    """The flow's first step, as ``check_risk_config``: a bad models.yaml fails a scheduled
    run before the ranking set is built. Returns the configs for the other steps."""
    models = load_config(settings.config_dir, ModelsConfig)
    if models.product_recommender is None:
        raise PuhuiError("configs/models.yaml has no product_recommender section")
    configs = RecommenderConfigs(
        load_config(settings.config_dir, FeaturesConfig), models.product_recommender,
        models.credit_risk, load_config(settings.config_dir, ProductsConfig),
        load_config(settings.config_dir, SegmentsConfig))
    check_eligibility(models, configs.products)
    get_run_logger().info("configs read: features.yaml, products.yaml, segments.yaml, "
                          "models.yaml product_recommender and credit_risk")
    return configs


@task(name="recommender-ranking-set", task_run_name=dated_run_name("recommender-ranking-set"),
      **STEP)
def assemble_ranking_set(settings: Settings, as_of: date,
                         configs: RecommenderConfigs) -> tuple[RankingSet, str]:
    """Groups from product_events with point-in-time features, out-of-time split."""
    started = time.perf_counter()
    runtime = open_runtime(settings)
    spec, reco, risk, products = (configs.features, configs.recommender, configs.risk,
                                  configs.products)
    frames = load_source_frames(runtime.engine, spec, as_of)
    grader = champion_risk_grader(runtime.engine, runtime.settings.mlflow_tracking_uri,
                                  risk.registered_name)
    reference = configs.segments.profile.reference_application
    grade = None if grader.scorer is None else (
        lambda rows: risk_grades(grader.scorer, rows, reference, spec, risk))
    with console.progress("features"):
        data = build_ranking_set(runtime.engine, frames, spec, reco, risk, products, grade)
    f = data.frame
    groups = f.drop_duplicates("group")
    line = _say(
        f"ranking set: {int((groups['split'] == TRAIN).sum()):,} train groups in "
        f"{int(f.loc[f['split'] == TRAIN, 'window'].nunique())} windows, "
        f"{int((groups['split'] == OOT).sum()):,} out-of-time groups from {data.oot_start} "
        f"(customer x {len(products.codes)} products), {len(data.features)} features; "
        f"{grader.describe()}", started)
    return data, line


@task(name="recommender-train", task_run_name=dated_run_name("recommender-train"), **STEP)
def train_and_evaluate(settings: Settings, data: RankingSet, opted_out: list[str],
                       reco: RecommenderSpec) -> tuple[RecommenderRun, str]:
    started = time.perf_counter()
    run = fit_and_evaluate(data, reco, opted_out, truth_rural_agri_share(settings.landing))
    m, k = run.evaluation.metrics, reco.k
    removed = ", ".join(f"{v:,} {r}" for r, v in run.evaluation.eligibility_removed.items())
    line = _say(
        f"train + evaluate out of time: NDCG@{k} {m[f'ndcg_at_{k}_oot']:.4f} vs popularity "
        f"{m[f'ndcg_at_{k}_oot_popularity']:.4f}, segment popularity "
        f"{m[f'ndcg_at_{k}_oot_segment_popularity']:.4f}, non-personalised "
        f"{m[f'ndcg_at_{k}_oot_non_personal']:.4f} over "
        f"{run.evaluation.counts['groups_oot']:,} customers "
        f"({run.evaluation.counts['groups_oot_with_response']:,} with a response: NDCG@{k} "
        f"{m[f'ndcg_at_{k}_oot_responders']:.4f}); ineligible rows removed: {removed}; "
        f"eligibility violations in the final ranking: {run.eligibility_violations}", started)
    return run, line


def recommender_fingerprint(settings: Settings, data: RankingSet, reco: RecommenderSpec) -> str:
    runtime = open_runtime(settings)
    return training_fingerprint(data.as_of, data.batch_ids, runtime.audit.config_hash,
                                runtime.audit.code_version, reco.seed)


def existing_recommender(settings: Settings, reco: RecommenderSpec,
                         fingerprint: str) -> str | None:
    return find_version_by_fingerprint(settings.mlflow_tracking_uri, reco.registered_name,
                                       fingerprint)


@task(name="recommender-register", task_run_name=dated_run_name("recommender-register"),
      **STEP)
def register_recommender(settings: Settings, data: RankingSet, run: RecommenderRun,
                         fingerprint: str, reco: RecommenderSpec,
                         fence: Fence) -> tuple[PublishedRecommender, str]:
    started = time.perf_counter()
    runtime = open_runtime(settings)
    settings, audit = runtime.settings, fenced(runtime.audit, fence, REGISTRATION)
    tags = provenance_tags(audit)
    with console.dropping_prints(console.MLFLOW_REGISTRY_PRINTS):
        published = publish_recommender(
            engine=runtime.engine, audit=audit, tracking_uri=settings.mlflow_tracking_uri,
            name=reco.registered_name, data=data, run=run, tags=tags,
            fingerprint=fingerprint, artifact_root=settings.home / "mlartifacts",
            profile=settings.profile, config_dir=settings.config_dir,
            expectations_dir=settings.expectations_dir)
    return published, _say(f"register: {published.name} v{published.version} (MLflow run "
                           f"{published.run_id[:12]})", started)


@task(name="recommender-gate", task_run_name=dated_run_name("recommender-gate"), **STEP)
def gate_recommender(settings: Settings, published: PublishedRecommender, gates: GateResult,
                     reco: RecommenderSpec, fence: Fence) -> str:
    started = time.perf_counter()
    runtime = open_runtime(settings)
    client = mlflow_client(runtime.settings.mlflow_tracking_uri)
    audit = fenced(runtime.audit, fence, GATE_STEP)
    return _say(apply_verdict(client, runtime.engine, audit, published.name,
                              published.version, gates, reco.auto_promote), started)
