"""Partitioned features (and optional scoring) for every customer as of a date.

The flow maps one task per customer partition; which task runner runs them (local threads or
a Dask cluster) is a setting, chosen when the flow is called (:func:`run_partitioned_features`).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from prefect import flow, get_run_logger, unmapped
from prefect.runtime import flow_run

from puhui.config import FeaturesConfig, load_config
from puhui.privacy import install_log_scrubbing
from puhui.runtime import flow_settings
from puhui.task_runners import scoring_threads_from_env, task_runner_from_env
from tasks.features import (
    build_feature_partition,
    drop_split_phone_feeds,
    score_partition,
    split_phone_feeds,
    stage_feature_partitions,
)
from tasks.prefect_ui import dated_run_name


def staging_dir(home: Path, as_of: date, run_id: str) -> Path:
    """Where a run stages its partitions: per flow run, so a retried run resumes its own."""
    return home / "staging" / "features" / as_of.isoformat() / run_id


@flow(name="features-partitioned", flow_run_name=dated_run_name("features-partitioned"),
      log_prints=False)
def partitioned_features_flow(as_of: date, partitions: int | None = None,
                              model_dir: str | None = None,
                              staging: str | None = None) -> dict:
    """Features of every customer as of ``as_of``, one task per partition; then PD if a
    scorer directory (``RiskScorer.save``) is given. Returns counts and the staging path."""
    install_log_scrubbing()  # before anything can fail: Prefect logs its tracebacks
    settings = flow_settings()
    spec = load_config(settings.config_dir, FeaturesConfig)
    staging = staging or str(staging_dir(settings.home, as_of,
                                         str(flow_run.get_id() or "local")))
    parts = stage_feature_partitions(settings, spec, as_of, staging, partitions)
    split = split_phone_feeds(settings, spec, as_of, staging, parts)
    rows = build_feature_partition.map(unmapped(settings.without_keys()), unmapped(spec),
                                       unmapped(as_of), unmapped(staging), parts).result()
    drop_split_phone_feeds(staging)
    scored = None
    if model_dir is not None:
        threads = scoring_threads_from_env(len(parts))
        scored = sum(score_partition.map(unmapped(staging), parts, unmapped(model_dir),
                                         unmapped(threads)).result())
    line = (f"features {as_of}: {sum(rows):,} customers in {len(parts)} partition(s)"
            + (f", {scored:,} scored" if scored is not None else "")
            + (f"; {split.line}" if len(parts) > 1 else "") + f" -> {staging}")
    get_run_logger().info(line)
    return {"as_of": as_of.isoformat(), "partitions": len(parts), "rows": sum(rows),
            "scored": scored, "phone_feeds_split": split.split, "staging": staging,
            "line": line}


def run_partitioned_features(as_of: date, partitions: int | None = None,
                             model_dir: str | None = None, staging: str | None = None) -> dict:
    """Run the flow on the task runner PUHUI_TASK_RUNNER selects."""
    runner = task_runner_from_env()
    return partitioned_features_flow.with_options(task_runner=runner)(
        as_of=as_of, partitions=partitions, model_dir=model_dir, staging=staging)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.features --as-of YYYY-MM-DD [--partitions N] [--model-dir DIR]``."""
    import argparse
    import sys

    from puhui.errors import PuhuiError

    parser = argparse.ArgumentParser(prog="python -m flows.features",
                                     description=partitioned_features_flow.__doc__)
    parser.add_argument("--as-of", type=date.fromisoformat, required=True)
    parser.add_argument("--partitions", type=int, default=None)
    parser.add_argument("--model-dir", default=None, help="a RiskScorer.save directory")
    args = parser.parse_args(argv)
    try:
        summary = run_partitioned_features(args.as_of, args.partitions, args.model_dir)
    except PuhuiError as exc:
        print(f"puhui: {exc}", file=sys.stderr)
        return 1
    print(summary["line"])
    return 0


if __name__ == "__main__":  # the guard Dask's LocalCluster needs: its workers re-import this
    raise SystemExit(main())
