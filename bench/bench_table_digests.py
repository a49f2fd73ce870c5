"""Benchmark: what the profiles' row digests cost their writer and `audit verify`, SQLite and
PostgreSQL.

Setup (not measured): a fresh warehouse, ROWS customers' profiles staged as 8 Parquet
partitions (the columns and JSON sizes of a refresh without the recommender). Measured, in
one run per dialect: ``swap_profiles`` (history and current replaced, with its
``profiles.swapped`` event, which reads the rows back to digest them); the digest's read-back
alone (``recorded`` on the date's rows: the writer's added cost); verify's count of every
scope (``rows_counts``: plain verify) and its keyed digests (``rows_macs``: ``--deep``) of
both profile tables. The machine is shared: the load average is recorded.

Usage: python bench/bench_table_digests.py [--rows 300000] [--quick]
Prints a table and writes bench/results/table_digests.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, write_results  # noqa: E402

AUDIT_KEY = b"bench-audit-9876543210zyxwvutsrqponmlkjihgfedcba"
AS_OF = date(2026, 9, 30)


def _stage(directory: Path, rows: int, parts: int = 8) -> None:
    import pandas as pd

    from puhui.profiles.refresh import stage_partition

    people = range(rows)
    reasons = json.dumps({"decision": "approve", "top": [
        {"code": f"R{i}", "text": "income below the segment's median"} for i in range(3)]})
    frame = pd.DataFrame({
        "person_key": [f"{i:064x}" for i in people],
        "as_of_date": [AS_OF] * rows,
        "customer_id": [f"C{i:09d}" for i in people],
        "risk_score": [(i % 997) / 1000 for i in people],
        "risk_grade": ["C"] * rows,
        "reasons": [reasons] * rows,
        "recommended_products": [json.dumps({"products": [], "reason": "no champion"})] * rows,
        "non_personalised_products": [json.dumps(["savings", "bill_pay", "insurance"])] * rows,
        "segment_tags": [json.dumps(["rural_farmer", "thin_file"])] * rows,
        "model_versions": [json.dumps({"risk": {"name": "credit_risk", "version": "3"}})] * rows,
        "personalisation_opt_out": [i % 11 == 0 for i in people],
        "risk_model_version": ["3"] * rows,
        "recommender_model_version": [None] * rows,
    })
    for part in range(parts):
        stage_partition(directory, part, frame.iloc[part::parts])


def _timed(work) -> tuple[object, dict]:  # noqa: ANN001
    wall, cpu = time.perf_counter(), time.process_time()
    out = work()
    return out, {"wall": round(time.perf_counter() - wall, 3),
                 "cpu": round(time.process_time() - cpu, 3),
                 "load": round(os.getloadavg()[0], 2)}


def _measure(url: str, staged: Path) -> dict:
    from puhui.audit import AuditWriter
    from puhui.profiles.refresh import swap_profiles
    from puhui.table_digests import (
        PROFILES_CURRENT,
        PROFILES_HISTORY,
        recorded,
        rows_counts,
        rows_macs,
        rows_subkey,
    )
    from puhui.warehouse.engine import get_engine
    from puhui.warehouse.schema import user_profile_history

    engine = get_engine(url)
    audit = AuditWriter(actor="bench", config_hash="bench", code_version="bench", key=AUDIT_KEY)
    subkey = rows_subkey(AUDIT_KEY)
    figures: dict = {}
    _, figures["swap"] = _timed(lambda: swap_profiles(engine, AS_OF, staged, 8, None, audit))
    with engine.begin() as conn:
        _, figures["writer_digest"] = _timed(lambda: recorded(
            conn, PROFILES_HISTORY, subkey, user_profile_history.c.as_of_date == AS_OF))
    with engine.connect() as conn:
        _, figures["verify_counts"] = _timed(lambda: [rows_counts(conn, s) for s in (
            PROFILES_CURRENT, PROFILES_HISTORY)])
        _, figures["verify_deep"] = _timed(lambda: [rows_macs(conn, s, subkey) for s in (
            PROFILES_CURRENT, PROFILES_HISTORY)])
    figures["writer_share"] = round(figures["writer_digest"]["wall"] / figures["swap"]["wall"], 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--quick", action="store_true", help="5,000 rows")
    args = parser.parse_args()
    rows = 5_000 if args.quick else args.rows
    from puhui.settings import QUIET_ENVIRONMENT
    from puhui.throwaway_postgres import throwaway_postgres
    from puhui.warehouse.engine import get_engine

    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    result: dict = {"benchmark": "table_digests", "machine": machine_facts(), "rows": rows}
    with tempfile.TemporaryDirectory(prefix="puhui-bench-") as tmp, throwaway_postgres() as pg:
        work = Path(tmp)
        staged = work / "staged"
        _stage(staged, rows)
        urls = {"sqlite": f"sqlite:///{work / 'warehouse.db'}",
                "postgresql": pg.create_database("bench_table_digests")}
        for dialect, url in urls.items():
            get_engine(url)  # migrated, not measured
            result[dialect] = figures = _measure(url, staged)
            print(f"{dialect}: {rows:,} profiles; swap wall {figures['swap']['wall']:.2f} s, "
                  f"of which the digest's read-back ~{figures['writer_digest']['wall']:.2f} s "
                  f"({figures['writer_share']:.0%}); verify counts "
                  f"{figures['verify_counts']['wall']:.2f} s, --deep digests "
                  f"{figures['verify_deep']['wall']:.2f} s (both tables)", flush=True)
    write_results("table_digests", result, args.quick)


if __name__ == "__main__":
    main()
