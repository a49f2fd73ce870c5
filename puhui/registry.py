"""The model registry as model owners and auditors use it: versions, gates, aliases, lineage.

MLflow holds the versions, their runs and the current aliases. It keeps no history of alias
changes, so every registration, gate verdict and alias move is also written to the audit
trail, which is where rollback finds "the previous champion" and where lineage starts.

MLflow and the warehouse cannot commit together, so each change is written in three steps,
under one cross-process lock that dies with its holder: an intent event, the MLflow change, a
completion event. A crash anywhere leaves either nothing, or an intent without completion,
which ``reconcile_model_changes`` settles on the next model command, train run or ``audit
verify``: if MLflow shows the change, the completion is written marked ``recovered``; if not,
an ``aborted`` event. The gate verdict is an event first and MLflow tags second (the tags are
a copy the next reconcile restores). A version with no verdict is *ungated*, and nothing
promotes it. ``registry_problems`` compares MLflow with the trail for ``audit verify``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select

from puhui.audit import AuditWriter, current_task_run_id, decision_reason, events_of
from puhui.crashpoints import crash_point
from puhui.errors import PuhuiError
from puhui.model_fingerprints import VerifiedFiles, files_signature
from puhui.registry_read import (  # noqa: F401 - re-exported: listing reads without MLflow
    GATES_FAILED_TAG,
    GATES_PASSED_TAG,
    LIST_METRICS,
    VersionRow,
    download_uri,
    is_not_found,
    list_versions,
    metric_name,
    mlflow_client,
    model_files_digest,
    model_files_dir,
    model_versions,
    registered_model_names,
    runs_facts,
    source_run_problem,
    suppress_not_found,
    version_source_run_problem,
    versions_of,
)
from puhui.scratch import scratch_dir, sweep_scratch_dirs
from puhui.warehouse.engine import held_lock, in_list_chunks
from puhui.warehouse.schema import ingest_batches, model_evaluations, validation_results

if TYPE_CHECKING:  # MLflow is imported where it writes: reading needs only its tables
    from mlflow import MlflowClient

CHAMPION, CHALLENGER = "champion", "challenger"
REGISTER_INTENT, REGISTERED, REGISTER_ABORTED = (
    "model.register.intent", "model.registered", "model.register.aborted")
GATES = "model.gates"
PROMOTE_REFUSED = "model.promote.refused"
# A move refused because MLflow's alias is not where the trail's last move put it.
ALIAS_REFUSED = "model.alias.refused"
ALIAS_INTENT, ALIAS_SET, ALIAS_ABORTED = "model.alias.intent", "model.alias", "model.alias.aborted"
# An alias taken off its version (the challenger alias of a version promoted to champion);
# its intent is an ALIAS_INTENT with ``"removed": true`` and ``"version": null``.
ALIAS_REMOVED = "model.alias.removed"
MODEL_ACTIONS = (REGISTER_INTENT, REGISTERED, REGISTER_ABORTED, GATES, ALIAS_INTENT, ALIAS_SET,
                 ALIAS_ABORTED, ALIAS_REMOVED)
_OUTCOMES = (REGISTERED, REGISTER_ABORTED, ALIAS_SET, ALIAS_ABORTED, ALIAS_REMOVED)
# Held from intent to completion of every model change, and while reconciling.
MODEL_LOCK = "puhui.model_changes"
# The Prefect task run that started an MLflow run: a retry of that step finds its run again.
STEP_RUN_TAG = "puhui.task_run_id"


def use_experiment(name: str, tracking_uri: str, artifact_root: Path) -> str:
    """Select (creating if needed) the experiment ``name``; returns its id.

    With a database tracking URI, MLflow would put artifacts in ``./mlruns`` of whatever
    directory the process runs in; a new experiment's artifacts go under ``artifact_root``
    instead. A tracking server decides for itself.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = mlflow_client(tracking_uri)
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
    aliases: dict[str, Any] = {}
    with suppress_not_found():
        aliases = client.get_registered_model(name).aliases
    return {alias: str(version) for alias, version in aliases.items()}


def version_of(client: MlflowClient, name: str, alias: str) -> str | None:
    return current_aliases(client, name).get(alias)


@contextmanager
def step_run(run_name: str, tags: dict[str, str]) -> Iterator[Any]:
    """``mlflow.start_run`` in the current experiment, except that a retry of a Prefect step
    (same task run) resumes the run its failed attempt started: a transient error after the
    registration left a second run, and a second version, behind each retry."""
    import mlflow

    task_run_id = current_task_run_id()
    if task_run_id is None:
        with mlflow.start_run(run_name=run_name, tags=tags) as run:
            yield run
        return
    earlier = mlflow.search_runs(filter_string=f"tags.`{STEP_RUN_TAG}` = '{task_run_id}'",
                                 output_format="list", max_results=1)
    if earlier:
        with mlflow.start_run(run_id=earlier[0].info.run_id) as run:
            yield run
        return
    with mlflow.start_run(run_name=run_name, tags={**tags, STEP_RUN_TAG: task_run_id}) as run:
        yield run


def _name_run(run_id: str, name: str, version: str, as_of: Any) -> None:
    import mlflow

    # Named by the version it became: runs of the same model and date (a forced retrain, a
    # second trial) are told apart in the MLflow UI.
    mlflow.MlflowClient(tracking_uri=mlflow.get_tracking_uri()).set_tag(
        run_id, "mlflow.runName", f"{name} v{version}" + (f" as of {as_of}" if as_of else ""))


