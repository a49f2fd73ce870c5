"""Round 10 of testing like an attacker: two commands at the same time, and kill -9 at
points the crash tests did not reach.

The races are made deterministic without test hooks: the test holds a real lock (an
advisory lock puhui takes, a table lock, the model lock's flock file on SQLite) so that one
real ``puhui`` process stops at a known statement while the other one runs. The first three
tests failed before their fix (the comment above each says how); the last three are "tried
and sound": kept as tests, no fix was needed. Each test's processes, locks and connections
are ended by the ``race`` fixture whatever the outcome.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, text

from puhui.audit import events_of
from puhui.registry import (
    CHALLENGER,
    CHAMPION,
    current_aliases,
    mlflow_client,
)
from puhui.runtime import open_runtime
from puhui.settings import load_settings
from puhui.warehouse.engine import _lock_key, create_warehouse_engine
from tests.test_crash_model_changes import (  # noqa: F401 - fixtures
    NAME,
    Ran,
    _register,
    empty_mlflow_store,
    puhui,
    registry_env,
    train_env,
)
from tests.test_quarantine_cli import held_env  # noqa: F401 - a fixture

WAIT = 120  # seconds a process may take to reach the lock it is expected to wait on


def _start(*args: str) -> subprocess.Popen:
    """``puhui ARGS`` in its own process, as a second user would run it."""
    return subprocess.Popen([sys.executable, "-m", "puhui", *args], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> Ran:
    out, err = process.communicate(timeout=600)
    return Ran(process.returncode, out, err)


def _until(condition: Callable[[], bool], what: str, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        for process in processes:
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"{process.args[3:]} ended (exit {process.returncode}) before "
                            f"{what}: {err[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.1)


def _waiting(conn: Connection, wait_event: str, query_like: str = "%") -> list[int]:
    """Backends of this database (not ``conn``) waiting on a lock of kind ``wait_event``
    (``advisory``, ``relation``) in a statement like ``query_like``."""
    conn.rollback()  # pg_stat_activity is read once per transaction
    return list(conn.execute(text(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' AND wait_event = :w "
        "AND query LIKE :q"), {"w": wait_event, "q": query_like}).scalars())


def _waits_to_audit(control: Connection, table: str) -> bool:
    """A ``quarantine release`` wrote ``table`` (its row lock granted, in its transaction)
    and waits for the audit trail's advisory lock to append its event."""
    control.rollback()
    return bool(control.execute(text(
        "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.wait_event = "
        "'advisory' AND l.relation = CAST(:t AS regclass) AND l.mode = 'RowExclusiveLock' "
        "AND l.granted"), {"t": table}).first())


class _TableLock:
    """``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` taken in a thread (it may have to wait
    for a writer's transaction), held until ``release``. With ``after_advisory``: taken
    while holding that advisory lock, which is then let go (the table lock stays): the lock
    goes to whoever queued for the advisory lock next, after the table is locked."""

    def __init__(self, url: str, table: str, after_advisory: int | None = None) -> None:
        self.engine = create_warehouse_engine(url)
        self.conn = self.engine.connect()
        self.pid = self.conn.execute(text("SELECT pg_backend_pid()")).scalar()
        self.conn.commit()
        self.held = threading.Event()
        self.go = threading.Event()
        self.thread = threading.Thread(target=self._hold, args=(table, after_advisory),
                                       daemon=True)
        self.thread.start()

    def _hold(self, table: str, after_advisory: int | None) -> None:
        if after_advisory is not None:
            self.conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": after_advisory})
        self.conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        if after_advisory is not None:
            self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": after_advisory})
        self.held.set()
        self.go.wait(WAIT * 5)
        self.conn.commit()

    def release(self) -> None:
        """Ends the lock, or the wait for it (a test that failed before it was granted)."""
        if self.go.is_set():
            return
        self.go.set()
        if not self.held.is_set():
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": self.pid})
        self.thread.join(WAIT)
        self.conn.invalidate()  # its session (and any advisory lock) ends, not pooled
        self.engine.dispose()


