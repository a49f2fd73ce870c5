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
    [--label idle] [--variants as_0008,...] [--skip-client | --skip-server]
Each server figure comes with the backend's CPU seconds (``/proc``) and the WAL it wrote.
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
from dataclasses import dataclass
from datetime import date
from itertools import pairwise
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

    from puhui.config import PartnerFeed
    from puhui.ingest.batches import PreparedChunk

_KEYS = "key_hi bigint NOT NULL, key_lo bigint NOT NULL"
_BATCH = "batch_id varchar(40) NOT NULL DEFAULT current_setting('puhui.batch_id')"
_AS_0008 = f"{_KEYS}, {_BATCH}, value_hash bigint NOT NULL"
_PK = "PRIMARY KEY (key_hi, key_lo)"
# Range partitions of key_hi (its values are at least 2^62 from zero: _nineteen_digits), in
# eight of 2^60 each, so that a sorted chunk's rows go to one partition after another.
_BOUNDS = ["MINVALUE", *(str(-2**63 + k * 2**60) for k in (1, 2, 3)), "0",
           *(str(2**62 + k * 2**60) for k in (1, 2, 3)), "MAXVALUE"]


@dataclass(frozen=True)
class Variant:
    """One way to hold the keys: its columns, and how the timed chunks reach it."""

    columns: str
    with_value: bool = True
    kind: str = ""  # "UNLOGGED "
    after: tuple[str, ...] = ()  # statements after CREATE TABLE ({t}: the table's name)
    partitions: bool = False  # range-partitioned by key_hi (_BOUNDS)
    staged: bool = False  # COPY into an ON COMMIT DROP stage, INSERT ... ON CONFLICT DO NOTHING


VARIANTS = {
    "as_0008": Variant(f"{_AS_0008}, {_PK}"),
    "no_value_hash": Variant(f"{_KEYS}, {_BATCH}, {_PK}", with_value=False),
    "keys_only": Variant(f"{_KEYS}, {_PK}", with_value=False),
    "as_0008_no_primary_key": Variant(_AS_0008),
    "keys_only_no_primary_key": Variant(_KEYS, with_value=False),
    "as_0008_unlogged": Variant(f"{_AS_0008}, {_PK}", kind="UNLOGGED "),
    # Round 14: the unique check's share, and the ideas listed in the README's table.
    "as_0008_non_unique_btree": Variant(_AS_0008, after=(
        "CREATE INDEX {t}_keys ON {t} (key_hi, key_lo)",)),
    "one_bigint_primary_key": Variant(f"{_AS_0008}, PRIMARY KEY (key_hi)"),
    "int_batch_ref": Variant(
        f"{_KEYS}, batch_no integer NOT NULL DEFAULT current_setting('puhui.batch_no')::int, "
        f"value_hash bigint NOT NULL, {_PK}"),
    "hash_exclusion_key_hi": Variant(f"{_AS_0008}, EXCLUDE USING hash (key_hi WITH =)"),
    "range_partitioned_8": Variant(f"{_AS_0008}, {_PK}", partitions=True),
    "staged_insert_on_conflict": Variant(f"{_AS_0008}, {_PK}", staged=True),
}
DEFAULT_VARIANTS = ("as_0008", "as_0008_no_primary_key", "as_0008_non_unique_btree",
                    "one_bigint_primary_key", "int_batch_ref", "hash_exclusion_key_hi",
                    "range_partitioned_8", "staged_insert_on_conflict")


class CopyFigures(TypedDict):
    median_seconds: float
    best_seconds: float
    runs_seconds: list[float]
    backend_cpu_seconds_runs: list[float]
    wal_mib_runs: list[int]
    heap_mib_index_mib_after_each_run: list[list[int]]


def best(seconds: list[float]) -> float:
    return round(min(seconds), 3)


def siphash_feeds(chunks: list[PreparedChunk], feed: PartnerFeed,
                  repeats: int) -> dict[str, float]:
    """Both SipHash halves of the key texts, the objects' making included, fed ``str`` (as
    before round 14) and ``bytes`` (``_siphash_input``, kept), alternating in each repeat so
    that both meet the same load; best of ``repeats``."""
    from puhui.ingest import key_index as ki

    texts = [ki.key_strings(c.stored, feed) for c in chunks]
    feeds = {"siphash_two_halves_str": lambda t: t.to_numpy(zero_copy_only=False),
             "siphash_two_halves_bytes": ki._siphash_input}
    runs: dict[str, list[float]] = {name: [] for name in feeds}
    for _ in range(repeats):
        for name, objects in feeds.items():
            started = time.perf_counter()
            for keys in texts:
                made = objects(keys)
                for half in ki._half_keys(feed):
                    pd.util.hash_array(made, hash_key=half, categorize=False)
            runs[name].append(time.perf_counter() - started)
    return {name: best(seconds) for name, seconds in runs.items()}


