"""Benchmark: ingest of a mobile_payments file on PostgreSQL, end to end.

Measured in one run, on the same file and the same throwaway PostgreSQL server:
- puhui: read + pseudonymize + validate (GX) + key index + COPY load, through
  ``FileIngestor``; and the same without the feed's key index (``ingest_keys``: the code
  before it, A/B in one run), then in the same warehouse a redelivery: a second file of as
  many rows whose first half repeats the second half of the first file (same values);
- the hardware limit: ``psql \\copy`` of the same file into an all-text table;
- the naive way: ``pandas.read_csv`` + ``DataFrame.to_sql`` with default settings.
puhui and ``psql \\copy`` run ``--repeats`` times each, alternating, each time into a fresh
database or table; the median is the figure and every run is recorded. Then the peak memory
of a puhui ingest of a 5M-row file, in a child process.

Usage: python bench/bench_ingest.py [--rows 1000000] [--memory-rows 5000000] [--repeats 3]
       [--quick] [--digest-ab] [--keyed-ab] [--split]
Prints a table and writes bench/results/ingest.json. ``--digest-ab``: only puhui with the key
index, with and without the keys' digest (``KeyDigest``: the code before it), alternating, the
first file and the redelivery, plus the digest's own time per 1M keys; writes
bench/results/ingest-digest.json. ``--keyed-ab``: the same for the keyed digest
(``KeyedDigest``, with and without it, the unkeyed one kept in both); writes
bench/results/ingest-keyed-digest.json. ``--split``: only the key index's parts end to end,
each against ``psql \\copy`` and ``to_sql`` (with the index; the same with SipHash fed str, or
with ``string_hashes``' general path only (before rounds 14 and 15); its claims into a heap with
no B-tree; its hashes only; without it), alternating; writes bench/results/ingest-split.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, write_results  # noqa: E402

if TYPE_CHECKING:
    from puhui.throwaway_postgres import PostgresServer

DELIVERY = date(2026, 9, 30)
WARM_UP = date(2026, 9, 29)
REDELIVERY = date(2026, 10, 1)
KEY = "bench-key-" + "0" * 40
PAYMENT_COLUMNS = (
    "txn_id",
    "payer_phone",
    "txn_time",
    "txn_type",
    "amount",
    "merchant_category",
    "days_past_due",
    "status",
)


def write_payments_file(path: Path, rows: int, seed: int = 1, first_id: int = 0) -> None:
    """A realistic mobile_payments file: ~rows/10 distinct payers in mixed phone formats."""
    rng = np.random.default_rng(seed)
    chunk = 1_000_000
    payers = 10**8 * rng.integers(130, 199, max(rows // 10, 10)) + rng.integers(
        0, 10**8, max(rows // 10, 10)
    )
    with pa_csv.CSVWriter(
        str(path),
        pa.schema([(n, pa.string()) for n in PAYMENT_COLUMNS]),
    ) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            phone = payers[rng.integers(0, len(payers), n)].astype(str)
            style = rng.integers(0, 3, n)
            phone = np.where(style == 1, np.char.add("+86 ", phone), phone)
            seconds = rng.integers(0, 86_400, n)
            times = np.datetime64("2026-09-30T00:00:00") + seconds.astype("timedelta64[s]")
            txn_time = np.char.add(np.datetime_as_string(times, unit="s"), "+08:00")
            kinds = np.array(["BILL_PAY", "TRANSFER_IN", "TRANSFER_OUT", "MERCHANT"])
            txn_type = kinds[rng.integers(0, 4, n)]
            amount = np.round(rng.lognormal(4.5, 1.2, n), 2)
            amount_text = [f"{a:,.2f}" for a in amount]
            merchant = np.where(txn_type == "MERCHANT", "GROCERY", None)
            dpd = np.where(
                txn_type == "BILL_PAY", rng.integers(0, 3, n) * (rng.random(n) < 0.1), -1
            )
            table = pa.table(
                {
                    "txn_id": pa.array(
                        np.char.add(
                            "T",
                            (2026093000000000 + first_id + np.arange(start, start + n)).astype(str),
                        )
                    ),
                    "payer_phone": pa.array(phone),
                    "txn_time": pa.array(txn_time),
                    "txn_type": pa.array(txn_type),
                    "amount": pa.array(amount_text),
                    "merchant_category": pa.array(merchant, pa.string()),
                    "days_past_due": pa.array(
                        [None if d < 0 else str(d) for d in dpd], pa.string()
                    ),
                    "status": pa.array(np.where(rng.random(n) < 0.98, "SUCCESS", "FAILED")),
                }
            )
            writer.write_table(table)


def landing_for(rows: int, workdir: Path) -> Path:
    """A landing zone with one mobile_payments delivery of ``rows`` rows."""
    landing = workdir / f"landing-{rows}"
    target = delivery_file(landing)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_payments_file(target, rows)
    # A small earlier delivery warms the process up (GX import, suite, raw table), as a
    # long-running worker would be; only the big file is timed.
    warm = landing / "mobile_payments" / WARM_UP.isoformat() / "mobile_payments_20260929.csv"
    warm.parent.mkdir(parents=True, exist_ok=True)
    write_payments_file(warm, 2_000, seed=2, first_id=10**12)
    return landing


def delivery_file(landing: Path) -> Path:
    """The timed file of :func:`landing_for`'s landing zone."""
    return landing / "mobile_payments" / DELIVERY.isoformat() / "mobile_payments_20260930.csv"