def registered_from_run(engine: Engine, audit: AuditWriter, name: str, run_id: str,
                        as_of: Any = None) -> str | None:
    """The version of ``name`` already registered from ``run_id`` (None: none), its
    ``model.registered`` event recorded now if the attempt that registered it failed first
    (a lost answer, a transient error after ``register_model``): a step's retry resumes
    there instead of registering the same model again."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    found = sorted((str(v.version) for v in model_versions(client, f"run_id='{run_id}'")
                    if v.name == name), key=int)
    if not found:
        return None
    version = found[0]
    with held_lock(engine, MODEL_LOCK):
        events = events_of(engine, [REGISTER_INTENT, REGISTERED])
        if not any(e["action"] == REGISTERED and e["details"].get("model") == name
                   and str(e["details"].get("version")) == version for e in events):
            intent = max((e for e in events if e["action"] == REGISTER_INTENT
                          and e["details"].get("run_id") == run_id
                          and e["details"].get("model") == name),
                         key=lambda e: e["seq"], default=None)
            facts = intent["details"] if intent else {"model": name, "run_id": run_id}
            audit.record(engine, REGISTERED, f"{name}/v{version}", {
                **facts, "version": version, "intent": intent["seq"] if intent else None,
                "recovered": True}, mlflow_run_id=run_id)
    _name_run(run_id, name, version, as_of)
    return version


def register_version(
    engine: Engine, audit: AuditWriter, *, name: str, model_uri: str, run_id: str,
    tags: dict[str, str], details: dict[str, Any],
) -> str:
    """Register the model logged in ``run_id`` as a new version of ``name``, audited.

    ``details`` go into the intent and the completion event alike, so a completion recovered
    after a crash says everything the normal one would. Gate tags are not set here: only
    ``settle_gate_verdict`` sets them, after the gates ran. MLflow's current registry URI
    is used (``use_experiment`` sets it). A step that may be retried asks
    ``registered_from_run`` first (in a ``step_run``).
    """
    import mlflow

    with scratch_dir("model") as tmp:
        logged = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        digest = model_files_digest(logged)
        crash_point("register.model_copy")
    with held_lock(engine, MODEL_LOCK):
        facts = {**details, "model": name, "run_id": run_id, "model_sha256": digest}
        intent = audit.record(engine, REGISTER_INTENT, f"{name}/run/{run_id}", facts,
                              mlflow_run_id=run_id)
        crash_point("register.before_mlflow")
        try:
            version = str(mlflow.register_model(model_uri, name, tags=tags).version)
        except BaseException:
            audit.record(engine, REGISTER_ABORTED, f"{name}/run/{run_id}", {
                "model": name, "run_id": run_id, "intent": intent["seq"],
                "outcome": "MLflow refused the registration"}, mlflow_run_id=run_id)
            raise
        crash_point("register.after_mlflow")
        audit.record(engine, REGISTERED, f"{name}/v{version}",
                     {**facts, "version": version, "intent": intent["seq"]}, mlflow_run_id=run_id)
    _name_run(run_id, name, version, details.get("as_of"))
    return version


def _write_gate_tags(client: MlflowClient, name: str, version: str, passed: bool,
                     failed: list[str]) -> None:
    # ``gates.passed`` last: until it is there the version reads as ungated, never as passed.
    client.set_model_version_tag(name, version, GATES_FAILED_TAG,
                                 json.dumps(failed, ensure_ascii=False))
    client.set_model_version_tag(name, version, GATES_PASSED_TAG, str(passed).lower())


def _record_gate_verdict(client: MlflowClient, engine: Engine, audit: AuditWriter, name: str,
                         version: str, passed: bool, failed: list[str],
                         extra: dict[str, Any] | None = None) -> None:
    """The gates' verdict on a registered version: an audit event (with ``extra`` facts),
    then the MLflow tags; the caller holds ``MODEL_LOCK`` (``settle_gate_verdict``)."""
    audit.record(engine, GATES, f"{name}/v{version}", {
        "model": name, "version": str(version), "passed": passed, "failed": failed,
        **(extra or {}),
    }, mlflow_run_id=client.get_model_version(name, str(version)).run_id)
    crash_point("gate.before_tag")
    _write_gate_tags(client, name, str(version), passed, failed)
    crash_point("gate.after_tag")


def _registered_digests(events: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(model, version) -> the model files' SHA-256 its registration event recorded
    (versions registered before digests were recorded have none)."""
    return {(e["details"]["model"], str(e["details"]["version"])): e["details"]["model_sha256"]
            for e in events if e["action"] == REGISTERED and e["details"].get("model_sha256")}


def unfingerprinted_versions(engine: Engine) -> list[str]:
    """``name vN`` of each version whose registration event has no ``model_sha256`` (registered
    before digests were recorded): its model files cannot be checked, only its name."""
    return sorted({f"{e['details']['model']} v{e['details']['version']}"
                   for e in events_of(engine, [REGISTERED])
                   if not e["details"].get("model_sha256")})


def _checked_model_folder(client: MlflowClient, name: str, version: str, expected: str | None,
                          dst_path: str, uri: str | None = None) -> tuple[Path | None, str | None]:
    """The folder of ``name`` v``version``'s model files (in place, or downloaded into
    ``dst_path``) and why they are not the ones registered (None: they are, or there is no
    digest ``expected`` to compare with). ``uri``: the registry's download URI for it, if the
    caller asked already."""
    try:
        folder = model_files_dir(uri or download_uri(client, name, version), dst_path)
    except Exception as exc:
        if not is_not_found(exc) and not isinstance(exc, FileNotFoundError):
            raise
        folder = None
    if folder is None:
        return None, f"{name} v{version}: its model files are gone from the artifact store"
    found = model_files_digest(folder) if expected else None
    if found != expected:
        return folder, (f"{name} v{version}: its model files differ from those registered "
                        f"(SHA-256 {expected[:12]}... in the trail, {found[:12]}... in the "
                        "artifact store)")
    return folder, None


def model_files_problem(client: MlflowClient, name: str, version: str,
                        expected: str, uri: str | None = None) -> str | None:
    """Why the model files of ``name`` v``version`` are not the ones registered, or None
    (``uri``: its download URI, if known)."""
    with scratch_dir("model") as tmp:
        return _checked_model_folder(client, name, version, expected, tmp, uri)[1]


