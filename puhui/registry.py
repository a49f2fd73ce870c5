"""The model registry as model owners and auditors use it: versions, gates, aliases, lineage.

MLflow holds the versions, their runs and the current aliases. It keeps no history of alias
changes, so every registration and alias move is also written to the audit trail, which is
where rollback finds "the previous champion" and where lineage starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy import Engine, select

from puhui.audit import AuditWriter, read_audit_events
from puhui.errors import PuhuiError
from puhui.warehouse.schema import ingest_batches, validation_results

CHAMPION, CHALLENGER = "champion", "challenger"
REGISTERED = "model.registered"
ALIAS_SET = "model.alias"
# Tags on each model version: the gate verdict, readable without the audit trail.
GATES_PASSED_TAG, GATES_FAILED_TAG = "gates.passed", "gates.failed"
LIST_METRICS = ("auc_oot", "auc_oot_benchmark", "ks_oot", "gini_oot", "brier_oot",
                "score_psi", "approval_rate_oot", "auc_oot_champion")


def registry_client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def use_experiment(name: str, tracking_uri: str, artifact_root: Path) -> str:
    """Select (creating if needed) the experiment ``name``; returns its id.

    With a database tracking URI, MLflow would put artifacts in ``./mlruns`` of whatever
    directory the process runs in; a new experiment's artifacts go under ``artifact_root``
    instead. A tracking server decides for itself.
    """
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = registry_client(tracking_uri)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        mlflow.set_experiment(experiment_id=existing.experiment_id)
        return existing.experiment_id
    location = None
    if not tracking_uri.startswith(("http://", "https://", "databricks")):
        location = (artifact_root / name).resolve().as_uri()
    experiment_id = client.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def current_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Alias -> version, read from the registered model (versions may not list theirs)."""
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        return {}
    return {alias: str(version) for alias, version in aliases.items()}


def version_of(client: MlflowClient, name: str, alias: str) -> str | None:
    return current_aliases(client, name).get(alias)


def set_alias(
    client: MlflowClient, engine: Engine, audit: AuditWriter, name: str, alias: str,
    version: str, reason: str, *, rollback: bool = False,
) -> str | None:
    """Point ``alias`` at ``version`` and audit the move; returns the version it left."""
    previous = version_of(client, name, alias)
    client.set_registered_model_alias(name, alias, str(version))
    audit.record(engine, ALIAS_SET, f"{name}/{alias}", {
        "model": name, "alias": alias, "version": str(version), "previous": previous,
        "reason": reason, "rollback": rollback,
    }, mlflow_run_id=client.get_model_version(name, str(version)).run_id)
    return previous


def gate_verdict(client: MlflowClient, name: str, version: str) -> dict[str, Any]:
    tags = client.get_model_version(name, str(version)).tags
    return {"passed": tags.get(GATES_PASSED_TAG) == "true",
            "failed": json.loads(tags.get(GATES_FAILED_TAG, "[]"))}


@dataclass(frozen=True)
class VersionRow:
    name: str
    version: str
    aliases: list[str]
    metrics: dict[str, float]
    gates: dict[str, Any]
    run_id: str
    created: int
    as_of: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "aliases": self.aliases,
                "metrics": self.metrics, "gates": self.gates, "run_id": self.run_id,
                "as_of": self.as_of}


def list_versions(client: MlflowClient, name: str | None = None) -> list[VersionRow]:
    """Every version (of ``name`` or of all models), newest first, with aliases and gates."""
    models = [name] if name else sorted(m.name for m in client.search_registered_models())
    rows = []
    for model in models:
        aliases = current_aliases(client, model)
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        try:
            versions = client.search_model_versions(f"name='{model}'")
        except MlflowException:
            versions = []
        if name and not versions:
            raise PuhuiError(f"no registered model {name!r} (train one: puhui run train risk)")
        for v in sorted(versions, key=lambda v: -int(v.version)):
            metrics = client.get_run(v.run_id).data.metrics if v.run_id else {}
            rows.append(VersionRow(
                name=model, version=str(v.version),
                aliases=sorted(by_version.get(str(v.version), [])),
                metrics={k: round(metrics[k], 6) for k in LIST_METRICS if k in metrics},
                gates={"passed": v.tags.get(GATES_PASSED_TAG) == "true",
                       "failed": json.loads(v.tags.get(GATES_FAILED_TAG, "[]"))},
                run_id=v.run_id, created=v.creation_timestamp,
                as_of=v.tags.get("training.as_of"),
            ))
    return rows


