"""The audit trail is append-only and tamper-evident on SQLite and PostgreSQL.

The chain is keyed (HMAC-SHA256 with PUHUI_AUDIT_KEY): rewriting and re-chaining without the
key, or appending a forged event, is caught; an anchor (SEQ:HASH) catches rows removed from
the end and allows events after it; on PostgreSQL the application's role cannot UPDATE,
DELETE or TRUNCATE audit_log at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from puhui.audit import (
    CHAIN_LEGACY,
    REKEY,
    AuditWriter,
    keyed_row_hash,
    legacy_row_hash,
    read_audit_events,
    verify_audit_chain,
)
from puhui.errors import PuhuiError
from puhui.settings import load_settings, postgres_role_names
from puhui.warehouse.engine import _alembic_config, create_warehouse_engine, get_engine
from tests.conftest import TEST_AUDIT_KEY

KEY = TEST_AUDIT_KEY.encode()


def _writer() -> AuditWriter:
    return AuditWriter(actor="auditor-test", config_hash="cfg123", code_version="abc", key=KEY)


def _fill(url: str, n: int = 5) -> None:
    engine, writer = get_engine(url), _writer()
    for i in range(n):
        writer.record(engine, "test.event", f"subject/{i}", {"i": i, "note": "数据"})


def _puhui_cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "puhui", *args],
        env={**os.environ, "PUHUI_WAREHOUSE_URL": url, **env},
        capture_output=True, text=True, timeout=120,
    )


def _tamper(engine: Engine, *statements: str, **params: object) -> None:
    """Change audit_log as an insider with full database rights would.

    On PostgreSQL the append-only trigger refuses even the owner; a superuser can switch
    triggers off for the session, which is what this does. The keyed chain is what still
    catches it.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            conn.execute(text(statement), params)


def _rows(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            text("SELECT * FROM audit_log ORDER BY seq")).mappings()]


def _rechain(engine: Engine, rows: list[dict], hasher) -> None:  # noqa: ANN001
    """Recompute every row's link and hash in order and write them back (the attacker)."""
    prev = "0" * 64
    for row in rows:
        row["prev_hash"] = prev
        row["row_hash"] = prev = hasher(prev, row)
    for row in rows:
        _tamper(engine, "UPDATE audit_log SET subject = :subject, details = :details, "
                "prev_hash = :prev_hash, row_hash = :row_hash, chain_version = :chain_version "
                "WHERE seq = :seq", **{k: row[k] for k in (
                    "subject", "details", "prev_hash", "row_hash", "chain_version", "seq")})


def test_chain_of_appended_events_verifies(warehouse_url: str) -> None:
    _fill(warehouse_url, 5)
    result = verify_audit_chain(get_engine(warehouse_url), KEY)
    assert result.ok and result.rows == 5 and result.head_seq == 5
    events = read_audit_events(get_engine(warehouse_url), action="test.event")
    assert [e["details"]["i"] for e in events] == [0, 1, 2, 3, 4]
    assert events[0]["details"]["note"] == "数据"
    assert all(e["actor"] == "auditor-test" and e["config_hash"] == "cfg123" for e in events)
    assert all(e["chain_version"] == 2 for e in events)
    # Another key does not verify it: the chain is keyed, not a plain hash anyone can redo.
    assert not verify_audit_chain(get_engine(warehouse_url), b"another-key").ok


@pytest.mark.parametrize(
    "tamper, problem",
    [
        ("UPDATE audit_log SET details = '{\"i\": 99}' WHERE seq = 3", "seq 3: content"),
        ("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2", "seq 2: content"),
        ("DELETE FROM audit_log WHERE seq = 3", "missing"),
    ],
)
def test_cli_verify_fails_after_hand_edit(warehouse_url: str, tamper: str, problem: str) -> None:
    _fill(warehouse_url, 5)
    before = _puhui_cli(warehouse_url, "audit", "verify")
    assert before.returncode == 0, before.stderr
    assert "intact: 5 events" in before.stdout
    _tamper(get_engine(warehouse_url), tamper)
    after = _puhui_cli(warehouse_url, "audit", "verify")
    assert after.returncode == 1
    assert "ALTERED" in after.stderr and problem in after.stderr
    assert "Traceback" not in after.stderr


