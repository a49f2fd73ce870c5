"""Benchmark: what the profiles' row digests cost their writer and `audit verify`, SQLite and
PostgreSQL.

Setup (not measured): a fresh warehouse, ROWS customers' profiles staged as 8 Parquet
partitions (the columns and JSON sizes of a refresh without the recommender). Measured, in
one run per dialect: ``swap_profiles`` (history and current replaced, with its
``profiles.swapped`` event, which reads the rows back to digest them); the digest's read-back
alone (``recorded`` on the date's rows: the writer's added cost); verify's count of every
scope (``rows_counts``: plain verify) and its keyed digests (``rows_macs``: ``--deep``) of
both profile tables. Then a second date swapped in (history: two dates) and ``--deep``'s
table check of both profile tables over every date and with ``--since`` the second; on
SQLite, how long a writer waits to begin a transaction while ``--deep`` streams the history
in verify's read-only snapshot (a deferred ``BEGIN``) against the ``BEGIN IMMEDIATE`` one
verify took before. The machine is shared: the load average is recorded.

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
AS_OF, AS_OF2 = date(2026, 9, 30), date(2026, 10, 1)


def _stage(directory: Path, rows: int, parts: int = 8, as_of: date = AS_OF) -> None:
    import pandas as pd

    from puhui.profiles.refresh import stage_partition

    people = range(rows)
    reasons = json.dumps({"decision": "approve", "top": [
        {"code": f"R{i}", "text": "income below the segment's median"} for i in range(3)]})
    frame = pd.DataFrame({
        "person_key": [f"{i:064x}" for i in people],
        "as_of_date": [as_of] * rows,
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


def _writer_wait(engine, subkey: bytes, read_only: bool) -> dict:  # noqa: ANN001
    """A writer's wait for its transaction while ``--deep`` streams the history in verify's
    snapshot, and that stream's wall time."""
    import threading

    from puhui.table_digests import PROFILES_HISTORY, rows_macs
    from puhui.warehouse.engine import snapshot

    started, streamed = threading.Event(), {}

    def deep() -> None:
        with snapshot(engine, read_only=read_only) as conn:
            conn.exec_driver_sql("SELECT 1 FROM user_profile_history LIMIT 1").all()
            started.set()
            _, streamed["deep"] = _timed(lambda: rows_macs(conn, PROFILES_HISTORY, subkey))

    reader = threading.Thread(target=deep)
    reader.start()
    started.wait()
    time.sleep(0.2)
    wall = time.perf_counter()
    with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE, the write lock
        conn.exec_driver_sql("SELECT 1").all()
    waited = round(time.perf_counter() - wall, 3)
    reader.join()
    return {"writer_waited": waited, "deep_wall": streamed["deep"]["wall"],
            "load": streamed["deep"]["load"]}


def _measure(url: str, staged: Path, staged2: Path) -> dict:
    from puhui.audit import AuditWriter
    from puhui.profiles.refresh import swap_profiles
    from puhui.table_digests import (
        PROFILES_CURRENT,
        PROFILES_HISTORY,
        WRITERS,
        recorded,
        rows_counts,
        rows_macs,
        table_problems,
        writer_subkey,
    )
    from puhui.warehouse.engine import get_engine
    from puhui.warehouse.schema import user_profile_history

    engine = get_engine(url)
    audit = AuditWriter(actor="bench", config_hash="bench", code_version="bench", key=AUDIT_KEY)
    subkey = writer_subkey(audit)
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
    swap_profiles(engine, AS_OF2, staged2, 8, None, audit)  # history: two dates
    both = (PROFILES_CURRENT, PROFILES_HISTORY)
    for name, since in (("deep_two_dates", None), ("deep_since_second", AS_OF2)):
        check, figures[name] = _timed(lambda s=since: table_problems(engine, both, WRITERS,
                                                                     subkey, s))
        assert not check.problems, check.problems
    if engine.dialect.name == "sqlite":
        figures["writer_wait"] = {mode: _writer_wait(engine, subkey, mode == "read_only")
                                  for mode in ("begin_immediate", "read_only")}
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
        staged, staged2 = work / "staged", work / "staged2"
        _stage(staged, rows)
        _stage(staged2, rows, as_of=AS_OF2)
        urls = {"sqlite": f"sqlite:///{work / 'warehouse.db'}",
                "postgresql": pg.create_database("bench_table_digests")}
        for dialect, url in urls.items():
            get_engine(url)  # migrated, not measured
            result[dialect] = figures = _measure(url, staged, staged2)
            print(f"{dialect}: {rows:,} profiles; swap wall {figures['swap']['wall']:.2f} s, "
                  f"of which the digest's read-back ~{figures['writer_digest']['wall']:.2f} s "
                  f"({figures['writer_share']:.0%}); verify counts "
                  f"{figures['verify_counts']['wall']:.2f} s, --deep digests "
                  f"{figures['verify_deep']['wall']:.2f} s (both tables); two dates: --deep "
                  f"{figures['deep_two_dates']['wall']:.2f} s, --since the second "
                  f"{figures['deep_since_second']['wall']:.2f} s", flush=True)
            for mode, wait in figures.get("writer_wait", {}).items():
                print(f"  {mode}: a writer waited {wait['writer_waited']:.2f} s while --deep "
                      f"streamed the history for {wait['deep_wall']:.2f} s", flush=True)
    write_results("table_digests", result, args.quick)


if __name__ == "__main__":
    main()