@contextmanager
def postgres_and_landing(rows: int) -> Iterator[tuple[PostgresServer, Path, Path]]:
    """A throwaway PostgreSQL server, a scratch folder and a :func:`landing_for` landing zone
    of ``rows`` rows in it, under the quiet environment: ``(server, workdir, landing)``."""
    from puhui.settings import QUIET_ENVIRONMENT
    from puhui.throwaway_postgres import throwaway_postgres

    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    with tempfile.TemporaryDirectory(prefix="puhui-bench-") as tmp, throwaway_postgres() as pg:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # psql \copy reads the file as the client, but be safe
        yield pg, workdir, landing_for(rows, workdir)


def add_redelivery(landing: Path, rows: int) -> None:
    """A second delivery of ``rows`` rows: the first file's second half again (same bytes
    per row), then as many new transactions."""
    folder = landing / "mobile_payments"
    strings = pa_csv.ConvertOptions(column_types={n: pa.string() for n in PAYMENT_COLUMNS},
                                    strings_can_be_null=True)
    first = pa_csv.read_csv(delivery_file(landing), convert_options=strings)
    half = rows // 2
    fresh_path = landing / "fresh.csv"
    write_payments_file(fresh_path, rows - half, seed=3, first_id=rows)
    fresh = pa_csv.read_csv(fresh_path, convert_options=strings)
    fresh_path.unlink()
    table = pa.concat_tables([first.slice(rows - half), fresh])
    target = folder / REDELIVERY.isoformat() / "mobile_payments_20261001.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    pa_csv.write_csv(table, target)  # empty fields were read as NULL: written empty again


@contextmanager
def without_key_index() -> Iterator[None]:
    """Ingest as the code did before ``ingest_keys`` (A/B): no key hashes, no claims."""
    from puhui.ingest import batches

    saved = batches.row_hashes, batches.ensure_key_index
    batches.row_hashes = lambda *_, **__: None
    batches.ensure_key_index = lambda *_: None
    try:
        with claims_skipped():
            yield
    finally:
        batches.row_hashes, batches.ensure_key_index = saved


@contextmanager
def without_key_digest(keyed: bool = False) -> Iterator[None]:
    """Ingest as the code did before the keys' digest, or the keyed one (A/B): the key
    index, no sums."""
    from puhui.ingest.key_digest import KeyDigest, KeyedDigest

    digest = KeyedDigest if keyed else KeyDigest
    saved = digest.__dict__["of"]
    digest.of = classmethod(lambda cls, *_: cls())  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        digest.of = saved  # type: ignore[method-assign]


