"""The audit trail is append-only and tamper-evident on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from sqlalchemy import text

from puhui.audit import AuditWriter, read_audit_events, verify_audit_chain
from puhui.warehouse.engine import get_engine


def _writer() -> AuditWriter:
    return AuditWriter(actor="auditor-test", config_hash="cfg123", code_version="abc")


def _fill(url: str, n: int = 5) -> None:
    engine, writer = get_engine(url), _writer()
    for i in range(n):
        writer.record(engine, "test.event", f"subject/{i}", {"i": i, "note": "数据"})


def _puhui_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PUHUI_WAREHOUSE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "puhui", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_chain_of_appended_events_verifies(warehouse_url: str) -> None:
    _fill(warehouse_url, 5)
    result = verify_audit_chain(get_engine(warehouse_url))
    assert result.ok and result.rows == 5 and result.head_seq == 5
    events = read_audit_events(get_engine(warehouse_url), action="test.event")
    assert [e["details"]["i"] for e in events] == [0, 1, 2, 3, 4]
    assert events[0]["details"]["note"] == "数据"
    assert all(e["actor"] == "auditor-test" and e["config_hash"] == "cfg123" for e in events)


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
    with get_engine(warehouse_url).begin() as conn:
        conn.execute(text(tamper))
    after = _puhui_cli(warehouse_url, "audit", "verify")
    assert after.returncode == 1
    assert "ALTERED" in after.stderr and problem in after.stderr
    assert "Traceback" not in after.stderr


def test_rewritten_hash_is_caught_by_the_next_link(warehouse_url: str) -> None:
    """Editing a row AND recomputing its hash still breaks the following row's link."""
    _fill(warehouse_url, 4)
    engine = get_engine(warehouse_url)
    from puhui.audit import compute_row_hash

    with engine.begin() as conn:
        row = dict(conn.execute(text("SELECT * FROM audit_log WHERE seq = 2")).mappings().one())
        row["subject"] = "forged"
        forged_hash = compute_row_hash(row["prev_hash"], row)
        conn.execute(
            text("UPDATE audit_log SET subject = 'forged', row_hash = :h WHERE seq = 2"),
            {"h": forged_hash},
        )
    result = verify_audit_chain(engine)
    assert not result.ok
    assert any("seq 3: link" in p for p in result.problems)


def test_tail_deletion_is_caught_by_an_external_anchor(warehouse_url: str) -> None:
    _fill(warehouse_url, 4)
    engine = get_engine(warehouse_url)
    anchor = verify_audit_chain(engine).head_hash
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq = 4"))
    assert verify_audit_chain(engine).ok  # a shorter chain is self-consistent...
    result = verify_audit_chain(engine, expect_head=anchor)
    assert not result.ok and "anchor" in result.problems[0]  # ...but not with the anchor


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
    result = verify_audit_chain(engine)
    assert result.ok and result.rows == 40


def test_raw_identifiers_are_refused(warehouse_url: str) -> None:
    engine = get_engine(warehouse_url)
    with pytest.raises(ValueError, match="national ID"):
        _writer().record(engine, "test.leak", "x", {"who": "11010519491231002X"})
    with pytest.raises(ValueError, match="phone"):
        _writer().record(engine, "test.leak", "x", {"who": "+86 138 1234 5678"})
    assert verify_audit_chain(engine).rows == 0
