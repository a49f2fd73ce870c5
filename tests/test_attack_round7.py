"""Round 7 of testing like an attacker: what the hostile zone (test_hostile_files) missed.

Landing entries: a directory or FIFO named like a feed file, ``::`` (fsspec's chain marker),
line breaks and terminal escapes in a file name, a file appended to after its rows were
loaded, a file that grows while it is read. The command line: an unknown partner, an as-of
date in the future, ``profiles explain`` asked about an unknown phone. Each test failed
before its fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from puhui.audit import read_audit_events
from puhui.cli import main
from puhui.config import PartnersConfig, load_config
from puhui.dates import today_local
from puhui.generate.hostile import MP_HEADER, HostileContext
from puhui.ingest import batches, ledger
from puhui.ingest.batches import FileIngestor
from puhui.ingest.feeds import ingest_feed
from puhui.ingest.pseudonymize import pseudonym_key_bytes
from puhui.ingest.quarantine import release_batch
from puhui.privacy import find_raw_identifiers
from puhui.runtime import open_runtime
from puhui.validation import BatchValidator
from puhui.warehouse.schema import ingest_batches

DAY = date(2026, 9, 30)
PHONE_IN_NAME = "13812345678"


def _payments(case: int, rows: int = 5, header: list[str] = MP_HEADER) -> bytes:
    context = HostileContext(DAY, case, Path("."), set())
    lines = [",".join(header)] + [",".join(r) for r in context.payment_rows(rows)]
    return ("\n".join(lines) + "\n").encode()


def _reordered(data: bytes) -> bytes:
    """``data`` with its rows reversed: the same size, other bytes (a same-size rewrite)."""
    header, *rows = data.splitlines(keepends=True)
    return header + b"".join(reversed(rows))


@pytest.fixture
def landing(puhui_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "landing"
    (root / "mobile_payments" / DAY.isoformat()).mkdir(parents=True)
    monkeypatch.setenv("PUHUI_LANDING", str(root))
    return root


def _ingest_payments() -> dict[str, batches.FileOutcome]:
    """One plain-Python ingest of the mobile_payments feed; outcomes by file name."""
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")
    ingestor = FileIngestor(
        runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key)
    )
    result = ingest_feed(runtime, feed, ingestor, DAY)
    return {f.path.rsplit("/", 1)[-1]: f for f in result.files}


def _raw_rows() -> tuple[int, int]:
    with open_runtime().engine.connect() as conn:
        return tuple(conn.execute(text(
            "SELECT count(*), count(DISTINCT txn_id) FROM raw_mobile_payments")).one())


def test_odd_landing_entries_each_end_as_one_ledger_row(
    landing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = landing / "mobile_payments" / DAY.isoformat()
    (folder / "mobile_payments_1_clean.csv").write_bytes(_payments(1))
    # A folder of part files named like a delivery: held as a directory, not skipped unseen.
    (folder / "mobile_payments_2_dir.csv").mkdir()
    (folder / "mobile_payments_2_dir.csv" / "part-0.csv").write_bytes(_payments(2))
    os.mkfifo(folder / "mobile_payments_3_fifo.csv")  # opening it would block the run
    # fsspec reads "::" as a chain of filesystems: the file looked missing, an OSError that
    # stopped the whole feed (every later file, every later day) instead of one file.
    (folder / "mobile_payments_4_a::b.csv").write_bytes(_payments(4))
    # A header and no rows is fine with its newline, and was "unreadable csv" without it.
    (folder / "mobile_payments_6_header.csv").write_bytes(",".join(MP_HEADER).encode())
    (folder / "mobile_payments_7_padded.csv").write_bytes(
        _payments(7, header=[f" {name} " for name in MP_HEADER]))
    # A partner naming a file after a customer: the ledger (read by BI) keeps a keyed hash.
    (folder / f"mobile_payments_8_{PHONE_IN_NAME}.csv").write_bytes(_payments(8))
    forged = f"mobile_payments_5_\n\x1b[2J\x9b{PHONE_IN_NAME}.csv"
    (folder / forged).write_bytes(_payments(5, header=MP_HEADER[:-1]))  # held: no status

    outcomes = _ingest_payments()

    assert len(outcomes) == len(list(folder.iterdir())), "one outcome per entry"
    named = [o for name, o in outcomes.items() if name.startswith("mobile_payments_8_~")]
    assert [(o.status, o.rows_loaded) for o in named] == [("accepted", 5)]
    with open_runtime().engine.connect() as conn:
        paths = conn.execute(select(ingest_batches.c.source_path)).scalars().all()
    assert len(paths) == 8 and not find_raw_identifiers("\n".join(paths))
    assert outcomes["mobile_payments_1_clean.csv"].status == "accepted"
    directory = outcomes["mobile_payments_2_dir.csv"]
    assert directory.status == "quarantined" and "directory" in (directory.reason or "")
    assert outcomes["mobile_payments_3_fifo.csv"].status == "quarantined"
    chained = outcomes["mobile_payments_4_a::b.csv"]
    assert (chained.status, chained.rows_loaded) == ("accepted", 5)
    header_only = outcomes["mobile_payments_6_header.csv"]
    assert (header_only.status, header_only.rows) == ("accepted", 0)
    padded = outcomes["mobile_payments_7_padded.csv"].reason or ""
    assert padded.startswith("header names padded with spaces (amount, days_past_due")
    assert all(o.skipped for o in _ingest_payments().values()), "a re-run is a no-op"

    # The name is the sender's: printed as one inert line, identifier masked.
    [held] = [o for name, o in outcomes.items() if name.startswith("mobile_payments_5_")]
    assert held.status == "quarantined" and "status" in (held.reason or "")
    line = held.line()
    assert not any(ch in line for ch in "\n\x1b\x9b") and "\\x1b" in line
    assert PHONE_IN_NAME not in line and not find_raw_identifiers(line)
    capsys.readouterr()
    assert main(["quarantine", "show", held.batch_id]) == 0
    out = capsys.readouterr().out
    [file_line] = [x for x in out.splitlines() if x.startswith("  file ")]
    assert "mobile_payments_5_\\x0a\\x1b[2J\\x9b" in file_line
    assert "\x1b" not in out and PHONE_IN_NAME not in out


def _five_rows_accepted(landing: Path, warehouse_url: str,
                        monkeypatch: pytest.MonkeyPatch) -> tuple[Path, batches.FileOutcome]:
    """A 5-row payments file landed and accepted: (its path, its outcome)."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    path = landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv"
    path.write_bytes(_payments(1, rows=5))
    first = _ingest_payments()[path.name]
    assert (first.status, first.rows_loaded, _raw_rows()) == ("accepted", 5, (5, 5))
    return path, first


