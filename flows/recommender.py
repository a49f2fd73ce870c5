"""The recommender's training flow: ranking set -> train + evaluate -> register -> gate."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger

from puhui.dates import today_local
from puhui.lifecycle.publish import unchanged_summary
from puhui.privacy import install_log_scrubbing
from puhui.runtime import flow_settings
from tasks.prefect_ui import dated_run_name
from tasks.recommender import (
    assemble_ranking_set,
    check_recommender_config,
    existing_recommender,
    gate_recommender,
    recommender_fingerprint,
    register_recommender,
    train_and_evaluate,
)
from tasks.train import (
    one_training_at_a_time,
    reconcile_models,
    restore_lost_challenger,
    training_outcome,
)
from tasks.warehouse import prepare_warehouse


@flow(name="train-recommender", flow_run_name=dated_run_name("train-recommender"),
      log_prints=False)
def train_recommender_flow(as_of: date | None = None, force: bool = False,  # noqa: ANN201
                           opted_out: list[str] | None = None,
                           allow_gate_failure: bool = False):
    """Retrain, evaluate, register and gate the product recommender as of ``as_of``.

    ``opted_out``: person keys of customers who refused personalisation (the customers feed
    has no such column yet); they get the non-personalised ranking only. Same data,
    configuration, code and seed: skipped unless ``force``. Failed gates end the run
    Failed (``GatesFailed`` in process) unless ``allow_gate_failure``.
    """
    install_log_scrubbing()  # before anything can fail: Prefect logs its tracebacks
    as_of = as_of or today_local()
    settings = flow_settings()
    configs = check_recommender_config(settings)
    reco = configs.recommender
    prepare_warehouse(settings)
    # The second of two identical trainings waits, then skips.
    with one_training_at_a_time(settings, reco.registered_name) as held:
        reconcile_models(settings)
        data, data_line = assemble_ranking_set(settings, as_of, configs)
        lines = [data_line]
        fingerprint = recommender_fingerprint(settings, data, reco)
        same = None if force else existing_recommender(settings, reco, fingerprint)
        if same is not None:
            held()  # a lost lock: the holder's alias moves, not ours
            restored = restore_lost_challenger(settings, same, reco, held.fence)
            skipped = unchanged_summary("recommender", as_of, same,
                                        lines + ([restored] if restored else []))
            get_run_logger().info(skipped["line"])
            return skipped
        run, train_line = train_and_evaluate(settings, data, sorted(opted_out or []), reco)
        held()  # a lost lock: another training may be registering this one
        published, register_line = register_recommender(settings, data, run, fingerprint, reco,
                                                         held.fence)
        held()  # a loss during a step: its writes check held.fence
        gate_line = gate_recommender(settings, published, run.gates, reco, held.fence)
        lines += [train_line, register_line, gate_line]
        m = run.evaluation.metrics
        verdict = ("gates passed" if run.gates.passed else
                   f"FAILED {len(run.gates.failed)} gate(s): {'; '.join(run.gates.failed)}")
        line = (f"train recommender {as_of}: {published.name} v{published.version}, out-of-time "
                f"NDCG@3 {m['ndcg_at_3_oot']:.4f} vs segment popularity "
                f"{m['ndcg_at_3_oot_segment_popularity']:.4f}, {verdict}")
        get_run_logger().info(line)
        summary = {"as_of": as_of.isoformat(), "name": published.name,
                   "version": published.version, "run_id": published.run_id, "skipped": False,
                   "metrics": {k: m[k] for k in ("ndcg_at_3_oot", "ndcg_at_3_oot_popularity",
                                                 "ndcg_at_3_oot_segment_popularity",
                                                 "ndcg_at_3_oot_non_personal", "hit_at_3_oot",
                                                 "map_at_3_oot")},
                   "eligibility_removed": run.evaluation.eligibility_removed,
                   "eligibility_violations": run.eligibility_violations,
                   "gates": run.gates.as_dict(), "steps": lines, "line": line}
        return training_outcome("recommender", summary, run.gates, allow_gate_failure)
