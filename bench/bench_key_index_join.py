"""Benchmark: the key index's join of a staged chunk with ``ingest_keys``, by index size.

A chunk that repeats earlier keys is staged and joined with the index (``KeyIndex.claim``).
The planner's hash join reads the whole index per chunk; probing the index once per staged
key (nested loop, hash and merge joins off) reads only the staged keys' leaves. Which is
faster depends on the index's size against the chunk's: this measures both plans (and the
planner's with JIT off) for a chunk of ``--stage`` keys, half of them (at most half the
index) repeats, against indexes of ``--sizes`` keys, on a throwaway PostgreSQL; alternating,
median of ``--repeats``. The rows come back as the claim reads them (COPY CSV into Arrow).

Usage: python bench/bench_key_index_join.py [--sizes 1000,100000,337000,674000,1000000,3000000]
    [--stage 337000] [--repeats 3] [--quick]
Prints a table and writes bench/results/key_index_join.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, write_results  # noqa: E402

PLANS = {
    "planner": [],
    "planner_jit_off": ["jit = off"],
    "probes_jit_off": ["enable_hashjoin = off", "enable_mergejoin = off", "jit = off"],
}
JOIN = ("SELECT s.row_number, k.batch_id, "
        "CASE WHEN k.value_hash = s.value_hash THEN 1 ELSE 0 END AS same "
        "FROM stage s JOIN keys k ON k.key_hi = s.key_hi AND k.key_lo = s.key_lo")
TYPES = {"row_number": pa.int64(), "batch_id": pa.string(), "same": pa.int64()}


def measure(sizes: list[int], stage_rows: int, repeats: int) -> dict[str, dict[str, object]]:
    from sqlalchemy import BigInteger, Column, MetaData, Table, Text, create_engine, text

    from puhui.throwaway_postgres import throwaway_postgres
    from puhui.warehouse.bulk import bulk_insert
    from puhui.warehouse.copy_out import query_arrow

    metadata = MetaData()
    keys = Table("keys", metadata, Column("key_hi", BigInteger), Column("key_lo", BigInteger),
                 Column("batch_id", Text), Column("value_hash", BigInteger))
    stage = Table("stage", metadata, *(Column(n, BigInteger) for n in
                                       ("key_hi", "key_lo", "value_hash", "row_number")))
    rng = np.random.default_rng(1)
    out: dict[str, dict[str, object]] = {}
    with throwaway_postgres() as pg:
        engine = create_engine(pg.create_database("key_join"))
        try:
            for size in sizes:
                hi, lo = (rng.integers(-2**62, 2**62, size) for _ in range(2))
                staged_hi, staged_lo = (rng.integers(-2**62, 2**62, stage_rows)
                                        for _ in range(2))
                repeats_in = min(size, stage_rows) // 2
                staged_hi[:repeats_in], staged_lo[:repeats_in] = hi[:repeats_in], lo[:repeats_in]
                order = np.argsort(staged_hi)  # the claim stages in key order
                with engine.begin() as conn:
                    conn.execute(text("DROP TABLE IF EXISTS keys; DROP TABLE IF EXISTS stage"))
                    conn.execute(text("CREATE TABLE keys (key_hi bigint, key_lo bigint, "
                                      "batch_id text, value_hash bigint, "
                                      "PRIMARY KEY (key_hi, key_lo))"))
                    conn.execute(text("CREATE TABLE stage (key_hi bigint, key_lo bigint, "
                                      "value_hash bigint, row_number bigint)"))
                    bulk_insert(conn, keys, pa.table({
                        "key_hi": hi, "key_lo": lo, "value_hash": hi,
                        "batch_id": pa.array(["mobile_payments-20260930-0123456789ab"] * size)}))
                    bulk_insert(conn, stage, pa.table({
                        "key_hi": staged_hi[order], "key_lo": staged_lo[order],
                        "value_hash": staged_hi[order], "row_number": np.arange(stage_rows)}))
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(text("VACUUM ANALYZE keys"))
                    conn.execute(text("VACUUM ANALYZE stage"))
                runs: dict[str, list[float]] = {plan: [] for plan in PLANS}
                for _ in range(repeats):
                    for plan, settings in PLANS.items():
                        with engine.begin() as conn:
                            for setting in settings:
                                conn.execute(text(f"SET LOCAL {setting}"))
                            started = time.perf_counter()
                            found = query_arrow(conn, JOIN, TYPES)
                            runs[plan].append(time.perf_counter() - started)
                        assert found.num_rows == repeats_in
                out[str(size)] = {plan: {"median_seconds": round(statistics.median(v), 3),
                                         "runs_seconds": [round(x, 3) for x in v]}
                                  for plan, v in runs.items()}
                print(f"  index {size:>10,}: " + ", ".join(
                    f"{plan} {out[str(size)][plan]['median_seconds']:.3f} s" for plan in PLANS),
                    flush=True)
        finally:
            engine.dispose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,100000,337000,674000,1000000,3000000")
    parser.add_argument("--stage", type=int, default=337_000,
                        help="staged keys: one chunk of the ingest bench's 1M-row file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1k and 10k keys, 10k staged")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.stage, args.repeats = [1_000, 10_000], 10_000, 1
    print(f"join of {args.stage:,} staged keys with indexes of {sizes} keys...", flush=True)
    result = {"stage_rows": args.stage, "repeats": args.repeats,
              "by_index_size": measure(sizes, args.stage, args.repeats),
              "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
              **machine_facts()}
    write_results("key_index_join", result, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
