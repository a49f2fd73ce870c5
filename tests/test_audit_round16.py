"""Audit round 16 (see README, "Audit trail"): `audit verify`'s remaining blind spots. Each
defect test failed on the code before its fix unless its docstring says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from puhui.cli import main
from puhui.ingest import batches, ledger
from puhui.ingest.quarantine import reject_batch, release_batch, revalidate_batch
from puhui.runtime import open_runtime
from puhui.settings import repo_root
from puhui.warehouse.schema import ingest_batches
from tests import test_attack_round7
from tests.test_attack_round7 import DAY, _ingest_payments, _payments, _reordered
from tests.test_attack_round14 import _held_by_category

landing = test_attack_round7.landing  # the fixture: a landing zone with the payments folder


def _every_decision(
    landing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, batches.FileOutcome]:
    """A ledger through every legitimate path that writes it: a load (with a repeated row),
    a redelivery of the same bytes (duplicate), holds released, rejected, revalidated
    (still held, then passing under a fixed suite), a corrected file (same name, rows
    reordered: held as a rewrite of a loaded path, then released) and a load failed once
    mid-way (rolled back) and repeated."""
    folder = landing / "mobile_payments" / DAY.isoformat()
    head, *rows = _payments(1).decode().splitlines()
    (folder / "mobile_payments_1.csv").write_text("\n".join([head, *rows, rows[0]]) + "\n")
    (folder / "mobile_payments_2.csv").write_text("\n".join([head, *rows, rows[0]]) + "\n")
    (folder / "mobile_payments_3.csv").write_bytes(_held_by_category(3, "STILL_ODD"))
    (folder / "mobile_payments_4.csv").write_bytes(_held_by_category(4))
    (folder / "mobile_payments_5.csv").write_bytes(_held_by_category(5))
    (folder / "mobile_payments_6.csv").write_bytes(_held_by_category(6))
    outcomes = _ingest_payments()
    assert [outcomes[f"mobile_payments_{i}.csv"].status for i in range(1, 7)] == [
        "accepted",
        "duplicate",
        "quarantined",
        "quarantined",
        "quarantined",
        "quarantined",
    ]
    runtime = open_runtime()
    release_batch(runtime, outcomes["mobile_payments_4.csv"].batch_id, "category confirmed")
    reject_batch(runtime, outcomes["mobile_payments_5.csv"].batch_id, "partner resends it")
    suites = tmp_path / "expectations"  # the new category is legitimate: the suite is fixed
    shutil.copytree(repo_root() / "expectations", suites)
    suite = suites / "mobile_payments.json"
    suite.write_text(suite.read_text().replace('"GROCERY",', '"GROCERY", "UNHEARD_OF",'))
    monkeypatch.setenv("PUHUI_EXPECTATIONS_DIR", str(suites))
    runtime = open_runtime()
    assert revalidate_batch(runtime, outcomes["mobile_payments_6.csv"].batch_id).accepted
    assert not revalidate_batch(runtime, outcomes["mobile_payments_3.csv"].batch_id).accepted
    # A correction of file 1, and a new file whose first load fails mid-way.
    (folder / "mobile_payments_1.csv").write_bytes(
        _reordered((folder / "mobile_payments_1.csv").read_bytes())
    )
    (folder / "mobile_payments_7.csv").write_bytes(_payments(7))
    monkeypatch.setenv("PUHUI_FAIL_ONCE_AT", "mid-load")
    with contextlib.suppress(ConnectionError):  # an infrastructure error stops the run
        _ingest_payments()
    monkeypatch.delenv("PUHUI_FAIL_ONCE_AT", raising=False)
    later = _ingest_payments()
    corrected, failed_once = later["mobile_payments_1.csv"], later["mobile_payments_7.csv"]
    assert failed_once.status == "accepted"
    assert corrected.status == "quarantined" and "rewritten after" in corrected.reason
    release_batch(open_runtime(), corrected.batch_id, "the partner's correction")
    outcomes.update(
        {
            "corrected": later["mobile_payments_1.csv"],
            "mobile_payments_7.csv": later["mobile_payments_7.csv"],
        }
    )
    return outcomes


def _row(batch_id: str) -> dict[str, Any]:
    with open_runtime().engine.connect() as conn:
        return dict(
            conn.execute(select(ingest_batches).where(ingest_batches.c.batch_id == batch_id))
            .one()
            ._mapping
        )


def _set(batch_id: str, **values: Any) -> None:
    with open_runtime().engine.begin() as conn:
        conn.execute(
            update(ingest_batches).where(ingest_batches.c.batch_id == batch_id).values(**values)
        )


def test_hand_edits_of_ledger_times_rows_held_and_content_key_are_reported(
    landing: Path,
    tmp_path: Path,
    warehouse_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: `landed_at`, `decided_at`, `rows_held` and `content_key` were in no event,
    so a hand edit of any passed `audit verify` (a content_key cleared lets the same bytes
    load again as new; decided_at orders the key index's loads). Every legitimate path that
    writes the ledger verifies clean on both dialects (the timestamps round-trip PostgreSQL's
    session time zone and SQLite's text); each column edited alone is reported, named,
    its value never printed."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    outcomes = _every_decision(landing, tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "ingest_batches agrees with the trail: 8 batch(es)" in out, out
    assert "before round 16" not in out, out  # every event records them

    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    edits = {  # column -> (batch, value written by hand)
        "landed_at": (outcomes["mobile_payments_1.csv"].batch_id, moment),
        "decided_at": (outcomes["mobile_payments_4.csv"].batch_id, moment),
        "rows_held": (outcomes["mobile_payments_5.csv"].batch_id, 0),
        "content_key": (outcomes["mobile_payments_1.csv"].batch_id, None),
    }
    for column, (batch_id, value) in edits.items():
        before = _row(batch_id)[column]
        _set(batch_id, **{column: value})
        assert main(["audit", "verify", "--no-repair"]) == 1, column
        err = capsys.readouterr().err
        assert (
            f"batch {batch_id}: ingest_batches.{column} differs from the value the audit "
            "trail recorded" in err
        ), (column, err)
        assert "DISAGREE: 1 problem(s)" in err, (column, err)
        assert "2026-01-02" not in err
        _set(batch_id, **{column: before})
    # A decided_at moved by a microsecond, and one of a held batch set: seen too.
    held = outcomes["mobile_payments_3.csv"].batch_id
    _set(held, decided_at=moment)
    accepted = outcomes["mobile_payments_7.csv"].batch_id
    _set(accepted, decided_at=_row(accepted)["decided_at"] + timedelta(microseconds=1))
    assert main(["audit", "verify", "--no-repair"]) == 1
    err = capsys.readouterr().err
    for batch_id in (held, accepted):
        assert f"batch {batch_id}: ingest_batches.decided_at differs" in err, err


def test_batches_decided_before_round16_are_noted_once_not_reported(
    landing: Path,
    warehouse_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found sound by construction, kept as the contract: events from before round 16
    record none of the four columns, nor their raw rows' digests; verify (and --deep)
    passes and says so once, in one line each."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    folder = landing / "mobile_payments" / DAY.isoformat()
    (folder / "mobile_payments_1.csv").write_bytes(_payments(1))
    (folder / "mobile_payments_2.csv").write_bytes(_held_by_category(2))
    with pytest.MonkeyPatch.context() as older:
        older.setattr(ledger, "ledger_facts", lambda *written: {})  # the writer before
        older.setattr(batches, "batch_rows_digest", lambda *args: {})
        outcomes = _ingest_payments()
    # A release by the new writer records decided_at and rows_held; landed_at stays unknown.
    release_batch(open_runtime(), outcomes["mobile_payments_2.csv"].batch_id, "category confirmed")
    _set(outcomes["mobile_payments_1.csv"].batch_id, landed_at=datetime(2026, 1, 2, tzinfo=UTC))
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.count("before round 16") == 1, out
    assert "2 batch(es) decided by events from before round 16" in out, out
    assert main(["audit", "verify", "--deep"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.count("before row digests") == 1, out
    # The release's load recorded its digest; the first batch's load did not.
    assert "raw_mobile_payments: 1 batch_id(s) written before row digests were recorded" in out
    assert "keyed digests: 1 batch(es), " in out, out
    _set(outcomes["mobile_payments_2.csv"].batch_id, rows_held=7)
    assert main(["audit", "verify", "--no-repair"]) == 1
    assert "ingest_batches.rows_held differs" in capsys.readouterr().err


def test_arrow_digest_matches_what_each_dialect_reads_back(warehouse_url: str) -> None:
    """The load digests the Arrow data it writes; verify digests the rows it reads. Both
    must give one canonical value per value on each dialect: floats (NaN, which SQLite stores
    as NULL, -0.0, 0.1+0.2), integers, booleans, dates, zoned timestamps (in another zone),
    NULLs in every type, text with quotes and non-ASCII. Verify's side as verify runs it:
    the table reflected (`raw_specs`), the digest the load's event records."""
    from datetime import date, timezone

    import pyarrow as pa
    from sqlalchemy import (
        BigInteger,
        Boolean,
        Column,
        Date,
        DateTime,
        Double,
        MetaData,
        String,
        Table,
        Text,
        create_engine,
    )

    from puhui.raw_rows_digest import arrow_rows_mac
    from puhui.warehouse.bulk import bulk_insert

    table = Table(
        "raw_roundtrip",
        MetaData(),
        Column("batch_id", String(64), nullable=False),
        Column("row_number", BigInteger),
        Column("amount", Double),
        Column("count", BigInteger),
        Column("flag", Boolean),
        Column("day", Date),
        Column("at", DateTime(timezone=True)),
        Column("name", Text),
        Column("pseudonym", String(64)),
    )
    east = timezone(timedelta(hours=8))
    data = pa.table(
        {
            "row_number": pa.array([1, 2, 3, 4], pa.int64()),
            "amount": pa.array([0.1 + 0.2, float("nan"), -0.0, None], pa.float64()),
            "count": pa.array([2**53 + 1, None, 0, -7], pa.int64()),
            "flag": pa.array([True, False, None, True]),
            "day": pa.array([date(2026, 9, 30), None, date(1970, 1, 1), date(2000, 2, 29)]),
            "at": pa.array(
                [
                    datetime(2026, 9, 30, 23, 59, 59, 999999, tzinfo=east),
                    None,
                    datetime(2026, 3, 1, tzinfo=UTC),
                    datetime(1999, 12, 31, 16, tzinfo=east),
                ],
                pa.timestamp("us", tz="Asia/Shanghai"),
            ),
            "name": pa.array(['say "hi"', None, "北京", ""]),
            "pseudonym": pa.array(["p_ab12", None, "p_cd34", "p_ef56"]),
        }
    )
    key = b"k" * 32
    engine = create_engine(warehouse_url)
    try:
        with engine.begin() as conn:
            table.create(conn)
            for batch in ("b1", "b2"):
                bulk_insert(conn, table, data, {"batch_id": batch})
            written = arrow_rows_mac(conn.dialect, table, data, {"batch_id": "b1"}, key)
            check = _raw_verified(conn, table, {"b1": written, "b2": written}, key)
        assert written.count == 4
        assert check.batches == 2 and check.rows == 8
        # b2's rows are b1's under another batch id: the batch id is digested too.
        assert check.problems == [
            "raw_roundtrip batch_id b2: 4 row(s), not those its load recorded (the keyed "
            "digest differs: rows edited or replaced by hand)"
        ], check.problems
    finally:
        engine.dispose()


