"""Benchmark: `puhui audit verify --no-repair` on a warehouse whose key index holds ~1M keys,
SQLite and PostgreSQL, wall and CPU of a fresh process each run.

Setup (not measured): a fresh PUHUI_HOME, mobile_payments ingested with the library as the
ingest benchmark makes its files (``bench/bench_ingest.py``): a 2,000-row warm-up file, a
file of ROWS rows and a redelivery of ROWS rows repeating the first file's second half, so
``ingest_keys`` holds 2,000 + 1.5 x ROWS keys over three batches (one with duplicates). The
same into a throwaway PostgreSQL. No MLflow store: verify checks the trail, the ledger and
the key index. The machine is shared: the load average is recorded with each run.

Also, in this process, the keyed digest's part alone (``keyed_digests``: the keys streamed in
chunks and digested per batch, as verify does), ``runs`` times, wall and CPU; and
``audit verify --deep``, which hashes model files too (none here); and the raw tables' rows
counted per batch alone (``raw_row_counts``, one GROUP BY per table: verify's share for them).

Usage: python bench/bench_verify_keys.py [--rows 700000] [--runs 3] [--label NAME] [--quick]
Prints a table and writes bench/results/verify_keys-<label>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_audit_verify import measure  # noqa: E402
from bench.bench_ingest import KEY, add_redelivery, ingest_once, landing_for  # noqa: E402
from bench.results_file import machine_facts, write_results  # noqa: E402

AUDIT_KEY = "bench-audit-9876543210zyxwvutsrqponmlkjihgfedcba"


def _prepare(landing: Path, home: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PUHUI_", "PREFECT_", "MLFLOW_", "GX_"))}
    env.update({"PUHUI_HOME": str(home), "PUHUI_WAREHOUSE_URL": url, "PUHUI_ACTOR": "bench",
                "PUHUI_PSEUDONYM_KEY": KEY, "PUHUI_AUDIT_KEY": AUDIT_KEY,
                "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"})
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        ingest_once(landing)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return env


def _keys(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM ingest_keys")).scalar_one()
    engine.dispose()
    return int(count)


def _keyed_stream(url: str) -> dict:
    import time

    from sqlalchemy import create_engine

    from puhui.ingest.key_digest import digest_subkey, keyed_digests

    engine = create_engine(url)
    with engine.connect() as conn:
        wall, cpu = time.perf_counter(), time.process_time()
        batches = keyed_digests(conn, digest_subkey(AUDIT_KEY.encode()))
        figures = {"wall": round(time.perf_counter() - wall, 3),
                   "cpu": round(time.process_time() - cpu, 3),
                   "load": round(os.getloadavg()[0], 2),
                   "keys": sum(d.count for d in batches.values())}
    engine.dispose()
    return figures


def _raw_counts(url: str) -> dict:
    """What verify adds for the raw tables: their rows counted per batch (one GROUP BY per
    table) in a snapshot, as ``key_index_problems`` reads them."""
    import time

    from sqlalchemy import create_engine

    from puhui.ingest.ledger import raw_row_counts
    from puhui.warehouse.engine import snapshot

    engine = create_engine(url)
    with snapshot(engine) as conn:
        wall, cpu = time.perf_counter(), time.process_time()
        counts = raw_row_counts(conn, ["mobile_payments"])
        figures = {"wall": round(time.perf_counter() - wall, 3),
                   "cpu": round(time.process_time() - cpu, 3),
                   "load": round(os.getloadavg()[0], 2),
                   "rows": sum(sum((c or {}).values()) for c in counts.values())}
    engine.dispose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=700_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true", help="20,000 rows, one run")
    args = parser.parse_args()
    rows, runs = (20_000, 1) if args.quick else (args.rows, args.runs)
    from puhui.settings import QUIET_ENVIRONMENT
    from puhui.throwaway_postgres import throwaway_postgres

    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    result: dict = {"benchmark": "verify_keys", "machine": machine_facts(), "rows": rows}
    with tempfile.TemporaryDirectory(prefix="puhui-bench-") as tmp, throwaway_postgres() as pg:
        work = Path(tmp)
        os.chmod(work, 0o755)
        landing = landing_for(rows, work)
        add_redelivery(landing, rows)
        homes = {"sqlite": (work / "home-sqlite",
                            f"sqlite:///{work / 'home-sqlite' / 'warehouse.db'}"),
                 "postgresql": (work / "home-pg", pg.create_database("bench_verify_keys"))}
        for dialect, (home, url) in homes.items():
            home.mkdir()
            env = _prepare(landing, home, url)
            figures = [measure(["audit", "verify", "--no-repair"], env) for _ in range(runs)]
            deep = [measure(["audit", "verify", "--no-repair", "--deep"], env)
                    for _ in range(runs)]
            streamed = [_keyed_stream(url) for _ in range(runs)]
            raw = [_raw_counts(url) for _ in range(runs)]
            result[dialect] = {
                "index_keys": _keys(url), "runs": figures,
                "median_wall": statistics.median(f["wall"] for f in figures),
                "median_cpu": statistics.median(f["cpu"] for f in figures),
                "deep_runs": deep,
                "deep_median_wall": statistics.median(f["wall"] for f in deep),
                "deep_median_cpu": statistics.median(f["cpu"] for f in deep),
                "keyed_stream_runs": streamed,
                "keyed_stream_median_wall": statistics.median(f["wall"] for f in streamed),
                "keyed_stream_median_cpu": statistics.median(f["cpu"] for f in streamed),
                "raw_counts_runs": raw,
                "raw_counts_median_wall": statistics.median(f["wall"] for f in raw)}
            print(f"{dialect}: {result[dialect]['index_keys']:,} keys, audit verify "
                  f"wall {result[dialect]['median_wall']:.2f} s, "
                  f"cpu {result[dialect]['median_cpu']:.2f} s; --deep wall "
                  f"{result[dialect]['deep_median_wall']:.2f} s; keyed stream alone wall "
                  f"{result[dialect]['keyed_stream_median_wall']:.2f} s, cpu "
                  f"{result[dialect]['keyed_stream_median_cpu']:.2f} s; raw rows "
                  f"({raw[0]['rows']:,}) counted per batch alone wall "
                  f"{result[dialect]['raw_counts_median_wall']:.2f} s", flush=True)
    write_results(f"verify_keys{'-' + args.label if args.label else ''}", result, args.quick)


if __name__ == "__main__":
    main()