def client_parts(repeats: int, rows: int) -> tuple[dict[str, float], list[int]]:
    """The hashes' parts, best of ``repeats``; and the rows of each chunk the reader made."""
    from puhui.config import PartnersConfig, load_config
    from puhui.hashing import column_words
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
        **siphash_feeds(chunks, feed, repeats),
    }
    highs = {id(c): ki.row_hashes(c.stored, feed).key_hi for c in chunks}
    parts["key_order_argsort"] = timed(lambda c: np.argsort(highs[id(c)]))
    for name in chunks[0].stored.column_names:
        if name not in keyed:
            parts[f"value_words_{name}"] = timed(
                lambda c, n=name: column_words(c.stored[n].combine_chunks()))
    seen_runs = []
    for _ in range(repeats):
        seen, started = SeenKeys(), time.perf_counter()
        for chunk in chunks:
            drop_duplicate_keys(chunk, feed, seen)
        seen_runs.append(time.perf_counter() - started)
    parts["within_file_dedup_for_comparison"] = best(seen_runs)
    return {k: round(v, 3) for k, v in parts.items()}, [c.stored.num_rows for c in chunks]


def sorted_key_chunks(rng: np.random.Generator, sizes: list[int]) -> list[pa.Table]:
    """Random ``ingest_keys`` claims of ``sizes`` rows each (halves as ``_nineteen_digits``
    makes them), sorted by ``key_hi`` as a load sorts them before its COPY."""
    from puhui.ingest.key_index import _nineteen_digits

    out = []
    for size in sizes:
        words = [_nineteen_digits(rng.integers(0, 2**64 - 1, size, dtype=np.uint64))
                 for _ in range(3)]
        order = np.argsort(words[0])
        out.append(pa.table({"key_hi": words[0][order], "key_lo": words[1][order],
                             "value_hash": words[2][order]}))
    return out


