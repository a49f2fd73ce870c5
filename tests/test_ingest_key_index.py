"""A primary key is loaded once per feed, across files: the ``ingest_keys`` index.

Before it, ingestion kept the first row of a key within one file only: a later file of the
same feed repeating keys (a redelivery under a new name, yesterday's rows resent with
today's) was loaded again, and features double-counted. Real PostgreSQL and SQLite, real GX,
the real Prefect ingest flow where the flow is involved.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy import Connection, text

from puhui.config import PartnerFeed, PartnersConfig, load_config
from puhui.ingest import ledger
from puhui.ingest.raw_tables import stored_columns
from puhui.runtime import Runtime, open_runtime

if TYPE_CHECKING:
    from puhui.ingest.batches import FileIngestor
    from puhui.landing import LandedFile

DAY1, DAY2, DAY3 = date(2026, 9, 30), date(2026, 10, 1), date(2026, 10, 2)
HEADER = "txn_id,payer_phone,txn_time,txn_type,amount,merchant_category,days_past_due,status"


def _txn(number: int) -> str:
    return f"T{2026093000000000 + number}"


def _payments(landing: Path, day: date, name: str, ids: Iterable[int], *,
              changed: Iterable[int] = (), bogus: int | None = None) -> Path:
    """A mobile_payments file of the transactions ``ids``; ``changed`` ones carry another
    amount (a correction); ``bogus`` gets a transaction type the suite refuses (critical)."""
    changed = set(changed)
    lines = [HEADER]
    for i in ids:
        amount = "2,000.00" if i in changed else "1,234.50"
        kind = "BOGUS" if i == bogus else "MERCHANT"
        lines.append(f'{_txn(i)},+86 138 {i % 10000:04d} 5678,2026-09-30T08:00:00+08:00,'
                     f'{kind},"{amount}",GROCERY,,SUCCESS')
    path = landing / "mobile_payments" / day.isoformat() / f"mobile_payments_{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _ingestor() -> tuple[Runtime, PartnerFeed, FileIngestor]:
    from puhui.ingest.batches import FileIngestor
    from puhui.ingest.pseudonymize import pseudonym_key_bytes
    from puhui.validation import BatchValidator

    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")
    return runtime, feed, FileIngestor(
        runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key))


def _two_files(monkeypatch: pytest.MonkeyPatch, warehouse_url: str, tmp_path: Path,
               first: Iterable[int], second: Iterable[int], *, names: tuple[str, str] = ("a", "b"),
               first_options: dict | None = None, second_options: dict | None = None,
               ) -> tuple[Runtime, PartnerFeed, FileIngestor, Path]:
    """The warehouse at ``warehouse_url``, a mobile_payments ingestor and a landing zone with
    two files, nothing ingested yet: the transactions ``first`` on DAY1 and ``second`` on
    DAY2 (named ``names``; ``first_options``, ``second_options``: see ``_payments``)."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime, feed, ingestor = _ingestor()
    landing = tmp_path / "landing"
    _payments(landing, DAY1, names[0], first, **(first_options or {}))
    _payments(landing, DAY2, names[1], second, **(second_options or {}))
    return runtime, feed, ingestor, landing


def _landed(feed: PartnerFeed, landing: Path, day: date, name: str) -> LandedFile:
    from puhui.landing import list_landed_files

    return next(f for f in list_landed_files(feed, str(landing), day) if name in f.path)


def _raw_counts(runtime: Runtime, feed: PartnerFeed) -> tuple[int, int]:
    with runtime.engine.connect() as conn:
        return tuple(conn.execute(text(
            f"SELECT count(*), count(DISTINCT txn_id) FROM {feed.raw_table}")).one())


def _reconciles(record: ledger.BatchRecord) -> bool:
    return record.rows == record.rows_loaded + record.rows_held + record.rows_duplicate


