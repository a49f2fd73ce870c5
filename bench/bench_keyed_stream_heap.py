"""Benchmark: why ``keyed_digests`` timed in bench_verify_keys' own process (its "stream
alone") costs more CPU than what ``audit verify --deep`` adds to a plain verify.

The stream makes ~3 Python objects per key (the driver's row tuple and its ints), so
Python's cyclic garbage collector runs often, and each full pass walks every live object
of the process. bench_verify_keys' process has ingested the warehouse it measures (pandas,
pyarrow, Prefect and the ingest's objects live); a ``puhui audit verify`` process has far
less. Here the same stream runs over one SQLite ``ingest_keys`` of ``--keys`` random keys
(batches of 3,500) in a fresh process each, as it is (``fresh``), with those libraries and
``--objects`` extra live objects (``heap``), and with them frozen out of the collector's
walks (``heap_frozen``, ``gc.freeze()``). CPU of the process per stream, median of ``--runs``.

Usage: python bench/bench_keyed_stream_heap.py [--keys 1052000] [--objects 2000000]
    [--runs 3] [--quick]
Prints a table and writes bench/results/keyed_stream_heap.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_file import machine_facts, write_results  # noqa: E402

MODES = ("fresh", "heap", "heap_frozen")


def _child(db: str, mode: str, objects: int, runs: int) -> None:
    from sqlalchemy import create_engine

    from puhui.ingest.key_digest import keyed_digests

    keep = []
    if mode != "fresh":
        import pandas  # noqa: F401  what bench_verify_keys' process has imported
        import prefect  # noqa: F401
        import pyarrow  # noqa: F401

        keep = [{"n": i, "pair": (i, str(i))} for i in range(objects)]
        if mode == "heap_frozen":
            gc.freeze()
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        keyed_digests(conn, b"0" * 16, "batch_id = ''")  # its imports, not timed
        cpu = []
        for _ in range(runs):
            started = time.process_time()
            keyed_digests(conn, b"0" * 16)
            cpu.append(round(time.process_time() - started, 3))
    print(json.dumps({"cpu": cpu, "tracked_objects": len(gc.get_objects()),
                      "extra_objects_alive": len(keep), "load": round(os.getloadavg()[0], 2)}))


def _table(db: str, keys: int) -> None:
    import numpy as np

    rng = np.random.default_rng(14)
    key_hi, key_lo, value = (rng.integers(-(1 << 63), (1 << 63) - 1, keys, dtype=np.int64)
                             for _ in range(3))
    with sqlite3.connect(db) as conn:  # ingest_keys as migration 0008 makes it on SQLite
        conn.execute("CREATE TABLE ingest_keys (key_hi BIGINT NOT NULL, key_lo BIGINT NOT "
                     "NULL, batch_id VARCHAR(40) NOT NULL, value_hash BIGINT NOT NULL, "
                     "PRIMARY KEY (key_hi, key_lo))")
        conn.executemany("INSERT INTO ingest_keys VALUES (?, ?, ?, ?)", (
            (int(h), int(lo), f"mobile_payments-20261001-{i // 3500:012x}", int(v))
            for i, (h, lo, v) in enumerate(zip(key_hi, key_lo, value, strict=True))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_052_000)
    parser.add_argument("--objects", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100,000 keys, 1 run")
    parser.add_argument("--child", nargs=2, metavar=("DB", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.keys, args.objects, args.runs = 100_000, 200_000, 1
    if args.child:
        _child(args.child[0], args.child[1], args.objects, args.runs)
        return
    result: dict = {"benchmark": "keyed_stream_heap", "machine": machine_facts(),
                    "keys": args.keys, "extra_objects": args.objects, "runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "keys.db")
        _table(db, args.keys)
        for mode in MODES:
            done = subprocess.run(
                [sys.executable, __file__, "--child", db, mode, "--objects", str(args.objects),
                 "--runs", str(args.runs)], capture_output=True, text=True, check=True)
            figures = json.loads(done.stdout.splitlines()[-1])
            figures["median_cpu"] = statistics.median(figures["cpu"])
            result[mode] = figures
            print(f"{mode:12} cpu per stream {figures['median_cpu']:.2f} s "
                  f"(runs {figures['cpu']}), load {figures['load']}", flush=True)
    write_results("keyed_stream_heap", result, args.quick)


if __name__ == "__main__":
    main()