def test_a_file_rewritten_after_its_rows_loaded_is_held_not_loaded_twice(
    landing: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, first = _five_rows_accepted(landing, warehouse_url, monkeypatch)

    path.write_bytes(_payments(1, rows=8))  # the partner appended 3 rows in place
    again = _ingest_payments()[path.name]
    assert again.status == "quarantined" and not again.skipped
    assert f"rewritten after batch {first.batch_id}" in (again.reason or "")
    assert again.rows == again.rows_held == 8
    assert _raw_rows() == (5, 5), "the first 5 rows were not loaded a second time"

    assert _ingest_payments()[path.name].skipped  # a re-run decides nothing new
    # Loading the new version too is a person's decision, and it reconciles.
    released = release_batch(open_runtime(), again.batch_id, "partner confirmed the append")
    assert released.rows_loaded + released.rows_duplicate == released.rows == 8
    # Only the appended rows: the first 5 keys were loaded by the first batch (ingest_keys).
    assert (released.rows_loaded, released.rows_duplicate) == (3, 5)
    assert _raw_rows() == (8, 8)


def test_a_file_rewritten_in_place_at_the_same_size_is_read_again_and_held(
    landing: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, first = _five_rows_accepted(landing, warehouse_url, monkeypatch)
    stat = path.stat()
    assert ledger.get_batch(open_runtime().engine, first.batch_id).mtime_ns == stat.st_mtime_ns

    # Only touched: the same bytes are not a new version; the row takes the new time.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = _ingest_payments()[path.name]
    assert touched.skipped and touched.batch_id == first.batch_id
    assert ledger.get_batch(open_runtime().engine, first.batch_id).mtime_ns == \
        path.stat().st_mtime_ns

    # Rewritten with other bytes of the same length (a corrected amount): was never re-read.
    path.write_bytes(_reordered(_payments(1, rows=5)))
    assert path.stat().st_size == stat.st_size and path.read_bytes() != _payments(1, rows=5)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    again = _ingest_payments()[path.name]
    assert again.status == "quarantined" and not again.skipped
    assert f"rewritten after batch {first.batch_id}" in (again.reason or "")
    assert _raw_rows() == (5, 5), "no row was loaded twice"

    rerun = _ingest_payments()[path.name]  # decides nothing new
    assert rerun.skipped and rerun.batch_id == again.batch_id
    with open_runtime().engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ingest_batches")).scalar() == 2


def test_a_ledger_row_without_a_time_takes_the_time_of_its_next_listing(
    landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv"
    path.write_bytes(_payments(1, rows=5))
    first = _ingest_payments()[path.name]
    with open_runtime().engine.begin() as conn:  # a row written before migration 0005
        conn.execute(ingest_batches.update().values(mtime_ns=None))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    later = _ingest_payments()[path.name]
    # What the legacy row decided is known by size only, so the file is not read again;
    # but it keeps the time it is seen with, or a same-size rewrite would pass for ever.
    assert later.skipped and later.batch_id == first.batch_id
    assert ledger.get_batch(open_runtime().engine, first.batch_id).mtime_ns == \
        path.stat().st_mtime_ns
    path.write_bytes(_reordered(_payments(1, rows=5)))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    again = _ingest_payments()[path.name]
    assert again.status == "quarantined" and not again.skipped
    assert f"rewritten after batch {first.batch_id}" in (again.reason or "")


@pytest.fixture
def memory_landing(puhui_env: Path, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A landing zone on fsspec's memory filesystem (a remote store to discovery: no
    os.stat time), private to the test; its URL."""
    import fsspec

    root = f"memory://{tmp_path.name}/landing"
    monkeypatch.setenv("PUHUI_LANDING", root)
    yield root
    fsspec.filesystem("memory").rm(f"/{tmp_path.name}", recursive=True)


def _remote_payments_ingested(memory_landing: str) -> tuple[Any, str, batches.FileOutcome]:
    """A 5-row payments file landed on the memory filesystem and ingested once: the
    filesystem, the file's URL and its outcome."""
    import fsspec

    fs = fsspec.filesystem("memory")
    url = f"{memory_landing}/mobile_payments/{DAY.isoformat()}/mobile_payments_1.csv"
    fs.pipe(url, _payments(1, rows=5))
    return fs, url, _ingest_payments()[url.rsplit("/", 1)[-1]]


def test_a_remote_file_rewritten_at_the_same_size_is_read_again_by_its_change_marker(
    memory_landing: str,
) -> None:
    fs, url, first = _remote_payments_ingested(memory_landing)
    assert (first.status, first.rows_loaded, _raw_rows()) == ("accepted", 5, (5, 5))
    engine = open_runtime().engine
    marker = ledger.get_batch(engine, first.batch_id).change_marker
    assert marker is not None and marker.startswith("created="), marker
    assert _ingest_payments()[first.path.rsplit("/", 1)[-1]].skipped

    # The same bytes written again: not a new version; the row takes the new marker.
    fs.pipe(url, _payments(1, rows=5))
    touched = _ingest_payments()[first.path.rsplit("/", 1)[-1]]
    assert touched.skipped and touched.batch_id == first.batch_id
    renewed = ledger.get_batch(engine, first.batch_id).change_marker
    assert renewed != marker

    # Other bytes of the same length (the rows reordered): by size alone, never read again.
    fs.pipe(url, _reordered(_payments(1, rows=5)))
    assert fs.size(url) == len(_payments(1, rows=5))
    again = _ingest_payments()[first.path.rsplit("/", 1)[-1]]
    assert again.status == "quarantined" and not again.skipped
    assert f"rewritten after batch {first.batch_id}" in (again.reason or "")
    assert _raw_rows() == (5, 5), "no row was loaded twice"
    rerun = _ingest_payments()[first.path.rsplit("/", 1)[-1]]
    assert rerun.skipped and rerun.batch_id == again.batch_id


def test_a_remote_row_from_before_its_marker_takes_the_marker_of_its_next_listing(
    memory_landing: str,
) -> None:
    fs, url, first = _remote_payments_ingested(memory_landing)
    engine = open_runtime().engine
    with engine.begin() as conn:  # a row written before migration 0007
        conn.execute(ingest_batches.update().values(change_marker=None))
    assert _ingest_payments()[first.path.rsplit("/", 1)[-1]].skipped
    assert ledger.get_batch(engine, first.batch_id).change_marker is not None
    fs.pipe(url, _reordered(_payments(1, rows=5)))
    again = _ingest_payments()[first.path.rsplit("/", 1)[-1]]
    assert again.status == "quarantined" and not again.skipped, again


def test_change_marker_prefers_a_content_tag_and_is_none_without_one() -> None:
    from datetime import UTC, datetime

    from puhui.landing import change_marker

    when = datetime(2026, 9, 30, 8, tzinfo=UTC)
    s3 = {"name": "b/k.csv", "size": 9, "ETag": '"9b2cf535f27731c974343645a3985328"',
          "LastModified": when, "type": "file"}
    assert change_marker(s3) == 'ETag="9b2cf535f27731c974343645a3985328"'
    assert change_marker({"size": 9, "mtime": 1_790_000_000.0}) == "mtime=1790000000.0"
    assert change_marker({"size": 9, "last_modified": when}) == f"last_modified={when}"
    assert change_marker({"name": "h/k.csv", "size": 9, "type": "file"}) is None  # size only


def test_legacy_ledger_paths_holding_an_identifier_are_pseudonymized_once_at_ingest(
    landing: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    path = landing / "mobile_payments" / DAY.isoformat() / f"mobile_payments_{PHONE_IN_NAME}.csv"
    path.write_bytes(_payments(1, rows=5))
    [first] = _ingest_payments().values()
    engine = open_runtime().engine
    with engine.begin() as conn:  # the row as a run before this round wrote it
        conn.execute(ingest_batches.update().values(
            source_path=str(path), mtime_ns=None, path_settled=None))

    [again] = _ingest_payments().values()
    assert again.skipped and again.batch_id == first.batch_id, "found again, not re-read"
    with engine.connect() as conn:
        paths = conn.execute(select(ingest_batches.c.source_path)).scalars().all()
    assert paths == [first.path] and not find_raw_identifiers(paths[0])
    events = read_audit_events(engine, action="ingest.paths_pseudonymized")
    assert [(e["subject"], e["details"]["rows"]) for e in events] == [("mobile_payments", 1)]

    assert next(iter(_ingest_payments().values())).skipped
    assert len(read_audit_events(engine, action="ingest.paths_pseudonymized")) == 1, \
        "idempotent: a second run finds nothing to rewrite"
    assert _raw_rows() == (5, 5)


def test_ledger_rows_without_a_time_are_settled_once_not_read_on_every_run(
    landing: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows with no modification time (an entry that is not a regular file, a remote file)
    keep none forever: picked by that, every run read and re-pseudonymized them all."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    folder = landing / "mobile_payments" / DAY.isoformat()
    (folder / "mobile_payments_2_dir.csv").mkdir()  # held, its row without a time
    raw = folder / f"mobile_payments_{PHONE_IN_NAME}.csv"
    raw.write_bytes(_payments(1, rows=5))
    _ingest_payments()
    engine = open_runtime().engine
    with engine.begin() as conn:  # the file's row as a run before names were pseudonymized
        conn.execute(ingest_batches.update().where(ingest_batches.c.mtime_ns.is_not(None))
                     .values(source_path=str(raw), mtime_ns=None, path_settled=None))

    real = ledger.settle_ledger_paths
    read: list[str] = []

    def recording(conn, audit, partner, settled_path, *args):  # noqa: ANN001, ANN202
        def spy(path: str, level: int | None) -> str:
            read.append(path)
            return settled_path(path, level)
        return real(conn, audit, partner, spy, *args)

    monkeypatch.setattr(ledger, "settle_ledger_paths", recording)
    _ingest_payments()
    assert read == [str(raw)], "only the legacy row is read, not the directory's"
    read.clear()
    assert all(o.skipped for o in _ingest_payments().values())
    assert read == [], "a later run reads no settled row again"
    with engine.connect() as conn:
        rows = conn.execute(select(ingest_batches.c.source_path, ingest_batches.c.mtime_ns,
                                   ingest_batches.c.path_settled)).all()
    assert len(rows) == 2 and all(r.path_settled == ledger.PATH_SETTLED for r in rows)
    assert not any(find_raw_identifiers(r.source_path) for r in rows)
    events = read_audit_events(engine, action="ingest.paths_pseudonymized")
    assert [(e["details"]["partner"], e["details"]["rows"]) for e in events] == [
        ("mobile_payments", 1)]


def test_a_file_growing_while_it_is_read_is_deferred_then_read_whole(
    landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv"
    path.write_bytes(_payments(1, rows=5))
    real_insert = batches.bulk_insert

    def insert_then_partner_appends(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        loaded = real_insert(*args, **kwargs)
        path.write_bytes(_payments(1, rows=8))  # still being written
        return loaded

    monkeypatch.setattr(batches, "bulk_insert", insert_then_partner_appends)
    during = _ingest_payments()[path.name]
    assert during.status == "deferred" and "changed while being read" in (during.reason or "")
    with open_runtime().engine.connect() as conn:
        loaded = conn.execute(text("SELECT count(*) FROM raw_mobile_payments")).scalar()
        recorded = conn.execute(text("SELECT count(*) FROM ingest_batches")).scalar()
    assert loaded == 0, "the rows of a file that changed under the reader were rolled back"
    assert recorded == 0, "no hold of the partial bytes is left for a person to decide"

    monkeypatch.setattr(batches, "bulk_insert", real_insert)
    after = _ingest_payments()[path.name]
    assert (after.status, after.rows_loaded) == ("accepted", 8)
    assert ledger.get_batch(open_runtime().engine, after.batch_id).rows == 8
    assert _raw_rows() == (8, 8)


def test_run_commands_refuse_an_unknown_partner_and_a_future_date_in_one_line(
    puhui_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    future = (today_local() + timedelta(days=2)).isoformat()
    cases = [
        (["run", "ingest", "--partner", "nosuch"], "unknown partner 'nosuch'"),
        (["run", "ingest", "--as-of", future], f"--as-of {future} is in the future"),
        (["run", "daily", "--as-of", future], f"--as-of {future} is in the future"),
        (["backfill", "--start", "2026-09-01", "--end", future], f"--end {future} is in"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        captured = capsys.readouterr()
        assert captured.err.startswith(f"puhui: error: {message}"), captured.err
        assert len(captured.err.strip().splitlines()) == 1 and not captured.out, argv
    assert not (puhui_env / "prefect" / "prefect.db").exists(), "no flow run was started"


def test_profiles_explain_tells_no_one_whether_a_phone_is_a_customer(
    puhui_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    open_runtime()  # a warehouse: a missing one is refused before any key is looked up
    errors = []
    for key in (PHONE_IN_NAME, "11010519491231002X", "0" * 64):  # phone, ID, person_key
        assert main(["profiles", "explain", key]) == 1
        err = capsys.readouterr().err
        assert key not in err and len(err.strip().splitlines()) == 1
        errors.append(err)
    assert errors[0] == errors[1] == errors[2], errors
    assert errors[0].startswith("puhui: error: no profile for that customer")


def test_mlflow_prints_no_download_bar_on_read_only_commands(
    puhui_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`models show` printed MLflow's "Downloading artifacts" bar on stderr on success."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    from puhui.settings import configure_runtime, load_settings

    for name in ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "PREFECT_HOME"):
        monkeypatch.setenv(name, "x")  # recorded, so the variable is undone after the test
        monkeypatch.delenv(name)
    configure_runtime(load_settings())
    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False


def test_a_file_that_cannot_be_read_now_is_deferred_and_the_others_go_on(
    landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partner's upload left mode 0600 (root reads it anyway, so the refusal is staged at
    the open), and a file gone after the listing: each was an OSError that stopped the feed,
    every file of it, on every run."""
    folder = landing / "mobile_payments" / DAY.isoformat()
    locked, gone, fine = (folder / f"mobile_payments_{n}.csv" for n in (1, 2, 3))
    for number, path in enumerate((locked, gone, fine), start=1):
        path.write_bytes(_payments(number))
    real_open = batches.open_landed_file

    def open_as_the_pipeline_user(url: str):  # noqa: ANN202
        if url == str(locked):
            raise PermissionError(13, "Permission denied", url)
        if url == str(gone):
            gone.unlink()  # deleted between listing and reading
        return real_open(url)

    monkeypatch.setattr(batches, "open_landed_file", open_as_the_pipeline_user)
    outcomes = _ingest_payments()
    assert outcomes[fine.name].status == "accepted"
    for path, why in ((locked, "permission denied"), (gone, "gone since listed")):
        assert outcomes[path.name].status == "deferred"
        assert why in (outcomes[path.name].reason or "")
    with open_runtime().engine.connect() as conn:
        recorded = conn.execute(select(ingest_batches.c.source_path)).scalars().all()
    assert recorded == [str(fine)], "nothing recorded for what could not be read"

    monkeypatch.setattr(batches, "open_landed_file", real_open)  # permissions fixed
    again = _ingest_payments()
    assert again[locked.name].status == "accepted" and again[fine.name].skipped


def test_a_reason_holding_a_phone_is_refused_in_one_line_before_anything_moves(
    puhui_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was "ValueError: audit event ... would record a raw phone number (after 6.5s;
    --debug shows the traceback)", raised by the audit guard halfway through the decision."""
    for argv in (
        ["quarantine", "reject", "mobile_payments-2026", "--reason", f"{PHONE_IN_NAME} says so"],
        ["quarantine", "release", "x", "--reason", "ID 11010519491231002X confirmed"],
        ["models", "promote", "credit_risk", "--version", "1", "--reason",
         f"+86 {PHONE_IN_NAME} asked"],
        ["models", "rollback", "credit_risk", "--reason", f"call {PHONE_IN_NAME}"],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("puhui: error: --reason holds what looks like a raw "), err
        assert len(err.strip().splitlines()) == 1 and not find_raw_identifiers(err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--out", "unused", "--users", "5"],
         "Invalid value for '--users': Input should be greater than or equal to 100"),
        (["run", "ingest", "--bogus"], "No such option: --bogus"),
        (["models", "promote", "credit_risk", "--version", "1"], "Missing option '--reason'."),
        (["quarantine", "show"], "Missing argument 'BATCH'."),
    ],
)
def test_usage_errors_are_one_line_naming_the_option(
    argv: list[str], message: str, puhui_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Typer vendors click, so its usage errors were not click's: each was reported as a
    crash ("BadParameter: Input should be ... (after 0.2s; --debug shows the traceback)")
    without the option's name."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"puhui: error: {message}\n" and not captured.out


def test_identifiers_in_free_text_are_masked_at_the_door_and_held_in_keys(
    landing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A phone typed into a co-operative's name (GBK, next to Chinese text) and an ID in
    it were loaded raw into raw_agri_coop: only columns whose suite happens to check a set
    of values held them."""
    from puhui.identifiers import national_id_check_digit

    def national_id(i: int) -> str:
        body = f"11010519800101{i:03d}"
        return body + national_id_check_digit(body)

    folder = landing / "agri_coop" / DAY.isoformat()
    folder.mkdir(parents=True)
    header = "member_national_id,coop_name,crop,acreage_mu,harvest_sales_yuan,subsidy_yuan,"
    rows = [f"{national_id(i)},合作社,玉米,12.5,1000,50,2026-09" for i in range(5)]
    rows[1] = rows[1].replace("合作社", f"张三{PHONE_IN_NAME}合作社")
    rows[2] = rows[2].replace("合作社", f"联系{national_id(9)}社")
    (folder / "agri_coop_1.csv").write_bytes(
        "\n".join([header + "record_month", *rows, ""]).encode("gbk"))
    keyed = landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv"
    keyed.write_bytes(_payments(1).replace(b"T0001000000000001", PHONE_IN_NAME.encode()))

    from puhui.ingest.feeds import ingest_all_feeds

    runtime = open_runtime()
    outcomes = {f.path.rsplit("/", 1)[-1]: f for r in ingest_all_feeds(runtime, DAY)
                for f in r.files}
    coop = outcomes["agri_coop_1.csv"]
    assert (coop.status, coop.rows_loaded) == ("accepted", 5)
    assert coop.warnings == ["identifier-shaped text masked in coop_name: 2 value(s)"]
    with runtime.engine.connect() as conn:
        names = conn.execute(text("SELECT coop_name FROM raw_agri_coop")).scalars().all()
    assert sorted(names)[-2:] == ["张三[identifier masked]合作社", "联系[identifier masked]社"]
    assert not find_raw_identifiers("\n".join(names))
    held = outcomes["mobile_payments_1.csv"]
    assert held.status == "quarantined"
    assert "identifier-shaped value(s) in key column txn_id" in (held.reason or "")


def test_a_held_file_changing_while_its_copy_is_written_keeps_no_copy(
    landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release loads the quarantine copy: a copy of bytes other than the checksummed ones
    would load a file nobody validated."""
    path = landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv"
    path.write_bytes(_payments(1).replace(b"BILL_PAY", b"NOT_A_TYPE"))  # critical: held
    real_copy = FileIngestor._write_quarantine_copy

    def copy_then_partner_rewrites(self, *args):  # noqa: ANN001, ANN002, ANN202
        written = real_copy(self, *args)
        path.write_bytes(_payments(1, rows=8))
        return written

    monkeypatch.setattr(FileIngestor, "_write_quarantine_copy", copy_then_partner_rewrites)
    held = _ingest_payments()[path.name]
    # Deferred, nothing recorded: a hold of the old bytes without its copy was reject-only.
    assert held.status == "deferred" and "changed while being read" in (held.reason or "")
    assert not list((open_runtime().settings.home / "quarantine").rglob("*.parquet"))
    monkeypatch.setattr(FileIngestor, "_write_quarantine_copy", real_copy)
    assert _ingest_payments()[path.name].status == "accepted"  # the new bytes, a new batch


@pytest.mark.parametrize(
    ("declared", "wrong", "message"),
    [
        ("primary_key: [txn_id]", "primary_key: [txn]", "primary_key 'txn'"),
        ("event_time: txn_time", "event_time: txn_tme", "event_time 'txn_tme'"),
    ],
)
def test_a_key_naming_no_column_says_which_feed_and_which_key(
    tmp_path: Path, declared: str, wrong: str, message: str
) -> None:
    """It said "partners.3: Value error, 'txn' is not a declared column": an index, no key."""
    from puhui.config import load_config_file
    from puhui.errors import PuhuiError
    from puhui.settings import repo_root

    path = tmp_path / "partners.yaml"
    path.write_text((repo_root() / "configs" / "partners.yaml").read_text().replace(
        declared, wrong, 1))
    with pytest.raises(PuhuiError, match=f"feed 'mobile_payments': {message} is not a "
                                         "declared column"):
        load_config_file(path, PartnersConfig)
