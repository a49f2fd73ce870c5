"""Benchmark: what the partition-read index costs a load, on PostgreSQL.

The feature build's partition reads are served by a covering B-tree on (phone_key, txn_time)
of ``raw_mobile_payments`` (``puhui.features.partitioned.ensure_partition_indexes``), built
after the bulk load. Every later load maintains it. This measures that cost with the ingest
benchmark's file and method (``bench/bench_ingest.py``: a 1M-row file, a warmed-up process,
fresh databases, runs alternating, medians): puhui into a table without the index (as the
ingest benchmark), puhui into a table that has it, and ``psql \\copy`` of the same file.

Usage: python bench/bench_scale_ingest.py [--rows 1000000] [--repeats 3]
Writes bench/results/scale-ingest-index.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_ingest import (  # noqa: E402
    DELIVERY,
    KEY,
    WARM_UP,
    delivery_file,
    postgres_and_landing,
    psql_copy_seconds,
    quiet_server,
)
from bench.results_file import machine_facts, write_results  # noqa: E402


def ingest_timed(landing: Path, with_index: bool) -> float:
    """The ingest benchmark's timed load; the index (if asked) is built after the warm-up
    file created the table, so the timed 1M rows go into an indexed table."""
    from sqlalchemy import text

    from puhui.config import FeaturesConfig, PartnersConfig, load_config
    from puhui.features.partitioned import partition_read_indexes
    from puhui.ingest.batches import FileIngestor
    from puhui.ingest.pseudonymize import pseudonym_key_bytes
    from puhui.landing import list_landed_files
    from puhui.runtime import open_runtime
    from puhui.validation import BatchValidator

    runtime = open_runtime()
    config = runtime.settings.config_dir
    feed = load_config(config, PartnersConfig).get("mobile_payments")
    validator = BatchValidator(expectations_dir=runtime.settings.expectations_dir)
    ingestor = FileIngestor(runtime, feed, validator, pseudonym_key_bytes(KEY))
    (warm,) = list_landed_files(feed, str(landing), WARM_UP)
    assert ingestor.ingest(warm).status == "accepted"
    if with_index:
        statement = partition_read_indexes(load_config(config, FeaturesConfig))[
            "ix_raw_mobile_payments_partition_read"]
        with runtime.engine.begin() as conn:
            conn.execute(text(statement))
    (landed,) = list_landed_files(feed, str(landing), DELIVERY)
    started = time.perf_counter()
    outcome = ingestor.ingest(landed)
    seconds = time.perf_counter() - started
    assert outcome.status == "accepted", outcome
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("PUHUI_PSEUDONYM_KEY", KEY)
    runs: dict[str, list[float]] = {"without_index": [], "with_index": [], "psql_copy": []}
    with postgres_and_landing(args.rows) as (pg, workdir, landing):
        path = delivery_file(landing)
        copy_db = pg.create_database("bench_copy").rsplit("/", 1)[-1]
        for run in range(args.repeats):
            for kind in ("without_index", "with_index"):
                name = f"bench_{kind}_{run}"
                os.environ.update({"PUHUI_WAREHOUSE_URL": pg.create_database(name),
                                   "PUHUI_HOME": str(workdir / f"home-{kind}-{run}")})
                runs[kind].append(ingest_timed(landing, kind == "with_index"))
                quiet_server(pg, name, "raw_mobile_payments")
            runs["psql_copy"].append(psql_copy_seconds(pg, copy_db, path, f"copy_target_{run}"))
            quiet_server(pg, copy_db, f"copy_target_{run}")
            print({k: round(v[-1], 2) for k, v in runs.items()}, flush=True)
    median = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "benchmark": "scale-ingest-index", "machine": machine_facts(), "rows": args.rows,
        "runs_seconds": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "median_seconds": {k: round(v, 2) for k, v in median.items()},
        "ratio_vs_psql_copy": {k: round(median[k] / median["psql_copy"], 2)
                               for k in ("without_index", "with_index")},
        "target_ratio_vs_psql_copy_max": 3.0,
    }
    write_results("scale-ingest-index", result, False)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