def test_a_second_file_repeating_keys_loads_only_its_new_keys(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from puhui.ingest import reading

    monkeypatch.setattr(reading.iter_file_chunks, "__defaults__", (64 << 10,))  # many chunks
    # 500 repeats with the same values, 500 corrections, 2,000 new transactions.
    runtime, feed, ingestor, landing = _two_files(
        monkeypatch, warehouse_url, tmp_path, range(1, 3001), range(2001, 5001),
        second_options={"changed": range(2501, 3001)})

    first = ingestor.ingest(_landed(feed, landing, DAY1, "_a"))
    second = ingestor.ingest(_landed(feed, landing, DAY2, "_b"))
    assert (first.status, first.rows_loaded, first.rows_duplicate) == ("accepted", 3000, 0)
    assert (second.status, second.rows, second.rows_loaded, second.rows_duplicate) == (
        "accepted", 3000, 2000, 1000)
    (warning,) = [w for w in second.warnings if "earlier batches" in w]
    assert "1,000 row(s) repeat a primary key (txn_id)" in warning
    assert first.batch_id in warning
    assert "500 with the same values, 500 with changed values" in warning
    assert "T2026" not in " ".join(second.warnings)  # no key printed
    assert _raw_counts(runtime, feed) == (5000, 5000)
    with runtime.engine.connect() as conn:
        kept = conn.execute(text(f"SELECT amount, batch_id FROM {feed.raw_table} "
                                 f"WHERE txn_id = '{_txn(2600)}'")).one()
    assert tuple(kept) == (1234.5, first.batch_id)  # the first load of a key is kept
    record = ledger.get_batch(runtime.engine, second.batch_id)
    assert _reconciles(record) and record.rows_duplicate == 1000
    assert any("earlier batches" in w["message"] for w in record.warnings)


def test_a_superset_redelivery_through_the_flow_loads_only_the_new_rows(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    prefect_harness: None,
) -> None:
    from puhui.pipeline import run_ingest_flow

    landing = tmp_path / "landing"
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setenv("PUHUI_LANDING", str(landing))
    _payments(landing, DAY1, "20260930", range(1, 2001))
    first = run_ingest_flow(DAY1, partner="mobile_payments")
    assert (first["rows_loaded"], first["rows_duplicate"]) == (2000, 0)
    # Yesterday's rows resent with today's, under today's name.
    _payments(landing, DAY2, "20261001", range(1, 4001))
    second = run_ingest_flow(DAY2, partner="mobile_payments")
    assert (second["rows"], second["rows_loaded"], second["rows_duplicate"]) == (4000, 2000, 2000)
    runtime, feed, _ = _ingestor()
    assert _raw_counts(runtime, feed) == (4000, 4000)
    records = ledger.list_batches(runtime.engine, partner="mobile_payments")
    assert all(_reconciles(r) for r in records) and len(records) == 2
    # The flows' validation rows (each batch's, each warehouse table's) are recorded with
    # their digests in the transactions that wrote them: none differs, none unrecorded.
    from puhui.table_digests import SPECS, WRITERS, table_problems, writer_subkey

    checked = table_problems(runtime.engine, SPECS, WRITERS, writer_subkey(runtime.audit))
    assert (checked.problems, checked.notes) == ([], []) and checked.rows >= 2
    assert (checked.raw.problems, checked.raw.notes) == ([], []) and checked.raw.batches == 2


def test_a_released_batch_loads_only_keys_no_earlier_batch_loaded(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from puhui.ingest.quarantine import release_batch

    runtime, feed, ingestor, landing = _two_files(
        monkeypatch, warehouse_url, tmp_path, range(1, 1001), range(501, 1501),
        second_options={"changed": range(501, 601), "bogus": 1200})
    first = ingestor.ingest(_landed(feed, landing, DAY1, "_a"))
    held = ingestor.ingest(_landed(feed, landing, DAY2, "_b"))
    assert held.status == "quarantined"

    record = release_batch(runtime, held.batch_id, "partner confirmed the type code")
    assert (record.status, record.rows_loaded, record.rows_duplicate) == ("released", 500, 500)
    assert _reconciles(record)
    (warning,) = [w["message"] for w in record.warnings if "earlier batches" in w["message"]]
    assert first.batch_id in warning and "400 with the same values, 100 with changed" in warning
    assert _raw_counts(runtime, feed) == (1500, 1500)


def test_a_revalidated_batch_loads_only_keys_no_earlier_batch_loaded(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from puhui.audit import check_action_prefixes
    from puhui.ingest.key_digest import digest_subkey
    from puhui.ingest.ledger import KeyIndexCheck, key_index_problems
    from puhui.ingest.quarantine import reject_batch, revalidate_batch
    from puhui.settings import repo_root

    suites = tmp_path / "expectations"
    shutil.copytree(repo_root() / "expectations", suites)
    monkeypatch.setenv("PUHUI_EXPECTATIONS_DIR", str(suites))
    runtime, feed, ingestor, landing = _two_files(
        monkeypatch, warehouse_url, tmp_path, range(1, 1001), range(501, 1501),
        second_options={"changed": range(501, 601), "bogus": 1200})
    check_action_prefixes(runtime.engine, ["ingest.keys.indexed"])  # a known action
    first = ingestor.ingest(_landed(feed, landing, DAY1, "_a"))
    held = ingestor.ingest(_landed(feed, landing, DAY2, "_b"))
    assert held.status == "quarantined"
    _payments(landing, DAY3, "c", range(1401, 1451), bogus=1410)
    rejected = ingestor.ingest(_landed(feed, landing, DAY3, "_c"))
    assert reject_batch(runtime, rejected.batch_id, "resent by the partner").status == "rejected"

    # The partner's new transaction type is legitimate: the suite is fixed.
    suite = suites / "mobile_payments.json"
    suite.write_text(suite.read_text().replace('"MERCHANT"', '"MERCHANT", "BOGUS"'))
    outcome = revalidate_batch(runtime, held.batch_id)
    record = ledger.get_batch(runtime.engine, held.batch_id)
    assert (record.status, record.rows_loaded, record.rows_duplicate) == ("accepted", 500, 500)
    assert _reconciles(record)
    (warning,) = [w for w in outcome.warnings if "earlier batches" in w]
    assert first.batch_id in warning and "400 with the same values, 100 with changed" in warning
    assert _raw_counts(runtime, feed) == (1500, 1500)
    # The revalidation's event records the digests of the keys it claimed; every batch's is
    # compared (none counted only), none differs, keyed or not; the raw rows of each batch
    # (the rejected one's none) are what the ledger says it loaded.
    assert key_index_problems(runtime.engine, digest_subkey(runtime.audit.key)) \
        == KeyIndexCheck([], 1500, None, None, [], 1500)


def test_two_ingests_at_once_of_files_sharing_keys_load_each_key_once(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    landing = tmp_path / "landing"
    _payments(landing, DAY1, "a", range(1, 3001))
    _payments(landing, DAY1, "b", range(2001, 5001))
    start = threading.Barrier(2)
    outcomes, errors = {}, []

    def ingest(name: str) -> None:
        try:
            _, feed, ingestor = _ingestor()  # each thread its own ingestor, as two runs
            landed = _landed(feed, landing, DAY1, f"_{name}")
            start.wait()
            outcomes[name] = ingestor.ingest(landed)
        except BaseException as exc:  # noqa: BLE001 - raised below, in the test
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(n,)) for n in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    runtime, feed, _ = _ingestor()
    assert _raw_counts(runtime, feed) == (5000, 5000)
    assert sorted(o.rows_loaded for o in outcomes.values()) == [2000, 3000]
    assert sorted(o.rows_duplicate for o in outcomes.values()) == [0, 1000]
    assert all(_reconciles(ledger.get_batch(runtime.engine, o.batch_id))
               for o in outcomes.values())
    # Whichever came second names the first, and the shared rows are the same in both.
    won, lost = sorted(outcomes.values(), key=lambda o: o.rows_duplicate)
    assert not [w for w in won.warnings if "earlier batches" in w]
    (warning,) = [w for w in lost.warnings if "earlier batches" in w]
    assert f"1,000 row(s) repeat a primary key (txn_id) loaded by batch(es) {won.batch_id}:" \
        in warning
    assert "1,000 with the same values, 0 with changed values" in warning
    # Each batch's recorded keys digests cover exactly the keys it claimed under the lock.
    from puhui.ingest.key_digest import digest_subkey
    from puhui.ingest.ledger import KeyIndexCheck, key_index_problems

    assert key_index_problems(runtime.engine, digest_subkey(runtime.audit.key)) \
        == KeyIndexCheck([], 5000, None, None, [], 5000)


def _as_before_the_index(runtime: Runtime, feed: PartnerFeed,
                         copies: Iterable[tuple[str, str, int, int]]) -> None:
    """The warehouse as the code before the index left it: no index, and for each
    (batch, of_batch, rows, offset) the first ``rows`` rows of ``of_batch`` loaded again by
    ``batch`` (row numbers shifted by ``offset``), stored after every row there."""

    columns = ", ".join(name for name, _ in stored_columns(feed))
    with runtime.engine.begin() as conn:
        for batch, of_batch, rows, offset in copies:
            conn.execute(text(
                f"INSERT INTO {feed.raw_table} (batch_id, row_number, {columns}) "
                f"SELECT :batch, row_number + :offset, {columns} FROM {feed.raw_table} "
                "WHERE batch_id = :of AND row_number <= :rows"),
                {"batch": batch, "of": of_batch, "rows": rows, "offset": offset})
        conn.execute(text("DELETE FROM ingest_keys"))
        conn.execute(text("DELETE FROM ingest_key_backfills"))


def test_backfill_order_is_when_batches_loaded_on_both_dialects(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from puhui.ingest import key_index

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime, feed, ingestor = _ingestor()
    landing = tmp_path / "landing"
    for day, name, first in ((DAY1, "a", 1), (DAY2, "b", 201), (DAY3, "c", 401)):
        _payments(landing, day, name, range(first, first + 100))
    a, b, c = (ingestor.ingest(_landed(feed, landing, day, f"_{name}")).batch_id
               for day, name in ((DAY1, "a"), (DAY2, "b"), (DAY3, "c")))
    _as_before_the_index(runtime, feed, [(b, a, 10, 100000), (c, b, 10, 100000)])
    # Ledger rows from before decided_at was set on accepting: a, the first, and c, the last.
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE ingest_batches SET decided_at = NULL "
                          "WHERE batch_id IN (:a, :c)"), {"a": a, "c": c})
    assert key_index.ensure_key_index(runtime, feed) == key_index.Backfill(320, 20)
    owners = "SELECT batch_id, count(*) FROM ingest_keys GROUP BY batch_id"
    with runtime.engine.connect() as conn:
        assert dict(conn.execute(text(owners)).all()) == {a: 100, b: 100, c: 100}


_BACKFILL_SCRIPT = """
from puhui.config import PartnersConfig, load_config
from puhui.ingest.key_index import ensure_key_index
from puhui.runtime import open_runtime

runtime = open_runtime()
ensure_key_index(runtime, load_config(runtime.settings.config_dir, PartnersConfig)
                 .get("mobile_payments"))
print("done")
"""


def test_backfill_indexes_a_warehouse_from_before_and_reports_keys_loaded_twice(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from puhui.ingest import key_index

    monkeypatch.setattr(key_index, "_BACKFILL_ROWS", 700)  # several parts
    runtime, feed, ingestor, landing = _two_files(
        monkeypatch, warehouse_url, tmp_path, range(1, 1001), range(2001, 3001))
    a = ingestor.ingest(_landed(feed, landing, DAY1, "_a")).batch_id
    b = ingestor.ingest(_landed(feed, landing, DAY2, "_b")).batch_id
    # Ten of batch b's keys loaded a second time, by the earlier batch a (stored after b's).
    _as_before_the_index(runtime, feed, [(a, b, 10, 100000)])

    # kill -9 midway: nothing of it stays; the next use does it whole.
    killed = subprocess.run([sys.executable, "-c", _BACKFILL_SCRIPT], capture_output=True,
                            text=True, env={**os.environ, "PUHUI_CRASH_AT": "key-backfill"},
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with runtime.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ingest_keys")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM ingest_key_backfills")).scalar() == 0

    with caplog.at_level(logging.WARNING, logger="puhui.ingest"):
        done = key_index.ensure_key_index(runtime, feed)
    assert done == key_index.Backfill(rows_indexed=2010, rows_repeated=10)
    (line,) = [r.getMessage() for r in caplog.records if "loaded twice" in r.getMessage()]
    assert "mobile_payments: 10 row(s)" in line and "T2026" not in line
    owners = "SELECT batch_id, count(*) FROM ingest_keys GROUP BY batch_id"
    with runtime.engine.connect() as conn:
        assert dict(conn.execute(text(owners)).all()) == {a: 1010, b: 990}  # first batch wins
        assert conn.execute(text("SELECT rows_repeated FROM ingest_key_backfills")).scalar() == 10

    assert key_index.ensure_key_index(runtime, feed) is None  # done once, recorded
    with runtime.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ingest_keys")).scalar() == 2000

    # Later files meet the index: keys of b's first ten rows are a's now.
    _payments(landing, DAY3, "c", [*range(2001, 2006), *range(5001, 5101)])
    third = ingestor.ingest(_landed(feed, landing, DAY3, "_c"))
    assert (third.rows_loaded, third.rows_duplicate) == (100, 5)
    assert any(a in w and b not in w for w in third.warnings if "earlier batches" in w)


def _two_text_key_feed() -> PartnerFeed:
    """The customers feed with a key of two text columns (customer_id, occupation)."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    feed = load_config(configs, PartnersConfig).get("customers")
    return feed.model_copy(update={"primary_key": ["customer_id", "occupation"]})


def test_key_hashes_stay_what_the_index_holds() -> None:
    """The hashes of given keys, pinned: the index holds hashes made by earlier versions
    under the same key definition, so a change in how they are computed (SipHash fed bytes
    instead of str, for speed; a pandas or pyarrow upgrade) must give the same values, or
    every resent key would load again. Non-ASCII text (4-byte UTF-8 too), a NULL part, flag
    bytes, NUL inside and at the start of a text, a key longer than 64 bytes, and
    credit_bureau's real key: a pseudonymised column and a date, whose text is Arrow's
    date cast. The values were computed by the code before the bytes change."""
    from puhui.ingest.key_index import row_hashes

    two = _two_text_key_feed()
    one = two.model_copy(update={"primary_key": ["customer_id"]})
    configs = Path(__file__).resolve().parents[1] / "configs"
    bureau = load_config(configs, PartnersConfig).get("credit_bureau")
    assert bureau.primary_key == ["national_id", "report_date"]
    ids = ["C0001", "客户-é", "\x01x", None, "", "😀x", "\x00a", "a\x00b", "k" * 199 + "😀"]
    jobs = ["teacher", None, "ñandú", "a\x1fb", "", "𝄞", "\x00", "b\x00", "é" * 100]
    # person_key as pseudonymisation stores it (64 hex digits); the first person twice, in
    # two months, so the date part is what tells those keys apart.
    persons = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
               "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
               "fd61a03af4f77d870fc21e05e7e80678095c92d808cfb3b5c279ee04c74aca13",
               "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    months = [date(2026, 9, 30), date(2026, 10, 1), date(1999, 12, 31), date(2026, 10, 1)]
    tables = {
        "two": (two, {"customer_id": pa.array(ids, pa.string()),
                      "occupation": pa.array(jobs, pa.string())}),
        "one": (one, {"customer_id": pa.array(ids, pa.string())}),
        "bureau": (bureau, {"person_key": pa.array(persons, pa.string()),
                            "report_date": pa.array(months, pa.date32())}),
    }
    expected = {
        "two": ([5146003315245762489, -5031856666811079052, 8061552369283498600,
                 7182068107965303578, 8431904694533576609, 6143393502921772955,
                 -7929926638981273106, -6087080648040101945, -6846368635795632928],
                [6275393837850283397, 6051042052810417181, 4922040203190079803,
                 -7696054086821879191, -5717550147929452193, 6050677141664044655,
                 9157036568640443612, 9080424844561315755, -5556077654550658376]),
        "one": ([7750106580381410862, -4843280865498409487, -7121142233409822106,
                 -8407587575497600200, -7816860650044059744, 6715303770239399285,
                 4990899509358466402, 8243546559806148150, -7175864965428755648],
                [-5553241092306070680, -7884177748321210338, 8259100545902785183,
                 -4664875686227199360, 6466618168173458212, -7387974651143681312,
                 7513543629644653283, 5163410779918262222, 7583598614306837452]),
        "bureau": ([9071188722907991062, -7751745497108812606, 8456967088873196975,
                    9054018675952846126],
                   [-5097471444083596051, 5794096900701088244, 6759579615436686369,
                    -6498580959191365999]),
    }
    for name, (feed, columns) in tables.items():
        key_columns = {s for s, c in stored_columns(feed) if c.name in feed.primary_key}
        assert set(columns) == key_columns, name
        hashes = row_hashes(pa.table(columns), feed)
        assert (hashes.key_hi.tolist(), hashes.key_lo.tolist()) == expected[name], name


def test_keys_whose_parts_differ_never_give_the_same_key_or_hash() -> None:
    from puhui.ingest.batches import PreparedChunk, SeenKeys, drop_duplicate_keys
    from puhui.ingest.key_index import key_strings, row_hashes

    feed = _two_text_key_feed()
    # A separator inside a part, and a NULL part against a text that once stood for NULL.
    ids = ["a\x1fb", "a", "c", "c", "d\x1f", "d"]
    jobs = ["c", "b\x1fc", None, "\0null", "", "\x1f"]
    stored = pa.table({s: pa.array(ids if c.name == "customer_id" else jobs, pa.string())
                       for s, c in stored_columns(feed)
                       if c.name in ("customer_id", "occupation")})
    assert len(set(key_strings(stored, feed).to_pylist())) == 6
    hashes = row_hashes(stored, feed)
    assert len(set(zip(hashes.key_hi.tolist(), hashes.key_lo.tolist(), strict=True))) == 6
    chunk = PreparedChunk(stored, {}, np.arange(1, 7))
    kept, dropped = drop_duplicate_keys(chunk, feed, SeenKeys())
    assert (len(kept.row_numbers), dropped) == (6, 0)  # six distinct rows, all kept
    # A key of one column: its text, except for NULL and text starting with a flag byte.
    single = feed.model_copy(update={"primary_key": ["customer_id"]})
    ids = [None, "\x00", "\x01", "\x01\x00", "\0null", "", "x"]
    stored = pa.table({s: pa.array(ids, pa.string()) for s, c in stored_columns(single)
                       if c.name == "customer_id"})
    assert len(set(key_strings(stored, single).to_pylist())) == 7
    assert key_strings(stored.slice(5), single).to_pylist() == ["", "x"]  # as they are


def test_keys_digest_in_sql_equals_numpys_at_the_extreme_keys(
    puhui_env: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``DIGEST_SQL``'s ``%`` and ``/`` truncate toward zero as ``np.fmod`` does, also where
    random keys rarely go: the int64 ends (``_nineteen_digits`` can give -2^63), halves that
    are exact multiples of 2^32, and negative ones just past one."""
    from puhui.ingest.key_digest import (
        KeyDigest,
        KeyedDigest,
        digest_subkey,
        keyed_digests,
        keys_digests,
    )

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime = open_runtime()
    word = 1 << 32
    edges = [-(1 << 63), (1 << 63) - 1, 1 << 62, -(1 << 62), 0, 1, -1, word, -word,
             3 * word, -3 * word, -3 * word - 5, 7 * (word - 1), -(1 << 31) * word,
             ((1 << 31) - 1) * word]
    random = np.random.default_rng(13).integers(-(1 << 63), (1 << 63) - 1, 20, dtype=np.int64)
    key_hi = np.concatenate([np.array(edges, dtype=np.int64), random])
    key_lo = np.roll(key_hi, 1)  # every extreme in both halves, the pairs still distinct
    with runtime.engine.begin() as conn:
        conn.execute(text("INSERT INTO ingest_keys (key_hi, key_lo, batch_id, value_hash) "
                          "VALUES (:hi, :lo, 'extremes', 0)"),
                     [{"hi": int(h), "lo": int(lo)} for h, lo in zip(key_hi, key_lo, strict=True)])
        (found,) = keys_digests(conn, "batch_id = :b", {"b": "extremes"}).values()
        # The keyed digest streamed in chunks (of 7: several, one batch split across them),
        # per batch, equals one made at once; its lanes wrap mod 2^64 alike.
        subkey = digest_subkey(runtime.audit.key)
        conn.execute(text("INSERT INTO ingest_keys (key_hi, key_lo, batch_id, value_hash) "
                          "VALUES (:hi, :lo, 'other', 0)"), [{"hi": 11, "lo": 12}])
        streamed = keyed_digests(conn, subkey, chunk_rows=7)
    assert streamed == {"extremes": KeyedDigest.of(subkey, key_hi, key_lo),
                        "other": KeyedDigest.of(subkey, np.array([11]), np.array([12]))}
    assert streamed["extremes"] == sum(  # one row at a time, added: the same sum
        (KeyedDigest.of(subkey, key_hi[i:i + 1], key_lo[i:i + 1]) for i in range(len(key_hi))),
        KeyedDigest())
    assert KeyedDigest.of(digest_subkey(b"another key"), key_hi, key_lo) != streamed["extremes"]
    expected = KeyDigest.of(key_hi, key_lo)
    assert found == expected
    # The two 32-bit parts of each half add up to the half's exact sum: nothing is lost.
    assert expected.sums[0] + expected.sums[1] * word == sum(int(k) for k in key_hi)
    assert expected.sums[2] + expected.sums[3] * word == sum(int(k) for k in key_lo)


def test_the_recorded_digests_of_fixed_keys_are_fixed_values() -> None:
    """Known answers: every warehouse's events hold these digests, so a change of the
    subkey's label, the byte order, the lanes or the figures' string would make every batch
    fail ``--deep``. The values were computed apart from puhui (hmac, AES-ECB over
    ``struct.pack("<qq", hi, lo)``, lanes summed mod 2^64); the other tests recompute
    through the same code and would not notice such a change."""
    from puhui.ingest.key_digest import KeyDigest, KeyedDigest, digest_subkey

    key_hi = np.array([1, -(1 << 63)], dtype=np.int64)
    key_lo = np.array([2, (1 << 63) - 1], dtype=np.int64)
    subkey = digest_subkey(b"k")
    assert subkey.hex() == "51bb1be9417782d4d68e2c7a43ed0939"
    assert KeyedDigest.of(subkey, key_hi, key_lo).hex() == (
        "a03da5625395136794ce30b181bd21829090a2a8645f91631b3a8c5c962ca66c")
    assert KeyDigest.of(key_hi, key_lo).hex() == (
        "a73d6400530ea89273a52c52d16bab0a472dfcfc907a9a81be0ea7ef4654246e")


def test_a_changed_key_definition_rebuilds_the_index_so_resent_rows_load_once(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from puhui.ingest.batches import FileIngestor
    from puhui.ingest.pseudonymize import pseudonym_key_bytes
    from puhui.validation import BatchValidator

    runtime, feed, ingestor, landing = _two_files(
        monkeypatch, warehouse_url, tmp_path, range(1, 1001), range(501, 1501))
    first = ingestor.ingest(_landed(feed, landing, DAY1, "_a"))
    # The contract's primary key gains a column: every key's text changes.
    wider = feed.model_copy(update={"primary_key": ["txn_id", "txn_type"]})
    again = FileIngestor(
        runtime, wider, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key))
    with caplog.at_level(logging.WARNING, logger="puhui.ingest"):
        second = again.ingest(_landed(wider, landing, DAY2, "_b"))
    assert (second.rows_loaded, second.rows_duplicate) == (500, 500)
    assert any(first.batch_id in w for w in second.warnings if "earlier batches" in w)
    assert _raw_counts(runtime, feed) == (1500, 1500)
    assert any("key index rebuilt" in r.getMessage() for r in caplog.records)
    with runtime.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ingest_keys")).scalar() == 1500
        assert conn.execute(text("SELECT rows_indexed FROM ingest_key_backfills")
                            ).scalar() == 1000


def test_backfill_counts_every_repeating_row_whichever_part_it_falls_in(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from puhui.ingest import key_index

    monkeypatch.setattr(key_index, "_BACKFILL_ROWS", 700)  # a's rows and b's copies apart
    runtime, feed, ingestor, landing = _two_files(
        monkeypatch, warehouse_url, tmp_path, range(1, 1001), range(2001, 3001))
    a = ingestor.ingest(_landed(feed, landing, DAY1, "_a")).batch_id
    b = ingestor.ingest(_landed(feed, landing, DAY2, "_b")).batch_id
    # The later batch b loaded ten of a's keys, each twice: twenty rows repeat a's keys.
    _as_before_the_index(runtime, feed, [(b, a, 10, 100000), (b, a, 10, 200000)])
    assert key_index.ensure_key_index(runtime, feed) == key_index.Backfill(2020, 20)
    owners = "SELECT batch_id, count(*) FROM ingest_keys GROUP BY batch_id"
    with runtime.engine.connect() as conn:
        assert dict(conn.execute(text(owners)).all()) == {a: 1000, b: 1000}


def _forget_the_index() -> None:
    """The feed's next load finds no index: a first use (its backfill indexes every row)."""
    runtime, _, _ = _ingestor()
    with runtime.engine.begin() as conn:
        conn.execute(text("DELETE FROM ingest_keys"))
        conn.execute(text("DELETE FROM ingest_key_backfills"))


@pytest.mark.parametrize("warehouse_url", ["postgres"], indirect=True)
def test_a_first_use_backfill_does_not_hold_the_audit_lock_through_its_load(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backfill's audit event took the audit chain's lock in the load's transaction:
    every audit append of every process waited for that file's load to commit."""
    from puhui.ingest import key_index

    runtime, feed, ingestor, landing = _two_files(
        monkeypatch, warehouse_url, tmp_path, range(1, 1001), range(501, 1501))
    assert ingestor.ingest(_landed(feed, landing, DAY1, "_a")).status == "accepted"
    _forget_the_index()
    claiming, go = threading.Event(), threading.Event()
    claim = key_index.KeyIndex.claim

    def paused(self: key_index.KeyIndex, chunk: object) -> object:
        claiming.set()
        go.wait(60)
        return claim(self, chunk)  # type: ignore[arg-type]

    monkeypatch.setattr(key_index.KeyIndex, "claim", paused)
    outcome = []
    loading = threading.Thread(
        target=lambda: outcome.append(ingestor.ingest(_landed(feed, landing, DAY2, "_b"))))
    loading.start()
    try:
        assert claiming.wait(60)  # the load's transaction is open, its backfill done
        with runtime.engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '3s'"))
            runtime.audit.append(conn, "test.meanwhile", "someone else", {})
    finally:
        go.set()
        loading.join(120)
    (second,) = outcome
    assert (second.status, second.rows_loaded, second.rows_duplicate) == ("accepted", 500, 500)
    with runtime.engine.connect() as conn:
        assert conn.execute(text("SELECT rows_indexed FROM ingest_key_backfills")
                            ).scalar() == 1000


@pytest.mark.parametrize("warehouse_url", ["postgres"], indirect=True)
def test_a_duplicate_delivery_does_not_wait_for_the_feeds_key_lock(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A duplicate (and a hold) claims no keys: it waited behind a concurrent load's key lock
    (and a hold could start a whole-feed backfill)."""
    from puhui.warehouse.engine import lock_for

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime, feed, ingestor = _ingestor()
    landing = tmp_path / "landing"
    first = _payments(landing, DAY1, "a", range(1, 101))
    shutil.copy(first, first.with_name("mobile_payments_again.csv"))
    assert ingestor.ingest(_landed(feed, landing, DAY1, "_a")).status == "accepted"
    outcome = []
    with runtime.engine.begin() as holder:  # a long load of the feed, meanwhile
        lock_for(holder, f"puhui.keys.{feed.name}")
        deciding = threading.Thread(target=lambda: outcome.append(
            ingestor.ingest(_landed(feed, landing, DAY1, "_again"))))
        deciding.start()
        deciding.join(30)
        decided_meanwhile = not deciding.is_alive()
    deciding.join(120)
    assert decided_meanwhile
    assert outcome[0].status == "duplicate"


@pytest.mark.parametrize("warehouse_url", ["postgres"], indirect=True)
def test_a_key_claimed_outside_the_lock_between_join_and_copy_is_found_by_the_join_again(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fresh keys' COPY failing on a unique key was a RuntimeError at once: the file was
    held as an unexpected failure. The join now runs once more and finds the key."""
    from puhui.ingest import key_index

    runtime, feed, ingestor, landing = _two_files(
        monkeypatch, warehouse_url, tmp_path, range(1, 101), range(51, 151))
    first = ingestor.ingest(_landed(feed, landing, DAY1, "_a"))
    join = key_index.query_arrow
    sneaked = []

    def join_then_claim(conn: Connection, sql: str, types: dict) -> pa.Table:
        found = join(conn, sql, types)
        if not sneaked and "puhui_key_stage" in sql:
            # A key of the chunk no batch has: claimed and committed by another connection
            # that skips the feed's key lock, as a bug elsewhere would.
            hi, lo = conn.execute(text(
                "SELECT key_hi, key_lo FROM puhui_key_stage s WHERE NOT EXISTS (SELECT 1 "
                "FROM ingest_keys k WHERE k.key_hi = s.key_hi AND k.key_lo = s.key_lo) "
                "LIMIT 1")).one()
            with runtime.engine.begin() as other:
                other.execute(text(
                    "INSERT INTO ingest_keys (key_hi, key_lo, batch_id, value_hash) "
                    "VALUES (:hi, :lo, :batch, 0)"), {"hi": hi, "lo": lo, "batch": first.batch_id})
            sneaked.append(True)
        return found

    monkeypatch.setattr(key_index, "query_arrow", join_then_claim)
    second = ingestor.ingest(_landed(feed, landing, DAY2, "_b"))
    assert sneaked
    # The key sneaked in is a repeat like the others (of other values: value_hash 0).
    assert (second.status, second.rows_loaded, second.rows_duplicate) == ("accepted", 49, 51)
    (warning,) = [w for w in second.warnings if "earlier batches" in w]
    assert "50 with the same values, 1 with changed values" in warning
    assert _raw_counts(runtime, feed) == (149, 149)
    # The retry's digest (of the keys the join found fresh the second time) matches: verify's
    # only line is the count of the key inserted by hand into the first batch. Not on SQLite:
    # one writer at a time, so the other connection's BEGIN IMMEDIATE waits out the busy
    # timeout behind the load and fails ("database is locked", tried): no retry path there.
    from puhui.ingest.ledger import key_index_problems

    (problem,) = key_index_problems(runtime.engine).problems
    assert problem.startswith(
        f"ingest_keys: batch {first.batch_id} holds 101 key(s) but loaded 100 row(s)"), problem


@pytest.mark.parametrize("warehouse_url", ["postgres"], indirect=True)
def test_a_chunk_repeating_keys_leaves_the_sessions_planner_settings_as_they_were(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The join's plan settings were RESET after it: the server's default replaced what the
    session had set, for the rest of the session."""
    from puhui.ingest import key_index
    from puhui.ingest.batches import PreparedChunk
    from puhui.ingest.key_index import KeyIndex

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime, feed, ingestor = _ingestor()
    landing = tmp_path / "landing"
    _payments(landing, DAY1, "a", range(1, 101))
    first = ingestor.ingest(_landed(feed, landing, DAY1, "_a"))
    (txn_id,) = [s for s, c in stored_columns(feed) if c.name == "txn_id"]
    stored = pa.table({txn_id: pa.array([_txn(i) for i in range(51, 151)], pa.string())})
    settings = text("SELECT current_setting('enable_hashjoin'), "
                    "current_setting('enable_mergejoin'), current_setting('jit')")
    with runtime.engine.connect() as conn:
        # 100 keys indexed, 100 staged: the join is made to probe the index.
        monkeypatch.setattr(key_index, "_PROBE_INDEX_RATIO", 1)
        conn.execute(text("ANALYZE ingest_keys"))
        conn.execute(text("SET enable_hashjoin = off"))  # the session's own choices
        conn.execute(text("SET jit = on"))
        conn.commit()
        keys = KeyIndex(conn, feed, first.batch_id, b"k" * 16)
        kept, dropped = keys.claim(PreparedChunk(stored, {}, np.arange(1, 101)))
        assert (len(kept.row_numbers), dropped) == (50, 50)
        assert tuple(conn.execute(settings).one()) == ("off", "on", "on")
        conn.commit()
        assert tuple(conn.execute(settings).one()) == ("off", "on", "on")
        # Two rows of one key in a chunk (SeenKeys keeps that from happening): refused, not
        # looped on.
        twice = pa.table({txn_id: pa.array([_txn(i) for i in (60, 200, 200)], pa.string())})
        with pytest.raises(RuntimeError, match="outside the feed's lock, or two keys in one"):
            KeyIndex(conn, feed, first.batch_id, b"k" * 16).claim(
                PreparedChunk(twice, {}, np.arange(1, 4)))


# --- audit verify reads the index ----------------------------------------------------------
# Before: a row deleted from ingest_keys by hand let its key load again and `audit verify`
# said nothing. Now each batch's key count is checked against the rows the ledger (checked
# against the trail) says it loaded, with no alarm on a redelivery, a release or a rebuild.

def _verify(capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, str, str]:
    """``audit verify --no-repair`` (``--deep``: also the keyed digests)."""
    from puhui.cli import main

    capsys.readouterr()
    code = main(["audit", "verify", "--no-repair", *options])
    out, err = capsys.readouterr()
    return code, out, err


_ONE_KEY = "(SELECT min(key_hi) FROM ingest_keys WHERE batch_id = :b)"


def _tamper_keys(runtime: Runtime, *, rewrite: str | None = None,
                 replace: str | None = None) -> list[tuple]:
    """Rewrite one key of batch ``rewrite`` in place (its low half), and replace one row of
    batch ``replace`` by a made-up key of the same batch: counts stay. Returns the rows as
    they were, for :func:`_untamper`."""
    taken = []
    with runtime.engine.begin() as conn:
        for batch in filter(None, (rewrite, replace)):
            taken.append(conn.execute(text(
                "SELECT key_hi, key_lo, batch_id, value_hash FROM ingest_keys "
                f"WHERE batch_id = :b AND key_hi = {_ONE_KEY}"), {"b": batch}).one())
        if rewrite:
            conn.execute(text(f"UPDATE ingest_keys SET key_lo = key_lo + 1 WHERE batch_id = :b "
                              f"AND key_hi = {_ONE_KEY}"), {"b": rewrite})
        if replace:
            conn.execute(text(f"DELETE FROM ingest_keys WHERE batch_id = :b AND key_hi = "
                              f"{_ONE_KEY}"), {"b": replace})
            conn.execute(text("INSERT INTO ingest_keys (key_hi, key_lo, batch_id, value_hash) "
                              "VALUES (5000000000000000001, 5000000000000000002, :b, 3)"),
                         {"b": replace})
    return taken


def _untamper(runtime: Runtime, taken: list[tuple]) -> None:
    with runtime.engine.begin() as conn:
        for key_hi, _, batch, _ in taken:
            conn.execute(text("DELETE FROM ingest_keys WHERE batch_id = :b AND (key_hi = :k "
                              "OR key_hi = 5000000000000000001)"), {"b": batch, "k": key_hi})
        conn.execute(text("INSERT INTO ingest_keys (key_hi, key_lo, batch_id, value_hash) "
                          "VALUES (:hi, :lo, :b, :v)"),
                     [{"hi": hi, "lo": lo, "b": b, "v": v} for hi, lo, b, v in taken])


DIGEST_RULE = ("keys_digest differs from the audit trail's: index rows rewritten or replaced "
               "by hand")
KEYED_RULE = ("keys_mac, the keyed digest, differs from the audit trail's: index rows "
              "rewritten or replaced by hand")


def _forge_cancelling(runtime: Runtime, batch: str) -> list[tuple]:
    """What a forger who knows the unkeyed digest does: two rows of ``batch`` made into
    two other keys whose changes cancel in every sum (the lowest key half gains 2^32, the
    highest loses it: their low 32-bit parts stay, their high parts move by +1 and -1).
    Both real keys would load again. Returns the rows as they were, for :func:`_unforge`."""
    from puhui.ingest.key_digest import keys_digests

    where = "batch_id = :b"
    with runtime.engine.begin() as conn:
        before = keys_digests(conn, where, {"b": batch})
        low, high = (conn.execute(text(
            "SELECT key_hi, key_lo, batch_id, value_hash FROM ingest_keys WHERE batch_id = :b "
            f"AND key_hi = (SELECT {f}(key_hi) FROM ingest_keys WHERE batch_id = :b)"),
            {"b": batch}).one() for f in ("min", "max"))
        for (hi, lo, *_), step in ((low, 1 << 32), (high, -(1 << 32))):
            conn.execute(text("UPDATE ingest_keys SET key_hi = :new WHERE key_hi = :hi "
                              "AND key_lo = :lo"), {"new": hi + step, "hi": hi, "lo": lo})
        assert keys_digests(conn, where, {"b": batch}) == before  # the unkeyed check is blind
    return [low, high]


def _unforge(runtime: Runtime, taken: list[tuple]) -> None:
    (low, high) = taken
    with runtime.engine.begin() as conn:
        for (hi, lo, *_), step in ((low, 1 << 32), (high, -(1 << 32))):
            conn.execute(text("UPDATE ingest_keys SET key_hi = :hi WHERE key_hi = :new "
                              "AND key_lo = :lo"), {"new": hi + step, "hi": hi, "lo": lo})


def test_audit_verify_reports_index_rows_deleted_or_added_by_hand(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from puhui.ingest.quarantine import release_batch

    # A redelivery (500 keys of a again) and a held batch released (its own repeats too).
    runtime, feed, ingestor, landing = _two_files(
        monkeypatch, warehouse_url, tmp_path, range(1, 1001), range(501, 1501))
    _payments(landing, DAY3, "c", range(1401, 1701), bogus=1600)
    a = ingestor.ingest(_landed(feed, landing, DAY1, "_a")).batch_id
    b = ingestor.ingest(_landed(feed, landing, DAY2, "_b"))
    held = ingestor.ingest(_landed(feed, landing, DAY3, "_c"))
    assert (b.rows_duplicate, held.status) == (500, "quarantined")
    code, out, err = _verify(capsys, "--deep")
    assert code == 0 and "ingest_keys agrees with the ledger: 1,500 key(s), keyed digests " \
        "compared" in out, err
    assert release_batch(runtime, held.batch_id, "partner confirmed").rows_loaded == 200
    code, out, err = _verify(capsys, "--deep")
    assert code == 0 and "ingest_keys agrees with the ledger: 1,700 key(s)" in out, err
    assert "before key digests" not in out and "before the keyed digest" not in out

    # Two rows of the redelivery and two of the released batch forged so that the unkeyed
    # sums stay (four real keys would load again): a plain verify, which compares only
    # those, passes (the hole it has); --deep streams the keys through the keyed digest.
    forged = [_forge_cancelling(runtime, batch) for batch in (b.batch_id, held.batch_id)]
    code, out, err = _verify(capsys)
    assert code == 0 and "(--deep: also the keyed digests)" in out, err
    code, out, err = _verify(capsys, "--deep")
    assert code == 1
    assert f"ingest_keys: batch {b.batch_id} holds 500 key(s), not those it loaded " \
        f"({KEYED_RULE})" in err, err
    assert f"ingest_keys: batch {held.batch_id} holds 200 key(s), not those it loaded " \
        f"({KEYED_RULE})" in err, err
    assert "ingest_keys and the audit trail DISAGREE: 2 problem(s)" in err
    assert len(err.strip().splitlines()) == 3, err  # one line per batch, and the summary
    assert "T2026" not in out + err
    for taken in forged:
        _unforge(runtime, taken)
    assert _verify(capsys, "--deep")[0] == 0

    # A key of the redelivery rewritten in place, a row of the released batch replaced by a
    # made-up one: every count stays, the digests recorded with their loads do not.
    taken = _tamper_keys(runtime, rewrite=b.batch_id, replace=held.batch_id)
    for options in ((), ("--deep",)):  # --deep: the unkeyed digest's line only, once
        code, out, err = _verify(capsys, *options)
        assert code == 1
        assert f"ingest_keys: batch {b.batch_id} holds 500 key(s), not those it loaded " \
            f"({DIGEST_RULE})" in err, err
        assert f"ingest_keys: batch {held.batch_id} holds 200 key(s), not those it loaded" \
            in err
        assert "ingest_keys and the audit trail DISAGREE: 2 problem(s)" in err
        assert "5000000000000000001" not in out + err
    _untamper(runtime, taken)
    assert _verify(capsys, "--deep")[0] == 0

    with runtime.engine.begin() as conn:  # the key of one of a's rows: it would load again
        conn.execute(text("DELETE FROM ingest_keys WHERE batch_id = :a AND key_hi = "
                          "(SELECT min(key_hi) FROM ingest_keys WHERE batch_id = :a)"), {"a": a})
        conn.execute(text("UPDATE ingest_keys SET batch_id = :h WHERE batch_id = :b AND "
                          "key_hi = (SELECT min(key_hi) FROM ingest_keys WHERE batch_id = :b)"),
                     {"h": held.batch_id, "b": b.batch_id})
    code, out, err = _verify(capsys)
    assert code == 1
    assert f"ingest_keys: batch {a} holds 999 key(s) but loaded 1,000 row(s) (index rows " \
        "deleted by hand: a key missing from the index loads again)" in err, err
    assert f"ingest_keys: batch {b.batch_id} holds 499 key(s) but loaded 500" in err
    assert f"ingest_keys: batch {held.batch_id} holds 201 key(s) but loaded 200" in err
    assert "ingest_keys and the audit trail DISAGREE: 3 problem(s)" in err
    assert "T2026" not in out + err and "ingest_keys agrees" not in out


MISTYPED_RULE = ("hold a key not stored as integers (SQLite keeps any type: index rows "
                 "rewritten by hand; such a key matches no lookup, so its row loads again)")


def test_audit_verify_reports_index_rows_of_another_type_on_sqlite(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SQLite stores any type in a BIGINT column. A key half rewritten as a BLOB of its own
    digits keeps the count and both digests (``%`` and ``/`` read a blob's text, numpy
    parsed it) but matches no lookup: its row loads again. Plain verify counts such rows;
    the keyed stream refuses them. A batch id as a BLOB is a batch of its own: counted.
    ``ingest_batches``' columns as BLOBs are reported (compared in Python), masked.
    PostgreSQL's bigint refuses the edits themselves."""
    if not warehouse_url.startswith("sqlite"):
        pytest.skip("SQLite's type affinity: PostgreSQL's columns are strict")
    from puhui.errors import PuhuiError
    from puhui.ingest.key_digest import digest_subkey, keyed_digests

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime, feed, ingestor = _ingestor()
    landing = tmp_path / "landing"
    monkeypatch.setenv("PUHUI_LANDING", str(landing))
    _payments(landing, DAY1, "a", range(1, 101))
    a = ingestor.ingest(_landed(feed, landing, DAY1, "_a")).batch_id
    one = "rowid = (SELECT min(rowid) FROM ingest_keys)"
    for column in ("key_hi", "key_lo"):
        with runtime.engine.begin() as conn:
            conn.execute(text(f"UPDATE ingest_keys SET {column} = "
                              f"CAST(CAST({column} AS TEXT) AS BLOB) WHERE {one}"))
        for options in ((), ("--deep",)):  # --deep: the same line, not the stream's refusal
            code, out, err = _verify(capsys, *options)
            assert code == 1, (column, out)
            assert f"ingest_keys: 1 row(s) {MISTYPED_RULE}" in err, (column, err)
            assert "ingest_keys and the audit trail DISAGREE: 1 problem(s)" in err, err
        with runtime.engine.connect() as conn, pytest.raises(PuhuiError) as refused:
            keyed_digests(conn, digest_subkey(runtime.audit.key))
        assert str(refused.value) == ("ingest_keys: a key half not stored as an integer "
                                      "(index rows rewritten by hand)")
        with runtime.engine.begin() as conn:  # back as it was: the next column alone
            conn.execute(text(f"UPDATE ingest_keys SET {column} = CAST({column} AS INTEGER) "
                              f"WHERE {one}"))
    code, out, err = _verify(capsys, "--deep")
    assert code == 0 and "ingest_keys agrees with the ledger: 100 key(s), keyed digests " \
        "compared" in out, err
    with runtime.engine.begin() as conn:
        conn.execute(text(f"UPDATE ingest_keys SET batch_id = CAST(batch_id AS BLOB) WHERE {one}"))
    code, out, err = _verify(capsys)
    assert code == 1 and f"ingest_keys: batch {a} holds 99 key(s) but loaded 100 row(s)" in err
    [line] = [x.strip() for x in err.splitlines() if "not in ingest_batches" in x]
    assert line.startswith("ingest_keys: 1 key(s) of 1 batch(es) not in ingest_batches")
    assert a not in line  # a batch id of another type: shown masked
    with runtime.engine.begin() as conn:
        conn.execute(text(f"UPDATE ingest_keys SET batch_id = CAST(batch_id AS TEXT) WHERE {one}"))
        # The ledger's compared columns are compared in Python: a BLOB is not the int.
        conn.execute(text("UPDATE ingest_batches SET rows = CAST(CAST(rows AS TEXT) AS BLOB), "
                          "bytes = CAST(CAST(bytes AS TEXT) AS BLOB)"))
    code, out, err = _verify(capsys)
    assert code == 1
    assert f"batch {a}: ingest_batches.rows is " in err and "but the audit trail says 100" in err
    assert f"batch {a}: ingest_batches.bytes is " in err and "recorded another value" in err
    assert "b'" not in err  # a BLOB whoever edited the row chose: shown masked


def test_audit_verify_trusts_an_index_built_from_the_raw_rows_and_rebuilt(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from puhui.ingest import batches
    from puhui.ingest.batches import FileIngestor
    from puhui.ingest.pseudonymize import pseudonym_key_bytes
    from puhui.validation import BatchValidator

    runtime, feed, ingestor, landing = _two_files(
        monkeypatch, warehouse_url, tmp_path, range(1, 1001), range(501, 1501))
    ingestor.ingest(_landed(feed, landing, DAY1, "_a"))
    with monkeypatch.context() as before_the_index:  # the code before 0008: no claims
        before_the_index.setattr(batches, "row_hashes", lambda *_, **__: None)
        before_the_index.setattr(batches, "ensure_key_index", lambda *_: None)
        before_the_index.setattr(batches.KeyIndex, "claim", lambda self, chunk: (chunk, 0))
        b = ingestor.ingest(_landed(feed, landing, DAY2, "_b"))
    assert b.rows_loaded == 1000  # 500 of a's keys loaded twice
    _forget_the_index()
    _payments(landing, DAY3, "c", range(1401, 1601))
    # Its backfill gives a the keys both loaded: b holds 500 keys of its 1,000 rows.
    assert ingestor.ingest(_landed(feed, landing, DAY3, "_c")).rows_loaded == 100
    code, out, err = _verify(capsys, "--deep")
    assert code == 0 and "ingest_keys agrees with the ledger: 1,600 key(s)" in out, err

    # The contract's key gains a column: the index is rebuilt with the next load.
    wider = feed.model_copy(update={"primary_key": ["txn_id", "txn_type"]})
    again = FileIngestor(
        runtime, wider, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key))
    _payments(landing, date(2026, 10, 3), "d", range(1551, 1651))
    d = again.ingest(_landed(wider, landing, date(2026, 10, 3), "_d"))
    assert d.rows_loaded == 50
    code, out, err = _verify(capsys, "--deep")
    assert code == 0 and "ingest_keys agrees with the ledger: 1,650 key(s)" in out, err
    assert "before the keyed digest" not in out

    # A cancelling forgery of b's keys (compared with the build's keyed digest) and of d's
    # (its load's): plain verify is blind to both, --deep is not.
    forged = [_forge_cancelling(runtime, batch) for batch in (b.batch_id, d.batch_id)]
    assert _verify(capsys)[0] == 0
    code, out, err = _verify(capsys, "--deep")
    assert code == 1
    assert "ingest_keys: feed mobile_payments's batches loaded before its key index was " \
        f"built hold 1,600 key(s), not those the build indexed ({KEYED_RULE})" in err, err
    assert f"ingest_keys: batch {d.batch_id} holds 50 key(s), not those it loaded " \
        f"({KEYED_RULE})" in err, err
    assert "ingest_keys and the audit trail DISAGREE: 2 problem(s)" in err
    for taken in forged:
        _unforge(runtime, taken)
    assert _verify(capsys, "--deep")[0] == 0

    # A key of b (loaded before the rebuild: the build's digest covers it) rewritten, a row
    # of d (loaded after it: its own load's digest) replaced.
    taken = _tamper_keys(runtime, rewrite=b.batch_id, replace=d.batch_id)
    code, out, err = _verify(capsys)
    assert code == 1
    assert "ingest_keys: feed mobile_payments's batches loaded before its key index was " \
        f"built hold 1,600 key(s), not those the build indexed ({DIGEST_RULE})" in err, err
    assert f"ingest_keys: batch {d.batch_id} holds 50 key(s), not those it loaded" in err
    assert "ingest_keys and the audit trail DISAGREE: 2 problem(s)" in err
    _untamper(runtime, taken)

    with runtime.engine.begin() as conn:  # one of b's keys (b loaded before the rebuild)
        conn.execute(text("DELETE FROM ingest_keys WHERE batch_id = :b AND key_hi = "
                          "(SELECT min(key_hi) FROM ingest_keys WHERE batch_id = :b)"),
                     {"b": b.batch_id})
    code, out, err = _verify(capsys)
    assert code == 1
    assert "ingest_keys: feed mobile_payments's batches loaded before its key index was " \
        "built hold 1,599 key(s) but the build indexed 1,600 (index rows deleted by hand" \
        in err, err


def test_audit_verify_reports_keys_on_a_duplicate_batch_or_on_no_batch(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The two branches the other tests do not reach: keys held by a batch that loaded
    nothing (a duplicate delivery), keys of a batch id the ledger does not have. Also: a
    batch loaded by the code before key digests (counted only, said once), and a load failing
    after claiming its keys and loaded again (no false alarm)."""
    from puhui.crashpoints import FAIL_ONCE_ENV
    from puhui.ingest.key_digest import KeyDigest, KeyedDigest

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime, feed, ingestor = _ingestor()
    landing = tmp_path / "landing"
    first = _payments(landing, DAY1, "a", range(1, 101))
    shutil.copy(first, first.with_name("mobile_payments_again.csv"))
    _payments(landing, DAY2, "b", range(51, 151))  # a correction's redelivery of 50 keys
    with monkeypatch.context() as before_digests:  # the code before digests recorded none
        before_digests.setattr(KeyDigest, "hex", lambda self: None)
        before_digests.setattr(KeyedDigest, "hex", lambda self: None)
        a = ingestor.ingest(_landed(feed, landing, DAY1, "_a")).batch_id
    again = ingestor.ingest(_landed(feed, landing, DAY1, "_again"))
    assert again.status == "duplicate"
    # The load fails once its keys and its event are written, before its commit: neither
    # stays, and the load done again records its own digest. In process on both dialects:
    # the claims and the event are in the load's one transaction, so a kill -9 there leaves
    # what this rollback does (kill -9 mid-load, both dialects: test_hostile_files).
    monkeypatch.setenv(FAIL_ONCE_ENV, "load-before-commit")
    with pytest.raises(ConnectionError):
        ingestor.ingest(_landed(feed, landing, DAY2, "_b"))
    assert ingestor.ingest(_landed(feed, landing, DAY2, "_b")).rows_loaded == 50
    code, out, err = _verify(capsys, "--deep")
    assert code == 0 and "ingest_keys agrees with the ledger: 150 key(s)" in out, err
    assert out.count("ingest_keys: 1 batch(es) recorded before key digests (keys counted, "
                     "not compared)") == 1, out
    assert out.count("ingest_keys: 1 batch(es) recorded before the keyed digest (checked by "
                     "the unkeyed digest or counted only)") == 1, out
    assert "before the keyed digest" not in _verify(capsys)[1]  # plain: no keyed check

    gone = "mobile_payments-20260930-0123456789ab"  # a batch id no ledger row has
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE ingest_keys SET batch_id = :d WHERE batch_id = :a AND "
                          "key_hi = (SELECT min(key_hi) FROM ingest_keys WHERE batch_id = :a)"),
                     {"d": again.batch_id, "a": a})
        conn.execute(text("INSERT INTO ingest_keys (key_hi, key_lo, batch_id, value_hash) "
                          "VALUES (1, 2, :g, 3)"), {"g": gone})
    code, out, err = _verify(capsys)
    assert code == 1
    assert f"ingest_keys: batch {again.batch_id} (duplicate) holds 1 key(s) but loaded no " \
        "row since its feed's key index (index rows added by hand)" in err, err
    assert f"ingest_keys: batch {a} holds 99 key(s) but loaded 100 row(s)" in err
    assert "ingest_keys: 1 key(s) of 1 batch(es) not in ingest_batches (index rows added " \
        f"by hand, or their batch's row deleted), e.g. '{gone}'" in err
    assert "ingest_keys and the audit trail DISAGREE: 3 problem(s)" in err


# --- audit verify counts each batch's raw rows -----------------------------------------------
# Before: verify counted ingest_keys, not raw_<partner>: a raw row deleted, added or moved to
# another batch by hand passed it (the index still held the key).

RAW = "raw_mobile_payments"


def test_audit_verify_counts_each_batch_s_raw_rows(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from puhui.crashpoints import FAIL_ONCE_ENV
    from puhui.ingest.quarantine import reject_batch, release_batch

    # A redelivery with corrections (500 repeats, 100 of them changed), a duplicate file, a
    # held batch released, another rejected, and a load failing before its commit then done.
    runtime, feed, ingestor, landing = _two_files(
        monkeypatch, warehouse_url, tmp_path, range(1, 1001), range(501, 1501),
        second_options={"changed": range(501, 601)})
    first = _payments(landing, DAY1, "a", range(1, 1001))
    shutil.copy(first, first.with_name("mobile_payments_again.csv"))
    _payments(landing, DAY3, "c", range(1401, 1701), bogus=1600)
    _payments(landing, DAY3, "d", range(2001, 2051), bogus=2010)
    a = ingestor.ingest(_landed(feed, landing, DAY1, "_a")).batch_id
    again = ingestor.ingest(_landed(feed, landing, DAY1, "_again"))
    monkeypatch.setenv(FAIL_ONCE_ENV, "load-before-commit")
    with pytest.raises(ConnectionError):
        ingestor.ingest(_landed(feed, landing, DAY2, "_b"))
    b = ingestor.ingest(_landed(feed, landing, DAY2, "_b")).batch_id
    held = ingestor.ingest(_landed(feed, landing, DAY3, "_c")).batch_id
    rejected = ingestor.ingest(_landed(feed, landing, DAY3, "_d")).batch_id
    assert again.status == "duplicate"
    assert release_batch(runtime, held, "partner confirmed").rows_loaded == 200
    assert reject_batch(runtime, rejected, "resent").status == "rejected"
    code, out, err = _verify(capsys)
    assert code == 0 and "raw tables agree with the ledger: 1,700 row(s)" in out, err

    columns = ", ".join(name for name, _ in stored_columns(feed))
    one = f"(SELECT min(row_number) FROM {RAW} WHERE batch_id = :b)"
    with runtime.engine.begin() as conn:
        conn.execute(text(f"DELETE FROM {RAW} WHERE batch_id = :b AND row_number = {one}"),
                     {"b": a})
        conn.execute(text(f"UPDATE {RAW} SET batch_id = :h WHERE batch_id = :b AND "
                          f"row_number = {one}"), {"h": held, "b": b})
        for batch in (rejected, "mobile_payments-20260930-0123456789ab"):
            conn.execute(text(f"INSERT INTO {RAW} (batch_id, row_number, {columns}) SELECT :n, "
                              f"row_number, {columns} FROM {RAW} WHERE batch_id = :b AND "
                              f"row_number = {one}"), {"n": batch, "b": a})
    code, out, err = _verify(capsys)
    assert code == 1
    lines = [x.strip() for x in err.splitlines()]
    assert f"{RAW}: batch {a} holds 999 row(s) but loaded 1,000 (rows deleted by hand, or " \
        "moved to another batch)" in lines, err
    assert f"{RAW}: batch {b} holds 499 row(s) but loaded 500 (rows deleted by hand, or " \
        "moved to another batch)" in lines
    assert f"{RAW}: batch {held} holds 201 row(s) but loaded 200 (rows added by hand, or " \
        "moved from another batch)" in lines
    assert f"{RAW}: batch {rejected} holds 1 row(s) but loaded 0 (rejected: rows added by " \
        "hand)" in lines
    assert f"{RAW}: 1 row(s) of 1 batch(es) that loaded nothing into it (not in " \
        "ingest_batches, or of another feed: rows added by hand), e.g. " \
        "'mobile_payments-20260930-0123456789ab'" in lines
    assert "raw tables and the audit trail DISAGREE: 5 problem(s)" in err
    assert "T2026" not in out + err and "raw tables agree" not in out


def test_audit_verify_reports_a_key_moved_between_batches_loaded_before_the_build(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Batches loaded before their feed's index was last built are compared with the build's
    event together (which of them holds a key no load recorded): a key moved from one to
    another kept the total, and each batch's count stayed at most its rows loaded (b, which
    loaded 500 of a's keys again before the index, holds 500 keys of 1,000 rows). The build
    now records a digest of each batch's digest too."""
    from puhui.ingest import batches

    runtime, feed, ingestor, landing = _two_files(
        monkeypatch, warehouse_url, tmp_path, range(1, 1001), range(501, 1501))
    a = ingestor.ingest(_landed(feed, landing, DAY1, "_a")).batch_id
    with monkeypatch.context() as before_the_index:  # the code before 0008: no claims
        before_the_index.setattr(batches, "row_hashes", lambda *_, **__: None)
        before_the_index.setattr(batches, "ensure_key_index", lambda *_: None)
        before_the_index.setattr(batches.KeyIndex, "claim", lambda self, chunk: (chunk, 0))
        b = ingestor.ingest(_landed(feed, landing, DAY2, "_b")).batch_id
    _forget_the_index()
    _payments(landing, DAY3, "c", range(4001, 4101))
    ingestor.ingest(_landed(feed, landing, DAY3, "_c"))  # its first use builds the index
    code, out, err = _verify(capsys, "--deep")
    assert code == 0 and "ingest_keys agrees with the ledger: 1,600 key(s)" in out, err
    assert "per-batch digests" not in out

    with runtime.engine.begin() as conn:  # a's key is b's now: a's row would load again
        conn.execute(text("UPDATE ingest_keys SET batch_id = :b WHERE batch_id = :a AND key_hi "
                          "= (SELECT min(key_hi) FROM ingest_keys WHERE batch_id = :a)"),
                     {"a": a, "b": b})
    for options in ((), ("--deep",)):
        code, out, err = _verify(capsys, *options)
        assert code == 1, out
        assert "ingest_keys: feed mobile_payments's batches loaded before its key index was " \
            "built hold the 1,500 key(s) the build indexed, not each in the batch it was " \
            "indexed in (keys_by_batch differs from the audit trail's: index rows moved " \
            "between batches by hand)" in err, err
        assert "ingest_keys and the audit trail DISAGREE: 1 problem(s)" in err
