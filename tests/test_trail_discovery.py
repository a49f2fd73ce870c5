"""The columns file discovery decides by (``ingest_batches.bytes``, ``mtime_ns``,
``change_marker``, ``source_path``) are in the audit events of each write, so `audit verify`
reports a hand edit of any of them (masked), and a trail from before they were recorded
still verifies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from puhui.cli import main
from puhui.config import PartnersConfig, load_config
from puhui.ingest import ledger
from puhui.ingest.batches import FileIngestor
from puhui.ingest.feeds import ingest_feed
from puhui.ingest.pseudonymize import pseudonym_key_bytes
from puhui.runtime import open_runtime
from puhui.validation import BatchValidator
from puhui.warehouse.schema import ingest_batches
from tests.test_attack_round8 import DAY, MP_HEADER, _payments


def _verify(capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["audit", "verify", "--no-repair"])
    out, err = capsys.readouterr()
    return code, out, err


def test_hand_edits_of_discovery_columns_are_reported(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    folder = tmp_path / "landing" / "mobile_payments" / DAY.isoformat()
    folder.mkdir(parents=True)
    monkeypatch.setenv("PUHUI_LANDING", str(tmp_path / "landing"))
    (folder / "mobile_payments_1.csv").write_bytes(_payments(1))
    (folder / "mobile_payments_2.csv").write_bytes(_payments(1))  # a duplicate
    held = folder / "mobile_payments_3.csv"
    held.write_bytes(_payments(3, header=MP_HEADER[:-1]))
    # Modified in 2000: 18 digits of nanoseconds, shaped like a national ID (audit details
    # refuse those: the events hold digests).
    os.utime(held, ns=(946_684_800 * 10**9, 946_684_800 * 10**9))
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")

    def ingest() -> dict[str, str]:
        ingestor = FileIngestor(
            runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
            pseudonym_key_bytes(runtime.settings.pseudonym_key))
        return {f.path.rsplit("/", 1)[-1]: f.batch_id
                for f in ingest_feed(runtime, feed, ingestor, DAY).files}

    batches = ingest()
    # A file only touched: discovery renews its row's mtime_ns, and the trail says so.
    touched = folder / "mobile_payments_1.csv"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    ingest()
    with runtime.engine.connect() as conn:
        kept = conn.execute(ingest_batches.select().where(
            ingest_batches.c.batch_id == batches["mobile_payments_1.csv"])).one()
    assert kept.mtime_ns == touched.stat().st_mtime_ns
    code, out, err = _verify(capsys)
    assert code == 0 and "ingest_batches agrees with the trail: 3 batch(es)" in out, err

    edits = {"bytes": 13812345678, "mtime_ns": 12345, "change_marker": "ETag=13812345678\x1b[2J",
             "source_path": "mobile_payments/2026-09-30/13812345678.csv"}
    for (column, value), name in zip(edits.items(), ["mobile_payments_1.csv",
                                                     "mobile_payments_2.csv",
                                                     "mobile_payments_3.csv",
                                                     "mobile_payments_1.csv"], strict=True):
        batch = batches[name]
        with runtime.engine.begin() as conn:
            before = conn.execute(ingest_batches.select().where(
                ingest_batches.c.batch_id == batch)).one()._mapping[column]
            conn.execute(ingest_batches.update().where(ingest_batches.c.batch_id == batch)
                         .values({column: value}))
        code, _, err = _verify(capsys)
        assert code == 1, column
        assert f"batch {batch}: ingest_batches.{column} is " in err, err
        assert "but the audit trail recorded another value" in err
        assert "13812345678" not in err and "\x1b" not in err
        assert "DISAGREE: 1 problem(s)" in err, err
        with runtime.engine.begin() as conn:
            conn.execute(ingest_batches.update().where(ingest_batches.c.batch_id == batch)
                         .values({column: before}))
    assert _verify(capsys)[0] == 0


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_row_whose_event_predates_discovery_facts_still_verifies(
    puhui_env: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An event written before the discovery columns were recorded holds none of them: its
    row is compared on what it does hold."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime = open_runtime()
    batch = "mobile_payments-20260930-0123456789ab"
    # It loaded none of its row (a repeat): there is no raw table, and verify counts the raw
    # rows each batch loaded.
    with runtime.engine.begin() as conn:
        ledger.insert_batch(conn, batch_id=batch, partner="mobile_payments",
                            source_path="mobile_payments/2026-09-30/old.csv",
                            delivery_date=DAY, checksum="a" * 64, bytes=10, mtime_ns=None,
                            rows=1, rows_loaded=0, status="accepted")
        runtime.audit.append(conn, "ingest.accepted", batch, {
            "partner": "mobile_payments", "rows": 1, "rows_loaded": 0,
            "checksum": "a" * 64})
    code, out, err = _verify(capsys)
    assert code == 0 and "ingest_batches agrees with the trail: 1 batch(es)" in out, err
