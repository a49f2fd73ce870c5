"""The risk training flow: features -> training set -> train -> evaluate -> register -> gate."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger

from puhui.dates import today_local
from puhui.lifecycle.publish import unchanged_summary
from puhui.privacy import install_log_scrubbing
from puhui.risk.gates import GateResult
from puhui.risk.model import LIGHTGBM
from puhui.runtime import flow_settings
from tasks.prefect_ui import dated_run_name, publish_summary, train_markdown
from tasks.train import (
    apply_gates,
    assemble_training_set,
    build_risk_features,
    check_risk_config,
    evaluate_risk,
    existing_version,
    fingerprint_of,
    one_training_at_a_time,
    reconcile_models,
    register_risk_model,
    restore_lost_challenger,
    train_risk_models,
    training_outcome,
)
from tasks.warehouse import prepare_warehouse


@flow(name="train-risk", flow_run_name=dated_run_name("train-risk"), log_prints=False)
def train_risk_flow(as_of: date | None = None, force: bool = False,  # noqa: ANN201
                    allow_gate_failure: bool = False):
    """Retrain, evaluate, register and gate the credit-risk model as of ``as_of``.

    Training again on the same data, configuration, code and seed would register an identical
    version; it is skipped (the existing version is named) unless ``force``. A version that
    fails its gates ends the run Failed, naming the gates (an in-process caller gets
    ``GatesFailed`` with the summary), unless ``allow_gate_failure``.
    """
    install_log_scrubbing()  # before anything can fail: Prefect logs its tracebacks
    as_of = as_of or today_local()
    settings = flow_settings()
    spec, model = check_risk_config(settings)
    prepare_warehouse(settings)
    # The second of two identical trainings waits, then skips.
    with one_training_at_a_time(settings, model.registered_name) as held:
        reconcile_models(settings)
        features = build_risk_features(settings, as_of, spec)
        training, training_line = assemble_training_set(settings, features, spec, model)
        lines = [features.line, training_line]
        fingerprint = fingerprint_of(settings, training, model)
        same = None if force else existing_version(settings, model, fingerprint)
        if same is not None:
            held()  # a lost lock: the holder's alias moves, not ours
            restored = restore_lost_challenger(settings, same, model, held.fence)
            skipped = unchanged_summary("risk", as_of, same,
                                        lines + ([restored] if restored else []))
            get_run_logger().info(skipped["line"])
            publish_summary("train-risk-summary", train_markdown(skipped), skipped["line"])
            return skipped
        trained, benchmark, train_line = train_risk_models(training, model)
        evaluation, gates, evaluate_line = evaluate_risk(settings, training, trained, benchmark,
                                                         spec, model)
        held()  # a lost lock: another training may be registering this one
        published, register_line = register_risk_model(settings, training, trained, evaluation,
                                                       gates, fingerprint, model,
                                                       held.fence)
        held()  # a loss during a step: its writes check held.fence
        gates, gate_line = apply_gates(settings, published, gates, training, evaluation, model,
                                       held.fence)
        lines += [train_line, evaluate_line, register_line, gate_line]
        m = evaluation.metrics
        line = closing_line(as_of, published.name, published.version, trained.kind, m, gates)
        get_run_logger().info(line)
        summary = {
            "as_of": as_of.isoformat(), "name": published.name, "version": published.version,
            "run_id": published.run_id, "report": str(published.report_path),
            "metrics": {k: m[k] for k in ("auc_oot", "auc_oot_benchmark", "auc_valid",
                                          "auc_valid_benchmark", "ks_oot", "brier_oot",
                                          "score_psi", "auc_ceiling_test_window",
                                          "auc_gap_to_ceiling_test_window") if k in m},
            "candidate": trained.kind, "calibration": trained.params["calibration"],
            "windows": evaluation.model_facts["windows"],
            "gates": gates.as_dict(), "skipped": False, "steps": lines, "line": line,
        }
        publish_summary("train-risk-summary", train_markdown(summary), line)
        return training_outcome("risk", summary, gates, allow_gate_failure)


def closing_line(as_of: date, name: str, version: str, kind: str, metrics: dict[str, float],
                 gates: GateResult) -> str:
    """The flow's last line: the version, its test-window AUC and, plainly, the verdict."""
    candidate = "LightGBM" if kind == LIGHTGBM else "logistic benchmark"
    head = (f"train risk {as_of}: {name} v{version} ({candidate}), untouched-test AUC "
            f"{metrics['auc_oot']:.4f} vs benchmark {metrics['auc_oot_benchmark']:.4f}, ")
    if gates.passed:
        return head + "gates passed"
    return (head + f"FAILED {len(gates.failed)} gate(s): {'; '.join(gates.failed)}. "
            f"v{version} is registered without an alias. A model owner can read the report, "
            f"retrain (fix the data or configs/models.yaml, then puhui run train risk), or "
            f"accept it: puhui models promote {name} --version {version} --force --reason ...")
