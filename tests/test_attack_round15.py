"""Attack round 15 (see README, "Round 15"): ledger paths settled before round 14's
identifier shapes, settled again; then hostile input and tampering not covered by rounds
7-14. Each test failed before its fix unless its docstring says it was found sound.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from sqlalchemy import select, update

from puhui.audit import read_audit_events
from puhui.cli import main
from puhui.generate.hostile import HostileContext
from puhui.ingest import batches, feeds, ledger
from puhui.ingest.feeds import ingest_all_feeds
from puhui.ingest.pseudonymize import pseudonym_key_bytes
from puhui.ingest.quarantine import reject_batch, release_batch
from puhui.privacy import find_raw_identifiers
from puhui.runtime import open_runtime
from puhui.settings import repo_root
from puhui.warehouse.schema import ingest_batches
from tests import test_attack_round7
from tests.test_attack_round7 import DAY, _ingest_payments, _payments, _raw_rows
from tests.test_attack_round11 import _deadline
from tests.test_attack_round14 import _held_by_category

landing = test_attack_round7.landing  # the fixture: a landing zone with the payments folder

_OLD_ID = "110105800101123"  # area 110105, born 1980-01-01, sequence 123
# Shapes the finder learnt in round 14: rows settled before kept them raw.
_ROUND14_SHAPES = (_OLD_ID, "+86 (139) 8765 4321", "（139）8765-4321")


def _finder_before_round14(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingestion's name pseudonymizer as it was before round 14: blind to its shapes."""
    real = batches.pseudonymize_text_identifiers

    def blind(text: str, key: bytes) -> str:
        for i, shape in enumerate(_ROUND14_SHAPES):
            text = text.replace(shape, f"@{i}@")
        named = real(text, key)
        for i, shape in enumerate(_ROUND14_SHAPES):
            named = named.replace(f"@{i}@", shape)
        return named

    monkeypatch.setattr(batches, "pseudonymize_text_identifiers", blind)


def _paths() -> dict[str, str]:
    with open_runtime().engine.connect() as conn:
        return dict(
            conn.execute(select(ingest_batches.c.batch_id, ingest_batches.c.source_path)).all()
        )