def digest_ab(args: argparse.Namespace, keyed: bool = False) -> int:
    """``--digest-ab`` (``--keyed-ab``): the keys' (keyed) digest's cost on load, end to end
    and on its own."""
    from puhui.ingest.key_digest import KeyDigest, KeyedDigest, digest_subkey

    rng = np.random.default_rng(7)
    hi, lo = (rng.integers(-(2**63), 2**63 - 1, 1_000_000, dtype=np.int64) for _ in range(2))
    subkey = digest_subkey(b"bench")
    own_runs = []  # every run recorded; the figure is the median, the best beside it
    for _ in range(20):
        started = time.perf_counter()
        KeyedDigest.of(subkey, hi, lo) if keyed else KeyDigest.of(hi, lo)
        own_runs.append(time.perf_counter() - started)
    own = statistics.median(own_runs)
    runs: dict[str, list[float]] = {k: [] for k in (
        "with_digest", "with_digest_redelivery", "without_digest", "without_digest_redelivery")}
    with postgres_and_landing(args.rows) as (pg, workdir, landing):
        add_redelivery(landing, args.rows)
        for run in range(args.repeats):
            for mode in ("with_digest", "without_digest"):
                database = f"bench_{mode}_{run}"
                os.environ.update({"PUHUI_WAREHOUSE_URL": pg.create_database(database),
                                   "PUHUI_HOME": str(workdir / f"home-{mode}-{run}")})
                print(f"run {run + 1}/{args.repeats}: puhui ingest {mode.replace('_', ' ')}, "
                      "then the redelivery...", flush=True)
                with nullcontext() if mode == "with_digest" else without_key_digest(keyed):
                    ours = ingest_once(landing, between=lambda db=database: quiet_server(
                        pg, db, "raw_mobile_payments"))
                runs[mode].append(ours["seconds"])
                runs[f"{mode}_redelivery"].append(ours["redelivery_seconds"])
                quiet_server(pg, database, "raw_mobile_payments")
    medians = {k: round(statistics.median(v), 2) for k, v in runs.items()}
    result = {
        "benchmark": "ingest_keyed_digest" if keyed else "ingest_digest",
        "machine": machine_facts(), "rows": args.rows,
        "repeats": args.repeats, "digest_seconds_per_1m_keys": round(own, 4),
        "digest_best_seconds_per_1m_keys": round(min(own_runs), 4),
        "digest_runs_seconds": [round(x, 4) for x in own_runs],
        "runs_seconds": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "median_seconds": medians,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"\nkeys' {'keyed ' * keyed}digest: {own * 1000:.1f} ms per 1M keys on its own "
          f"(median of 20, best {min(own_runs) * 1000:.1f} ms; reader thread)")
    for name in ("", "_redelivery"):
        with_, without = medians[f"with_digest{name}"], medians[f"without_digest{name}"]
        print(f"  ingest{name or ' (first file)'}: with the digest {with_:.2f} s, without "
              f"{without:.2f} s (median of {args.repeats})")
    write_results("ingest-keyed-digest" if keyed else "ingest-digest", result, args.quick)
    return 0


@contextmanager
def claims_skipped() -> Iterator[None]:
    """The reader thread's ``row_hashes`` with both digests (unkeyed and keyed; the
    committed ``ingest-split-*.json`` predate the keyed one), nothing claimed (A/B): drops
    the claims' building and COPY as well as the B-tree, keeps the value hashes and digests."""
    from puhui.ingest import batches

    saved = batches.KeyIndex.claim
    batches.KeyIndex.claim = lambda self, chunk: (chunk, 0)
    try:
        yield
    finally:
        batches.KeyIndex.claim = saved


@contextmanager
def str_key_hashing() -> Iterator[None]:
    """The key hashes as before round 14 (A/B): SipHash fed str objects, each encoded to
    UTF-8 again in both halves' passes (the same hashes, more work)."""
    from puhui.ingest import key_index

    saved = key_index._siphash_input
    key_index._siphash_input = lambda keys: keys.to_numpy(zero_copy_only=False)
    try:
        yield
    finally:
        key_index._siphash_input = saved