class _Race:
    """What a race test starts, ended whatever the test's outcome (``race`` fixture): its
    ``puhui`` processes killed, its table locks released, its control connections (and the
    advisory locks they hold) closed. A failed test otherwise left processes and locks that
    held up the next tests for minutes."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []
        self.table_locks: list[_TableLock] = []
        self.controls: list[tuple[Engine, Connection]] = []

    def start(self, *args: str) -> subprocess.Popen:
        process = _start(*args)
        self.processes.append(process)
        return process

    def control(self, url: str) -> Connection:
        engine = create_warehouse_engine(url)
        conn = engine.connect()
        self.controls.append((engine, conn))
        return conn

    def lock_table(self, url: str, table: str, after_advisory: int | None = None) -> _TableLock:
        lock = _TableLock(url, table, after_advisory)
        self.table_locks.append(lock)
        return lock

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
        for lock in self.table_locks:
            lock.release()
        for engine, conn in self.controls:
            if not conn.closed:
                conn.invalidate()  # its session ends, and the advisory locks it holds
            engine.dispose()


@pytest.fixture
def race() -> Iterator[_Race]:
    started = _Race()
    try:
        yield started
    finally:
        started.close()


def _release_waiting_to_audit(race: _Race, url: str, batch: str,
                              table: str) -> tuple[Connection, int, subprocess.Popen]:
    """A ``quarantine release`` of ``batch`` that has written ``table`` and waits for the
    audit trail's lock, held by the control connection returned (with the lock's key)."""
    control = race.control(url)
    audit_lock = _lock_key("puhui.audit_log")
    control.execute(text("SELECT pg_advisory_lock(:k)"), {"k": audit_lock})
    control.commit()
    release = race.start("quarantine", "release", batch, "--reason", "fixed upstream")
    _until(lambda: _waits_to_audit(control, table), "the release waits to audit", [release])
    return control, audit_lock, release


# --------------------------------------------------------------------------- verify vs writes
# Before: `audit verify` read the trail's ledger events, then ingest_batches, in two
# transactions. A release (or an ingest) committing between the two reads made verify report
# "ingest_batches.status is 'released' but the audit trail says 'quarantined'" and exit 1: a
# false tamper alarm for an auditor whose check overlapped a data engineer's release.
@pytest.mark.parametrize("warehouse_url", ["postgres"], indirect=True)
def test_verify_while_a_release_commits_sees_one_moment(held_env: dict[str, str],  # noqa: F811
                                                        warehouse_url: str,
                                                        race: _Race) -> None:
    # 1. The release updates its ledger row, then waits for the audit trail's lock (held
    #    here) to append its event, in the same transaction.
    control, audit_lock, release = _release_waiting_to_audit(race, warehouse_url,
                                                             held_env["held"], "ingest_batches")
    # 2. A table lock queued behind the release's transaction: verify's read of
    #    ingest_batches queues behind it, after verify has read the trail.
    table_lock = race.lock_table(warehouse_url, "ingest_batches")
    _until(lambda: table_lock.pid in _waiting(control, "relation"), "the table lock queues",
           [release])
    verify = race.start("audit", "verify")
    _until(lambda: bool(_waiting(control, "relation", "%FROM ingest_batches%")),
           "verify reads ingest_batches", [release, verify])
    # 3. The release commits; then verify reads the ledger.
    control.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": audit_lock})
    control.commit()
    table_lock.held.wait(WAIT)
    table_lock.release()
    released, verified = _finish(release), _finish(verify)
    assert released.returncode == 0, released.stderr
    assert verified.returncode == 0, verified.stderr
    again = _finish(race.start("audit", "verify"))
    assert again.returncode == 0 and "ingest_batches agrees" in again.stdout, again.stderr


# Before: `audit verify` read the trail's alias moves, then MLflow's aliases, without the
# model lock. A promotion completing between the two reads was reported as "credit_risk@champion
# is v1 in MLflow but the trail has no move for it" (exit 1): every promotion overlapping an
# auditor's check looked like tampering. The test parks verify inside that read (a table lock
# on the trail, taken after verify's chain check and its reconcile step) and asserts the
# promotion waits for the model lock until verify's reads are done.
@pytest.mark.parametrize("warehouse_url", ["postgres"], indirect=True)
def test_verify_while_a_promotion_runs_sees_one_moment(registry_env: dict[str, str],  # noqa: F811
                                                       warehouse_url: str,
                                                       race: _Race) -> None:
    from puhui.registry import MODEL_LOCK

    control = race.control(warehouse_url)
    model_lock = _lock_key(MODEL_LOCK)
    # 1. Verify checks the chain, then queues for the model lock (held here) to settle what
    #    a crash left; a table lock on the trail queues behind it.
    control.execute(text("SELECT pg_advisory_lock(:k)"), {"k": model_lock})
    control.commit()
    verify = race.start("audit", "verify")
    _until(lambda: len(_waiting(control, "advisory")) == 1, "verify queues for the model lock",
           [verify])
    trail_lock = race.lock_table(warehouse_url, "audit_log", after_advisory=model_lock)
    _until(lambda: len(_waiting(control, "advisory")) == 2, "the table lock queues", [verify])
    # 2. Verify settles, then queues again to read the trail and MLflow; the table lock gets
    #    the model lock first, locks the trail and lets the model lock go: verify holds it,
    #    stopped at its read of the trail.
    control.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": model_lock})
    control.commit()
    trail_lock.held.wait(WAIT)
    _until(lambda: bool(_waiting(control, "relation", "%FROM audit_log%")),
           "verify reads the trail", [verify])
    # 3. The promotion waits for the model lock while verify reads.
    promote = race.start("models", "promote", NAME, "--version", registry_env["passed1"],
                         "--reason", "better on the test window")
    _until(lambda: len(_waiting(control, "relation", "%FROM audit_log%")) > 1
           or bool(_waiting(control, "advisory")), "the promotion waits", [verify, promote])
    assert _waiting(control, "advisory"), "the promotion did not wait for verify's reads"
    trail_lock.release()
    promoted, verified = _finish(promote), _finish(verify)
    assert promoted.returncode == 0, promoted.stderr
    assert verified.returncode == 0, verified.stderr
    assert current_aliases(mlflow_client(load_settings().mlflow_tracking_uri),
                           NAME)[CHAMPION] == registry_env["passed1"]
    again = _finish(race.start("audit", "verify"))
    assert again.returncode == 0 and "MLflow agrees" in again.stdout, again.stderr


# --------------------------------------------------------------------------- train vs promote
# Before: the gate step recorded its verdict and then, under a second hold of the model lock,
# set `challenger` on the new version (and, with auto_promote, `champion` in a third). A model
# owner promoting that version between the holds (a script promoting whatever passes, the
# moment its verdict shows) made it champion; the step then left it without `challenger` but
# kept the previous challenger: {champion: v2, challenger: v1}, which no order of the two
# commands gives (v2 challenger, then promoted: challenger removed). Now one hold.
@pytest.mark.parametrize("warehouse_url", ["postgres"], indirect=True)  # FIFO lock queue
def test_a_version_promoted_while_its_verdict_is_recorded_ends_champion_only(
        registry_env: dict[str, str], warehouse_url: str, race: _Race) -> None:  # noqa: F811
    from puhui.lifecycle.gates import GateResult
    from puhui.lifecycle.publish import apply_verdict
    from puhui.registry import MODEL_LOCK, promote

    runtime = open_runtime()
    uri = runtime.settings.mlflow_tracking_uri
    earlier, version = _register(None), _register(None)
    apply_verdict(mlflow_client(uri), runtime.engine, runtime.audit, NAME, earlier,
                  GateResult(passed=True), False)
    control = race.control(warehouse_url)
    model_lock = _lock_key(MODEL_LOCK)
    outcomes: dict[str, object] = {}

    def run(what: str, call: Callable[[], object]) -> threading.Thread:
        def target() -> None:
            try:
                outcomes[what] = call()
            except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                outcomes[what] = e
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread

    # The gate step queues for the model lock (held here), then the promotion queues behind
    # it: PostgreSQL grants the lock in queue order, so the promotion runs right after the
    # gate step's first hold.
    control.execute(text("SELECT pg_advisory_lock(:k)"), {"k": model_lock})
    control.commit()
    try:
        threads = [run("gate", lambda: apply_verdict(
            mlflow_client(uri), runtime.engine, runtime.audit, NAME, version,
            GateResult(passed=True), False))]
        _until(lambda: len(_waiting(control, "advisory")) == 1, "the gate step queues", [])
        threads.append(run("promote", lambda: promote(
            mlflow_client(uri), runtime.engine, runtime.audit, NAME, version, "ship it")))
        _until(lambda: len(_waiting(control, "advisory")) == 2, "the promotion queues", [])
    finally:  # not left to the fixture: the threads must get the lock to end
        control.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": model_lock})
        control.commit()
    for thread in threads:
        thread.join(WAIT)
    assert not any(isinstance(o, BaseException) for o in outcomes.values()), outcomes
    assert current_aliases(mlflow_client(uri), NAME) == {CHAMPION: version}
    verified = _finish(_start("audit", "verify"))
    assert verified.returncode == 0, verified.stderr


# --------------------------------------------------------------------------- kill -9, new points
# (A training killed between its gate verdict and its challenger move, `gate.after_tag`, is
# step 3 of test_crash_model_changes.py::test_train_killed_at_each_model_change_point.)


# Before: the restore above gave up when any later version had a verdict, even a failing one
# (which moves no alias): v2 passed and was killed before its move, v3 failed; in either
# order v2 would be challenger, and it stayed without an alias.
@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_later_failed_version_does_not_stop_the_challenger_restore(
        registry_env: dict[str, str], puhui: Callable[..., Ran]) -> None:  # noqa: F811
    from puhui.registry import restore_challenger

    runtime = open_runtime()
    client = mlflow_client(runtime.settings.mlflow_tracking_uri)
    passed, later_passed = registry_env["passed1"], registry_env["passed2"]
    assert int(registry_env["failed"]) > int(later_passed) > int(passed)
    assert not restore_challenger(client, runtime.engine, runtime.audit, NAME, passed)
    assert restore_challenger(client, runtime.engine, runtime.audit, NAME, later_passed)
    assert current_aliases(client, NAME) == {CHALLENGER: later_passed}

    # Before: with auto_promote, the restore made a version challenger only, so a training
    # killed after its verdict ended {challenger: v} where one killed a moment later, or not
    # at all, ended {champion: v}; one killed between its challenger and champion moves
    # stayed challenger for good. The unchanged re-run now finishes what the run would have
    # done. (Same registry as above: a fixture of its own costs seconds.)
    assert restore_challenger(client, runtime.engine, runtime.audit, NAME, later_passed,
                              True) == [CHAMPION]  # killed after its challenger move
    assert current_aliases(client, NAME) == {CHAMPION: later_passed}
    assert restore_challenger(client, runtime.engine, runtime.audit, NAME, later_passed,
                              True) == []  # nothing left undone
    killed_after_verdict = _register(True)
    assert restore_challenger(client, runtime.engine, runtime.audit, NAME,
                              killed_after_verdict, True) == [CHALLENGER, CHAMPION]
    assert current_aliases(client, NAME) == {CHAMPION: killed_after_verdict}
    # Killed after its verdict, then a model owner rolled back: that decision came after the
    # verdict, so the re-run makes the version challenger and leaves the champion alone.
    from puhui.registry import MODEL_LOCK, _move_alias, rollback
    from puhui.warehouse.engine import held_lock

    overruled = _register(True)
    assert rollback(client, runtime.engine, runtime.audit, NAME, "owner: keep the old one") == (
        killed_after_verdict, later_passed)
    assert restore_challenger(client, runtime.engine, runtime.audit, NAME, overruled,
                              True) == [CHALLENGER]
    assert current_aliases(client, NAME) == {CHAMPION: later_passed, CHALLENGER: overruled}
    # Killed inside move_champion, between the champion move and taking challenger off it
    # (the state planted by the same moves): the re-run only takes challenger off.
    half_moved = _register(True)
    assert restore_challenger(client, runtime.engine, runtime.audit, NAME, half_moved
                              ) == [CHALLENGER]
    with held_lock(runtime.engine, MODEL_LOCK):
        _move_alias(client, runtime.engine, runtime.audit, NAME, CHAMPION, half_moved,
                    "auto_promote is on in configs/models.yaml")
    assert restore_challenger(client, runtime.engine, runtime.audit, NAME, half_moved,
                              True) == [f"{CHALLENGER} removed"]
    assert current_aliases(client, NAME) == {CHAMPION: half_moved}
    verified = puhui("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


# Before: the gate "AUC drop against the champion" compared with the champion of the
# evaluation; one promoted (or rolled back) before the verdict was never compared with, so
# a version could become challenger (or, with auto_promote, champion) while ranking worse
# than the champion it would replace. Now the verdict is settled against the champion at
# verdict time, under the model lock, and its event names both.
@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_the_verdict_compares_with_the_champion_at_verdict_time(
        registry_env: dict[str, str]) -> None:  # noqa: F811
    from puhui.audit import events_of
    from puhui.lifecycle.gates import ChampionCheck, GateResult
    from puhui.lifecycle.publish import apply_checked_verdict
    from puhui.registry import GATES, promote, run_artifact

    runtime = open_runtime()
    client = mlflow_client(runtime.settings.mlflow_tracking_uri)
    old, new = registry_env["passed1"], registry_env["passed2"]
    promote(client, runtime.engine, runtime.audit, NAME, old, "first")
    asked: list[str | None] = []

    def recheck(champion: str | None) -> GateResult:
        asked.append(champion)  # the real one re-scores ``champion`` (risk.publish)
        return GateResult(False, [f"auc_drop_vs_champion champion 0.050 > 0.02 (v{champion})"])

    def verdict(version: str) -> dict:
        return [e["details"] for e in events_of(runtime.engine, [GATES])
                if e["details"]["version"] == version][-1]

    unchanged = registry_env["ungated"]
    gates, _ = apply_checked_verdict(client, runtime.engine, runtime.audit, NAME, unchanged,
                                     GateResult(True), False, ChampionCheck(old, recheck))
    assert gates.passed and asked == [] and verdict(unchanged)["champion"] == old

    candidate = _register(None)
    promote(client, runtime.engine, runtime.audit, NAME, new, "between evaluation and verdict")
    gates, line = apply_checked_verdict(client, runtime.engine, runtime.audit, NAME,
                                        candidate, GateResult(True), False,
                                        ChampionCheck(old, recheck))
    assert asked == [new] and not gates.passed
    assert f"(v{old} -> v{new}): gates checked again against v{new}" in line, line
    assert verdict(candidate) == {"model": NAME, "version": candidate, "passed": False,
                                  "failed": gates.failed, "champion": new,
                                  "evaluated_against": old, "checks": []}
    # The run's gates.json is the verdict's, written from its event; a retry after the
    # verdict writes the same file from it, nothing re-scored.
    run_id = client.get_model_version(NAME, candidate).run_id
    assert json.loads(run_artifact(client, run_id, "gates.json")) == gates.as_dict()
    again, _ = apply_checked_verdict(client, runtime.engine, runtime.audit, NAME, candidate,
                                     GateResult(True), False, ChampionCheck(old, recheck))
    assert asked == [new] and again == gates
    assert current_aliases(client, NAME) == {CHAMPION: new, CHALLENGER: unchanged}

    # The champion's files are loaded before the model lock (a promote or rollback waited
    # through the copy and digest check), and a re-score that raises is a failed verdict
    # naming the cause: before, no verdict was recorded and the next run trained another.
    from puhui.registry import MODEL_LOCK
    from puhui.warehouse.engine import held_lock

    prepared: list[tuple[str | None, bool]] = []

    def prepare(champion: str | None) -> None:  # records whether the model lock was free
        waited: list[str | None] = []
        took = threading.Event()

        def take() -> None:
            with held_lock(runtime.engine, MODEL_LOCK, on_wait=waited.append):
                took.set()

        threading.Thread(target=take, daemon=True).start()
        deadline = time.monotonic() + WAIT
        while not (took.is_set() or waited) and time.monotonic() < deadline:
            time.sleep(0.01)
        prepared.append((champion, took.is_set()))

    def broken(champion: str | None) -> GateResult:
        raise RuntimeError(f"v{champion}: model files changed since registration")

    rolled_back = _register(None)
    promote(client, runtime.engine, runtime.audit, NAME, old, "back to the old one")
    gates, line = apply_checked_verdict(client, runtime.engine, runtime.audit, NAME,
                                        rolled_back, GateResult(True), False,
                                        ChampionCheck(new, broken, prepare))
    assert prepared == [(old, True)]
    cause = (f"champion_recheck v{old} not re-scored (RuntimeError: v{old}: model files "
             "changed since registration)")
    assert not gates.passed and gates.failed == [cause] and cause in line, line
    assert verdict(rolled_back)["passed"] is False and verdict(rolled_back)["failed"] == [cause]
    assert current_aliases(client, NAME) == {CHAMPION: old, CHALLENGER: unchanged}

    # A failure of the warehouse or registry says nothing of the champion: it is raised
    # (the gate step retries it) and nothing is recorded; before, it became a failed verdict
    # that only a retraining with --force undid.
    from mlflow.exceptions import RestException
    from sqlalchemy.exc import OperationalError

    def unreachable(error: Exception) -> Callable[..., GateResult]:
        def fail(_: object) -> GateResult:
            raise error
        return fail

    dropped = OperationalError("SELECT", {}, ConnectionError("server closed the connection"))
    overloaded = RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"})
    waiting = _register(None)
    for error, check in ((dropped, ChampionCheck(new, unreachable(dropped))),
                         (overloaded, ChampionCheck(new, unreachable(overloaded)))):
        with pytest.raises(type(error)):
            apply_checked_verdict(client, runtime.engine, runtime.audit, NAME, waiting,
                                  GateResult(True), False, check)
    assert not [e for e in events_of(runtime.engine, [GATES])
                if e["details"]["version"] == waiting]
    assert current_aliases(client, NAME) == {CHAMPION: old, CHALLENGER: unchanged}


# Tried and sound (kept as a test): a release killed inside its transaction, after its
# ledger update and its rows' load, waiting to write its event, leaves the batch held and
# nothing loaded; the next release loads it once and verify passes.
@pytest.mark.parametrize("warehouse_url", ["postgres"], indirect=True)
def test_a_release_killed_mid_transaction_leaves_it_held_and_releases_once_after(
        held_env: dict[str, str], warehouse_url: str, race: _Race) -> None:  # noqa: F811
    from puhui.ingest import ledger

    control, audit_lock, release = _release_waiting_to_audit(
        race, warehouse_url, held_env["held"], "raw_mobile_payments")
    release.kill()
    release.wait(WAIT)
    control.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": audit_lock})
    control.commit()
    engine = open_runtime().engine
    assert ledger.get_batch(engine, held_env["held"]).status == "quarantined"
    rows = "SELECT count(*) FROM raw_mobile_payments WHERE batch_id = :b"
    assert control.execute(text(rows), {"b": held_env["held"]}).scalar() == 0
    again = _finish(race.start("quarantine", "release", held_env["held"], "--reason", "retry"))
    assert again.returncode == 0, again.stderr
    record = ledger.get_batch(engine, held_env["held"])
    control.rollback()
    assert record.status == "released" and record.rows_loaded > 0
    assert control.execute(text(rows), {"b": held_env["held"]}).scalar() == record.rows_loaded
    verified = _finish(race.start("audit", "verify"))
    assert verified.returncode == 0, verified.stderr


# Tried and sound (kept as a test): `puhui db upgrade` from 0003 killed inside the last
# pending migration (0008, stopped creating ingest_keys by another transaction creating that
# name) leaves the warehouse at 0003 with its rows: 0004 to 0007, already run, are undone
# with it (every pending migration runs in one transaction, and PostgreSQL's DDL is
# transactional). The next upgrade completes to head with the schema the code declares.
@pytest.mark.parametrize("warehouse_url", ["postgres"], indirect=True)
def test_an_upgrade_killed_mid_migration_is_rolled_back_and_completes_next_time(
        puhui_env: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch,
        race: _Race) -> None:
    from puhui.warehouse.engine import current_revision, head_revision
    from tests.test_ledger_migration import _schema_diff, at_revision_with_a_batch

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    engine = create_warehouse_engine(warehouse_url)
    at_revision_with_a_batch(engine, "0003")
    blocker = race.control(warehouse_url)
    blocker.execute(text("CREATE TABLE ingest_keys (held integer)"))  # not committed
    control = race.control(warehouse_url)
    upgrade = race.start("db", "upgrade")
    _until(lambda: bool(_waiting(control, "transactionid", "%CREATE TABLE ingest_keys%")),
           "the upgrade reaches 0008", [upgrade])
    upgrade.kill()
    upgrade.wait(WAIT)
    blocker.rollback()
    assert current_revision(engine) == "0003"
    again = _finish(race.start("db", "upgrade"))
    assert again.returncode == 0, again.stderr
    assert current_revision(engine) == head_revision() and _schema_diff(engine) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT batch_id, bytes FROM ingest_batches")).all() == [
            ("b1", 120)]
    engine.dispose()


# Tried and sound (kept as a test): a rollback and a forced promotion of the same model,
# both queued on the model lock (its flock file held here until both wait on it). Either
# order is valid; each is recorded whole, the champion is where the trail's last move says,
# and each move's `previous` is the champion the other left.
@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_rollback_and_a_promotion_at_once_serialize(registry_env: dict[str, str],  # noqa: F811
                                                      puhui: Callable[..., Ran],  # noqa: F811
                                                      warehouse_url: str, race: _Race) -> None:
    import fcntl

    from puhui.registry import ALIAS_SET, MODEL_LOCK, champion_history

    v1, v2, v3 = registry_env["passed1"], registry_env["passed2"], registry_env["failed"]
    for version in (v1, v2):
        assert puhui("models", "promote", NAME, "--version", version, "--reason",
                     "r").returncode == 0
    lock_file = Path(f"{create_warehouse_engine(warehouse_url).url.database}.{MODEL_LOCK}.lock")
    inode = f":{os.stat(lock_file).st_ino} "

    def blocked() -> int:
        """Processes waiting for the model lock's flock (``->`` lines of /proc/locks)."""
        return sum(1 for line in Path("/proc/locks").read_text().splitlines()
                   if "->" in line and inode in line)

    with lock_file.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        both = [race.start("models", "rollback", NAME, "--reason", "v2 misbehaves"),
                race.start("models", "promote", NAME, "--version", v3, "--force", "--reason",
                           "ok")]
        _until(lambda: blocked() == 2, "both wait for the model lock", both)
        fcntl.flock(held, fcntl.LOCK_UN)
    rolled, promoted = (_finish(p) for p in both)
    assert rolled.returncode == 0 and promoted.returncode == 0, rolled.stderr + promoted.stderr
    engine = open_runtime().engine
    moves = [e["details"] for e in events_of(engine, [ALIAS_SET])
             if e["details"]["alias"] == CHAMPION][-2:]
    assert moves[1]["previous"] == moves[0]["version"]
    champion = current_aliases(mlflow_client(load_settings().mlflow_tracking_uri),
                               NAME)[CHAMPION]
    assert champion == moves[1]["version"] == champion_history(engine, NAME)[-1]
    assert champion in ({v3} if moves[1]["forced"] else {v2})
    verified = puhui("audit", "verify")
    assert verified.returncode == 0, verified.stderr
