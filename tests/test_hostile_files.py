"""Fault injection: a landing zone of hostile files, ingested in ONE run, then the invariants.

The zone (puhui.generate.hostile, 43 files, 39 hostile) mixes clean files with every kind
of bad bytes a partner, a careless operator or an attacker can land. After one ingest run
(a real Prefect flow), on SQLite and PostgreSQL:

- the run completes, and every landed file (symlink included) is exactly one ledger row
  with the outcome its case declares;
- rows reconcile per batch and in total (held rows counted by the parser), and each raw
  table holds exactly the rows the ledger says were loaded;
- no raw identifier planted in the files (nor any identifier-shaped text) is in the
  warehouse, the GX results, the Data Docs, the quarantine copies, Prefect's ``log`` table
  or the captured logs; a 10 MB field makes no 10 MB result or page;
- a second run is a no-op.

``kill -9`` at named points of the ingest (and at a random moment) leaves nothing
half-loaded: the re-run ends every file as one ledger row and the invariants hold.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, inspect, select, text

from puhui.config import PartnersConfig, load_config
from puhui.generate.hostile import CASES, HostileZone, write_hostile_landing
from puhui.ingest import ledger
from puhui.ingest.quarantine import release_batch
from puhui.ingest.raw_tables import raw_table
from puhui.pipeline import run_ingest_flow
from puhui.privacy import find_raw_identifiers
from puhui.runtime import open_runtime
from puhui.warehouse.schema import ingest_batches

DAY = date(2026, 9, 30)
STATUS_FOR = {
    "held": {"quarantined", "rejected"},
    "duplicate": {"duplicate"},
    "warned": {"accepted"},
    "tolerated": {"accepted"},
    "accepted": {"accepted"},
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, HostileZone]:
    root = tmp_path_factory.mktemp("hostile-landing")
    return root, write_hostile_landing(root, DAY)


@pytest.fixture
def hostile_env(
    puhui_env: Path,
    warehouse_url: str,
    hostile: tuple[Path, HostileZone],
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setenv("PUHUI_LANDING", str(hostile[0]))
    return warehouse_url


def test_the_zone_has_at_least_30_hostile_cases_each_with_an_outcome() -> None:
    hostile_cases = [c for c in CASES if c.expect != "accepted"]
    assert len(hostile_cases) >= 30
    assert {c.expect for c in hostile_cases} == {"held", "duplicate", "warned", "tolerated"}
    assert len({c.fault for c in hostile_cases}) == len(hostile_cases)


# ------------------------------------------------------------------------------ invariants
def _ledger(engine) -> dict[str, ledger.BatchRecord]:  # noqa: ANN001
    by_path: dict[str, ledger.BatchRecord] = {}
    for record in ledger.list_batches(engine):
        assert record.source_path not in by_path, f"two ledger rows for {record.source_path}"
        by_path[record.source_path] = record
    return by_path


def check_ledger_invariants(root: Path, zone: HostileZone, outcomes: bool = True) -> None:
    """One ledger row per landed file, rows reconcile, raw tables equal the ledger."""
    runtime = open_runtime()
    by_path = _ledger(runtime.engine)
    expected = {str(root / e["path"]): e for e in zone.entries}
    assert sorted(by_path) == sorted(expected), "every landed file is exactly one ledger row"
    landed = accounted = 0
    for path, record in by_path.items():
        entry = expected[path]
        assert record.rows == record.rows_loaded + record.rows_held + record.rows_duplicate, (
            entry,
            record,
        )
        landed += record.rows
        accounted += record.rows_loaded + record.rows_held + record.rows_duplicate
        if outcomes:
            assert record.status in STATUS_FOR[entry["expect"]], (entry, record)
            if entry["expect"] == "warned":
                assert record.warnings, entry
            if entry["expect"] in ("tolerated", "accepted"):
                assert not record.warnings, (entry, record.warnings)
            if entry["expect"] == "held":
                assert record.reason, entry
    assert landed == accounted
    partners = load_config(runtime.settings.config_dir, PartnersConfig)
    existing = set(inspect(runtime.engine).get_table_names())
    with runtime.engine.connect() as conn:
        for feed in partners.partners:
            loaded = sum(
                r.rows_loaded for r in by_path.values()
                if r.partner == feed.name and r.status in ("accepted", "released")
            )
            count = 0
            if feed.raw_table in existing:
                count = conn.execute(select(func.count()).select_from(raw_table(feed))).scalar()
                orphans = conn.execute(
                    select(func.count())
                    .select_from(raw_table(feed))
                    .where(raw_table(feed).c.batch_id.not_in([r.batch_id for r in by_path.values()]
                                                             or ["-"]))
                ).scalar()
                assert orphans == 0, f"{feed.raw_table}: rows of no ledger batch"
            assert count == loaded, (feed.name, count, loaded)


def _warehouse_text(engine) -> str:  # noqa: ANN001
    parts = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                parts.append("|".join(str(v) for v in row))
    return "\n".join(parts)


def _files_text(folder: Path) -> dict[str, str]:
    found = {}
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            found[str(path)] = "\n".join(
                str(v) for col in table.columns for v in col.to_pylist()
            )
        elif path.suffix in (".json", ".html", ".txt", ".log"):
            found[str(path)] = path.read_text(encoding="utf-8", errors="replace")
    return found


def _prefect_log_text(since: datetime) -> str:
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.flush()  # the API handler sends in batches: drain it
    url = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    database = url.split("///", 1)[-1]
    assert database and Path(database).exists(), url
    with sqlite3.connect(database) as conn:
        rows = conn.execute(
            "SELECT message FROM log WHERE timestamp >= ?", (since.isoformat(" "),)
        ).fetchall()
    assert rows, "the run's logs reached Prefect's log table"
    return "\n".join(r[0] for r in rows)


def assert_no_identifier(label: str, blob: str, zone: HostileZone) -> None:
    for value in zone.identifiers:
        bare = re.sub(r"[^0-9Xx]", "", value)
        assert value not in blob, f"{label}: a planted identifier is stored as written"
        assert bare not in blob, f"{label}: a planted identifier is stored normalized"
    kinds = find_raw_identifiers(blob)
    assert not kinds, f"{label}: identifier-shaped text ({kinds})"


@pytest.mark.slow
def test_hostile_zone_in_one_run_keeps_every_invariant(
    hostile_env: str,
    hostile: tuple[Path, HostileZone],
    prefect_harness: None,
    puhui_env: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    root, zone = hostile
    started = datetime.now(UTC)
    summary = run_ingest_flow(DAY)  # the run completes: no file stops it
    assert summary["rows"] == summary["rows_loaded"] + summary["rows_held"] + summary[
        "rows_duplicate"
    ]
    check_ledger_invariants(root, zone)
    runtime = open_runtime()
    by_path = _ledger(runtime.engine)
    by_fault = {e["fault"]: by_path[str(root / e["path"])] for e in zone.entries}

    # Held rows are the parser's records: a quoted newline is not a row.
    assert by_fault["quoted_newline"].rows == 5
    # Empty files are held as empty, per feed, never one feed's duplicate of another's.
    for fault in ("empty_file", "empty_jsonl", "zero_length_parquet"):
        assert by_fault[fault].status == "quarantined" and "empty" in by_fault[fault].reason
    assert "symbolic link" in by_fault["symlink"].reason
    assert by_fault["duplicate_delivery"].duplicate_of == by_path[
        str(root / zone.entries[0]["path"])
    ].batch_id
    # Reasons name the column and the rule, with a masked shape at most.
    assert "days_past_due" in by_fault["phone_in_numeric"].reason
    assert "'ddd-dddd-dddd'" in by_fault["phone_in_numeric"].reason
    assert "duplicate column name" in by_fault["duplicate_header"].reason
    assert "no header line" in by_fault["no_header"].reason

    # A 10 MB field makes no 10 MB result or page.
    gx_dir = puhui_env / "gx"
    sizes = [p.stat().st_size for p in gx_dir.rglob("*") if p.is_file()]
    assert sizes and max(sizes) < 512 * 1024, max(sizes)

    # No raw identifier anywhere it could be stored.
    assert_no_identifier("warehouse", _warehouse_text(runtime.engine), zone)
    stored = _files_text(gx_dir) | _files_text(puhui_env / "quarantine")
    assert any("data_docs" in p for p in stored) and any(".parquet" in p for p in stored)
    for path, content in stored.items():
        assert_no_identifier(path, content, zone)
    assert_no_identifier("prefect log table", _prefect_log_text(started), zone)
    captured = capfd.readouterr()
    assert_no_identifier("captured logs", captured.out + captured.err, zone)

    # A held batch with a quoted newline releases and still reconciles.
    released = release_batch(runtime, by_fault["quoted_newline"].batch_id, "value confirmed")
    assert released.rows_loaded + released.rows_duplicate == released.rows == 5
    check_ledger_invariants(root, zone, outcomes=False)

    # The second run is a no-op.
    with runtime.engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(ingest_batches)).scalar()
    second = run_ingest_flow(DAY)
    assert second["rows"] == 0 and set(second["statuses"]) <= {"skipped"}
    with runtime.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ingest_batches)).scalar() == before


# ------------------------------------------------------------------------------ kill -9
_INGEST_SCRIPT = """
from datetime import date
from puhui.config import PartnersConfig, load_config
from puhui.ingest.batches import FileIngestor
from puhui.ingest.feeds import ingest_feed
from puhui.ingest.pseudonymize import pseudonym_key_bytes
from puhui.runtime import open_runtime
from puhui.validation import BatchValidator

