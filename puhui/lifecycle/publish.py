"""The model lifecycle every model shares: fingerprints (skip-when-unchanged), lineage tags,
``model_evaluations`` rows, and the gate verdict with its aliases.

A model's adapter (puhui/risk/publish.py, puhui/recommender/publish.py) logs its own run
contents and calls these; registering, verdicts, aliases and the audit events are in
puhui/registry.py (the crash-safe intent -> MLflow -> completion protocol).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema
from sqlalchemy import Engine, delete

from puhui.audit import AuditWriter, current_flow_run_id
from puhui.errors import PuhuiError, infrastructure_error
from puhui.lifecycle.fencing import Fence, take_generation
from puhui.lifecycle.gates import ChampionCheck, GateResult
from puhui.privacy import error_line
from puhui.registry import (
    CHALLENGER,
    CHAMPION,
    GATES_PASSED_TAG,
    keep_verdict_file,
    mlflow_client,
    recorded_verdict,
    settle_gate_verdict,
    verdict_file,
    versions_of,
)
from puhui.registry_read import version_source_run_problem
from puhui.warehouse.engine import held_lock
from puhui.warehouse.schema import model_evaluations

MLFLOW_TAG_LIMIT = 5000
FINGERPRINT_TAG = "training.fingerprint"
REGISTER_REFUSED = "model.register.refused"


def refuse_unreproducible(engine: Engine, audit: AuditWriter, name: str, profile: str) -> None:
    """In the production profile, refuse to train for registration from a changed work
    tree: its ``+dirty`` code version names no commit, so the version could not be
    rebuilt. The refusal is recorded in the audit trail. The local profile allows it (a
    developer's experiment) and the version records ``+dirty``. ``profile`` is the flow's
    (its settings), not the environment's at register time."""
    if not audit.code_version.endswith("+dirty") or profile != "production":
        return
    because = (f"the work tree has uncommitted changes (code {audit.code_version}): "
               "a version trained from it cannot be reproduced")
    audit.record(engine, REGISTER_REFUSED, name, {"model": name, "refused_because": because,
                                                  "reason": "production profile"})
    raise PuhuiError(f"{name}: registration refused in the production profile: {because}; "
                     "commit (or stash) and train again")


def log_configuration(config_dir: Path, *, expectations_dir: Path) -> int:
    """Log configs/*.yaml and the expectation suites (the settings' folders, as
    ``config_hash`` takes them) as artifacts of the active MLflow run (``configs/``,
    ``expectations/``): the run then holds what its config hash covers, so it can be
    reproduced without the repository at that commit. Returns files logged."""
    folders = {"configs": (config_dir, "*.y*ml"), "expectations": (expectations_dir, "*.json")}
    logged = 0
    for artifact_path, (folder, pattern) in folders.items():
        for path in sorted(folder.glob(pattern)):
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
            logged += 1
    return logged


def training_fingerprint(as_of: date, batch_ids: Iterable[str], config_hash: str,
                         code_version: str, seed: int) -> str:
    """Same data, configuration, code and seed give the same fingerprint (and model)."""
    payload = json.dumps({"as_of": as_of.isoformat(), "config": config_hash,
                          "code": code_version, "seed": seed,
                          "batches": sorted(batch_ids)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def find_version_by_fingerprint(tracking_uri: str, name: str, fingerprint: str) -> str | None:
    """The newest gated version trained on ``fingerprint`` whose source run MLflow still
    holds (the highest number: MLflow lists versions by last update, and an edit of an older
    one (its description) puts it first)."""
    # Only "no such model" means none: an outage read as none registered a duplicate version.
    client = mlflow_client(tracking_uri)
    try:
        versions = versions_of(client, name)
        # An ungated version (a crash before its gate step) does not count: train again.
        matches = sorted((v for v in versions if v.tags.get(FINGERPRINT_TAG) == fingerprint
                          and GATES_PASSED_TAG in v.tags),
                         key=lambda v: int(v.version), reverse=True)
        # Nor does one whose source run was deleted in MLflow: its tags survive the run, but
        # it can be neither loaded nor promoted (its lineage is gone): train a new one.
        return next((str(v.version) for v in matches if not version_source_run_problem(
            client, name, str(v.version), v.run_id)), None)
    except mlflow.exceptions.MlflowException as exc:
        raise PuhuiError(f"model registry error reading the versions of {name}: "
                         f"{error_line(exc)}") from None


@dataclass(frozen=True)
class HeldTraining:
    """What ``training_lock`` yields: called, ``held_lock``'s ``still_held``; ``fence``, the
    training's generation, passed to its register and gate steps (``fencing.fenced``)."""

    still_held: Callable[[], None]
    fence: Fence

    def __call__(self) -> None:
        self.still_held()


@contextmanager
def training_lock(engine: Engine, name: str,
                  say: Callable[[str], None]) -> Iterator[HeldTraining]:
    """Serialize the trainings of model ``name``, from before their fingerprint check to
    their gate verdict: two identical trainings started together both found no gated version
    of their fingerprint and registered two. The second now waits, then finds the first's.
    Re-checking under ``MODEL_LOCK`` would not do: the first's version is still ungated then,
    and an ungated version must not count (its training may have been killed). The OS
    releases the lock at any death of its holder. Always taken before ``MODEL_LOCK``, never
    while holding it; promote, rollback and verify do not take it. Yields a ``HeldTraining``:
    calling it is ``held_lock``'s ``still_held`` (the training calls it before registering and
    before its verdict, so one whose lock was lost stops there); its ``fence`` covers a loss
    *during* those steps (after the check): the writes a second training must not repeat
    check the generation taken here in their own transaction (``puhui.lifecycle.fencing``)."""
    def waiting(holder: str | None) -> None:
        say(f"waiting for another training of {name}"
            + (f" ({holder})" if holder else "") + "...")

    with held_lock(engine, f"puhui.training.{name}", on_wait=waiting) as still_held:
        fence = take_generation(engine, name)
        # Lost before the generation committed, a second training may hold the lock with an
        # older generation than ours: stop here. Held after it, any later taker's is newer.
        still_held()
        yield HeldTraining(still_held, fence)


def provenance_tags(audit: AuditWriter) -> dict[str, str]:
    """A training run's who and what: config hash, code version, actor, Prefect flow run."""
    return {"puhui.config_hash": audit.config_hash, "puhui.code_version": audit.code_version,
            "puhui.actor": audit.actor, "puhui.flow_run_id": current_flow_run_id() or ""}


def lineage_tags(tags: Mapping[str, str], batch_ids: Iterable[str], as_of: date,
                 ranges: Mapping[str, list[str]], fingerprint: str) -> dict[str, str]:
    """A run's tags tying it to its data: ingest batches (or their count, when too many for
    one tag), the as-of date, the windows' ranges and the fingerprint."""
    batches = sorted(batch_ids)
    batches_tag = ",".join(batches)
    if len(batches_tag) > MLFLOW_TAG_LIMIT:
        batches_tag = f"{len(batches)} batches, see artifact lineage.json"
    return {**tags, "puhui.ingest_batches": batches_tag,
            "puhui.ingest_batch_count": str(len(batches)),
            **{f"puhui.{k}": " .. ".join(v) for k, v in ranges.items()},
            "puhui.training_as_of": as_of.isoformat(), FINGERPRINT_TAG: fingerprint}


def write_evaluations(engine: Engine, name: str, version: str, as_of: date,
                      rows: Iterable[Mapping[str, object]], run_id: str,
                      audit: AuditWriter | None = None) -> int:
    """A version's (metric, segment, value) rows in ``model_evaluations``, replacing its
    earlier ones (monitoring's ``monitor.*`` rows are left alone), and with ``audit`` (the
    trainings': every caller but tests of other parts) their keyed digest in an
    ``evaluations.recorded`` event of the same transaction, which ``audit verify``
    compares. ``audit``'s guard (a training's fence) is checked in that transaction."""
    from puhui.table_digests import (
        EVALUATIONS_RECORDED,
        ROWS_DIGESTS,
        TRAINING_EVALUATIONS,
        recorded,
        scope_of,
        writer_subkey,
    )

    now = datetime.now(UTC)
    values = [{"model_name": name, "model_version": version, "as_of_date": as_of,
               "metric": r["metric"], "segment": r["segment"], "value": float(r["value"]),
               "mlflow_run_id": run_id, "evaluated_at": now} for r in rows]
    with engine.begin() as conn:
        if audit is not None and audit.guard is not None:
            audit.guard(conn, model_evaluations.name)
        # Not monitoring's monitor.* rows of the version: their writer records them (its
        # event's digest), so the two writers' rows stay apart.
        mine = (model_evaluations.c.model_name == name) \
            & (model_evaluations.c.model_version == version)
        conn.execute(delete(model_evaluations).where(
            mine & ~model_evaluations.c.metric.like("monitor.%")))
        if values:
            conn.execute(model_evaluations.insert(), values)
        if audit is not None:
            digest = recorded(conn, TRAINING_EVALUATIONS, writer_subkey(audit), mine,
                              [scope_of((name, version))])
            audit.append(conn, EVALUATIONS_RECORDED, f"{name}/{version}",
                         {"rows": len(values), "mlflow_run_id": run_id,
                          ROWS_DIGESTS: {TRAINING_EVALUATIONS.name: digest}})
    return len(values)


def apply_verdict(client: MlflowClient, engine: Engine, audit: AuditWriter, name: str,
                  version: str, gates: GateResult, auto_promote: bool) -> str:
    """Record the verdict (audit event, then version tags) and move the aliases it decides
    (``settle_gate_verdict``, one hold of the model lock). Returns the step's line."""
    return apply_checked_verdict(client, engine, audit, name, version, gates, auto_promote)[1]


def apply_checked_verdict(client: MlflowClient, engine: Engine, audit: AuditWriter, name: str,
                          version: str, gates: GateResult, auto_promote: bool,
                          champion: ChampionCheck | None = None) -> tuple[GateResult, str]:
    """``apply_verdict`` for gates that compare with the champion (``champion``): if the
    champion moved since the evaluation, the verdict is against the current one
    (``settle_gate_verdict``). Returns the verdict applied and the step's line."""
    rechecked: list[tuple[str | None, GateResult]] = []

    def recheck(current: str | None) -> tuple[bool, list[str], list[dict[str, object]]]:
        try:
            result = champion.recheck(current)
        except Exception as exc:
            # A failure of the warehouse or registry says nothing of the champion: raised
            # under the lock before any verdict is recorded, so the gate step's retries
            # apply and, failing those, the next run trains again. Recorded, it stayed a
            # failed verdict until a retraining with --force.
            if infrastructure_error(exc):
                raise
            # A champion that cannot be scored (its files unloadable, its features not in
            # the training set) fails closed: with no verdict the version stayed ungated
            # and the next run trained and registered another.
            cause = f"{type(exc).__name__}: {error_line(exc)}"
            result = GateResult(False, [f"champion_recheck v{current} not re-scored ({cause})"])
        rechecked.append((current, result))
        return result.passed, result.failed, result.checks

    now = settle_gate_verdict(client, engine, audit, name, version, gates.passed,
                              gates.failed, auto_promote,
                              champion.compared_with if champion else None,
                              recheck if champion else None,
                              champion.prepare if champion else None)
    # The run's gates.json: the verdict's checks, from its event (written with the verdict,
    # so a refused verdict leaves none); a retry after the verdict writes them too.
    kept = verdict_file(engine, name, version) if champion is not None else None
    if kept is not None:
        keep_verdict_file(client, client.get_model_version(name, str(version)).run_id, kept)
    moved = ""
    recorded = recorded_verdict(engine, name, version)
    if not rechecked and recorded is not None and (
            recorded["passed"], recorded["failed"]) != (gates.passed, gates.failed):
        # A retry after the verdict: it is the recorded one (maybe against a moved champion).
        gates = GateResult(recorded["passed"], recorded["failed"])
    if rechecked:
        current, gates = rechecked[-1]
        was, found = (f"v{v}" if v else "none" for v in (champion.compared_with, current))
        moved = (f"the champion changed since the evaluation ({was} -> {found}): gates "
                 f"checked again against {found}; ")
    if not gates.passed:
        return gates, f"gate: {moved}v{version} FAILED: {'; '.join(gates.failed)}; no alias set"
    if auto_promote:
        return gates, (f"gate: {moved}v{version} passed every gate -> {CHAMPION} "
                       "(auto_promote is on)")
    held = f"v{now}" if now else "nobody"
    return gates, (f"gate: {moved}v{version} passed every gate -> {CHALLENGER}; {CHAMPION} "
                   f"stays {held} until a model owner promotes (puhui models promote {name} "
                   f"--version {version} --reason ...)")


def unchanged_summary(model: str, as_of: date, version: str, steps: list[str]) -> dict:
    """A training flow's result when an identical version exists (skip-when-unchanged)."""
    line = (f"train {model} {as_of}: unchanged: v{version} was trained on the same data, "
            "configuration, code and seed (--force trains again)")
    return {"as_of": as_of.isoformat(), "version": version, "skipped": True, "steps": steps,
            "line": line}


def model_signature(features: list[str], categorical: Collection[str],
                    example: pd.DataFrame, output: np.ndarray) -> ModelSignature:
    """The pyfunc's input schema declared from the feature kinds (both models), not
    inferred from the few example rows: a category missing in every one of them (no co-op
    crop in five test-window rows, the default demo) was inferred as a number, and the
    model then refused the text of every real row (``Incompatible input types for column
    agri_crop``)."""
    inputs = Schema([ColSpec("string" if f in categorical else "double", f) for f in features])
    return ModelSignature(inputs=inputs, outputs=infer_signature(example, output).outputs)