@pytest.mark.parametrize("how", ["unkeyed sha-256", "hmac with a guessed key"])
def test_rewrite_and_rechain_without_the_key_is_caught(warehouse_url: str, how: str) -> None:
    """Before: the chain was plain SHA-256, so a rewritten row with every later hash
    recomputed verified as intact."""
    _fill(warehouse_url, 5)
    engine = get_engine(warehouse_url)
    rows = _rows(engine)
    rows[1]["subject"] = "forged"
    if how == "unkeyed sha-256":
        for row in rows:
            row["chain_version"] = CHAIN_LEGACY
        _rechain(engine, rows, legacy_row_hash)
    else:
        _rechain(engine, rows, lambda prev, row: keyed_row_hash(b"guess", prev, row))
    result = verify_audit_chain(engine, KEY)
    assert not result.ok
    assert any("without the audit key" in p for p in result.problems), result.problems


def test_a_forged_appended_event_is_caught(warehouse_url: str) -> None:
    """Before: anyone able to INSERT could append a `model.alias` event with a valid hash."""
    _fill(warehouse_url, 3)
    engine = get_engine(warehouse_url)
    forger = AuditWriter(actor="model-owner", config_hash="cfg123", code_version="abc",
                         key=b"not-the-key")
    forger.record(engine, "model.alias", "credit_risk/champion",
                  {"model": "credit_risk", "alias": "champion", "version": "9"})
    result = verify_audit_chain(engine, KEY)
    assert not result.ok and result.problems == [
        "seq 4: content does not match its keyed hash (row edited, forged, or re-chained "
        "without the audit key)"]


def test_tail_deletion_is_caught_by_an_anchor_and_later_events_are_allowed(
    warehouse_url: str,
) -> None:
    _fill(warehouse_url, 4)
    engine = get_engine(warehouse_url)
    anchor = verify_audit_chain(engine, KEY).anchor
    assert anchor.startswith("4:")
    # Before: the anchor was compared with the head, so one legitimate event read ALTERED.
    _writer().record(engine, "test.event", "later", {})
    assert verify_audit_chain(engine, KEY, anchor=(4, anchor[2:])).ok
    _tamper(engine, "DELETE FROM audit_log WHERE seq >= 4")
    assert verify_audit_chain(engine, KEY).ok  # a shorter chain is self-consistent...
    result = verify_audit_chain(engine, KEY, anchor=(4, anchor[2:]))
    assert not result.ok  # ...but not with the anchor
    assert result.problems == ["the trail ends at seq 3, before the anchor's seq 4 "
                               "(rows removed from the end)"]


def test_an_anchor_catches_a_rewrite_before_it_even_with_the_key(warehouse_url: str) -> None:
    _fill(warehouse_url, 4)
    engine = get_engine(warehouse_url)
    anchor = verify_audit_chain(engine, KEY).anchor
    rows = _rows(engine)
    rows[0]["subject"] = "rewritten by a key holder"
    _rechain(engine, rows, lambda prev, row: keyed_row_hash(KEY, prev, row))
    assert verify_audit_chain(engine, KEY).ok  # the key holder's chain is consistent
    seq, row_hash = anchor.split(":")
    result = verify_audit_chain(engine, KEY, anchor=(int(seq), row_hash))
    assert not result.ok and "differs from the anchor" in result.problems[0]


def test_cli_anchor_and_verify_with_anchor(warehouse_url: str) -> None:
    _fill(warehouse_url, 3)
    anchored = _puhui_cli(warehouse_url, "audit", "anchor")
    assert anchored.returncode == 0, anchored.stderr
    anchor = anchored.stdout.strip()
    assert anchor.split(":")[0] == "3" and len(anchor.split(":")[1]) == 64
    _writer().record(get_engine(warehouse_url), "test.event", "after the anchor", {})
    ok = _puhui_cli(warehouse_url, "audit", "verify", "--anchor", anchor)
    assert ok.returncode == 0 and "intact: 4 events" in ok.stdout, ok.stderr
    _tamper(get_engine(warehouse_url), "DELETE FROM audit_log WHERE seq >= 3")
    cut = _puhui_cli(warehouse_url, "audit", "verify", "--anchor", anchor)
    assert cut.returncode == 1 and "rows removed from the end" in cut.stderr
    bad = _puhui_cli(warehouse_url, "audit", "verify", "--anchor", "3:nothex")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "SEQ:HASH" in bad.stderr
    wrong_key = _puhui_cli(warehouse_url, "audit", "verify", PUHUI_AUDIT_KEY="x" * 40)
    assert wrong_key.returncode == 1 and "keyed hash" in wrong_key.stderr


