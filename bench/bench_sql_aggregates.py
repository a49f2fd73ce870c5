"""Benchmark: a partition's features by SQL aggregates in PostgreSQL vs pandas, per partition.

On one throwaway PostgreSQL server, ``bench_scale``'s data (generated, ingested through the
real path, partition-read indexes built): the register and first days once, then the
features of every customer as of the last day, one partition at a time (one at a time, so
each partition's time is its own), by each method in its own child process:

- ``pandas``: what :func:`puhui.features.partitioned.build_partition` runs, its read and
  its compute timed apart (read the partition's rows
  through the covering indexes, COPY -> Arrow -> pandas, running totals in numpy);
- ``sql``: :func:`puhui.features.sql_aggregates.build_partition_sql` (requests COPYed to a
  temporary table, per-request LATERAL FILTERed aggregates and latest values in the server,
  only the per-request results come back).

Methods alternate (pandas, sql, pandas, sql, ... for ``--repeats``) so that a change in the
shared machine's load falls on both. While a child runs, the parent samples the resident
memory of the child and of every PostgreSQL process (``bench_scale.MemorySampler``). Every
partition's two results are compared (counts exactly, sums within 1e-9 relative).

Usage: python bench/bench_sql_aggregates.py [--users 200000] [--history-days 60]
       [--repeats 2] [--quick]
Writes bench/results/sql-aggregates.json (``--quick``: 3,000 customers, 2 partitions,
sql-aggregates-quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_scale import END, MemorySampler, prepare_size  # noqa: E402
from bench.results_file import machine_facts, write_results  # noqa: E402

METHODS = ("pandas", "sql")


def client(method: str, partitions: int, out: Path) -> None:
    """Every partition's features by ``method``, each timed, each to Parquet under ``out``."""
    import pandas as pd

    from puhui.config import FeaturesConfig, load_config
    from puhui.features.builder import build_features
    from puhui.features.partitioned import ensure_partition_indexes
    from puhui.features.sources import first_event_days, load_partition_frames, load_register
    from puhui.features.sql_aggregates import build_partition_sql
    from puhui.partitioning import all_partitions
    from puhui.settings import load_settings
    from puhui.warehouse.engine import get_engine

    settings = load_settings()
    engine = get_engine(settings.warehouse_url)
    spec = load_config(settings.config_dir, FeaturesConfig)
    ensure_partition_indexes(engine, spec)
    first_day = first_event_days(engine, spec, END)
    register = load_register(engine, spec, END, partitions)
    seconds: list[float] = []
    read_seconds: list[float] = []
    customers = 0
    for part in all_partitions(partitions):
        started = time.perf_counter()
        mine = register.part(part.bucket)
        if method == "pandas":
            # build_partition's two steps, timed apart: the read, then the builder.
            frames = load_partition_frames(engine, spec, END, mine, part, first_day)
            read_seconds.append(round(time.perf_counter() - started, 2))
            requests = pd.DataFrame({"person_key": mine["person_key"], "as_of_date": END})
            features = build_features(frames, requests, spec)
        else:
            features = build_partition_sql(engine, spec, END, mine, part, first_day)
        seconds.append(round(time.perf_counter() - started, 2))
        customers += len(features)
        features.to_parquet(out / f"{method}-{part.bucket:05d}.parquet", index=False)
        print(f"  {method} partition {part.bucket}: {len(features):,} customers in "
              f"{seconds[-1]:.1f} s", flush=True)
    (out / f"{method}.json").write_text(json.dumps({
        "partition_seconds": seconds, "pandas_read_seconds": read_seconds,
        "customers": customers,
        "client_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


def compare(out: Path, partitions: int) -> dict:
    """The two methods' features, partition by partition: counts exactly (every feature
    that is not a float sum or a ratio of one), the rest within 1e-9 relative."""
    import numpy as np
    import pandas as pd

    differing: set[str] = set()
    worst = 0.0
    for bucket in range(partitions):
        want = pd.read_parquet(out / f"pandas-{bucket:05d}.parquet")
        got = pd.read_parquet(out / f"sql-{bucket:05d}.parquet")
        assert list(want.columns) == list(got.columns) and len(want) == len(got)
        for name in want.columns:
            a, b = want[name], got[name]
            if not pd.api.types.is_float_dtype(a):
                if not a.equals(b):
                    differing.add(name)
                continue
            x, y = a.to_numpy(), b.to_numpy()
            if not np.array_equal(np.isnan(x), np.isnan(y)):
                differing.add(name)
                continue
            both = ~np.isnan(x)
            rel = np.abs(x[both] - y[both]) / np.maximum(np.abs(x[both]), 1e-12)
            worst = max(worst, float(rel.max(initial=0.0)))
            if not np.allclose(x[both], y[both], rtol=1e-9, atol=1e-9):
                differing.add(name)
    return {"features_differing": sorted(differing), "worst_relative_difference": worst}


def measure(server, method: str, partitions: int, out: Path) -> dict:  # noqa: ANN001
    child = subprocess.Popen([sys.executable, __file__, "--client", method, str(out),
                              "--partitions", str(partitions)])
    with MemorySampler(child.pid, server.data_dir) as sampler:
        code = child.wait()
    if code != 0:
        raise SystemExit(f"{method} client failed (exit {code})")
    measured = json.loads((out / f"{method}.json").read_text())
    postgres = [v for k, v in sampler.peaks.items() if k.startswith("postgres")]
    if not measured["pandas_read_seconds"]:
        del measured["pandas_read_seconds"]
    else:
        measured["pandas_read_total_seconds"] = round(sum(measured["pandas_read_seconds"]), 1)
    return {**measured, "total_seconds": round(sum(measured["partition_seconds"]), 1),
            "postgres_largest_process_peak_mib": round(max(postgres, default=0) / 2**20),
            "all_processes_sum_peak_mib": round(sampler.total_peak / 2**20)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--history-days", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3,000 customers, 2 partitions")
    parser.add_argument("--partitions", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client[0], args.partitions, Path(args.client[1]))
        return 0
    from puhui.features.partitioned import CUSTOMERS_PER_PARTITION
    from puhui.partitioning import partition_count
    from puhui.throwaway_postgres import throwaway_postgres

    users = 3_000 if args.quick else args.users
    partitions = 2 if args.quick else partition_count(users, CUSTOMERS_PER_PARTITION)
    runs: list[dict] = []
    with throwaway_postgres() as server, tempfile.TemporaryDirectory(prefix="sqlagg-") as tmp:
        rows, generate_s, ingest_s, index_s = prepare_size(server, users, args.history_days,
                                                           Path(tmp))
        for repeat in range(args.repeats):
            for method in METHODS:
                out = Path(tmp) / f"run-{repeat}"
                out.mkdir(exist_ok=True)
                load = os.getloadavg()[0]
                result = measure(server, method, partitions, out)
                runs.append({"repeat": repeat, "method": method,
                             "load_average_1min_at_start": round(load, 1), **result})
                print(json.dumps(runs[-1]), flush=True)
            runs[-1]["comparison"] = compare(out, partitions)
            print(json.dumps(runs[-1]["comparison"]), flush=True)
    summary = {m: {"median_total_seconds": statistics.median(
                       r["total_seconds"] for r in runs if r["method"] == m),
                   "median_partition_seconds": statistics.median(
                       s for r in runs if r["method"] == m for s in r["partition_seconds"]),
                   "median_pandas_read_seconds_total": statistics.median(
                       r.get("pandas_read_total_seconds", 0) for r in runs if r["method"] == m),
                   "client_peak_rss_mib_max": max(
                       r["client_peak_rss_mib"] for r in runs if r["method"] == m),
                   "postgres_largest_process_peak_mib_max": max(
                       r["postgres_largest_process_peak_mib"] for r in runs
                       if r["method"] == m)}
               for m in METHODS}
    result = {"benchmark": "sql-aggregates", "machine": machine_facts(), "users": users,
              "history_days": args.history_days, "raw_rows": rows, "partitions": partitions,
              "generate_seconds": round(generate_s, 1), "ingest_seconds": round(ingest_s, 1),
              "index_build_seconds": round(index_s, 1), "runs": runs, "summary": summary,
              "sql_over_pandas_time": round(summary["sql"]["median_total_seconds"]
                                            / summary["pandas"]["median_total_seconds"], 2)}
    write_results("sql-aggregates", result, args.quick)
    print(f"\n{'method':>7} {'median total s':>14} {'median partition s':>18} "
          f"{'client MiB':>10} {'pg max MiB':>10}")
    for method, figures in summary.items():
        print(f"{method:>7} {figures['median_total_seconds']:>14.1f} "
              f"{figures['median_partition_seconds']:>18.2f} "
              f"{figures['client_peak_rss_mib_max']:>10,} "
              f"{figures['postgres_largest_process_peak_mib_max']:>10,}")
    print(f"sql / pandas time: {result['sql_over_pandas_time']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