def _legacy_ledger(landing: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Six files ingested by the finder before round 14 and marked settled at level 1 (as
    migration 0010 marks them): three keep a round-14 shape raw in their path, one a phone
    pseudonymized then, one a name that is not UTF-8 (escaped), one plain. Returns the
    ledger's paths by batch."""
    folder = landing / "mobile_payments" / DAY.isoformat()
    names = [f"mobile_payments_{i}_{shape}.csv" for i, shape in enumerate(_ROUND14_SHAPES, 1)]
    names += ["mobile_payments_4_13812345678.csv", "mobile_payments_6_plain.csv"]
    for i, name in enumerate(names, 1):
        (folder / name).write_bytes(_payments(i))
    Path(os.fsdecode(os.fsencode(folder) + b"/mobile_payments_5_\xff\\x.csv")).write_bytes(
        _payments(9)
    )
    with monkeypatch.context() as patch:
        _finder_before_round14(patch)
        assert {o.status for o in _ingest_payments().values()} == {"accepted"}
    with open_runtime().engine.begin() as conn:
        conn.execute(update(ingest_batches).values(path_settled=1))
    before = _paths()
    assert sum(bool(find_raw_identifiers(p)) for p in before.values()) == 3
    return before


def _bare_ingestor() -> batches.FileIngestor:
    """A FileIngestor holding only the pseudonym key: what its path functions use."""
    ingestor = batches.FileIngestor.__new__(batches.FileIngestor)
    ingestor.key = pseudonym_key_bytes(open_runtime().settings.pseudonym_key)
    return ingestor


@pytest.fixture
def ingestor(puhui_env: Path) -> batches.FileIngestor:
    return _bare_ingestor()


@pytest.mark.parametrize(
    "name",
    [
        f"/l/mp_{_OLD_ID}.csv",
        "/l/mp_+86 (139) 8765 4321.csv",
        "/l/mp_13812345678.csv",
        "/l/mp_\udcff\\x_13812345678.csv",
        "/l/mp_\udcb13812345678.csv",
        "/l/mp_\\xff.csv",
        "/l/mp_a\\b.csv",
        "/l/mp_\\x5c\\x41.csv",
        "/l/张三\udcfd（139）8765-4321\udcfd.csv",
        "/l/mp_~0123456789ab13812345678.csv",
        "/l/plain.csv",
    ],
)
def test_settling_a_stored_path_again_changes_nothing(
    ingestor: batches.FileIngestor, name: str
) -> None:
    """Idempotent: a path as ingestion stores it now (pseudonymized, `\\xNN`-escaped, both,
    neither) comes out of the re-settle unchanged; `stored_path` itself would escape an
    escaped path's backslashes again."""
    stored = ingestor.stored_path(name)
    assert ingestor.settled_path(stored) == stored
    assert ingestor.settled_path(ingestor.settled_path(stored)) == stored


@pytest.mark.parametrize(
    "raw",
    [
        "/l/mp_\\xff_13812345678.csv",
        f"/l/a\\b_\\xab_{_OLD_ID}.csv",
        "/l/mp_13812345678.csv",
        "/l/plain.csv",
    ],
)
def test_a_never_settled_path_is_stored_as_discovery_stores_its_file(
    ingestor: batches.FileIngestor, raw: str
) -> None:
    """Before: a row never settled (written before names were pseudonymized) went through
    the un-escaping settle, which read a literal `\\xff` in the raw name as an escape: the
    row's path differed from discovery's, and its file was read again as a duplicate. Its
    raw name is stored as discovery stores it now."""
    assert ingestor.settled_path(raw, None) == ingestor.stored_path(raw)


def test_a_never_settled_row_with_a_backslash_in_its_name_is_not_read_again(
    landing: Path,
) -> None:
    """The same through the ledger: the row's file is recognised, nothing is read again."""
    folder = landing / "mobile_payments" / DAY.isoformat()
    raw = folder / "mobile_payments_7_\\xff_13812345678.csv"
    raw.write_bytes(_payments(1))
    [first] = _ingest_payments().values()
    assert first.status == "accepted"
    with open_runtime().engine.begin() as conn:  # as a run before names were pseudonymized
        conn.execute(update(ingest_batches).values(source_path=str(raw), path_settled=None))
    again = _ingest_payments()
    assert [o.skipped for o in again.values()] == [True], again
    assert list(_paths().values()) == [first.path]
    assert _raw_rows() == (5, 5)


def test_paths_settled_before_round14_are_settled_again_and_verify_agrees(
    landing: Path,
    warehouse_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: rows settled before round 14 (0006's TRUE) were never read again, so a
    15-digit ID or a bracketed phone stayed raw in `source_path` for good. Now each row
    below the current level is settled once more: renamed to the path ingestion stores now
    (discovery still recognises its file: nothing is read again), with the new path's digest
    in the trail in the same transaction (`audit verify` stays green), once."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    before = _legacy_ledger(landing, monkeypatch)
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0, capsys.readouterr().err

    outcomes = _ingest_payments()
    assert all(o.skipped for o in outcomes.values()), "recognised, not read again"
    assert not [n for n in outcomes if find_raw_identifiers(n)]
    after = _paths()
    assert set(after) == set(before) and _raw_rows() == (30, 30)
    renamed = {b for b in before if before[b] != after[b]}
    assert renamed == {b for b, p in before.items() if find_raw_identifiers(p)}
    assert not [p for p in after.values() if find_raw_identifiers(p)]
    events = read_audit_events(open_runtime().engine, action=ledger.PATHS_SETTLED)
    assert [(e["details"]["rows"], sorted(e["details"]["batches"])) for e in events] == [
        (3, sorted(renamed))
    ]
    with open_runtime().engine.connect() as conn:
        levels = set(conn.execute(select(ingest_batches.c.path_settled)).scalars())
    assert levels == {ledger.PATH_SETTLED}
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0, capsys.readouterr().err

    assert all(o.skipped for o in _ingest_payments().values())
    assert _paths() == after, "a second pass is a no-op"
    assert len(read_audit_events(open_runtime().engine, action=ledger.PATHS_SETTLED)) == 1

    edited = sorted(renamed)[0]  # a hand edit of a renamed path is still caught
    with open_runtime().engine.begin() as conn:
        conn.execute(
            update(ingest_batches)
            .where(ingest_batches.c.batch_id == edited)
            .values(source_path=before[edited])
        )
    capsys.readouterr()
    assert main(["audit", "verify", "--no-repair"]) == 1
    err = capsys.readouterr().err
    assert f"batch {edited}: ingest_batches.source_path is " in err, err
    assert not find_raw_identifiers(err)


def test_a_renamed_row_whose_file_is_touched_is_renewed_not_a_duplicate_of_itself(
    landing: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a renamed row's batch id still hashed its old path, so once its file was
    touched (its marks no longer matching) the file was hashed again, no batch had the id
    of its new path, and the file was recorded as a duplicate of its own batch: a second
    ledger row. Now the row found at the path with the same bytes has its marks renewed.
    The settle's and the renewal's events are split every ``EVENT_BATCHES`` batches (in
    the same transaction); verify agrees."""
    before = _legacy_ledger(landing, monkeypatch)
    monkeypatch.setattr(ledger, "EVENT_BATCHES", 2)
    assert all(o.skipped for o in _ingest_payments().values())
    engine = open_runtime().engine
    settled = read_audit_events(engine, action=ledger.PATHS_SETTLED)
    assert sorted(e["details"]["rows"] for e in settled) == [1, 2]
    folder = landing / "mobile_payments" / DAY.isoformat()
    for path in folder.iterdir():
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    outcomes = _ingest_payments()
    assert {o.status for o in outcomes.values()} == {"accepted"}, outcomes
    assert set(_paths()) == set(before), "no second row"
    renewed = read_audit_events(engine, action=ledger.MARKS_RENEWED)
    assert sorted(e["details"]["renewed"] for e in renewed) == [2, 2, 2]
    assert {b for e in renewed for b in e["details"]["batches"]} == set(before)
    assert all(o.skipped for o in _ingest_payments().values())
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0, capsys.readouterr().err


def test_rows_of_a_partner_no_longer_configured_are_settled_too(
    landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: only a feed's own run settled its rows, so a retired partner's rows kept
    round 14's shapes raw in `source_path` (read by BI) for good. Any feed's run settles
    them too."""
    before = _legacy_ledger(landing, monkeypatch)
    with open_runtime().engine.begin() as conn:
        conn.execute(update(ingest_batches).values(partner="retired_feed"))
    for path in (landing / "mobile_payments" / DAY.isoformat()).iterdir():
        path.unlink()  # the partner's files gone with it
    _ingest_payments()
    after = _paths()
    assert set(after) == set(before)
    assert not [p for p in after.values() if find_raw_identifiers(p)]
    events = read_audit_events(open_runtime().engine, action=ledger.PATHS_SETTLED)
    assert [(e["details"]["partner"], e["details"]["rows"]) for e in events] == [
        ("retired_feed", 3)
    ]


def test_a_settle_killed_before_its_commit_leaves_the_ledger_as_it_was(
    landing: Path,
    warehouse_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """kill -9 after the renames and their event, before the commit: nothing changed, verify
    is green, and the next run settles the rows."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    before = _legacy_ledger(landing, monkeypatch)
    killed = subprocess.run(
        [sys.executable, "-c", "from tests.test_attack_round7 import _ingest_payments as i; i()"],
        cwd=repo_root(),
        env={**os.environ, "PUHUI_CRASH_AT": "paths-settled-before-commit"},
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert _paths() == before
    assert read_audit_events(open_runtime().engine, action=ledger.PATHS_SETTLED) == []
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0, capsys.readouterr().err
    assert all(o.skipped for o in _ingest_payments().values())
    assert not [p for p in _paths().values() if find_raw_identifiers(p)]
    assert main(["audit", "verify"]) == 0, capsys.readouterr().err


def test_a_hand_edited_path_renamed_by_the_settle_is_still_reported(
    landing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path edited by hand to hold a phone, its mark cleared (a column no event records):
    the settle renames it and records the new path's digest, which alone made the edit the
    trail's and verify green (found while building the re-settle). The event records the
    path renamed from too, and verify reports one the trail had not recorded."""
    folder = landing / "mobile_payments" / DAY.isoformat()
    (folder / "mobile_payments_1.csv").write_bytes(_payments(1))
    [first] = _ingest_payments().values()
    with open_runtime().engine.begin() as conn:
        conn.execute(
            update(ingest_batches).values(
                source_path=str(folder / "mobile_payments_9_13812345678.csv"), path_settled=None
            )
        )
    _ingest_payments()
    assert len(read_audit_events(open_runtime().engine, action=ledger.PATHS_SETTLED)) == 1
    capsys.readouterr()
    assert main(["audit", "verify", "--no-repair"]) == 1
    err = capsys.readouterr().err
    assert (
        f"batch {first.batch_id}: ingest_batches.source_path was renamed by {ledger.PATHS_SETTLED}"
    ) in err, err
    assert "13812345678" not in err


@pytest.mark.parametrize("warehouse_url", ["postgres"], indirect=True)
def test_two_settles_at_once_rename_each_row_once(
    landing: Path,
    warehouse_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two runs read the same unsettled rows, then both rename (PostgreSQL, read committed;
    SQLite's BEGIN IMMEDIATE serializes them whole): each row is renamed and listed in an
    event once, and verify agrees."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    _legacy_ledger(landing, monkeypatch)
    runtime = open_runtime()
    ingestor = _bare_ingestor()
    both_read = threading.Barrier(2, timeout=30)
    counts: list[int] = []

    def settle() -> None:
        first = [True]

        def settled(path: str, level: int | None) -> str:
            if first.pop() if first else False:
                both_read.wait()  # both have read every row before either renames one
            return ingestor.settled_path(path, level)

        with runtime.engine.begin() as conn:
            counts.append(
                ledger.settle_ledger_paths(conn, runtime.audit, "mobile_payments", settled)
            )

    threads = [threading.Thread(target=settle) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(counts) == [0, 3]
    events = read_audit_events(runtime.engine, action=ledger.PATHS_SETTLED)
    assert [e["details"]["rows"] for e in events] == [3]
    assert not [p for p in _paths().values() if find_raw_identifiers(p)]
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0, capsys.readouterr().err


# --------------------------------------------------------------------------- part B


def test_a_json_object_or_list_in_a_text_column_is_held_naming_the_column(
    landing: Path,
) -> None:
    """Before: `{"province": {...}}` or `[...]` where the contract has text failed Arrow's
    cast outside the contract's check (a block where every line has one: one where some do
    is held as its types changing): held as `unreadable: unexpected
    ArrowNotImplementedError ... (message withheld)`, naming no column. A nested value in a
    number column named its struct type, the partner's keys spelled in it (masked)."""
    orders = landing / "ecommerce_orders" / DAY.isoformat()
    orders.mkdir(parents=True)
    context = HostileContext(DAY, 1, Path("."), set())
    cases = [
        ("province", {"13812345678": "北京"}, "a JSON object", "string"),
        ("province", ["北京"], "a JSON list", "string"),
        ("amount_yuan", {"13812345678": 1}, "a JSON object", "float"),
    ]
    for i, (column, value, _, _) in enumerate(cases):
        order = context.order(i)
        order[column] = value
        (orders / f"ecommerce_orders_{i}.jsonl").write_text(json.dumps(order) + "\n")
    outcomes = {
        f.path.rsplit("/", 1)[-1]: f for r in ingest_all_feeds(open_runtime(), DAY) for f in r.files
    }
    for i, (column, _, kind, declared) in enumerate(cases):
        held = outcomes[f"ecommerce_orders_{i}.jsonl"]
        assert (held.status, held.reason) == (
            "quarantined",
            f"type drift in {column}: {kind} where {declared} is declared",
        )


def _decided_ledger(landing: Path) -> dict[str, batches.FileOutcome]:
    """An accepted batch with a warning, a released one, a rejected one."""
    folder = landing / "mobile_payments" / DAY.isoformat()
    head, *rows = _payments(1).decode().splitlines()
    (folder / "mobile_payments_1.csv").write_text("\n".join([head, *rows, rows[0]]) + "\n")
    (folder / "mobile_payments_2.csv").write_bytes(_held_by_category(2))
    (folder / "mobile_payments_3.csv").write_bytes(_held_by_category(3))
    outcomes = _ingest_payments()
    runtime = open_runtime()
    release_batch(runtime, outcomes["mobile_payments_2.csv"].batch_id, "ok by ops")
    reject_batch(runtime, outcomes["mobile_payments_3.csv"].batch_id, "partner resends it")
    return outcomes


def test_hand_edits_of_who_decided_warnings_and_the_delivery_date_are_reported(
    landing: Path,
    warehouse_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: `audit verify` passed a release or rejection put on another person's name
    (`decided_by`, which the deciding event's actor records), a loaded batch's warnings
    deleted (BI reads a clean load) and a delivery date moved (its batch id holds it; on
    SQLite a date that is none, which then stopped `quarantine list` with an error)."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    outcomes = _decided_ledger(landing)
    accepted, released, rejected = (outcomes[f"mobile_payments_{i}.csv"] for i in (1, 2, 3))
    assert accepted.status == "accepted" and accepted.warnings
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0, capsys.readouterr().err

    edits = {
        released.batch_id: {"decided_by": "cro"},
        rejected.batch_id: {"decided_by": None},
        accepted.batch_id: {"warnings": None, "delivery_date": date(2026, 9, 1)},
    }
    with open_runtime().engine.begin() as conn:
        for batch_id, values in edits.items():
            conn.execute(
                update(ingest_batches).where(ingest_batches.c.batch_id == batch_id).values(**values)
            )
    assert main(["audit", "verify", "--no-repair"]) == 1
    err = capsys.readouterr().err
    for batch_id, values in edits.items():
        for column in values:
            assert f"batch {batch_id}: ingest_batches.{column} " in err, (column, err)
    assert "DISAGREE: 4 problem(s)" in err, err


@pytest.mark.parametrize(
    "entry", ["link out of the zone", "FIFO", "link to /dev/zero", "folder", "socket"]
)
def test_a_file_replaced_by_another_entry_after_its_listing_is_deferred(
    landing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    """Before: a file the listing saw as regular, replaced by a link or a FIFO before it was
    opened, was followed: a file outside the landing zone was loaded (links are held unread,
    never followed), `/dev/zero` was hashed for good and a FIFO's open waited for a writer
    for good, every later file and feed with them; a folder raised IsADirectoryError, which
    stopped the feed, and so did a socket (its open fails with ENXIO). Now each is deferred
    (opened without following or waiting), the feed's other files go on, and the next run
    holds the entry as what it is."""
    folder = landing / "mobile_payments" / DAY.isoformat()
    victim = folder / "mobile_payments_1.csv"
    victim.write_bytes(_payments(1))
    (folder / "mobile_payments_2.csv").write_bytes(_payments(2))
    outside = tmp_path / "elsewhere.csv"
    outside.write_bytes(_payments(7))
    real = feeds.files_to_consider

    def listed_then_replaced(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        files = real(*args, **kwargs)
        victim.unlink()
        if entry == "FIFO":
            os.mkfifo(victim)
        elif entry == "folder":
            victim.mkdir()
        elif entry == "socket":  # bound by its relative name: a socket's path is short
            monkeypatch.chdir(folder)
            server.bind(victim.name)
        else:
            victim.symlink_to(outside if entry.startswith("link out") else "/dev/zero")
        return files

    monkeypatch.setattr(feeds, "files_to_consider", listed_then_replaced)
    server = socket.socket(socket.AF_UNIX)
    with _deadline(60), server:
        outcomes = _ingest_payments()
    assert {n: o.status for n, o in outcomes.items()} == {
        "mobile_payments_1.csv": "deferred",
        "mobile_payments_2.csv": "accepted",
    }
    monkeypatch.setattr(feeds, "files_to_consider", real)
    with _deadline(60):
        again = _ingest_payments()["mobile_payments_1.csv"]
    assert (again.status, again.rows_loaded) == ("quarantined", 0)
    assert _raw_rows() == (5, 5), "nothing of the file outside the zone loaded"


def test_a_parquet_file_is_read_through_its_checked_descriptor(tmp_path: Path) -> None:
    """Before: a Parquet file was checked, then Arrow and the page walk reopened its path
    per reader and per row group: a FIFO put in its place after the first row group was
    waited on for good (the feed and every later one with it), a link was followed. Now the
    checked descriptor is read to the end: the rows are the checked file's, nothing hangs
    (the stamp check after the read defers the file)."""
    import pyarrow.parquet as pq

    from puhui.config import PartnersConfig, load_config
    from puhui.ingest.reading import iter_file_chunks, open_landed_file

    feed = load_config(repo_root() / "configs", PartnersConfig).get("product_events")
    path = tmp_path / "events.parquet"
    # Four row groups of ~1 MB decoded at a 1 MB block: each group's pages are walked.
    values = [f"{i:08d}" + "a" * 2_000 for i in range(2_000)]
    pq.write_table(
        pa.table({"event_id": values}),
        path,
        compression="zstd",
        use_dictionary=False,
        row_group_size=500,
        write_batch_size=64,
        data_page_size=64 << 10,
    )
    handle = open_landed_file(str(path))
    chunks = iter_file_chunks(handle, feed, ["event_id"], block_bytes=1 << 20)
    first = next(chunks)
    path.unlink()
    os.mkfifo(path)
    with _deadline(30):
        rest = list(chunks)
    assert [v for c in [first, *rest] for v in c.column("event_id").to_pylist()] == values