def test_concurrent_writers_keep_one_chain(warehouse_url: str) -> None:
    engine, writer = get_engine(warehouse_url), _writer()
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(10):
                writer.record(engine, "test.concurrent", f"w{worker}/{i}", {})
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    result = verify_audit_chain(engine, KEY)
    assert result.ok and result.rows == 40


def test_raw_identifiers_are_refused(warehouse_url: str) -> None:
    engine = get_engine(warehouse_url)
    with pytest.raises(ValueError, match="national ID"):
        _writer().record(engine, "test.leak", "x", {"who": "11010519491231002X"})
    with pytest.raises(ValueError, match="phone"):
        _writer().record(engine, "test.leak", "x", {"who": "+86 138 1234 5678"})
    assert verify_audit_chain(engine, KEY).rows == 0


# --------------------------------------------------------------------------- migration
def _legacy_trail(url: str, n: int) -> Engine:
    """A warehouse at revision 0002 with ``n`` events of the old, unkeyed chain."""
    engine = create_warehouse_engine(url)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0002")
    prev = "0" * 64
    with engine.begin() as conn:
        for seq in range(1, n + 1):
            row = {"seq": seq, "event_id": str(uuid.uuid4()),
                   "occurred_at": f"2026-11-0{seq}T00:00:00.000000Z", "actor": "old",
                   "action": "test.old", "subject": f"s{seq}", "details": "{}",
                   "flow_run_id": None, "mlflow_run_id": None, "code_version": "abc",
                   "config_hash": "cfg"}
            row["prev_hash"], row["row_hash"] = prev, legacy_row_hash(prev, row)
            prev = row["row_hash"]
            conn.execute(text(
                "INSERT INTO audit_log (seq, event_id, occurred_at, actor, action, subject, "
                "details, flow_run_id, mlflow_run_id, code_version, config_hash, prev_hash, "
                "row_hash) VALUES (:seq, :event_id, :occurred_at, :actor, :action, :subject, "
                ":details, :flow_run_id, :mlflow_run_id, :code_version, :config_hash, "
                ":prev_hash, :row_hash)"), row)
    engine.dispose()
    return engine


def test_migration_seals_an_unkeyed_chain_with_an_audited_rekey(warehouse_url: str) -> None:
    _legacy_trail(warehouse_url, 3)
    engine = get_engine(warehouse_url)  # migrates to head, sealing the old rows
    result = verify_audit_chain(engine, KEY)
    assert result.ok and result.rows == 4 and result.legacy_rows == 3
    rekey = read_audit_events(engine, action=REKEY)
    assert len(rekey) == 1 and rekey[0]["details"]["legacy_rows"] == 3
    assert rekey[0]["details"]["legacy_intact"] is True
    _writer().record(engine, "test.event", "new", {})
    assert verify_audit_chain(engine, KEY).ok

    # The unkeyed prefix is now covered by the key: rewriting and re-chaining it is caught.
    rows = _rows(engine)[:3]
    rows[0]["subject"] = "rewritten"
    _rechain(engine, rows, legacy_row_hash)
    result = verify_audit_chain(engine, KEY)
    assert not result.ok and result.problems == ["seq 4: link to the previous row is broken"]


def test_a_chain_downgraded_to_unkeyed_rows_is_caught(warehouse_url: str) -> None:
    """Rewriting every row as an old-style unkeyed row (no seal) is not a valid chain."""
    _fill(warehouse_url, 3)
    engine = get_engine(warehouse_url)
    rows = _rows(engine)
    for row in rows:
        row["chain_version"] = CHAIN_LEGACY
    rows[2]["subject"] = "rewritten"
    _rechain(engine, rows, legacy_row_hash)
    result = verify_audit_chain(engine, KEY)
    assert not result.ok and "no audit.rekey seal" in result.problems[0]


