"""Benchmark: where the key index's cost per 1M rows goes (``ingest_keys``).

Two halves, measured apart so that each figure is one thing:
- client: the reader thread's hashes of 1M prepared mobile_payments rows (the ingest
  benchmark's file): key text, the two SipHash halves, the value hash column by column;
  best of ``--repeats``;
- server: a binary COPY of 1M sorted key hashes (in the chunks the ingest's reader makes of
  the file, ``READ_BLOCK_BYTES`` each: 3 of ~330k rows, each under a savepoint, into an
  index already holding ``--existing`` keys) on a throwaway PostgreSQL, into the table as
  migration 0008 declares it and into narrower or unindexed variants, alternating, median
  of ``--repeats``: the variants split the COPY into heap rows and B-tree inserts.
  ``unlogged`` is measured, not used: a server crash empties an unlogged table.

Usage: python bench/bench_key_index_parts.py [--repeats 3] [--existing 1000000] [--quick]
    [--label idle]
Prints a table and writes bench/results/key_index_parts.json (key_index_parts-<label>.json
with ``--label``, so that runs at different loads are kept side by side).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_ingest import KEY, write_payments_file  # noqa: E402
from bench.results_file import machine_facts, write_results  # noqa: E402

if TYPE_CHECKING:
    from sqlalchemy import Connection, Table

    from puhui.ingest.batches import PreparedChunk

_KEYS = "key_hi bigint NOT NULL, key_lo bigint NOT NULL"
_BATCH = "batch_id varchar(40) NOT NULL DEFAULT current_setting('puhui.batch_id')"
VARIANTS = {
    "as_0008": (f"{_KEYS}, {_BATCH}, value_hash bigint NOT NULL, PRIMARY KEY (key_hi, key_lo)",
                True, ""),
    "no_value_hash": (f"{_KEYS}, {_BATCH}, PRIMARY KEY (key_hi, key_lo)", False, ""),
    "keys_only": (f"{_KEYS}, PRIMARY KEY (key_hi, key_lo)", False, ""),
    "as_0008_no_primary_key": (f"{_KEYS}, {_BATCH}, value_hash bigint NOT NULL", True, ""),
    "keys_only_no_primary_key": (_KEYS, False, ""),
    "as_0008_unlogged": (f"{_KEYS}, {_BATCH}, value_hash bigint NOT NULL, "
                         "PRIMARY KEY (key_hi, key_lo)", True, "UNLOGGED "),
}


class CopyFigures(TypedDict):
    median_seconds: float
    runs_seconds: list[float]
    heap_mib_index_mib_after_each_run: list[list[int]]


def best(seconds: list[float]) -> float:
    return round(min(seconds), 3)


def client_parts(repeats: int, rows: int) -> tuple[dict[str, float], list[int]]:
    """The hashes' parts, best of ``repeats``; and the rows of each chunk the reader made."""
    from puhui.config import PartnersConfig, load_config
    from puhui.ingest import key_index as ki
    from puhui.ingest.batches import SeenKeys, drop_duplicate_keys, prepare_chunk
    from puhui.ingest.contract import end_of_delivery_day
    from puhui.ingest.pseudonymize import PseudonymCache, pseudonym_key_bytes
    from puhui.ingest.reading import (
        READ_BLOCK_BYTES,
        file_columns,
        iter_file_chunks,
        open_landed_file,
    )

    feed = load_config(ROOT / "configs", PartnersConfig).get("mobile_payments")
    with tempfile.TemporaryDirectory(prefix="puhui-bench-") as tmp:
        path = Path(tmp) / "payments.csv"
        write_payments_file(path, rows)
        handle = open_landed_file(str(path))
        chunks, first, cache = [], 1, PseudonymCache()
        for raw in iter_file_chunks(handle, feed, file_columns(handle, feed),
                                    READ_BLOCK_BYTES):
            chunks.append(prepare_chunk(raw, feed, pseudonym_key_bytes(KEY),
                                        end_of_delivery_day(date(2026, 9, 30)), first, cache))
            first += raw.num_rows

    def timed(work: Callable[[PreparedChunk], object]) -> float:
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            for chunk in chunks:
                work(chunk)
            runs.append(time.perf_counter() - started)
        return best(runs)

    keyed = {s for s, c in ki.stored_columns(feed) if c.name in feed.primary_key}
    half = ki._half_keys(feed)[0]
    parts = {
        "row_hashes_total": timed(lambda c: ki.row_hashes(c.stored, feed)),
        "key_text": timed(lambda c: ki.key_strings(c.stored, feed)),
        "key_text_as_python_objects": timed(
            lambda c: ki.key_strings(c.stored, feed).to_numpy(zero_copy_only=False)),
        "one_siphash_half_incl_objects": timed(lambda c: pd.util.hash_array(
            ki.key_strings(c.stored, feed).to_numpy(zero_copy_only=False), hash_key=half,
            categorize=False)),
    }
    highs = {id(c): ki.row_hashes(c.stored, feed).key_hi for c in chunks}
    parts["key_order_argsort"] = timed(lambda c: np.argsort(highs[id(c)]))
    for name in chunks[0].stored.column_names:
        if name not in keyed:
            parts[f"value_words_{name}"] = timed(
                lambda c, n=name: ki._column_words(c.stored[n].combine_chunks()))
    seen_runs = []
    for _ in range(repeats):
        seen, started = SeenKeys(), time.perf_counter()
        for chunk in chunks:
            drop_duplicate_keys(chunk, feed, seen)
        seen_runs.append(time.perf_counter() - started)
    parts["within_file_dedup_for_comparison"] = best(seen_runs)
    return {k: round(v, 3) for k, v in parts.items()}, [c.stored.num_rows for c in chunks]


