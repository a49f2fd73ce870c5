"""The data engineer's quarantine workflow: list (unique prefixes, reject-only, --all, 80
columns), show (masked samples, Data Docs page), revalidate with the current suite (load
once, audited with the suite hash) and refused releases in the trail; SQLite and PostgreSQL.

Before: ``quarantine list`` cut ids at 80 columns and wrapped reasons over lines, did not
mark batches that can only be rejected and had no ``--all``; there was no ``show``; after a
suite was fixed a held batch could only be released unchecked or rejected.
"""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select, text

from puhui.audit import read_audit_events, verify_audit_chain
from puhui.cli import main
from puhui.config import PartnersConfig, load_config
from puhui.ingest import ledger
from puhui.ingest.held_batches import all_batch_ids, unique_prefixes
from puhui.ingest.quarantine import REVALIDATED
from puhui.runtime import open_runtime
from puhui.settings import repo_root
from puhui.warehouse.schema import validation_results
from tests.conftest import TEST_AUDIT_KEY

DAY = date(2026, 9, 30)
FEED = "mobile_payments"


def _payments(path: Path, rows: int, bogus_rows: tuple[int, ...] = (),
              future_rows: tuple[int, ...] = (), first_txn: int = 0) -> None:
    """A mobile_payments CSV; ``bogus_rows`` get a transaction type outside the suite's set
    (a critical failure), ``future_rows`` a time after the delivery day (a warning), and
    row 7 repeats row 3's txn_id (a duplicate key). Transactions are numbered from
    ``first_txn``: files of other transactions need other numbers (a key is loaded once
    per feed)."""
    lines = ["txn_id,payer_phone,txn_time,txn_type,amount,merchant_category,days_past_due,status"]
    for row in range(1, rows + 1):
        txn = 2026093000000000 + first_txn + (3 if row == 7 else row)
        kind = "REFUND" if row in bogus_rows else "MERCHANT"
        day = "2026-10-03" if row in future_rows else "2026-09-30"
        lines.append(f'T{txn},+86 138 {row % 10000:04d} 5678,{day}T08:00:00+08:00,{kind},'
                     f'"1,234.50",GROCERY,,SUCCESS')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def held_env(puhui_env: Path, warehouse_url: str, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Three landed payment files ingested for real: one clean, one held by a critical
    expectation (REFUND is not a known type), one unparseable (reject-only)."""
    from puhui.ingest.batches import FileIngestor
    from puhui.ingest.feeds import ingest_feed
    from puhui.ingest.pseudonymize import pseudonym_key_bytes
    from puhui.validation import BatchValidator

    landing = tmp_path / "landing"
    folder = landing / FEED / DAY.isoformat()
    _payments(folder / "mobile_payments_a.csv", 60, future_rows=(9,))
    _payments(folder / "mobile_payments_b.csv", 40, bogus_rows=(5, 12), first_txn=1000)
    (folder / "mobile_payments_c.csv").write_bytes(b"\xff\xfe\x00garbage\x00\x01" * 20)
    suites = tmp_path / "expectations"
    shutil.copytree(repo_root() / "expectations", suites)
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setenv("PUHUI_LANDING", str(landing))
    monkeypatch.setenv("PUHUI_EXPECTATIONS_DIR", str(suites))
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get(FEED)
    ingestor = FileIngestor(runtime, feed, BatchValidator(results_dir=puhui_env / "gx",
                                                    expectations_dir=runtime.settings.expectations_dir),
                            pseudonym_key_bytes(runtime.settings.pseudonym_key))
    outcomes = {Path(f.path).name: f for f in ingest_feed(runtime, feed, ingestor, DAY).files}
    assert [outcomes[n].status for n in sorted(outcomes)] == ["accepted", "quarantined",
                                                              "quarantined"]
    return {"clean": outcomes["mobile_payments_a.csv"].batch_id,
            "held": outcomes["mobile_payments_b.csv"].batch_id,
            "unreadable": outcomes["mobile_payments_c.csv"].batch_id,
            "suites": str(suites)}


def _raw_rows(batch_id: str) -> int:
    with open_runtime().engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM raw_{FEED} WHERE batch_id = :b"),
                            {"b": batch_id}).scalar()


def test_revalidate_fails_first_then_loads_once_after_the_suite_is_fixed(
    held_env: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    held = held_env["held"]
    prefix = unique_prefixes(all_batch_ids(open_runtime().engine))[held]

    # The suite still refuses REFUND: it stays held, exit 1, the attempt is audited.
    code, _, err = _cli(capsys, "quarantine", "revalidate", prefix)
    assert code == 1 and err.count("\n") == 1 and "stays held" in err and "txn_type" in err
    engine = open_runtime().engine
    assert ledger.get_batch(engine, held).status == "quarantined"
    assert _raw_rows(held) == 0
    first = read_audit_events(engine, action=REVALIDATED)
    assert [e["details"]["outcome"] for e in first] == ["still held"]
    old_hash = first[0]["details"]["suite_hash"]

    # The partner's new transaction type is legitimate: the suite is fixed.
    path = Path(held_env["suites"]) / f"{FEED}.json"
    path.write_text(path.read_text().replace('"MERCHANT"', '"MERCHANT", "REFUND"'))
    code, out, err = _cli(capsys, "quarantine", "revalidate", prefix)
    assert code == 0, err
    record = ledger.get_batch(engine, held)
    assert record.status == "accepted" and f"accepted {held}" in out
    # 40 rows, one repeating a key: 39 loaded, 1 dropped as ingestion would.
    assert (record.rows, record.rows_loaded, record.rows_duplicate, record.rows_held) == (
        40, 39, 1, 0)
    assert _raw_rows(held) == 39
    events = read_audit_events(engine, action=REVALIDATED)
    assert [e["details"]["outcome"] for e in events] == ["still held", "accepted"]
    new_hash = events[-1]["details"]["suite_hash"]
    assert new_hash != old_hash and new_hash in out and events[-1]["details"]["rows_loaded"] == 39
    assert events[-1]["config_hash"] != events[0]["config_hash"]  # suites are in the hash
    with engine.connect() as conn:
        details = conn.execute(select(validation_results.c.details, validation_results.c.success)
                               .where(validation_results.c.batch_id == held)).one()
    assert details.success is False  # a warning: the duplicate key
    assert details.details["suite_hash"] == new_hash

    # Idempotent: again, nothing is loaded twice and nothing is recorded.
    code, out, _ = _cli(capsys, "quarantine", "revalidate", held)
    assert code == 0 and "nothing to do" in out
    assert _raw_rows(held) == 39 and len(read_audit_events(engine, action=REVALIDATED)) == 2
    assert verify_audit_chain(engine, TEST_AUDIT_KEY.encode()).ok


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)  # no dialect code here
def test_list_prints_unique_prefixes_marks_reject_only_and_fits_80_columns(
    held_env: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    code, out, err = _cli(capsys, "quarantine", "list")
    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    body = {line.split()[0]: line for line in lines[1:-2]}
    assert len(body) == 2, lines  # the accepted batch is not held
    by_id = {}
    for prefix, line in body.items():
        (full,) = [held_env[k] for k in ("held", "unreadable") if held_env[k].startswith(prefix)]
        assert len(prefix) >= 8
        by_id[full] = line
    assert " held " in by_id[held_env["held"]]
    assert " reject-only " in by_id[held_env["unreadable"]]
    assert "1 reject-only" in lines[-2]

    code, out, _ = _cli(capsys, "quarantine", "list", "--all", "--json")
    listed = {b["batch_id"]: b for b in json.loads(out)}
    assert listed[held_env["clean"]]["status"] == "accepted"
    assert listed[held_env["unreadable"]]["reject_only"] is True
    assert listed[held_env["held"]]["reject_only"] is False
    code, out, _ = _cli(capsys, "quarantine", "list", "--all")
    assert " accepted " in out and len(out.splitlines()) == 6

    # Every id shares "mobile_payments-20260930-": that prefix names none of them.
    code, _, err = _cli(capsys, "quarantine", "show", f"{FEED}-20260930-")
    assert code == 1 and err.count("\n") == 1 and "ambiguous" in err
    code, _, err = _cli(capsys, "quarantine", "show", "nosuchbatch")
    assert code == 1 and "no batch" in err

    # show: reasons, failing expectation with masked samples, row counts, Data Docs page.
    prefix = next(p for p in body if held_env["held"].startswith(p))
    code, out, err = _cli(capsys, "quarantine", "show", prefix, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["batch_id"] == held_env["held"] and shown["rows_held"] == 40
    (failure,) = shown["failures"]
    assert failure["column"] == "txn_type" and failure["sample_rows"] == [5, 12]
    assert failure["sample_shapes"] == ["aaaaaa", "aaaaaa"]  # shapes, never "REFUND"
    assert "REFUND" not in out
    assert shown["validation"]["suite_hash"] and shown["data_docs"]
    assert shown["data_docs"][0].endswith(f"{held_env['held']}.html")
    code, out, _ = _cli(capsys, "quarantine", "show", prefix)
    assert "[critical] txn_type" in out and "Data Docs:" in out and "rows 40" in out

    # A reject-only batch cannot be released or revalidated; the refused release is recorded.
    code, _, err = _cli(capsys, "quarantine", "release", held_env["unreadable"][:30],
                        "--reason", "we need the data")
    assert code == 1 and "reject-only" in err and err.count("\n") == 1
    code, _, err = _cli(capsys, "quarantine", "revalidate", held_env["unreadable"])
    assert code == 1 and "reject-only" in err
    engine = open_runtime().engine
    (refused,) = read_audit_events(engine, action="quarantine.release.refused")
    assert refused["subject"] == held_env["unreadable"]
    assert "reject-only" in refused["details"]["refused_because"]
    code, out, _ = _cli(capsys, "audit", "log", "--action", "quarantine.release")
    assert "[REFUSED" in out


def test_data_docs_index_names_outcome_severity_and_filters(
    held_env: dict[str, str], puhui_env: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = _cli(capsys, "data-docs")
    assert code == 0, err
    index = (puhui_env / "gx" / "data_docs" / "index.html").read_text()
    held_row = next(r for r in index.split("<tr") if held_env["held"] in r)
    clean_row = next(r for r in index.split("<tr") if held_env["clean"] in r)
    assert 'data-outcome="quarantined"' in held_row and "critical" in held_row
    # A transaction after the delivery day is a warning: not shown as a critical failure.
    assert 'data-outcome="accepted"' in clean_row and 'class="warn"' in clean_row
    assert "warning" in clean_row and "critical" not in clean_row
    assert '<select id="feed"' in index and "puhuiFilter" in index and "http" not in index
    page = next((puhui_env / "gx" / "data_docs" / "validations").rglob(
        f"{held_env['held']}.html")).read_text()
    assert "newsletter" not in page and "Data asset: None" not in page
    assert "__none__" not in page and held_env["held"] in page