# --------------------------------------------------------------------------- the key
def test_the_audit_key_is_required_strong_and_separate_in_production() -> None:
    base = {"PUHUI_PROFILE": "production", "PUHUI_PSEUDONYM_KEY": "p" * 16 + "0123456789abcdef",
            "PUHUI_WAREHOUSE_URL": "postgresql+psycopg://x@h/db"}
    for missing in ({}, {"PUHUI_AUDIT_KEY": " " * 32}):
        with pytest.raises(PuhuiError, match="without PUHUI_AUDIT_KEY"):
            load_settings({**base, **missing})
    for weak in ("a" * 40, "ab" * 20, "short-0123456789"):
        with pytest.raises(PuhuiError, match="weak"):
            load_settings({**base, "PUHUI_AUDIT_KEY": weak})
    with pytest.raises(PuhuiError, match="differ"):
        load_settings({**base, "PUHUI_AUDIT_KEY": base["PUHUI_PSEUDONYM_KEY"]})
    assert load_settings({**base, "PUHUI_AUDIT_KEY": TEST_AUDIT_KEY}).audit_key == TEST_AUDIT_KEY


def test_the_local_profile_makes_an_audit_key_once_and_says_so(tmp_path) -> None:  # noqa: ANN001
    env = {k: v for k, v in os.environ.items() if k != "PUHUI_AUDIT_KEY"}
    env.update(PUHUI_HOME=str(tmp_path / "home"))
    env.pop("PUHUI_WAREHOUSE_URL", None)
    # A warehouse to anchor (a missing one is refused); `db upgrade` makes no audit key.
    subprocess.run([sys.executable, "-m", "puhui", "db", "upgrade"], env=env, check=True,
                   capture_output=True, timeout=120)
    first = subprocess.run([sys.executable, "-m", "puhui", "audit", "anchor"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and "made a local audit key" in first.stderr, first.stderr
    key_file = tmp_path / "home" / "audit.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and len(key_file.read_text()) == 64
    again = subprocess.run([sys.executable, "-m", "puhui", "audit", "verify"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "made a local audit key" not in again.stderr


# --------------------------------------------------------------------------- PostgreSQL roles
@pytest.fixture
def pg_url(pg_server) -> Iterator[str]:  # noqa: ANN001
    url = pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    get_engine(url)
    yield url


def _as_role(url: str, role: str) -> Engine:
    """A connection that logs in as ``role`` (given a login as the README shows)."""
    admin = get_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"ALTER ROLE {role} LOGIN PASSWORD 'test-only'"))
    return create_engine(make_url(url).set(username=role, password="test-only"))


def test_postgres_app_role_can_only_append_to_audit_log(pg_url: str) -> None:
    app, _ = postgres_role_names()
    _fill(pg_url, 2)
    engine = _as_role(pg_url, app)
    _writer().record(engine, "test.event", "as the app role", {})  # INSERT and SELECT work
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar() == 3
        conn.execute(text("SELECT count(*) FROM ingest_batches"))  # other tables as usual
    for statement in ("UPDATE audit_log SET actor = 'x' WHERE seq = 1",
                      "DELETE FROM audit_log WHERE seq = 3", "TRUNCATE audit_log"):
        with pytest.raises(Exception, match="permission denied"), engine.begin() as conn:
            conn.execute(text(statement))
    engine.dispose()
    # The table's owner too is refused by the trigger.
    for statement in ("UPDATE audit_log SET actor = 'x' WHERE seq = 1",
                      "DELETE FROM audit_log WHERE seq = 3", "TRUNCATE audit_log"):
        with pytest.raises(Exception, match="append-only"), get_engine(pg_url).begin() as conn:
            conn.execute(text(statement))
    assert verify_audit_chain(get_engine(pg_url), KEY).ok


def test_postgres_auditor_role_only_reads(pg_url: str) -> None:
    _, auditor = postgres_role_names()
    _fill(pg_url, 2)
    engine = _as_role(pg_url, auditor)
    assert verify_audit_chain(engine, KEY).ok  # an auditor verifies with the key...
    with engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM ingest_batches"))
    with pytest.raises(Exception, match="permission denied"):
        _writer().record(engine, "test.event", "as the auditor", {})  # ...and writes nothing
    engine.dispose()


# --------------------------------------------------------------------------- audit log filters
def _cli_in_process(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from puhui.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_audit_log_filters_reason_column_and_csv_export(
    warehouse_url: str, puhui_env, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
    capsys: pytest.CaptureFixture,
) -> None:
    """Before: no --actor/--until/--subject, --action matched exactly (so 'model.promote'
    found nothing and a typo was silently empty), no reason column, no CSV."""
    import csv
    import io
    import json

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    engine = get_engine(warehouse_url)
    alice = AuditWriter(actor="alice", config_hash="cfg", code_version="abc", key=KEY)
    bob = AuditWriter(actor="bob", config_hash="cfg", code_version="abc", key=KEY)
    alice.record(engine, "model.alias", "credit_risk/champion",
                 {"reason": "risk committee, ok", "forced": True, "version": "3"})
    bob.record(engine, "model.alias", "credit_risk/champion",
               {"reason": "v3 misbehaves", "rollback": True, "version": "2"})
    bob.record(engine, "quarantine.released", "mobile_payments-20260930-aaaa",
               {"reason": "refunds, partner confirmed"})
    alice.record(engine, "model.promote.refused", "credit_risk/v4",
                 {"reason": "try", "refused_because": "failed gates: auc_oot"})

    code, out, err = _cli_in_process(capsys, "audit", "log", "--actor", "bob", "--format", "json")
    assert code == 0, err
    assert [e["action"] for e in json.loads(out)] == ["model.alias", "quarantine.released"]
    code, out, _ = _cli_in_process(capsys, "audit", "log", "--action", "model", "--json")
    assert [e["subject"] for e in json.loads(out)] == [
        "credit_risk/champion", "credit_risk/champion", "credit_risk/v4"]
    code, out, _ = _cli_in_process(capsys, "audit", "log", "--subject", "mobile_payments-",
                                   "--json")
    assert [e["actor"] for e in json.loads(out)] == ["bob"]
    code, out, _ = _cli_in_process(capsys, "audit", "log", "--until", "2000-01-01", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = _cli_in_process(capsys, "audit", "log", "--since", "2000-01-01T00:00",
                                   "--until", "2999-12-31", "--json")
    assert len(json.loads(out)) == 4

    code, _, err = _cli_in_process(capsys, "audit", "log", "--action", "model.promte")
    assert code == 1 and err.count("\n") == 1
    assert "unknown action 'model.promte'" in err and "model.promote.refused" in err
    # Before, refused until a renewal had been written: the code writes it, the list lacked it.
    code, out, err = _cli_in_process(capsys, "audit", "log", "--action", "ingest.marks_renewed")
    assert code == 0, err
    code, _, err = _cli_in_process(capsys, "audit", "log", "--since", "yesterday")
    assert code == 2 and "Invalid value for '--since': must be a date" in err

    # The table has a reason column that tells a forced promotion from a rollback.
    code, out, _ = _cli_in_process(capsys, "audit", "log", "--action", "model.alias")
    assert "reason" in out.splitlines()[0]
    assert "[FORCED] risk committee, ok" in out and "[ROLLBACK] v3 misbehaves" in out

    code, out, _ = _cli_in_process(capsys, "audit", "log", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["actor"] for r in rows] == ["alice", "bob", "bob", "alice"]
    assert rows[3]["reason"].startswith("[REFUSED") and "auc_oot" in rows[3]["reason"]
    assert json.loads(rows[2]["details"])["reason"] == "refunds, partner confirmed"
    assert verify_audit_chain(engine, KEY).ok


def test_the_config_hash_covers_the_suites(tmp_path: Path) -> None:
    """Before: only configs/*.yaml were hashed; a changed suite left the hash as it was."""
    import shutil

    from puhui.config import config_hash
    from puhui.settings import repo_root
    from puhui.validation import suite_hash

    suites = tmp_path / "expectations"
    shutil.copytree(repo_root() / "expectations", suites)
    configs = repo_root() / "configs"
    before = config_hash(configs, expectations_dir=suites)
    assert before == config_hash(configs, expectations_dir=suites)  # stable
    payments_before = suite_hash("mobile_payments", expectations_dir=suites)
    path = suites / "mobile_payments.json"
    path.write_text(path.read_text().replace('"MERCHANT"', '"MERCHANT", "REFUND"'))
    assert config_hash(configs, expectations_dir=suites) != before
    assert suite_hash("mobile_payments", expectations_dir=suites) != payments_before
    live = repo_root() / "expectations"
    assert suite_hash("customers", expectations_dir=suites) == suite_hash(
        "customers", expectations_dir=live)  # others unchanged


def test_a_dirty_work_tree_is_refused_for_registration_in_production_and_recorded(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a version trained from a changed work tree was registered with '+dirty' and
    could not be reproduced; the production profile now refuses, and the trail says so."""
    from puhui.lifecycle.publish import REGISTER_REFUSED, refuse_unreproducible
    from tests.conftest import TEST_PSEUDONYM_KEY

    engine = get_engine(pg_url)
    dirty = AuditWriter(actor="trainer", config_hash="cfg", code_version="abc123+dirty", key=KEY)
    clean = AuditWriter(actor="trainer", config_hash="cfg", code_version="abc123", key=KEY)
    # The flow's profile decides, not the environment at register time (it may differ).
    monkeypatch.setenv("PUHUI_PROFILE", "production")
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", pg_url)
    monkeypatch.setenv("PUHUI_PSEUDONYM_KEY", TEST_PSEUDONYM_KEY)
    refuse_unreproducible(engine, dirty, "credit_risk", "local")  # a developer's experiment
    monkeypatch.setenv("PUHUI_PROFILE", "local")
    refuse_unreproducible(engine, clean, "credit_risk", "production")
    with pytest.raises(PuhuiError, match="registration refused in the production profile") as e:
        refuse_unreproducible(engine, dirty, "credit_risk", "production")
    assert "\n" not in str(e.value) and "abc123+dirty" in str(e.value)
    (refused,) = read_audit_events(engine, action=REGISTER_REFUSED)
    assert refused["subject"] == "credit_risk" and "uncommitted" in refused["details"][
        "refused_because"]
    assert verify_audit_chain(engine, KEY).ok


def test_the_training_run_logs_configs_and_suites_as_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The configs of the flow's settings, not of PUHUI_CONFIG_DIR at register time."""
    import mlflow

    from puhui.lifecycle.publish import log_configuration
    from puhui.settings import repo_root

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("cfg", artifact_location=str(tmp_path / "art"))
        with mlflow.start_run(experiment_id=experiment) as run:
            monkeypatch.setenv("PUHUI_CONFIG_DIR", str(tmp_path))  # changed mid-run: unused
            logged = log_configuration(repo_root() / "configs",
                                       expectations_dir=repo_root() / "expectations")
        client = mlflow.MlflowClient()
        configs = {a.path for a in client.list_artifacts(run.info.run_id, "configs")}
        suites = {a.path for a in client.list_artifacts(run.info.run_id, "expectations")}
    finally:
        mlflow.set_tracking_uri(previous)
    assert "configs/models.yaml" in configs and "expectations/mobile_payments.json" in suites
    expected = len(list((repo_root() / "configs").glob("*.y*ml"))) + len(
        list((repo_root() / "expectations").glob("*.json")))
    assert logged == len(configs) + len(suites) == expected


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)  # no dialect code here
def test_a_promotion_refused_by_its_gates_is_in_the_trail(
    warehouse_url: str, puhui_env, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
    capsys: pytest.CaptureFixture,
) -> None:
    """Before: a refused promotion left no event; the auditor saw only the promotions."""
    from tests.test_crash_model_changes import _register

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    version = _register(False)
    code, _, err = _cli_in_process(capsys, "models", "promote", "credit_risk", "--version",
                                   version, "--reason", "we like it anyway")
    assert code == 1 and "failed its gates" in err
    (refused,) = read_audit_events(get_engine(warehouse_url), action="model.promote.refused")
    assert refused["subject"] == f"credit_risk/v{version}" and refused["actor"] == "test-runner"
    assert refused["details"]["reason"] == "we like it anyway"
    assert "auc_oot" in refused["details"]["refused_because"]
    code, out, _ = _cli_in_process(capsys, "audit", "log", "--action", "model.promote")
    assert code == 0 and "[REFUSED: failed gates: auc_oot" in out and "1 event(s)" in out
    assert _cli_in_process(capsys, "audit", "verify")[0] == 0
    code, out, err = _cli_in_process(capsys, "audit", "lineage", "credit_risk", "--version",
                                     version, "--batches")
    assert code == 0 and "sha256" in out and "suite hash" in out, err