# What to do about a version whose source run was deleted by hand in MLflow.
LOST_RUN_ADVICE = ("restore the run ('mlflow runs restore'; 'puhui audit lineage' names it) or, "
               "after 'mlflow gc', the MLflow store from a backup; 'puhui audit verify' "
               "lists every difference")


def load_registered_pyfunc(engine: Engine, tracking_uri: str, name: str, version: str) -> Any:
    """``name`` v``version`` as an MLflow pyfunc, loaded from files checked against the
    registration event's SHA-256 (loading a pickle runs its code: files edited in the
    artifact store must not reach scoring). A version the trail never registered is refused
    too: it was made outside puhui, and no gate verdict vouches for it; and so is a version
    whose source run was deleted in MLflow (its lineage gone: nothing says what it is).
    """
    import mlflow.pyfunc

    registered = [e for e in events_of(engine, [REGISTERED])
                  if e["details"]["model"] == name and str(e["details"]["version"]) == version]
    if not registered:
        raise PuhuiError(f"{name} v{version} has no registration event in the audit trail "
                         "(made outside puhui?): not loaded; see 'puhui audit verify'")
    client = mlflow_client(tracking_uri)
    if because := version_source_run_problem(client, name, version):
        raise PuhuiError(f"{because}: not loaded; {LOST_RUN_ADVICE}")
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    # A local store's folder is used in place; only a remote store's copy lands in ``dst``,
    # removed once loaded: puhui's models read their files in ``load_context`` (the scorer,
    # the ranker), and only versions registered through puhui are loaded here.
    with scratch_dir("model") as dst:
        folder, problem = _checked_model_folder(
            client, name, version,
            registered[-1]["details"].get("model_sha256"), dst)
        if problem or folder is None:
            raise PuhuiError(f"{problem}: not loaded; see 'puhui audit verify'")
        return mlflow.pyfunc.load_model(str(folder))


# Registration events round the metrics they record to 6 places: an error of up to 5e-7,
# plus float noise (0.4100005 - 0.41 > 5e-7), so the tolerance is above it.
_METRIC_TOLERANCE = 1e-6


def metrics_problems(name: str, version: str, recorded: dict[str, float],
                     logged: dict[str, float], rows: list[tuple[str, str, float | None]],
                     gated: bool = True) -> list[str]:
    """Where a version's figures disagree: the headline metrics its registration event
    recorded (``recorded``, keyed into the chain) against the run's latest value in MLflow
    (``logged``) and the ``model_evaluations`` rows its training wrote (``rows``: metric,
    segment, value), and every such row (the segment and fairness figures BI reads) against
    the run metric it was logged as.

    ``models list`` shows the run's latest step, so a value logged on the run afterwards
    would stand as the model's figure; a row edited in the warehouse would mislead every
    reader of the table. The segment rows are not in the trail: editing them unseen takes
    both stores. A headline row missing is reported too, unless the version has none of
    them and no gate verdict (``gated``): its rows are written between registration and
    the verdict, so its training may have stopped before them.
    """
    problems: list[str] = []
    stored = {metric_name(m, s): value for m, s, value in rows}
    written = gated or any(metric in stored for metric in recorded)
    for metric, value in sorted(recorded.items()):
        if value is None or value != value:
            continue  # nothing recorded to hold it to (a NaN is not logged)
        for where, found in (("MLflow's run", logged.get(metric)),
                             ("model_evaluations",
                              stored.get(metric, None if written else value))):
            if found is None or abs(float(found) - value) > _METRIC_TOLERANCE:
                said = f"missing from {where}" if found is None else f"{found} in {where}"
                problems.append(f"{name} v{version}: {metric} is {said} but {value} in its "
                                "registration event")
    for metric, segment, value in sorted(rows):
        logged_as = metric_name(metric, segment)
        if metric in recorded and segment == "all":
            continue  # held to the registration event above
        if value is None or not math.isfinite(value):
            continue  # non-finite figures are not logged on the run
        found = logged.get(logged_as)
        if found is None or not math.isclose(found, value, rel_tol=1e-9, abs_tol=1e-12):
            problems.append(f"{name} v{version}: model_evaluations {metric} ({segment}) is "
                            f"{value} but {found} in MLflow's run ({logged_as})")
    return problems


def _training_evaluations(engine: Engine, versions: Collection[tuple[str, str, str]],
                          ) -> dict[tuple[str, str, str], list[tuple[str, str, float | None]]]:
    """(model, version, run id) -> the ``model_evaluations`` rows that run wrote for that
    version (monitoring adds its own rows per date, under other runs), for all at once."""
    found: dict[tuple[str, str, str], list[tuple[str, str, float | None]]] = {
        key: [] for key in versions}
    runs = sorted({run for _, _, run in versions if run})  # a version may have no run
    e = model_evaluations.c
    with engine.connect() as conn:
        for chunk in in_list_chunks(runs):
            for row in conn.execute(select(e.model_name, e.model_version, e.mlflow_run_id,
                                           e.metric, e.segment, e.value)
                                    .where(e.mlflow_run_id.in_(chunk))):
                key = (row.model_name, row.model_version, row.mlflow_run_id)
                if key in found:
                    found[key].append((row.metric, row.segment, row.value))
    return found


def _files_problem(client: MlflowClient, name: str, version: str, expected: str,
                   verified: VerifiedFiles | None, deep: bool) -> str | None:
    """``model_files_problem``, skipped for files ``verified`` holds as hashed to ``expected``
    with the signature they have now (not with ``deep``: every file read); files found
    unchanged are remembered."""
    signature = uri = None
    with suppress_not_found():
        uri = download_uri(client, name, version)
    if uri is None:
        return f"{name} v{version}: its model files are gone from the artifact store"
    if verified is not None:
        # Taken before hashing: a write after it changes the next signature.
        signature = files_signature(uri)
        if not deep and verified.holds(name, version, expected, signature):
            return None
    # The URI asked once: the hash reads the files where it points.
    problem = model_files_problem(client, name, version, expected, uri)
    if problem is None and verified is not None:
        verified.remember(name, version, expected, signature)
    return problem