def server_parts(repeats: int, existing: int, chunk_rows: list[int]) -> dict[str, CopyFigures]:
    from sqlalchemy import BigInteger, Column, MetaData, String, Table, create_engine, text

    from puhui.ingest.key_index import _nineteen_digits
    from puhui.throwaway_postgres import throwaway_postgres
    from puhui.warehouse.bulk import bulk_insert
    from puhui.warehouse.schema import session_default

    rng = np.random.default_rng(1)

    def sorted_chunks(sizes: list[int]) -> list[pa.Table]:
        out = []
        for size in sizes:
            words = [_nineteen_digits(rng.integers(0, 2**64 - 1, size, dtype=np.uint64))
                     for _ in range(3)]
            order = np.argsort(words[0])
            out.append(pa.table({"key_hi": words[0][order], "key_lo": words[1][order],
                                 "value_hash": words[2][order]}))
        return out

    def load(tables: list[pa.Table], conn: Connection, table: Table, with_value: bool,
             constants: dict[str, str] | None) -> None:
        for chunk in tables:
            data = chunk if with_value else chunk.drop_columns(["value_hash"])
            with conn.begin_nested():
                bulk_insert(conn, table, data, constants)

    runs: dict[str, list[float]] = {name: [] for name in VARIANTS}
    sizes: dict[str, list[list[int]]] = {name: [] for name in VARIANTS}
    with throwaway_postgres() as pg:
        engine = create_engine(pg.create_database("key_parts"))
        try:
            for run in range(repeats):
                for name, (columns, with_value, kind) in VARIANTS.items():
                    table_name = f"keys_{name}_{run}"
                    described = [Column("key_hi", BigInteger), Column("key_lo", BigInteger)]
                    if with_value:
                        described.append(Column("value_hash", BigInteger))
                    if "batch_id" in columns:
                        described.append(Column("batch_id", String(40), server_default=text(
                            session_default("batch_id"))))
                    table = Table(table_name, MetaData(), *described)
                    constants = {"batch_id": "mobile_payments-20260930-0123456789ab"} \
                        if "batch_id" in columns else None
                    with engine.begin() as conn:
                        conn.execute(text(f"CREATE {kind}TABLE {table_name} ({columns})"))
                        if existing:
                            load(sorted_chunks([existing]), conn, table, with_value, constants)
                    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                        conn.execute(text(f"VACUUM ANALYZE {table_name}"))
                        conn.execute(text("CHECKPOINT"))
                    data = sorted_chunks(chunk_rows)
                    started = time.perf_counter()
                    with engine.begin() as conn:
                        load(data, conn, table, with_value, constants)
                    runs[name].append(time.perf_counter() - started)
                    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                        heap, index = conn.execute(text(
                            f"SELECT pg_table_size('{table_name}'), "
                            f"pg_indexes_size('{table_name}')")).one()
                        sizes[name].append([round(heap / 2**20), round(index / 2**20)])
                        conn.execute(text(f"DROP TABLE {table_name}"))
                        conn.execute(text("CHECKPOINT"))
                    print(f"  run {run + 1}: {name:<26} {runs[name][-1]:.3f} s", flush=True)
        finally:
            engine.dispose()
    return {name: {"median_seconds": round(statistics.median(v), 3),
                   "runs_seconds": [round(x, 3) for x in v],
                   "heap_mib_index_mib_after_each_run": sizes[name]}
            for name, v in runs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--existing", type=int, default=1_000_000,
                        help="keys already in the index before the timed COPY")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100k rows, 100k existing")
    parser.add_argument("--label", default="",
                        help="written as key_index_parts-<label>.json (e.g. the load: idle)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.existing, args.repeats = 100_000, 100_000, 1
    os.environ.setdefault("PUHUI_PSEUDONYM_KEY", KEY)
    print(f"client: hashes of {args.rows:,} prepared rows (best of {args.repeats})...", flush=True)
    client, chunk_rows = client_parts(args.repeats, args.rows)
    print(f"server: COPY of {args.rows:,} key hashes into an index of {args.existing:,}...",
          flush=True)
    server = server_parts(args.repeats, args.existing, chunk_rows)
    result = {"rows": args.rows, "existing_keys": args.existing, "repeats": args.repeats,
              "chunk_rows": chunk_rows, "label": args.label,
              "client_seconds": client, "server_copy": server,
              "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
              **machine_facts()}
    print(f"\nclient, per {args.rows:,} rows (the reader thread):")
    for name, seconds in client.items():
        print(f"  {name:<40} {seconds:6.3f} s")
    print(f"server, COPY of {args.rows:,} sorted key hashes (median):")
    for name, figures in server.items():
        print(f"  {name:<26} {figures['median_seconds']:6.3f} s  "
              f"heap / index MiB after each run: {figures['heap_mib_index_mib_after_each_run']}")
    write_results("key_index_parts" + (f"-{args.label}" if args.label else ""), result,
                  args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