runtime = open_runtime()
validator = BatchValidator(results_dir=runtime.settings.home / "gx",
                           expectations_dir=runtime.settings.expectations_dir)
key = pseudonym_key_bytes(runtime.settings.pseudonym_key)
for name in ("mobile_payments",):
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get(name)
    ingest_feed(runtime, feed, FileIngestor(runtime, feed, validator, key), date(2026, 9, 30))
print("done")
"""
CRASH_POINTS = ("mid-load", "hold-before-commit", "after-file")


def _ingest_process(crash_at: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PUHUI_CRASH_AT"}
    if crash_at:
        env["PUHUI_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [sys.executable, "-c", _INGEST_SCRIPT], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
def test_kill_9_anywhere_in_ingest_leaves_nothing_half_done(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "landing"
    zone = write_hostile_landing(root, DAY)
    # One feed's files (clean, held, duplicate, symlink and empty ones among them), the
    # slowest left out: each crashed process costs a Python start.
    slow = ("big_field", "huge_header", "very_long_line")
    kept = [
        e for e in zone.entries
        if e["path"].startswith("mobile_payments/") and e["fault"] not in slow
    ]
    for path in root.rglob("*"):
        if (path.is_file() or path.is_symlink()) and path.suffix != ".json" and str(
            path.relative_to(root)
        ) not in {e["path"] for e in kept}:
            path.unlink()
    zone = HostileZone(kept, zone.identifiers)
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setenv("PUHUI_LANDING", str(root))

    for point in CRASH_POINTS:
        process = _ingest_process(point)
        out, err = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, (point, process.returncode, err[-2000:])
    runtime = open_runtime()
    with runtime.engine.connect() as conn:
        decided = conn.execute(select(func.count()).select_from(ingest_batches)).scalar()
    assert 0 < decided < len(kept), "the crashes stopped runs before every file was decided"
    check_ledger_invariants(root, HostileZone(
        [e for e in kept if str(root / e["path"]) in _ledger(runtime.engine)], zone.identifiers
    ))
    # And once at a random moment of a run.
    process = _ingest_process(None)
    time.sleep(random.uniform(1.0, 5.0))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=300)

    final = _ingest_process(None)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0 and "done" in out, err[-2000:]
    check_ledger_invariants(root, zone)
    # Each kill left neither keys nor an event: every batch's keys match both its recorded
    # digests (the keyed one too), none counted only.
    from puhui.ingest.key_digest import digest_subkey
    from puhui.ingest.ledger import key_index_problems

    checked = key_index_problems(runtime.engine, digest_subkey(runtime.audit.key))
    assert (checked.problems, checked.undigested, checked.unkeyed) == ([], None, None)
    assert checked.keys > 0
    # Nor raw rows: each batch holds exactly the rows its ledger row says it loaded.
    assert checked.raw_problems == [] and checked.raw_rows > 0