def _backend_cpu_seconds(conn: Connection) -> float:
    """CPU seconds (user + system) of this connection's PostgreSQL backend so far."""
    from sqlalchemy import text

    pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_parts(repeats: int, existing: int, chunk_rows: list[int],
                 names: tuple[str, ...]) -> dict[str, CopyFigures]:
    from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, create_engine, text

    from puhui.throwaway_postgres import throwaway_postgres
    from puhui.warehouse.bulk import bulk_insert
    from puhui.warehouse.schema import session_default

    rng = np.random.default_rng(1)

    def load(tables: list[pa.Table], conn: Connection, table: Table, variant: Variant,
             constants: dict[str, str] | None, staged: bool) -> None:
        for number, chunk in enumerate(tables):
            data = chunk if variant.with_value else chunk.drop_columns(["value_hash"])
            if not staged:
                with conn.begin_nested():
                    bulk_insert(conn, table, data, constants)
                continue
            # The set-based way: the chunk COPYed into a stage dropped at commit, then one
            # INSERT ... SELECT whose ON CONFLICT leaves repeats out (counted, as the ingest
            # would need them).
            stage_name = f"{table.name}_stage_{number}"
            conn.execute(text(f"CREATE TEMP TABLE {stage_name} (key_hi bigint, key_lo bigint, "
                              "value_hash bigint) ON COMMIT DROP"))
            stage = Table(stage_name, MetaData(), *(Column(c, BigInteger)
                                                    for c in data.column_names))
            bulk_insert(conn, stage, data)
            for name, value in (constants or {}).items():
                conn.execute(text("SELECT set_config(:name, :value, true)"),
                             {"name": f"puhui.{name}", "value": value})
            conn.execute(text(
                f"WITH claimed AS (INSERT INTO {table.name} (key_hi, key_lo, value_hash) "
                f"SELECT key_hi, key_lo, value_hash FROM {stage_name} "
                "ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM claimed")).scalar_one()

    runs: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    wal: dict[str, list[float]] = {name: [] for name in names}
    sizes: dict[str, list[list[int]]] = {name: [] for name in names}
    with throwaway_postgres() as pg:
        engine = create_engine(pg.create_database("key_parts"))
        try:
            for run in range(repeats):
                for name in names:
                    variant = VARIANTS[name]
                    table_name = f"keys_{name}_{run}"
                    described = [Column("key_hi", BigInteger), Column("key_lo", BigInteger)]
                    if variant.with_value:
                        described.append(Column("value_hash", BigInteger))
                    constants: dict[str, str] | None = None
                    if "batch_id" in variant.columns:
                        described.append(Column("batch_id", String(40), server_default=text(
                            session_default("batch_id"))))
                        constants = {"batch_id": "mobile_payments-20260930-0123456789ab"}
                    if "batch_no" in variant.columns:
                        described.append(Column("batch_no", Integer, server_default=text(
                            session_default("batch_no") + "::int")))
                        constants = {"batch_no": "7"}
                    table = Table(table_name, MetaData(), *described)
                    with engine.begin() as conn:
                        partitioned = " PARTITION BY RANGE (key_hi)" if variant.partitions \
                            else ""
                        conn.execute(text(f"CREATE {variant.kind}TABLE {table_name} "
                                          f"({variant.columns}){partitioned}"))
                        if variant.partitions:
                            for part, (low, high) in enumerate(pairwise(_BOUNDS)):
                                conn.execute(text(
                                    f"CREATE TABLE {table_name}_p{part} PARTITION OF "
                                    f"{table_name} FOR VALUES FROM ({low}) TO ({high})"))
                        for statement in variant.after:
                            conn.execute(text(statement.format(t=table_name)))
                        if existing:
                            load(sorted_key_chunks(rng, [existing]), conn, table, variant,
                                 constants, staged=False)
                    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                        conn.execute(text(f"VACUUM ANALYZE {table_name}"))
                        conn.execute(text("CHECKPOINT"))
                    data = sorted_key_chunks(rng, chunk_rows)
                    with engine.begin() as conn:
                        cpu_before = _backend_cpu_seconds(conn)
                        wal_before = conn.execute(text("SELECT pg_current_wal_insert_lsn()")
                                                  ).scalar_one()
                        started = time.perf_counter()
                        load(data, conn, table, variant, constants, staged=variant.staged)
                        runs[name].append(time.perf_counter() - started)
                        cpu[name].append(_backend_cpu_seconds(conn) - cpu_before)
                        wal[name].append(conn.execute(text(
                            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :lsn)"),
                            {"lsn": wal_before}).scalar_one() / 2**20)
                    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                        heap, index = conn.execute(text(
                            "SELECT sum(pg_table_size(c.oid)), sum(pg_indexes_size(c.oid)) "
                            f"FROM pg_class c WHERE c.oid = '{table_name}'::regclass OR c.oid IN "
                            "(SELECT inhrelid FROM pg_inherits "
                            f"WHERE inhparent = '{table_name}'::regclass)")).one()
                        sizes[name].append([round(heap / 2**20), round(index / 2**20)])
                        conn.execute(text(f"DROP TABLE {table_name}"))
                        conn.execute(text("CHECKPOINT"))
                    print(f"  run {run + 1}: {name:<26} {runs[name][-1]:.3f} s, backend CPU "
                          f"{cpu[name][-1]:.2f} s, WAL {wal[name][-1]:.0f} MiB", flush=True)
        finally:
            engine.dispose()
    return {name: {"median_seconds": round(statistics.median(v), 3),
                   "best_seconds": best(v),
                   "runs_seconds": [round(x, 3) for x in v],
                   "backend_cpu_seconds_runs": [round(x, 2) for x in cpu[name]],
                   "wal_mib_runs": [round(x) for x in wal[name]],
                   "heap_mib_index_mib_after_each_run": sizes[name]}
            for name, v in runs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--existing", type=int, default=1_000_000,
                        help="keys already in the index before the timed COPY")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100k rows, 100k existing")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--skip-client", action="store_true", help="the server half only")
    parser.add_argument("--skip-server", action="store_true", help="the client half only")
    parser.add_argument("--label", default="",
                        help="written as key_index_parts-<label>.json (e.g. the load: idle)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.existing, args.repeats = 100_000, 100_000, 1
    os.environ.setdefault("PUHUI_PSEUDONYM_KEY", KEY)
    names = tuple(args.variants.split(","))
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    if args.skip_client and args.skip_server:
        parser.error("--skip-client and --skip-server leave nothing to measure")
    if args.skip_client:  # the reader's chunks of the bench file: ~1/3 of the rows each
        client: dict[str, float] = {}
        chunk_rows = [args.rows // 3 + (i < args.rows % 3) for i in range(3)]
    else:
        print(f"client: hashes of {args.rows:,} prepared rows (best of {args.repeats})...",
              flush=True)
        client, chunk_rows = client_parts(args.repeats, args.rows)
    server: dict[str, CopyFigures] = {}
    if not args.skip_server:
        print(f"server: COPY of {args.rows:,} key hashes into an index of "
              f"{args.existing:,}...", flush=True)
        server = server_parts(args.repeats, args.existing, chunk_rows, names)
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
        print(f"  {name:<26} {figures['median_seconds']:6.3f} s "
              f"(best {figures['best_seconds']:.3f}), backend CPU "
              f"{figures['backend_cpu_seconds_runs']}, WAL MiB {figures['wal_mib_runs']}, "
              f"heap / index MiB after each run: {figures['heap_mib_index_mib_after_each_run']}")
    write_results("key_index_parts" + (f"-{args.label}" if args.label else ""), result,
                  args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
