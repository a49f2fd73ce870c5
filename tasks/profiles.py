"""Prefect tasks of the profile refresh: models, context, one task per partition, the swap."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from puhui import console
from puhui.audit import current_flow_run_id
from puhui.config import (
    FeaturesConfig,
    ModelsConfig,
    ProductsConfig,
    SegmentsConfig,
    check_eligibility,
    load_config,
)
from puhui.errors import PuhuiError
from puhui.features.partitioned import (
    PhoneFeedsSplit,
    ensure_partition_indexes,
    split_phone_feeds_once,
    staged_phone_feeds,
)
from puhui.features.sources import Register, first_event_days, load_register
from puhui.partitioning import Partition
from puhui.profiles.models import ModelSlot, load_risk_scorer, resolve_models
from puhui.profiles.offers import event_read_indexes, load_offer_context
from puhui.profiles.refresh import (
    ScoringContext,
    SwapResult,
    clear_staging,
    loaded_batches,
    run_key,
    score_partition,
    stage_partition,
    staged_partitions,
    staging_dir,
    swap_profiles,
)
from puhui.runtime import open_runtime
from puhui.settings import Settings
from tasks.retries import step_options

STEP = step_options(retry_delay_seconds=5)


@dataclass(frozen=True)
class ProfileConfigs:
    """What the refresh's steps read from configs/, read once by the flow."""

    features: FeaturesConfig
    segments: SegmentsConfig
    products: ProductsConfig
    models: ModelsConfig

    @classmethod
    def read(cls, config_dir: Path) -> ProfileConfigs:
        configs = cls(load_config(config_dir, FeaturesConfig),
                      load_config(config_dir, SegmentsConfig),
                      load_config(config_dir, ProductsConfig),
                      load_config(config_dir, ModelsConfig))
        check_eligibility(configs.models, configs.products)
        return configs


@task(name="profile-models", **STEP)
def resolve_profile_models(settings: Settings, models: dict[str, str]) -> dict[str, ModelSlot]:
    """Each configured model's champion by alias, with its exact version (or the reason)."""
    runtime = open_runtime(settings)
    slots = resolve_models(runtime.settings.mlflow_tracking_uri, models, engine=runtime.engine)
    logger = get_run_logger()
    for slot in slots.values():
        logger.info(f"{slot.slot}: {slot.name} v{slot.version}" if slot.available
                    else f"{slot.slot}: {slot.reason}")
    return slots


@task(name="profile-context", **STEP)
def prepare_context(settings: Settings, as_of: date, slots: dict[str, ModelSlot],
                    configs: ProfileConfigs) -> tuple[ScoringContext, str]:
    """The register split into partitions, the sources' first days, configs and the
    champions' scorers; the run key. No event rows: with a recommender champion each
    partition's product events are staged beside its profile rows, for its scoring."""
    runtime = open_runtime(settings)
    settings = runtime.settings
    spec, segments, products, models = (configs.features, configs.segments, configs.products,
                                        configs.models)
    partitions = segments.profile.partitions
    if partitions > 1:  # each partition reads its own rows: by the key-range indexes
        ensure_partition_indexes(runtime.engine, spec, event_read_indexes())
    register = load_register(runtime.engine, spec, as_of, partitions).customers
    key = run_key(as_of, slots, runtime.audit.config_hash,
                  loaded_batches(runtime.engine, as_of), partitions)
    risk = slots.get("risk")
    scorer = (load_risk_scorer(runtime.engine, settings.mlflow_tracking_uri, risk)
              if risk is not None and risk.available else None)
    recommender = slots.get("recommender")
    offers = None
    if models.product_recommender is not None:
        # Also without a champion: the non-personalised ranking needs only the events.
        try:
            offers = load_offer_context(runtime.engine, settings.mlflow_tracking_uri,
                                        recommender, models.product_recommender, products,
                                        spec, register, as_of, partitions,
                                        staging_dir(settings.home, as_of, key))
        except PuhuiError as exc:
            if recommender is not None and recommender.available:
                raise  # a champion to score with and no events: the data is missing
            get_run_logger().warning(f"no non-personalised ranking: {exc}")
    ctx = ScoringContext(
        as_of=as_of, features=spec, risk=models.credit_risk, segments=segments,
        slots=slots, scorer=scorer, offers=offers,
        product_codes={p.code: p.kind for p in products.products}, register=register,
        first_day=first_event_days(runtime.engine, spec, as_of), partitions=partitions)
    return ctx, key