def promote(client: MlflowClient, engine: Engine, audit: AuditWriter, name: str,
            version: str, reason: str, force: bool = False) -> str | None:
    """Make ``version`` the champion; refused if it failed its gates unless ``force``."""
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise PuhuiError(f"{name} has no version {version}") from None
    verdict = gate_verdict(client, name, version)
    if not verdict["passed"] and not force:
        raise PuhuiError(
            f"{name} v{version} failed its gates ({'; '.join(verdict['failed'])}); "
            "promote with --force and a reason to override"
        )
    if version_of(client, name, CHAMPION) == str(version):
        raise PuhuiError(f"{name} v{version} is already the champion")
    note = reason if verdict["passed"] else f"{reason} [forced past failed gates]"
    return set_alias(client, engine, audit, name, CHAMPION, version, note)


def champion_history(engine: Engine, name: str) -> list[str]:
    """The champion stack from the audit trail: promotions push, rollbacks pop."""
    stack: list[str] = []
    for event in read_audit_events(engine, action=ALIAS_SET):
        details = event["details"]
        if details.get("model") != name or details.get("alias") != CHAMPION:
            continue
        if details.get("rollback"):
            if stack:
                stack.pop()
        else:
            stack.append(details["version"])
    return stack


def rollback(client: MlflowClient, engine: Engine, audit: AuditWriter, name: str,
             reason: str) -> tuple[str, str]:
    """Give the champion alias back to the previous champion; returns (from, to)."""
    stack = champion_history(engine, name)
    current = version_of(client, name, CHAMPION)
    if current is None or len(stack) < 2:
        raise PuhuiError(f"{name} has no previous champion to roll back to")
    target = stack[-2]
    set_alias(client, engine, audit, name, CHAMPION, target, reason, rollback=True)
    return current, target


def lineage(client: MlflowClient, engine: Engine, name: str, version: str) -> dict[str, Any]:
    """Data batches, their validations, code and configuration behind a model version."""
    events = [e for e in read_audit_events(engine, action=REGISTERED)
              if e["subject"] == f"{name}/v{version}"]
    if not events:
        raise PuhuiError(f"no registration of {name} v{version} in the audit trail")
    event = events[-1]
    details = event["details"]
    batch_ids = details.get("ingest_batches", [])
    with engine.connect() as conn:
        batches = [dict(r) for r in conn.execute(
            select(ingest_batches.c.batch_id, ingest_batches.c.partner,
                   ingest_batches.c.source_path, ingest_batches.c.checksum,
                   ingest_batches.c.status, ingest_batches.c.rows_loaded)
            .where(ingest_batches.c.batch_id.in_(batch_ids))
            .order_by(ingest_batches.c.batch_id)
        ).mappings()]
        validations = [dict(r) for r in conn.execute(
            select(validation_results.c.validation_id, validation_results.c.batch_id,
                   validation_results.c.suite_name, validation_results.c.success,
                   validation_results.c.expectations_run,
                   validation_results.c.expectations_failed)
            .where(validation_results.c.batch_id.in_(batch_ids))
            .order_by(validation_results.c.batch_id)
        ).mappings()]
    aliases = [a for a, v in current_aliases(client, name).items() if str(v) == str(version)]
    return {
        "model": name, "version": str(version), "aliases": sorted(aliases),
        "mlflow_run_id": event["mlflow_run_id"], "registered_at": event["occurred_at"],
        "registered_by": event["actor"], "code_version": event["code_version"],
        "config_hash": event["config_hash"], "flow_run_id": event["flow_run_id"],
        "training_as_of": details.get("as_of"),
        "feature_as_of_range": details.get("feature_as_of_range"),
        "gates": details.get("gates"),
        "batches": batches, "validations": validations,
        "missing_batches": sorted(set(batch_ids) - {b["batch_id"] for b in batches}),
        "alias_history": [
            {"at": e["occurred_at"], "actor": e["actor"], **e["details"]}
            for e in read_audit_events(engine, action=ALIAS_SET)
            if e["subject"].startswith(f"{name}/")
        ],
    }