def _raw_verified(conn: Any, table: Any, loads: dict[str, Any], key: bytes) -> Any:
    """What `audit verify --deep` finds in raw table ``table`` whose batches' loads recorded
    the digests ``loads`` (batch id -> RowsMac), through verify's own code: the events'
    digests as verify reads them, the table reflected."""
    from puhui.table_digests import (
        ROWS_DIGESTS,
        RawCheck,
        batch_rows_digest,
        expected_digests,
        raw_check,
        raw_specs,
    )

    events = [
        {"details": {ROWS_DIGESTS: batch_rows_digest(table, batch, mac)}}
        for batch, mac in loads.items()
    ]
    expected = expected_digests(events)
    (spec,) = raw_specs(conn, expected)
    check = RawCheck()
    raw_check(conn, spec, expected[table.name], key, check)
    return check


def test_a_contract_type_change_is_digested_alike_by_load_and_verify(
    warehouse_url: str,
) -> None:
    """Before: a contract that changes a column's declared type (the physical column stays:
    `ensure_raw_table` only adds columns) made the load digest by the declared type and
    verify by the table's, so every later batch was reported as edited. Both now
    canonicalize by the type the load recorded with its digest."""
    from datetime import date

    import pyarrow as pa
    from sqlalchemy import (
        BigInteger,
        Column,
        Date,
        DateTime,
        Double,
        MetaData,
        String,
        Table,
        Text,
        create_engine,
    )

    from puhui.raw_rows_digest import arrow_rows_mac
    from puhui.warehouse.bulk import bulk_insert

    def declared(*kinds: Any) -> Table:
        names = ("at", "day", "count", "amount")
        return Table(
            "raw_changed",
            MetaData(),
            Column("batch_id", String(64), nullable=False),
            Column("row_number", BigInteger),
            *(Column(n, k) for n, k in zip(names, kinds, strict=True)),
        )

    before = declared(Text, Text, Text, Text)  # all declared string at first
    after = declared(DateTime(timezone=True), Date, BigInteger, Double)
    data = pa.table(
        {
            "row_number": pa.array([1, 2], pa.int64()),
            "at": pa.array(
                [datetime(2026, 9, 30, 12, tzinfo=UTC), None], pa.timestamp("us", tz="UTC")
            ),
            "day": pa.array([date(2026, 9, 30), None]),
            "count": pa.array([7, None], pa.int64()),
            "amount": pa.array([1.5, None], pa.float64()),
        }
    )
    key = b"k" * 32
    engine = create_engine(warehouse_url)
    try:
        with engine.begin() as conn:
            before.create(conn)
            bulk_insert(conn, after, data, {"batch_id": "b1"})
            written = arrow_rows_mac(conn.dialect, after, data, {"batch_id": "b1"}, key)
            check = _raw_verified(conn, after, {"b1": written}, key)
        assert check.problems == [] and check.batches == 1, check.problems
    finally:
        engine.dispose()