@contextmanager
def general_key_hashing() -> Iterator[None]:
    """``string_hashes`` as before round 15 (A/B): every array through the general path,
    none through the equal-length one (the same hashes, more work)."""
    from puhui import hashing

    saved = hashing.EQUAL_LENGTH_LONGEST
    hashing.EQUAL_LENGTH_LONGEST = 0
    try:
        yield
    finally:
        hashing.EQUAL_LENGTH_LONGEST = saved


SPLIT_MODES = {
    "with_index": "with the key index",
    "with_index_general_hashing": "the same, string_hashes' general path only (before round 15)",
    "with_index_str_hashing": "the same, SipHash fed str objects (before round 14)",
    "index_heap_only": "claims COPYed into ingest_keys without its primary key (no B-tree)",
    "hashes_only": "row_hashes with both digests, no claim (the reader's hashes only)",
    "without_index": "without the key index",
}
RESULTS_NAME_SPLIT = "ingest-split"


def split(args: argparse.Namespace) -> int:
    """``--split``: the key index's end-to-end cost in parts, each against ``psql \\copy``
    and ``to_sql``: hashing only (no claims), claims into a heap with no B-tree (the bound
    of any narrower index: its B-tree free), the whole index, none."""
    modes = {m: SPLIT_MODES[m] for m in (args.modes.split(",") if args.modes else SPLIT_MODES)}
    runs: dict[str, list[float]] = {k: [] for k in (*modes, "copy")}
    loads: dict[str, list[float]] = {k: [] for k in (*modes, "copy", "to_sql")}  # 1-minute
    with postgres_and_landing(args.rows) as (pg, workdir, landing):
        path = delivery_file(landing)
        copy_db = pg.create_database("bench_copy").rsplit("/", 1)[-1]
        for run in range(args.repeats):
            for mode, label in modes.items():
                database = f"bench_{mode}_{run}"
                url = pg.create_database(database)
                os.environ.update({"PUHUI_WAREHOUSE_URL": url,
                                   "PUHUI_HOME": str(workdir / f"home-{mode}-{run}")})
                print(f"run {run + 1}/{args.repeats}: puhui ingest, {label}...", flush=True)

                def drop_primary_key(db: str = database) -> None:
                    subprocess.run(["psql", pg.libpq_url(db), "-q", "-c",
                                    "ALTER TABLE ingest_keys DROP CONSTRAINT pk_ingest_keys"],
                                   check=True)
                    quiet_server(pg, db, "ingest_keys")

                patch = {
                    "hashes_only": claims_skipped,
                    "without_index": without_key_index,
                    "with_index_str_hashing": str_key_hashing,
                    "with_index_general_hashing": general_key_hashing,
                }.get(mode, nullcontext)
                loads[mode].append(round(os.getloadavg()[0], 2))
                with patch():
                    ours = ingest_once(
                        landing, after_warm_up=drop_primary_key
                        if mode == "index_heap_only" else None)
                runs[mode].append(ours["seconds"])
                quiet_server(pg, database, "raw_mobile_payments")
            loads["copy"].append(round(os.getloadavg()[0], 2))
            runs["copy"].append(psql_copy_seconds(pg, copy_db, path, f"copy_target_{run}"))
            quiet_server(pg, copy_db, f"copy_target_{run}")
        print("pandas.read_csv + to_sql (default settings)...", flush=True)
        loads["to_sql"].append(round(os.getloadavg()[0], 2))
        naive_s = to_sql_seconds(pg.create_database("bench_naive"), path)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    copy_s = medians["copy"]
    result = {
        "benchmark": "ingest_split", "rows": args.rows, "repeats": args.repeats,
        "modes": modes,
        "runs_seconds": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "median_seconds": {k: round(v, 2) for k, v in medians.items()},
        "best_seconds": {k: round(min(v), 2) for k, v in runs.items()},
        "to_sql_seconds": round(naive_s, 2),
        "load_average_1min_before_each_run": loads,
        "ratio_vs_psql_copy_median": {m: round(medians[m] / copy_s, 2) for m in modes},
        "speedup_vs_to_sql_median": {m: round(naive_s / medians[m], 1) for m in modes},
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        **machine_facts(),
    }
    name = RESULTS_NAME_SPLIT + (f"-{args.label}" if args.label else "")
    print(f"\npsql \\copy {copy_s:.2f} s, to_sql {naive_s:.1f} s (medians of "
          f"{args.repeats}, runs in {name}.json)")
    for mode, label in modes.items():
        print(f"  {label:<72} {medians[mode]:5.2f} s  {medians[mode] / copy_s:4.2f}x \\copy  "
              f"{naive_s / medians[mode]:4.1f}x faster than to_sql")
    write_results(name, result, args.quick)
    return 0