def _alias_moves(events: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(model, alias) -> the version the trail's last completed move left it on."""
    moves: dict[tuple[str, str], str] = {}
    for e in events:
        if e["action"] == ALIAS_SET:
            moves[(e["details"]["model"], e["details"]["alias"])] = str(e["details"]["version"])
        elif e["action"] == ALIAS_REMOVED:
            moves.pop((e["details"]["model"], e["details"]["alias"]), None)
    return moves


def alias_difference(events: list[dict[str, Any]], name: str, alias: str,
                     current: str | None) -> str | None:
    """How ``name@alias`` in MLflow (``current``, None when unset) differs from the trail's
    last move of it (``events``: the model actions), or None when they agree. A move still
    open (its intent recorded, MLflow moved, its completion not yet: a promote under way,
    or one killed there until the reconcile completes it) is agreement too."""
    expected = _alias_moves(events).get((name, alias))
    closed = {e["details"].get("intent") for e in events
              if e["action"] in (ALIAS_SET, ALIAS_REMOVED, ALIAS_ABORTED)}
    open_moves = {e["details"]["version"] for e in events
                  if e["action"] == ALIAS_INTENT and e["seq"] not in closed
                  and e["details"].get("model") == name and e["details"].get("alias") == alias}
    if current == expected or current in open_moves:
        return None
    found = f"v{current}" if current else "unset"
    said = f"v{expected}" if expected else "unset (no move)"
    return (f"{name}@{alias} is {found} in MLflow but the trail's last move says {said}: "
            "changed outside puhui")


def _refuse_tampered_move(client: MlflowClient, engine: Engine, audit: AuditWriter,
                          name: str, alias: str, version: str, reason: str) -> str | None:
    """MLflow's ``alias`` of ``name``, if the trail's last move agrees and ``version``'s
    model files are those registered; else refuse (an ``ALIAS_REFUSED`` event).

    An alias moved in MLflow directly (not through puhui) is tampering or an outside
    mistake: moving it again would record the hand-set version as "previous" and erase the
    one difference ``audit verify`` reports. A version moved to whose source run was deleted
    in MLflow has lost its lineage (moving away from one is allowed: it is the remedy, and
    rollback to it is this same check on its own target).
    Files edited in the artifact store would be what scoring loads (a pickle: code that
    runs). The caller holds ``MODEL_LOCK`` and has
    reconciled, so an interrupted move of ours is no longer open here.
    """
    events = events_of(engine, MODEL_ACTIONS)
    current = version_of(client, name, alias)
    expected = _alias_moves(events).get((name, alias))
    digest = _registered_digests(events).get((name, str(version)))
    if because := alias_difference(events, name, alias, current):
        advice = ("Put it back as the trail says (or find out who moved it), then retry; "
                  "'puhui audit verify' lists every difference")
    elif because := version_source_run_problem(client, name, str(version)):
        advice = f"Not moved to it: {LOST_RUN_ADVICE}"
    elif digest and (because := model_files_problem(client, name, str(version), digest)):
        advice = "retrain, or restore the files from a backup; 'puhui audit verify' lists all"
    else:
        return current
    audit.record(engine, ALIAS_REFUSED, f"{name}/{alias}", {
        "model": name, "alias": alias, "version": str(version), "found": current,
        "expected": expected, "reason": reason, "refused_because": because})
    raise PuhuiError(f"{because}; nothing moved. {advice}")


def _move_alias(
    client: MlflowClient, engine: Engine, audit: AuditWriter, name: str, alias: str,
    version: str, reason: str, *, rollback: bool = False, forced: bool = False,
    extra: dict[str, Any] | None = None,
) -> str | None:
    """Intent, alias move, completion; the caller holds ``MODEL_LOCK``."""
    previous = _refuse_tampered_move(client, engine, audit, name, alias, version, reason)
    run_id = client.get_model_version(name, str(version)).run_id
    details = {"model": name, "alias": alias, "version": str(version), "previous": previous,
               "reason": reason, "rollback": rollback, "forced": forced, **(extra or {})}
    # Moving away from a version whose lineage is lost is the remedy: the trail says so.
    if previous and previous != str(version) and (
            lost := version_source_run_problem(client, name, previous)):
        details["replaced_lost_version"] = lost
    intent = audit.record(engine, ALIAS_INTENT, f"{name}/{alias}", details,
                          mlflow_run_id=run_id)
    crash_point("alias.before_mlflow")
    try:
        client.set_registered_model_alias(name, alias, str(version))
    except BaseException:
        audit.record(engine, ALIAS_ABORTED, f"{name}/{alias}", {
            **details, "intent": intent["seq"], "outcome": "MLflow refused the alias move"},
            mlflow_run_id=run_id)
        raise
    crash_point("alias.after_mlflow")
    audit.record(engine, ALIAS_SET, f"{name}/{alias}", {**details, "intent": intent["seq"]},
                 mlflow_run_id=run_id)
    return previous


def _remove_alias(client: MlflowClient, engine: Engine, audit: AuditWriter, name: str,
                  alias: str, reason: str) -> None:
    """Intent, alias deletion, completion (``ALIAS_REMOVED``); the caller holds the lock."""
    previous = version_of(client, name, alias)
    if previous is None:
        return
    run_id = client.get_model_version(name, previous).run_id
    details = {"model": name, "alias": alias, "version": None, "previous": previous,
               "reason": reason, "removed": True}
    intent = audit.record(engine, ALIAS_INTENT, f"{name}/{alias}", details,
                          mlflow_run_id=run_id)
    try:
        client.delete_registered_model_alias(name, alias)
    except BaseException:
        audit.record(engine, ALIAS_ABORTED, f"{name}/{alias}", {
            **details, "intent": intent["seq"], "outcome": "MLflow refused the alias removal"},
            mlflow_run_id=run_id)
        raise
    audit.record(engine, ALIAS_REMOVED, f"{name}/{alias}",
                 {**details, "intent": intent["seq"]}, mlflow_run_id=run_id)


def move_champion(client: MlflowClient, engine: Engine, audit: AuditWriter, name: str,
                  version: str, reason: str, *, forced_past: list[str] | None = None) -> str | None:
    """``champion`` to ``version``, and ``challenger`` off it (a version is one or the
    other); the caller holds ``MODEL_LOCK``. ``forced_past``: the failed gates a forced
    promotion overrode, recorded as structured fields of the event. Returns the previous
    champion."""
    extra = {"failed_gates": forced_past} if forced_past else None
    previous = _move_alias(client, engine, audit, name, CHAMPION, version, reason,
                           forced=bool(forced_past), extra=extra)
    if version_of(client, name, CHALLENGER) == str(version):
        _remove_alias(client, engine, audit, name, CHALLENGER,
                      f"v{version} promoted to {CHAMPION}")
    return previous


def settle_gate_verdict(client: MlflowClient, engine: Engine, audit: AuditWriter, name: str,
                        version: str, passed: bool, failed: list[str], auto_promote: bool,
                        compared_with: str | None = None,
                        recheck: Callable[[str | None], tuple[bool, list[str], list[Any]]]
                        | None = None,
                        prepare: Callable[[str | None], None] | None = None,
                        ) -> str | None:
    """The gate step's verdict and the alias moves it decides, in one hold of the model lock:
    a passing version becomes ``challenger`` (and ``champion`` with ``auto_promote``), a
    failing one gets no alias. A promotion or rollback by a model owner comes wholly before or
    after: in two holds, a promotion of the version between them left the previous challenger
    in place beside it. Returns the champion after the step (None: none).

    Gates that compare with the champion pass ``recheck`` and the champion they were
    evaluated against (``compared_with``, None: there was none): if another version is
    champion now (promoted or rolled back since), ``recheck(current)`` gives the verdict
    against it, under the lock, so the verdict is never against a champion of the past.
    The event names the champion compared with (``champion``) and, when it changed, the
    one evaluated against (``evaluated_against``) and the recheck's ``checks`` (the run's
    ``gates.json`` is written from them: ``keep_verdict_file``). ``prepare(champion)`` runs
    first, outside the lock, for the champion seen then: loading its files (a copy, a digest
    check) kept a promote or rollback waiting; under the lock the alias is read again and
    only scored."""
    if recheck is not None and prepare is not None:
        seen = version_of(client, name, CHAMPION)
        if seen != compared_with:
            prepare(seen)
    with held_lock(engine, MODEL_LOCK):
        crash_point("gate.verdict")
        # In the verdict's own hold: a separate hold for this check let a promotion queued
        # behind the step run between the two and find the version ungated.
        recorded = recorded_verdict(engine, name, version)
        if recorded is not None:
            # A retry of the step (a transient error after the verdict): its tags again (no
            # event), then the alias moves the failed attempt did not complete.
            _write_gate_tags(client, name, str(version), recorded["passed"], recorded["failed"])
            _restore_moves(client, engine, audit, name, str(version), auto_promote)
            return version_of(client, name, CHAMPION)
        extra: dict[str, Any] | None = None
        if recheck is not None:
            current = version_of(client, name, CHAMPION)
            extra = {"champion": current}
            if current != compared_with:
                passed, failed, checks = recheck(current)
                extra.update(evaluated_against=compared_with, checks=checks)
        _record_gate_verdict(client, engine, audit, name, version, passed, failed, extra)
        if passed:
            # Nobody promoted it before this verdict: promote refuses an ungated version.
            _move_alias(client, engine, audit, name, CHALLENGER, str(version),
                        "passed every gate")
            if auto_promote:
                move_champion(client, engine, audit, name, str(version),
                              "auto_promote is on in configs/models.yaml")
        return version_of(client, name, CHAMPION)


def restore_challenger(client: MlflowClient, engine: Engine, audit: AuditWriter, name: str,
                       version: str, auto_promote: bool = False) -> list[str]:
    """The alias moves ``version``'s gate step would have made had its training not stopped
    after the verdict (``kill -9`` there), in one hold of the model lock; returns the aliases
    moved (none: nothing was left undone). ``challenger`` only for a version that passed,
    that no completed alias move ever named and that no later version passed after: what its
    run would have made challenger, and nothing has been since (a later version that failed
    moved no alias). With ``auto_promote``, also ``champion`` (and ``challenger`` off it),
    unless a completed ``champion`` move came after the verdict: then the run got that far,
    or a model owner has decided since. An unchanged re-run has the killed run's
    configuration (it is in the fingerprint), so the same ``auto_promote``. Called when a
    re-run finds the version unchanged: otherwise the outcome depends on where the kill
    fell."""
    with held_lock(engine, MODEL_LOCK):
        return _restore_moves(client, engine, audit, name, version, auto_promote)


def _restore_moves(client: MlflowClient, engine: Engine, audit: AuditWriter, name: str,
                   version: str, auto_promote: bool) -> list[str]:
    """``restore_challenger``'s moves; the caller holds ``MODEL_LOCK``."""
    events = events_of(engine, MODEL_ACTIONS)
    verdicts = _verdicts(events)
    verdict = verdicts.get((name, str(version)))
    if verdict is None or not verdict["passed"]:
        return []
    if any(model == name and int(v) > int(version) and later["passed"]
           for (model, v), later in verdicts.items()):
        return []
    moves = [e for e in events
             if e["action"] == ALIAS_SET and e["details"].get("model") == name]
    moved: list[str] = []
    if not any(str(e["details"].get("version")) == str(version) for e in moves):
        if str(version) in current_aliases(client, name).values():
            return []  # set outside puhui: verify reports it, this does not hide it
        _move_alias(client, engine, audit, name, CHALLENGER, str(version),
                    "passed every gate; its training stopped before this move")
        moved.append(CHALLENGER)
    judged = max((e["seq"] for e in events if e["action"] == GATES
                  and e["details"].get("model") == name
                  and str(e["details"].get("version")) == str(version)), default=None)
    if not auto_promote or judged is None:
        return moved
    since = [str(e["details"].get("version")) for e in moves
             if e["details"].get("alias") == CHAMPION and e["seq"] > judged]
    if not since:
        move_champion(client, engine, audit, name, str(version),
                      "auto_promote is on in configs/models.yaml; its training stopped "
                      "before this move")
        moved.append(CHAMPION)
    elif set(since) == {str(version)} and version_of(client, name, CHALLENGER) == str(version):
        # Killed between the champion move and taking challenger off it.
        _remove_alias(client, engine, audit, name, CHALLENGER,
                      f"v{version} promoted to {CHAMPION}")
        moved.append(f"{CHALLENGER} removed")
    return moved


def verdict_file(engine: Engine, name: str, version: str) -> dict[str, Any] | None:
    """The ``gates.json`` of ``name`` v``version``'s recorded verdict when that verdict was
    made against a moved champion (its event keeps the recheck's checks); None: the
    evaluation's, logged by the publish step, is the verdict's (or no verdict yet)."""
    return _verdict_files(events_of(engine, [GATES])).get((name, str(version)))


def _verdict_files(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(model, version) -> the ``gates.json`` its last verdict event holds (see
    ``verdict_file``)."""
    files: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        d = event["details"]
        if event["action"] == GATES:
            files.pop((d["model"], str(d["version"])), None)
            if "checks" in d:
                files[(d["model"], str(d["version"]))] = {
                    "passed": d["passed"], "failed": d["failed"], "checks": d["checks"]}
    return files


def run_artifact(client: Any, run_id: str, path: str) -> str | None:
    """A run's (small, text) artifact's content, None: absent; the copy it is read from is
    removed at once (a directory left per read piled up in /tmp)."""
    with scratch_dir("artifact") as tmp, suppress_not_found():
        return Path(client.download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")
    return None


def verdict_file_differs(client: Any, run_id: str, kept: dict[str, Any]) -> bool:
    """Whether the run's ``gates.json`` is missing or says other than its verdict event
    (``verdict_file``); ``client``: MLflow's or ``puhui.registry_read``'s reader."""
    text = run_artifact(client, run_id, "gates.json")
    return text is None or json.loads(text) != kept


def keep_verdict_file(client: MlflowClient, run_id: str, kept: dict[str, Any]) -> bool:
    """Write the run's ``gates.json`` from its verdict event (``verdict_file``) unless it
    already says the same; True: written. Written after the verdict commits, so a kill (or a
    lost lock, or exhausted retries) in between leaves the evaluation's; ``_reconcile``
    repairs that from the trail, nothing re-scored."""
    if not verdict_file_differs(client, run_id, kept):
        return False
    client.log_dict(run_id, kept, "gates.json")
    return True


def recorded_verdict(engine: Engine, name: str, version: str) -> dict[str, Any] | None:
    """The trail's gate verdict on ``name`` v``version`` (``passed``, ``failed``); None:
    none recorded."""
    return _verdicts(events_of(engine, [GATES])).get((name, str(version)))


def gate_verdict(client: MlflowClient, name: str, version: str) -> dict[str, Any]:
    tags = client.get_model_version(name, str(version)).tags
    return {"passed": tags.get(GATES_PASSED_TAG) == "true",
            "failed": json.loads(tags.get(GATES_FAILED_TAG, "[]"))}


def _verdicts(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(model, version) -> the trail's last gate verdict. Versions registered before gate
    events existed carry theirs in the registration event."""
    verdicts: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        d = event["details"]
        if event["action"] == GATES:
            verdicts[(d["model"], str(d["version"]))] = {"passed": d["passed"],
                                                         "failed": d["failed"]}
        elif event["action"] == REGISTERED and "gates" in d:
            verdicts.setdefault((d["model"], str(d["version"])), d["gates"])
    return verdicts


@dataclass(frozen=True)
class Reconciliation:
    # What was settled now: events (recovered, aborted), tags or gates.json restored.
    repaired: list[str]
    open: list[str]  # gaps left (only when not repairing)
    ungated: list[str]  # registered versions whose gates never ran
    # Temporary folders of processes gone, removed now (no event: the trail did not move).
    swept: list[str] = field(default_factory=list)


def _reconcile(client: MlflowClient, engine: Engine, audit: AuditWriter,
               repair: bool) -> Reconciliation:
    events = events_of(engine, MODEL_ACTIONS)
    closed = {e["details"].get("intent") for e in events if e["action"] in _OUTCOMES}
    repaired: list[str] = []
    gaps: list[str] = []
    for event in events:
        d, seq = event["details"], event["seq"]
        if event["action"] not in (REGISTER_INTENT, ALIAS_INTENT) or seq in closed:
            continue
        if event["action"] == REGISTER_INTENT:
            what = f"registration of {d['model']} from run {d['run_id'][:12]} (seq {seq})"
        elif d.get("removed"):
            what = f"removal of {d['model']}@{d['alias']} from v{d['previous']} (seq {seq})"
        else:
            what = f"move of {d['model']}@{d['alias']} to v{d['version']} (seq {seq})"
        if not repair:
            gaps.append(f"{what} has no outcome in the trail (interrupted)")
            continue
        if event["action"] == REGISTER_INTENT:
            found = sorted((str(v.version) for v in model_versions(
                client, f"run_id='{d['run_id']}'") if v.name == d["model"]), key=int)
            for version in found:
                audit.record(engine, REGISTERED, f"{d['model']}/v{version}",
                             {**d, "version": version, "intent": seq, "recovered": True},
                             mlflow_run_id=d["run_id"])
                repaired.append(f"recovered: {what} reached MLflow as v{version}; "
                                "its audit event, lost in a crash, is recorded now")
            if not found:
                audit.record(engine, REGISTER_ABORTED, event["subject"], {
                    "model": d["model"], "run_id": d["run_id"], "intent": seq,
                    "outcome": "interrupted before MLflow registered it"},
                    mlflow_run_id=d["run_id"])
                repaired.append(f"aborted: {what} never reached MLflow")
        else:
            current = version_of(client, d["model"], d["alias"])
            if current == d["version"]:
                audit.record(engine, ALIAS_REMOVED if d.get("removed") else ALIAS_SET,
                             event["subject"],
                             {**d, "intent": seq, "recovered": True},
                             mlflow_run_id=event["mlflow_run_id"])
                repaired.append(f"recovered: {what} happened in MLflow; its audit event, "
                                "lost in a crash, is recorded now")
            else:
                audit.record(engine, ALIAS_ABORTED, event["subject"], {
                    **d, "intent": seq, "found": current,
                    "outcome": "interrupted before MLflow moved the alias"},
                    mlflow_run_id=event["mlflow_run_id"])
                repaired.append(f"aborted: {what} never reached MLflow "
                                f"(it is {'v' + current if current else 'unset'})")
    verdicts = _verdicts(events)
    # One search per model, not a read per version (a request each through a tracking server).
    listed: dict[str, dict[str, dict[str, str]]] = {}
    for model in sorted({m for m, _ in verdicts}):
        listed[model] = {str(v.version): v for v in versions_of(client, model)}
    for (model, version), verdict in verdicts.items():
        found = listed[model].get(version)
        if found is None:
            continue  # a version missing from MLflow: registry_problems reports it
        tags = found.tags
        if tags.get(GATES_PASSED_TAG) == str(verdict["passed"]).lower():
            continue
        if repair:
            _write_gate_tags(client, model, version, verdict["passed"], verdict["failed"])
            repaired.append(f"repaired: {model} v{version} gate tags restored from the trail's "
                            "verdict (a crash came between the verdict and the tags)")
        else:
            gaps.append(f"{model} v{version}: gate tags do not match the trail's verdict")
    # A verdict against a moved champion: its event holds the checks of the run's gates.json.
    for (model, version), kept in _verdict_files(events).items():
        found = listed.get(model, {}).get(version)
        if found is None or not verdict_file_differs(client, found.run_id, kept):
            continue
        if version_source_run_problem(client, model, version, found.run_id):
            continue  # no run to write it to: registry_problems reports the run
        if repair:
            client.log_dict(found.run_id, kept, "gates.json")
            repaired.append(f"repaired: {model} v{version} gates.json of its run restored "
                            "from the trail's verdict (a crash came between the verdict and "
                            "the file)")
        else:
            gaps.append(f"{model} v{version}: its run's gates.json does not match the "
                        "trail's verdict")
    ungated = [f"{e['details']['model']} v{e['details']['version']}" for e in events
               if e["action"] == REGISTERED
               and (e["details"]["model"], str(e["details"]["version"])) not in verdicts]
    return Reconciliation(repaired, gaps, sorted(set(ungated)))


def reconcile_model_changes(client: MlflowClient, engine: Engine, audit: AuditWriter,
                            repair: bool = True) -> Reconciliation:
    """Settle model changes a crash interrupted (see the module docstring); repairing, also
    remove the temporary folders killed processes left (``puhui.scratch``)."""
    with held_lock(engine, MODEL_LOCK):
        settled = _reconcile(client, engine, audit, repair)
    if repair:
        settled.swept.extend(f"removed {folder}: a temporary folder its process, now gone, "
                             "left behind" for folder in sweep_scratch_dirs())
    return settled


def registry_problems(client: MlflowClient, engine: Engine, deep: bool = False,
                      verified: VerifiedFiles | None = None) -> tuple[list[str], int, int]:
    """Where MLflow and the trail disagree; also the versions and aliases compared.

    Every version in MLflow has a registration event and vice versa; every alias points
    where the trail's last move for it says; every gate tag has a verdict in the trail that
    says the same; every version's source run is in MLflow, not deleted (its lineage). The
    model files of the versions an alias points to (what scoring loads) are hashed against
    their registration event, unless ``verified`` holds them as hashed with the signature
    they have now; with ``deep``, those of every version, each read in full (and downloaded
    from a remote artifact store). The runs' metrics and stages and the training's
    ``model_evaluations`` rows are read for all versions at once.
    """
    # MLflow's versions and their tags first, without the model lock: through a tracking
    # server every request retries with backoff, and a slow or dead server held promotions,
    # rollbacks and every training's gate step for minutes. Under the lock (a promotion or a
    # training writes the trail and MLflow under it) the trail and the aliases, as one moment,
    # and again the versions of a model the trail shows a version of that the first read
    # missed (registered meanwhile): else a completed change reads as tampering. Tags need no
    # second read: a gate tag is written only after the verdict it copies, so a tag read first
    # has its verdict in the trail read after.
    names = registered_model_names(client)
    listed = {model: versions_of(client, model) for model in names}
    aliases_of: dict[str, dict[str, str]] = {}
    with held_lock(engine, MODEL_LOCK):
        events = events_of(engine, MODEL_ACTIONS)
        registered = {(e["details"]["model"], str(e["details"]["version"])) for e in events
                      if e["action"] == REGISTERED}
        models = set(names) | {m for m, _ in registered}
        for model in sorted(models):
            seen = {str(v.version) for v in listed.get(model, [])}
            if any(m == model and version not in seen for m, version in registered):
                listed[model] = versions_of(client, model)
            aliases_of[model] = current_aliases(client, model)
    listed = dict(sorted(listed.items()))
    recorded_metrics = {(e["details"]["model"], str(e["details"]["version"])):
                        e["details"]["metrics"] for e in events
                        if e["action"] == REGISTERED and e["details"].get("metrics")}
    moves = _alias_moves(events)
    verdicts = _verdicts(events)
    digests = _registered_digests(events)
    checked = [(model, str(v.version), v.run_id) for model, versions in listed.items()
               for v in versions if (model, str(v.version)) in registered]
    runs = runs_facts(client, {run for _, _, run in checked if run}, models)
    evaluations = _training_evaluations(engine, checked)
    problems: list[str] = []
    n_versions = n_aliases = 0
    for model, versions in listed.items():
        aliases = aliases_of[model]
        in_mlflow = set()
        for v in versions:
            version = str(v.version)
            in_mlflow.add(version)
            n_versions += 1
            if (model, version) not in registered:
                problems.append(f"{model} v{version} is in MLflow with no registration event "
                                "in the trail")
            elif (model, version) in digests and (deep or version in aliases.values()) and (
                    changed := _files_problem(client, model, version,
                                              digests[(model, version)], verified, deep)):
                problems.append(changed)
            run = runs.get(v.run_id) if v.run_id else None
            if (model, version) in registered and run is not None and (
                    lost := source_run_problem(model, version, run.stage)):
                problems.append(lost)
            if (model, version) in registered and (run is None or run.stage is not None):
                # A run gone took its metrics: the line above says so, not one per metric.
                problems += metrics_problems(model, version,
                                             recorded_metrics.get((model, version), {}),
                                             run.metrics if run else {},
                                             evaluations[(model, version, v.run_id)],
                                             gated=(model, version) in verdicts)
            tag = v.tags.get(GATES_PASSED_TAG)
            verdict = verdicts.get((model, version))
            if tag is not None and verdict is None:
                problems.append(f"{model} v{version} is tagged {GATES_PASSED_TAG}={tag} but "
                                "the trail has no gate results for it")
            elif tag is not None and tag != str(verdict["passed"]).lower():
                problems.append(f"{model} v{version} is tagged {GATES_PASSED_TAG}={tag} but "
                                f"the trail's verdict is passed={verdict['passed']}")
        for m, version in sorted(registered):
            if m == model and version not in in_mlflow:
                problems.append(f"{model} v{version} is registered in the trail but missing "
                                "from MLflow")
        n_aliases += len(aliases)
        for alias, version in sorted(aliases.items()):
            expected = moves.get((model, alias))
            if expected != version:
                problems.append(f"{model}@{alias} is v{version} in MLflow but "
                                + (f"the trail's last move says v{expected}" if expected
                                   else "the trail has no move for it"))
        for (m, alias), version in sorted(moves.items()):
            if m == model and alias not in aliases:
                problems.append(f"{model}@{alias} is unset in MLflow but the trail's last move "
                                f"says v{version}")
    return problems, n_versions, n_aliases


def promote(client: MlflowClient, engine: Engine, audit: AuditWriter, name: str,
            version: str, reason: str, force: bool = False) -> str | None:
    """Make ``version`` the champion; refused if it failed its gates unless ``force``.

    The verdict is read from the audit trail (MLflow tags can be set by anyone with access
    to MLflow) and must agree with the tags. An ungated version (its gate step never ran) is
    refused even with ``force``: there is no verdict to override, only a missing one.
    """
    reason = decision_reason(reason)
    with held_lock(engine, MODEL_LOCK):
        _reconcile(client, engine, audit, repair=True)
        found = None
        with suppress_not_found():
            found = client.get_model_version(name, str(version))
        if found is None:
            raise PuhuiError(f"{name} has no version {version}")
        verdict = _verdicts(events_of(engine, MODEL_ACTIONS)).get((name, str(version)))
        if verdict is None:
            raise PuhuiError(
                f"{name} v{version} is ungated: its gate step never ran (the training run "
                "stopped before it); --force cannot override a verdict that does not exist; "
                "train again (puhui run train risk)")
        if gate_verdict(client, name, version)["passed"] != verdict["passed"]:
            raise PuhuiError(f"{name} v{version}: its MLflow gate tag disagrees with the "
                             "audit trail's verdict; run 'puhui audit verify'")
        if not verdict["passed"] and not force:
            # A refusal is a decision the auditor must see, not only the caller.
            audit.record(engine, PROMOTE_REFUSED, f"{name}/v{version}", {
                "model": name, "version": str(version), "reason": reason,
                "refused_because": "failed gates: " + "; ".join(verdict["failed"])})
            raise PuhuiError(
                f"{name} v{version} failed its gates ({'; '.join(verdict['failed'])}); "
                "promote with --force and a reason to override"
            )
        if version_of(client, name, CHAMPION) == str(version):
            raise PuhuiError(f"{name} v{version} is already the champion")
        return move_champion(client, engine, audit, name, str(version), reason,
                             forced_past=None if verdict["passed"] else verdict["failed"])


def champion_history(engine: Engine, name: str) -> list[str]:
    """The champion stack from the audit trail: promotions push, rollbacks pop."""
    stack: list[str] = []
    for event in events_of(engine, [ALIAS_SET]):
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
    reason = decision_reason(reason)
    with held_lock(engine, MODEL_LOCK):
        _reconcile(client, engine, audit, repair=True)
        stack = champion_history(engine, name)
        if len(stack) < 2:
            raise PuhuiError(f"{name} has no previous champion to roll back to")
        target = stack[-2]
        # The champion MLflow has is checked against the trail's in the move: a champion
        # moved or unset outside puhui is refused there, not rolled back from.
        current = _move_alias(client, engine, audit, name, CHAMPION, target, reason,
                              rollback=True)
        return str(current), target


def lineage(client: MlflowClient, engine: Engine, name: str, version: str) -> dict[str, Any]:
    """Data batches, their validations, code and configuration behind a model version."""
    model_events = events_of(engine, MODEL_ACTIONS)
    events = [e for e in model_events
              if e["action"] == REGISTERED and e["subject"] == f"{name}/v{version}"]
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
        "gates": _verdicts(model_events).get((name, str(version))),
        "batches": batches, "validations": validations,
        "missing_batches": sorted(set(batch_ids) - {b["batch_id"] for b in batches}),
        "alias_history": [
            {"at": e["occurred_at"], "actor": e["actor"], **e["details"]}
            for e in model_events
            if e["action"] in (ALIAS_SET, ALIAS_REMOVED) and e["subject"].startswith(f"{name}/")
        ],
    }