def test_a_raw_row_edited_in_place_is_reported_by_deep_verify(
    landing: Path,
    tmp_path: Path,
    warehouse_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: a value of a raw row edited in place, the batch's row count unchanged,
    passed `audit verify --deep` (counts only). Every load (ingest, release, passing
    revalidation, a load failed once and repeated) now records its rows' keyed digest;
    --deep recomputes it per batch and agrees on both dialects."""
    from sqlalchemy import text

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    outcomes = _every_decision(landing, tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["audit", "verify", "--deep"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "raw_" not in out, out  # no note: every batch recorded its rows
    assert (
        "raw tables have every column their loads digested; their rows agree with the "
        "loads' keyed digests: 5 batch(es), 20 row(s)" in out
    ), out
    released = outcomes["mobile_payments_4.csv"].batch_id
    with open_runtime().engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE raw_mobile_payments SET amount = amount + 1 "
                "WHERE batch_id = :b AND row_number = 2"
            ),
            {"b": released},
        )
    assert main(["audit", "verify"]) == 0  # counts agree: plain verify cannot see it
    capsys.readouterr()
    assert main(["audit", "verify", "--deep", "--no-repair"]) == 1
    err = capsys.readouterr().err
    assert f"raw_mobile_payments batch_id {released}: " in err, err
    assert "keyed digest differs" in err and "DISAGREE: 1 problem(s)" in err, err
    assert "raw tables and the audit trail DISAGREE" in err, err
    # --since narrows the raw digests to the batches delivered from that date on.
    later = (DAY + timedelta(days=1)).isoformat()
    assert main(["audit", "verify", "--deep", "--no-repair", "--since", later]) == 0
    assert (
        "keyed digests: 0 batch(es), 0 row(s) (batches delivered from "
        f"{later})" in capsys.readouterr().out
    )
    assert main(["audit", "verify", "--deep", "--no-repair", "--since", DAY.isoformat()]) == 1


def test_a_raw_row_deleted_is_reported_once_and_a_raw_column_dropped_is_reported(
    landing: Path,
    warehouse_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: with --deep one deleted raw row was reported twice (the ledger's count and
    the digest's), under "warehouse tables"; and a raw column
    dropped by hand (its values lost) passed both verify and --deep, since the digest left
    out every batch recorded with a column the table no longer has. Now the row is one
    problem under "raw tables", and the column is a problem of plain verify, named."""
    from sqlalchemy import text

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    folder = landing / "mobile_payments" / DAY.isoformat()
    (folder / "mobile_payments_1.csv").write_bytes(_payments(1))
    (folder / "mobile_payments_2.csv").write_bytes(_payments(2))
    outcomes = _ingest_payments()
    first, second = (outcomes[f"mobile_payments_{i}.csv"].batch_id for i in (1, 2))
    engine = open_runtime().engine
    with engine.begin() as conn:
        conn.execute(
            text("DELETE FROM raw_mobile_payments WHERE batch_id = :b AND row_number = 2"),
            {"b": first},
        )
    capsys.readouterr()
    assert main(["audit", "verify", "--deep", "--no-repair"]) == 1
    err = capsys.readouterr().err
    assert f"batch {first} holds 4 row(s)" in err and "DISAGREE: 1 problem(s)" in err, err
    assert "raw tables and the audit trail DISAGREE" in err, err
    assert "profile, monitoring and validation" not in err, err
    assert main(["audit", "verify", "--deep", "--no-repair", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    # The other batch's digest was still compared.
    assert summary["raw_digests_compared"]["batches"] == 1, summary
    assert summary["raw_digest_problems"] == [], summary
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE raw_mobile_payments DROP COLUMN amount"))
    for deep in ([], ["--deep"]):
        assert main(["audit", "verify", "--no-repair", *deep]) == 1, deep
        err = capsys.readouterr().err
        assert "raw_mobile_payments: column amount, digested by 2 batch(es), is gone" in err, (
            deep,
            err,
        )
    del second


def test_raw_digest_catches_values_swapped_between_rows_and_long_values_edited(
    warehouse_url: str,
) -> None:
    """The raw rows digest is a sum over rows, vectorized per column: two values of one
    column swapped between rows (each column's multiset unchanged) must change it, and so
    must an edit in the middle of a value longer than the bytes string_hashes reads."""
    import pyarrow as pa
    from sqlalchemy import BigInteger, Column, Double, MetaData, String, Table, Text, create_engine
    from sqlalchemy import text as sql

    from puhui.raw_rows_digest import arrow_rows_mac
    from puhui.table_digests import Scoped, rows_macs
    from puhui.warehouse.bulk import bulk_insert

    table = Table(
        "raw_swaps",
        MetaData(),
        Column("batch_id", String(64), nullable=False),
        Column("row_number", BigInteger),
        Column("amount", Double),
        Column("code", String(16)),
        Column("note", Text),
    )
    long_note = "n" * 200
    data = pa.table(
        {
            "row_number": pa.array([1, 2, 3], pa.int64()),
            "amount": pa.array([1.5, 2.5, None], pa.float64()),
            "code": pa.array(["A", "B", "C"]),
            "note": pa.array([long_note, "short", None]),
        }
    )
    key = b"k" * 32
    edits = {
        "amount swapped": [
            "UPDATE raw_swaps SET amount = 2.5 WHERE row_number = 1",
            "UPDATE raw_swaps SET amount = 1.5 WHERE row_number = 2",
        ],
        "code swapped": [
            "UPDATE raw_swaps SET code = 'C' WHERE row_number = 2",
            "UPDATE raw_swaps SET code = 'B' WHERE row_number = 3",
        ],
        "NULL swapped": [
            "UPDATE raw_swaps SET amount = NULL WHERE row_number = 2",
            "UPDATE raw_swaps SET amount = 2.5 WHERE row_number = 3",
        ],
        "long value edited mid-way": [
            f"UPDATE raw_swaps SET note = '{'n' * 100}x{'n' * 99}' WHERE row_number = 1"
        ],
    }
    engine = create_engine(warehouse_url)
    try:
        with engine.begin() as conn:
            table.create(conn)
            bulk_insert(conn, table, data, {"batch_id": "b1"})
            written = arrow_rows_mac(conn.dialect, table, data, {"batch_id": "b1"}, key).hex()
            assert rows_macs(conn, Scoped(table, ("batch_id",)), key)["b1"].hex() == written
        for what, statements in edits.items():
            with engine.connect() as conn:  # not committed: each edit on the rows as loaded
                for statement in statements:
                    conn.execute(sql(statement))
                read = rows_macs(conn, Scoped(table, ("batch_id",)), key)["b1"]
                assert read.count == 3
                assert read.hex() != written, what
    finally:
        engine.dispose()