def ingest_once(landing: Path, key_index: bool = True,
                between: Callable[[], None] | None = None,
                after_warm_up: Callable[[], None] | None = None) -> dict:
    """Ingest the landing zone's mobile_payments with the library (no Prefect), timed; the
    redelivery too when the landing zone has one (``between`` runs before it, untimed;
    ``after_warm_up`` after the untimed first file, which creates the tables)."""
    from puhui.config import PartnersConfig, load_config
    from puhui.ingest.batches import FileIngestor
    from puhui.ingest.pseudonymize import pseudonym_key_bytes
    from puhui.landing import list_landed_files
    from puhui.runtime import open_runtime
    from puhui.validation import BatchValidator

    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")
    validator = BatchValidator(expectations_dir=runtime.settings.expectations_dir)
    ingestor = FileIngestor(runtime, feed, validator, pseudonym_key_bytes(KEY))
    result = {}
    with nullcontext() if key_index else without_key_index():
        (warm,) = list_landed_files(feed, str(landing), WARM_UP)
        assert ingestor.ingest(warm).status == "accepted"
        if after_warm_up is not None:
            after_warm_up()
        for name, day in (("", DELIVERY), ("redelivery_", REDELIVERY)):
            found = list_landed_files(feed, str(landing), day)
            if not found:
                continue
            if name and between is not None:
                between()
            started = time.perf_counter()
            outcome = ingestor.ingest(found[0])
            seconds = time.perf_counter() - started
            assert outcome.status == "accepted", outcome
            result.update({f"{name}seconds": seconds, f"{name}rows_loaded": outcome.rows_loaded,
                           f"{name}rows_duplicate": outcome.rows_duplicate})
    return result


def psql_copy_seconds(
    server, database: str, path: Path, table: str = "copy_target"  # noqa: ANN001
) -> float:
    columns = ", ".join(f"{c} text" for c in PAYMENT_COLUMNS)
    url = server.libpq_url(database)
    subprocess.run(["psql", url, "-q", "-c", f"CREATE TABLE {table} ({columns})"], check=True)
    started = time.perf_counter()
    subprocess.run(
        ["psql", url, "-q", "-c", f"\\copy {table} FROM '{path}' WITH (FORMAT csv, HEADER)"],
        check=True,
    )
    return time.perf_counter() - started


def quiet_server(server, database: str, table: str) -> None:  # noqa: ANN001
    """Leave no background work behind a timed load, so it does not land on the next one.

    After a 1M-row load PostgreSQL's autovacuum vacuums and analyzes the new table, and the
    checkpointer writes its pages out: ~1-2 s of CPU that would otherwise fall on whichever
    run comes next on the same two cores (puhui or psql, at random). Done here, untimed.
    """
    import psycopg

    with psycopg.connect(server.libpq_url(database), autocommit=True) as conn:
        conn.execute(f'VACUUM (ANALYZE) "{table}"')
        conn.execute("CHECKPOINT")


def to_sql_seconds(url: str, path: Path) -> float:
    import pandas as pd
    from sqlalchemy import create_engine

    engine = create_engine(url)
    started = time.perf_counter()
    frame = pd.read_csv(path, dtype=str)
    frame.to_sql("naive_target", engine, index=False)
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


