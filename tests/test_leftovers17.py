"""Round 17's leftovers: the ledger's and raw rows' digests under a PostgreSQL session time
zone other than UTC, and ``audit verify --anchor`` on a PostgreSQL database puhui never
migrated."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from puhui.cli import main
from puhui.runtime import open_runtime
from puhui.throwaway_postgres import PostgresServer
from puhui.warehouse.engine import dispose_engines
from tests import test_attack_round7
from tests.test_audit_round16 import _every_decision, _row, _set

landing = test_attack_round7.landing  # the fixture: a landing zone with the payments folder


def _set_zone(server: PostgresServer, database: str, zone: str) -> None:
    """Every new session of ``database`` in ``zone`` (the engines' pooled ones closed)."""
    dispose_engines()
    with psycopg.connect(server.libpq_url(), autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{database}\" SET timezone = '{zone}'")


def _session_zone() -> str:
    with open_runtime().engine.connect() as conn:
        return conn.execute(text("SHOW timezone")).scalar_one()


def _verify(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["audit", "verify", *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ledger_and_raw_digests_agree_in_any_postgresql_session_zone(
    pg_server: PostgresServer,
    landing: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The ledger's times (one UTC µs text per value) and each load's raw rows digest
    (``txn_time`` to its UTC instant) were only ever tested in UTC sessions. Here the
    warehouse's sessions run in Asia/Shanghai (+08) while every path that writes the ledger
    runs, then verify reads in America/Sao_Paulo (-03) and under PGTZ (Pacific/Chatham,
    +12:45 / +13:45): no false alarm, and a hand edit of a microsecond is one problem."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", pg_server.create_database(database))
    _set_zone(pg_server, database, "Asia/Shanghai")
    assert _session_zone() == "Asia/Shanghai"
    outcomes = _every_decision(landing, tmp_path, monkeypatch)
    code, out, err = _verify(capsys, "--deep")
    assert code == 0, err
    assert "ingest_batches agrees with the trail: 8 batch(es)" in out, out

    _set_zone(pg_server, database, "America/Sao_Paulo")
    assert _session_zone() == "America/Sao_Paulo"
    for flags in ((), ("--deep",)):
        code, out, err = _verify(capsys, "--no-repair", *flags)
        assert code == 0, (flags, err)
    assert "their rows agree with the loads' keyed digests: 5 batch(es), 20 row(s)" in out, out
    dispose_engines()
    monkeypatch.setenv("PGTZ", "Pacific/Chatham")  # libpq sends it at connect: overrides
    assert _session_zone() == "Pacific/Chatham"
    code, out, err = _verify(capsys, "--deep", "--no-repair")
    assert code == 0, err

    accepted = outcomes["mobile_payments_7.csv"].batch_id
    before = _row(accepted)["decided_at"]
    _set(accepted, decided_at=before + timedelta(microseconds=1))
    code, _, err = _verify(capsys, "--no-repair")
    assert code == 1
    assert f"batch {accepted}: ingest_batches.decided_at differs" in err, err
    assert "DISAGREE: 1 problem(s)" in err, err
    _set(accepted, decided_at=before)

    released = outcomes["mobile_payments_4.csv"].batch_id
    with open_runtime().engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE raw_mobile_payments SET txn_time = txn_time + interval '1 microsecond' "
                "WHERE batch_id = :b AND row_number = 2"
            ),
            {"b": released},
        )
    assert _verify(capsys, "--no-repair")[0] == 0  # counts agree: plain verify cannot see it
    code, _, err = _verify(capsys, "--deep", "--no-repair")
    assert code == 1
    assert f"raw_mobile_payments batch_id {released}: " in err, err
    assert "keyed digest differs" in err and "DISAGREE: 1 problem(s)" in err, err
    dispose_engines()


def test_verify_anchor_on_a_never_migrated_or_dropped_postgresql_database(
    pg_server: PostgresServer,
    puhui_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The SQLite warehouse's file missing or empty under ``--anchor`` says the anchored
    trail is missing; the same on PostgreSQL: a database puhui never migrated (one line,
    left untouched: no table created), and a dropped one, which said "cannot reach the
    warehouse ...: FATAL: database ... does not exist; check ... that the database is up"
    (a connection problem, not the trail gone)."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(database)
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", url)
    anchor = "12:" + "ab" * 32
    code, out, err = _verify(capsys, "--anchor", anchor)
    assert code == 1 and not out
    assert err.strip() == (
        f"puhui: error: the warehouse {url} has no puhui tables: the trail anchored at seq 12 "
        "is missing (emptied, or PUHUI_HOME or PUHUI_WAREHOUSE_URL now points elsewhere: "
        "check them)"
    ), err
    with psycopg.connect(pg_server.libpq_url(database)) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == (0,)

    with psycopg.connect(pg_server.libpq_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{database}"')
    code, out, err = _verify(capsys, "--anchor", anchor)
    assert code == 1 and not out
    assert err.strip() == (
        f"puhui: error: the warehouse {url} does not exist: the trail anchored at seq 12 is "
        "missing (dropped, or PUHUI_WAREHOUSE_URL now points elsewhere: check it)"
    ), err
    code, _, err = _verify(capsys)  # no anchor: nothing says a trail was there
    assert code == 1 and err.startswith(f"puhui: error: cannot reach the warehouse {url}: ")
    # The server down: no way to tell, the connection's line.
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", url.replace(f":{pg_server.port}/", ":1/"))
    code, _, err = _verify(capsys, "--anchor", anchor)
    assert code == 1 and "cannot reach the warehouse" in err, err


@pytest.mark.parametrize(
    ("argv", "code", "line"),
    [
        (  # a reversed range: the two options disagree, whatever the state, so exit 2
            ["backfill", "--start", "2026-09-30", "--end", "2026-09-01"],
            2,
            "Invalid value for '--start': 2026-09-30 is after --end 2026-09-01: "
            "nothing to backfill",
        ),
        (
            ["audit", "log", "--since", "2026-09-30", "--until", "2026-09-01"],
            2,
            "Invalid value for '--since': 2026-09-30 is after --until 2026-09-01: "
            "no event can match",
        ),
        (
            ["audit", "log", "--since", "2026-09-30T10:00", "--until", "2026-09-30T09:00+00:00"],
            2,
            "Invalid value for '--since': 2026-09-30T10:00 is after --until "
            "2026-09-30T09:00+00:00: no event can match",
        ),
        (  # an option needing another: exit 2, as backfill's span without --yes
            ["backfill", "--start", "2020-01-01", "--end", "2026-09-01"],
            2,
            "Invalid value for '--start': gives 2,436 dates, over 366, each a full pipeline "
            "run: add --yes to run them",
        ),
        (
            ["audit", "verify", "--since", "2026-09-01"],
            2,
            "Invalid value for '--since': is for --deep only (plain verify digests no rows)",
        ),
    ],
)
def test_the_same_mistake_has_the_same_exit_code_in_every_command(
    argv: list[str],
    code: int,
    line: str,
    puhui_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``audit log`` with ``--since`` after ``--until`` said "0 event(s)", exit 0, where
    ``backfill --start`` after ``--end`` is refused: an auditor took the swapped span for
    one with no events. Both are usage errors, exit 2 (round 17's mend; backfill's was 1).
    ``audit verify --since`` without ``--deep`` exited 1 where
    ``backfill``'s span without ``--yes`` (an option needing another) is a usage error, 2.
    One line, before anything is opened or created (``--debug`` changes nothing for a
    usage error: ``test_cli_usage17.py::test_a_usage_error_is_one_line_even_with_debug``)."""
    capsys.readouterr()
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert err == f"puhui: error: {line}\n" and not out, err
    assert not puhui_env.exists() or not any(puhui_env.iterdir()), "nothing is created"