@task(name="profile-phone-feeds", **STEP)
def split_phone_feeds(settings: Settings, ctx: ScoringContext, key: str) -> PhoneFeedsSplit:
    """The phone-keyed feeds split by partition into the run's staging directory in one scan,
    before the partition tasks, when they are large enough to pay (the features' rule:
    ``decide_phone_feeds_split``); kept by a resumed run, removed with the staging after
    the swap."""
    runtime = open_runtime(settings)
    directory = staging_dir(runtime.settings.home, ctx.as_of, key)
    directory.mkdir(parents=True, exist_ok=True)
    register = Register(ctx.as_of, ctx.partitions, ctx.register)
    split = split_phone_feeds_once(runtime.engine, ctx.features, register, directory)
    console.detail(f"profiles {ctx.as_of}: {split.line}")
    return split


@task(name="profile-partition", **STEP)
def score_and_stage(settings: Settings, ctx: ScoringContext, key: str, partition: int) -> int:
    """Score one partition of customers and stage its rows; returns the rows staged."""
    runtime = open_runtime(settings)
    directory = staging_dir(runtime.settings.home, ctx.as_of, key)
    split = staged_phone_feeds(ctx.features, directory, Partition(partition, ctx.partitions),
                               ctx.partition(partition))
    rows = score_partition(ctx, runtime.engine, partition, split)
    stage_partition(directory, partition, rows)
    return len(rows)


@task(name="profile-swap", **STEP)
def swap(settings: Settings, as_of: date, key: str, partitions: int) -> SwapResult:
    """One transaction: the as-of date's history and (if newest) the current profiles."""
    runtime = open_runtime(settings)
    directory = staging_dir(runtime.settings.home, as_of, key)
    result = swap_profiles(runtime.engine, as_of, directory, partitions, current_flow_run_id(),
                           runtime.audit)
    clear_staging(directory)
    return result


def staged(home: Path, as_of: date, key: str) -> set[int]:
    return staged_partitions(staging_dir(home, as_of, key))


# NO_CACHE: the settings it takes hold keys that must not go into a cache key.
@task(name="profile-audit", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record_refresh(settings: Settings, as_of: date, slots: dict[str, ModelSlot],
                   result: SwapResult, partitions: int, reused: int, key: str,
                   started: float) -> str:
    runtime = open_runtime(settings)
    models = {s.name: s.version for s in slots.values()}
    reasons = {s.name: s.reason for s in slots.values() if not s.available}
    runtime.audit.record(runtime.engine, "profiles.refresh", f"profiles/{as_of.isoformat()}", {
        "as_of": as_of.isoformat(), "rows": result.rows, "models": models,
        "missing_models": reasons, "partitions": partitions, "partitions_reused": reused,
        "run_key": key, "current_replaced": result.current_replaced,
    })
    versions = ", ".join(f"{s.name} v{s.version}" if s.available else s.reason or s.name
                         for s in slots.values())
    current = ("user_profiles now as of this date" if result.current_replaced
               else f"user_profiles stays as of {result.current_as_of} (newer)")
    return (f"profiles {as_of}: {result.rows:,} customers in {partitions} partitions "
            f"({reused} reused from a failed run); {versions}; {current}, history kept "
            f"({time.perf_counter() - started:.1f}s)")