def own_peak_kib() -> int:
    """This process's peak resident set (KiB), from /proc where there is one."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def child_peak_rss(landing: Path, url: str, home: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of an ingest in a fresh child process.

    The child reports the high-water mark of its own address space (``VmHWM``). Not
    ``ru_maxrss``: Linux carries the parent's high-water mark across ``exec`` into the
    child's, so it reported the parent's peak (the to_sql DataFrame) whenever that was larger
    (measured: a child started by a parent that once held 2.4 GB reports 2.4 GB).
    """
    env = {
        **os.environ,
        "PUHUI_WAREHOUSE_URL": url,
        "PUHUI_HOME": str(home),
        "PUHUI_PSEUDONYM_KEY": KEY,
    }
    code = (
        f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from bench.bench_ingest import ingest_once, own_peak_kib; from pathlib import Path; "
        f"r = ingest_once(Path({str(landing)!r})); "
        "r['peak_kib'] = own_peak_kib(); "
        "print(json.dumps(r))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["peak_kib"] / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--memory-rows", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs of puhui and psql each")
    parser.add_argument("--quick", action="store_true", help="100k and 300k rows (smoke run)")
    parser.add_argument("--digest-ab", action="store_true",
                        help="only the keys' digest's cost: with and without it")
    parser.add_argument("--keyed-ab", action="store_true",
                        help="only the keys' keyed digest's cost: with and without it")
    parser.add_argument("--split", action="store_true",
                        help="only the key index's parts end to end (ingest-split.json)")
    parser.add_argument("--modes", default="",
                        help=f"--split: comma-separated, of {', '.join(SPLIT_MODES)} (all)")
    parser.add_argument("--label", default="",
                        help="--split writes ingest-split-<label>.json (runs at other loads)")
    args = parser.parse_args()
    unknown = set(args.modes.split(",") if args.modes else ()) - set(SPLIT_MODES)
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    if args.quick:
        args.rows, args.memory_rows = 100_000, 300_000
    os.environ.setdefault("PUHUI_PSEUDONYM_KEY", KEY)
    if args.digest_ab or args.keyed_ab:
        return digest_ab(args, keyed=args.keyed_ab)
    if args.split:
        return split(args)
    print(f"writing a {args.rows:,}-row mobile_payments file...", flush=True)
    with postgres_and_landing(args.rows) as (pg, workdir, landing):
        path = delivery_file(landing)
        size_mb = path.stat().st_size / 1e6

        add_redelivery(landing, args.rows)
        copy_db = pg.create_database("bench_copy").rsplit("/", 1)[-1]
        runs: dict[str, list[float]] = {k: [] for k in (
            "ours", "ours_redelivery", "without_index", "without_index_redelivery", "copy")}
        redelivered: dict[str, dict] = {}
        for run in range(args.repeats):
            for mode, label in (("ours", "with"), ("without_index", "without")):
                # Each puhui run gets a fresh warehouse and home: the file is new to it.
                database = f"bench_{mode}_{run}"
                os.environ.update({"PUHUI_WAREHOUSE_URL": pg.create_database(database),
                                   "PUHUI_HOME": str(workdir / f"home-{mode}-{run}")})
                print(f"run {run + 1}/{args.repeats}: puhui ingest {label} the key index (read"
                      " + pseudonymize + validate + COPY), then the redelivery...", flush=True)
                ours = ingest_once(landing, key_index=mode == "ours",
                                   between=lambda db=database: quiet_server(
                                       pg, db, "raw_mobile_payments"))
                runs[mode].append(ours["seconds"])
                runs[f"{mode}_redelivery"].append(ours["redelivery_seconds"])
                redelivered[mode] = {k: ours[f"redelivery_{k}"]
                                     for k in ("rows_loaded", "rows_duplicate")}
                quiet_server(pg, database, "raw_mobile_payments")
            print(f"run {run + 1}/{args.repeats}: psql \\copy of the same file...", flush=True)
            runs["copy"].append(psql_copy_seconds(pg, copy_db, path, f"copy_target_{run}"))
            quiet_server(pg, copy_db, f"copy_target_{run}")
        ours_runs, copy_runs = runs["ours"], runs["copy"]
        medians = {k: statistics.median(v) for k, v in runs.items()}
        ours_s, copy_s = statistics.median(ours_runs), statistics.median(copy_runs)
        print("pandas.read_csv + to_sql (default settings)...", flush=True)
        naive_s = to_sql_seconds(pg.create_database("bench_naive"), path)

        print(f"writing a {args.memory_rows:,}-row file for the memory run...", flush=True)
        big = landing_for(args.memory_rows, workdir)
        big_seconds, big_peak = child_peak_rss(
            big, pg.create_database("bench_big"), workdir / "home-big"
        )

    result = {
        "rows": args.rows,
        "file_mb": round(size_mb, 1),
        "repeats": args.repeats,
        "puhui_seconds": round(ours_s, 2),
        "puhui_runs_seconds": [round(x, 2) for x in ours_runs],
        "psql_copy_seconds": round(copy_s, 2),
        "psql_copy_runs_seconds": [round(x, 2) for x in copy_runs],
        "to_sql_seconds": round(naive_s, 2),
        "ratio_vs_psql_copy": round(ours_s / copy_s, 2),
        "speedup_vs_to_sql": round(naive_s / ours_s, 1),
        "puhui_rows_per_second": round(args.rows / ours_s),
        "without_key_index_seconds": round(medians["without_index"], 2),
        "without_key_index_runs_seconds": [round(x, 2) for x in runs["without_index"]],
        "ratio_vs_psql_copy_without_key_index": round(medians["without_index"] / copy_s, 2),
        "key_index_cost_seconds": round(ours_s - medians["without_index"], 2),
        "redelivery": {
            "rows": args.rows,
            "rows_repeating_the_first_file": args.rows // 2,
            "seconds": round(medians["ours_redelivery"], 2),
            "runs_seconds": [round(x, 2) for x in runs["ours_redelivery"]],
            "ratio_vs_psql_copy": round(medians["ours_redelivery"] / copy_s, 2),
            "outcome": redelivered["ours"],
            "without_key_index_seconds": round(medians["without_index_redelivery"], 2),
            "without_key_index_outcome": redelivered["without_index"],
        },
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "memory_run_rows": args.memory_rows,
        "memory_run_seconds": round(big_seconds, 2),
        "memory_run_peak_rss_mib": round(big_peak),
        "memory_run_peak_measure": "VmHWM of the ingesting child process",
        "targets": {
            "ratio_vs_psql_copy_max": 3.0,
            "speedup_vs_to_sql_min": 8.0,
            "peak_rss_mib_max_at_5M": 2048,
        },
    }
    print(
        f"\nmobile_payments ingest on PostgreSQL, {args.rows:,} rows ({size_mb:.0f} MB CSV), "
        f"median of {args.repeats} runs"
    )
    print(
        f"  puhui end to end   {result['puhui_seconds']:>7.2f} s  "
        f"({result['puhui_rows_per_second']:,} rows/s)"
    )
    print(
        f"  psql \\copy         {result['psql_copy_seconds']:>7.2f} s  -> puhui is "
        f"{result['ratio_vs_psql_copy']}x the hardware limit (target <= 3x)"
    )
    print(
        f"  without key index  {result['without_key_index_seconds']:>7.2f} s  "
        f"({result['ratio_vs_psql_copy_without_key_index']}x psql \\copy): the index costs "
        f"{result['key_index_cost_seconds']:.2f} s"
    )
    redelivery = result["redelivery"]
    print(
        f"  redelivery, half its keys loaded before: {redelivery['seconds']:.2f} s "
        f"({redelivery['ratio_vs_psql_copy']}x psql \\copy of the first file), "
        f"{redelivery['outcome']}; without the index {redelivery['without_key_index_seconds']:.2f}"
        f" s, {redelivery['without_key_index_outcome']}"
    )
    print(
        f"  pandas.to_sql      {result['to_sql_seconds']:>7.2f} s  -> puhui is "
        f"{result['speedup_vs_to_sql']}x faster (target >= 8x)"
    )
    print(
        f"  {args.memory_rows:,} rows: {big_seconds:.1f} s, peak RSS {big_peak:,.0f} MiB "
        f"(target < 2048 MiB)"
    )
    write_results("ingest", result, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
