"""Benchmark: what the raw rows' keyed digest costs a load, and `audit verify --deep`,
SQLite and PostgreSQL.

Setup (not measured): a fresh warehouse, ``raw_mobile_payments`` as the contract declares it,
ROWS payment rows as Arrow chunks of 100,000 (the loader's shape: the stored columns plus
``row_number``; pseudonyms as 64 hex characters, times in UTC, a NULL in the nullable
columns every 7th row). Measured, in one run per dialect and in one transaction as a load
writes them: ``bulk_insert`` of every chunk (the load's write), ``arrow_rows_mac`` of the
same chunks (what the load adds: the digest from the data it holds; wall and this process's
CPU time, which other work on shared cores does not inflate), and verify's
``rows_macs`` of the table (``--deep``: the rows streamed back and digested). Ratios are of
one run. The machine is shared: the load average is recorded.

Usage: python bench/bench_raw_rows_digest.py [--rows 1000000] [--quick]
Prints a table and writes bench/results/raw_rows_digest.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, write_results  # noqa: E402

CHUNK = 100_000
BATCH = "mobile_payments-20260930-0123456789ab"


def _chunks(rows: int) -> list:
    import pyarrow as pa

    start = datetime(2026, 9, 30, tzinfo=UTC)
    chunks = []
    for first in range(0, rows, CHUNK):
        n = min(CHUNK, rows - first)
        ids = range(first, first + n)
        chunks.append(
            pa.table(
                {
                    "row_number": pa.array([i + 1 for i in ids], pa.int64()),
                    "txn_id": [f"T{i:016d}" for i in ids],
                    "phone_key": [f"{i * 2654435761 % 2**64:064x}" for i in ids],
                    "txn_time": pa.array(
                        [start + timedelta(seconds=i) for i in ids], pa.timestamp("us", tz="UTC")
                    ),
                    "txn_type": ["BILL_PAY"] * n,
                    "amount": pa.array([None if i % 7 == 0 else 12.5 + i / 100 for i in ids]),
                    "merchant_category": [None if i % 7 == 3 else "GROCERY" for i in ids],
                    "days_past_due": pa.array(
                        [None if i % 7 == 5 else i % 90 for i in ids], pa.int64()
                    ),
                    "status": ["SUCCESS"] * n,
                }
            )
        )
    return chunks


def _measure(url: str, chunks: list) -> dict:
    from puhui.config import PartnersConfig, load_config
    from puhui.ingest.raw_tables import ensure_raw_table
    from puhui.raw_rows_digest import arrow_rows_mac
    from puhui.table_digests import RowsMac, Scoped, add_macs, rows_macs
    from puhui.warehouse.bulk import bulk_insert
    from puhui.warehouse.engine import get_engine

    engine = get_engine(url)
    feed = load_config(ROOT / "configs", PartnersConfig).get("mobile_payments")
    table = ensure_raw_table(engine, feed)
    key, constants = b"bench-raw-rows-digest-key-32byte", {"batch_id": BATCH}
    figures: dict = {}
    with engine.begin() as conn:
        started = time.perf_counter()
        for chunk in chunks:
            bulk_insert(conn, table, chunk, constants)
        figures["insert"] = time.perf_counter() - started
        started, cpu, written = time.perf_counter(), time.process_time(), RowsMac()
        for chunk in chunks:
            add_macs(written, arrow_rows_mac(conn.dialect, table, chunk, constants, key))
        figures["load_digest"] = time.perf_counter() - started
        figures["load_digest_cpu"] = time.process_time() - cpu  # this process only: shared cores
        figures["load_average"] = round(os.getloadavg()[0], 2)
    with engine.connect() as conn:
        started = time.perf_counter()
        read = rows_macs(conn, Scoped(table, ("batch_id",)), key)
        figures["verify_deep"] = time.perf_counter() - started
    assert read[BATCH].hex() == written.hex(), "the load's digest differs from verify's"
    figures["digest_per_insert"] = figures["load_digest"] / figures["insert"]
    return {k: round(v, 3) for k, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 rows")
    args = parser.parse_args()
    rows = 20_000 if args.quick else args.rows
    from puhui.settings import QUIET_ENVIRONMENT
    from puhui.throwaway_postgres import throwaway_postgres

    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    result: dict = {"benchmark": "raw_rows_digest", "machine": machine_facts(), "rows": rows}
    chunks = _chunks(rows)
    per_million = 1_000_000 / rows
    with tempfile.TemporaryDirectory(prefix="puhui-bench-") as tmp, throwaway_postgres() as pg:
        urls = {
            "sqlite": f"sqlite:///{Path(tmp) / 'warehouse.db'}",
            "postgresql": pg.create_database("bench_raw_rows_digest"),
        }
        for dialect, url in urls.items():
            result[dialect] = figures = _measure(url, chunks)
            print(
                f"{dialect}: {rows:,} rows; bulk insert {figures['insert']:.2f} s, the load's "
                f"digest {figures['load_digest']:.2f} s ({figures['digest_per_insert']:.0%} "
                f"of the insert; {figures['load_digest'] * per_million:.2f} s per 1M rows, "
                f"{figures['load_digest_cpu'] * per_million:.2f} s of CPU), "
                f"verify --deep's read-back digest {figures['verify_deep']:.2f} s "
                f"(load average {figures['load_average']})",
                flush=True,
            )
    write_results("raw_rows_digest", result, args.quick)


if __name__ == "__main__":
    main()
