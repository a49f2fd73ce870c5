"""Benchmark: where PostgreSQL's CPU goes while the keys' COPY fills ``ingest_keys``.

A throwaway PostgreSQL, the table as migration 0008 declares it holding ``--existing`` keys,
then the ingest's claim of 1M sorted key hashes (3 chunks, each a binary COPY under a
savepoint, in one transaction) while ``perf record`` samples the load's backend. The
samples' own functions are grouped into parts: B-tree descent and insert, heap insert, WAL
(record assembly, CRC, writes), COPY's parsing, buffer manager and locks, memory, kernel.
Static functions of the stripped binary are placed by the exported function before them.
Needs ``perf`` (linux-perf) and permission to sample the backend (root, or
``perf_event_paranoid`` <= 1): without them it says so and exits 2.

Usage: python bench/bench_key_index_profile.py [--existing 1000000] [--rows 1000000]
    [--repeats 3] [--quick]
Prints the parts and writes bench/results/key_index_profile.json (every run's shares).
"""

from __future__ import annotations

import argparse
import bisect
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sqlalchemy import Engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_key_index_parts import sorted_key_chunks  # noqa: E402
from bench.results_file import machine_facts, write_results  # noqa: E402

# First match wins: a symbol's part by its name (PostgreSQL 15's functions; the kernel's
# are [k]). No "unique check" part: _bt_check_unique is static, so a stripped binary never
# names it (the non-unique B-tree of bench_key_index_parts measures that share instead).
PARTS = (
    ("B-tree descent and insert", r"^_bt_|^btinsert|^bt|^index_form_tuple|^index_insert"
                                  r"|^ExecInsertIndexTuples|^FormIndexDatum|^int8cmp"
                                  r"|^FunctionCall2Coll"),
    ("heap insert", r"^heap_|^RelationGetBufferForTuple|^CopyMultiInsert|^table_multi_insert"
                    r"|^ExecMaterializeSlot|^tts_|^slot_|^ExecStoreVirtualTuple"),
    ("pages (either)", r"^PageAddItem|^PageGetFreeSpace|^PageInit"),
    ("WAL", r"^XLog|^pg_comp_crc32c|^CopyXLogRecordToWAL|^ReserveXLog|^log_heap|^WALInsert"
            r"|^AdvanceXLInsertBuffer|^XLogWrite|^issue_xlog_fsync|^GetXLogBuffer"),
    ("COPY parsing and defaults", r"^Copy|^NextCopyFrom|^CopyReadBinary|^ReceiveCopy"
                                  r"|^ReceiveFunctionCall|^pq_|^int8recv|^ExecEvalExpr"
                                  r"|^ExecInterpExpr|^current_setting|^GetConfigOption"
                                  r"|^varchar|^text|^cstring|^pg_verify|^pg_mbstrlen"),
    ("buffers and locks", r"^ReadBuffer|^LockBuffer|^UnlockReleaseBuffer|^ReleaseBuffer"
                          r"|^PinBuffer|^UnpinBuffer|^MarkBuffer|^LWLock|^BufTable"
                          r"|^hash_search|^hash_bytes|^BufferGetBlockNumber|^StartBufferIO"
                          r"|^ResourceOwner|^Buffer|^ConditionalLock|^CheckForSerializable"),
    ("memory", r"^palloc|^pfree|^AllocSet|^MemoryContext|^mem|^__mem"),
    ("kernel", r"^\[k\]"),
    ("unresolved", r"^0x"),
)


# Static functions ("~" + the exported function before them) whose source file differs in
# part from that exported function's name: the statics of lwlock.c follow LockWaiterCount,
# bufmgr.c's (PinBuffer, UnpinBuffer, BufferAlloc are static in PG15) follow
# ScheduleBufferTagForWriteback and IsBufferCleanupOK. load_tzoffsets is tzparser.c's last
# export, just before aset.c (AllocSetAlloc and kin are static): allocator code most likely,
# since a COPY parses no time zone file.
STATIC_PARTS = {
    "LockWaiterCount": "buffers and locks",
    "ScheduleBufferTagForWriteback": "buffers and locks",
    "IsBufferCleanupOK": "buffers and locks",
    "load_tzoffsets": "memory",
}


def _part(symbol: str) -> str:
    if symbol.startswith("~") and symbol[1:] in STATIC_PARTS:
        return STATIC_PARTS[symbol[1:]]
    for name, pattern in PARTS:
        if re.search(pattern, symbol.removeprefix("~")):
            return name
    return "other"


def _exported(binary: Path) -> tuple[list[int], list[str]]:
    """The binary's exported functions by address (``nm -D``), to place the static ones."""
    listed = subprocess.run(["nm", "-D", "--defined-only", str(binary)], capture_output=True,
                            text=True).stdout
    found = sorted((int(f[0], 16), f[2]) for f in (line.split() for line in listed.splitlines())
                   if len(f) == 3 and f[1] in "Tt")
    return [a for a, _ in found], [n for _, n in found]


def _symbols(data: Path, exported: tuple[list[int], list[str]]) -> Counter[str]:
    """Samples per function (its own time), from ``perf report``. A static function of the
    stripped binary is named "~" and the exported function before it, most often of the
    same source file: its part is that file's (``STATIC_PARTS``), else that name's."""
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "sym",
         "-g", "none", "--percent-limit", "0"],
        capture_output=True, text=True, check=True).stdout
    shares: Counter[str] = Counter()
    for line in report.splitlines():
        found = re.match(r"\s*([\d.]+)%\s+\[(.)\]\s+(\S+)", line)
        if found:
            share, where, symbol = float(found[1]), found[2], found[3]
            if symbol.startswith("0x") and exported[0]:
                at = bisect.bisect_right(exported[0], int(symbol, 16)) - 1
                symbol = "~" + exported[1][max(at, 0)]
            shares["[k]" + symbol if where == "k" else symbol] += share
    return shares


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PerfFailed(Exception):
    """``perf record`` could not sample the backend (most often: no permission)."""


def profile_once(engine: Engine, rng: np.random.Generator, existing: int,
                 rows: int, run: int, workdir: Path, exported: tuple[list[int], list[str]]
                 ) -> tuple[float, float, Counter[str]]:
    from sqlalchemy import text

    from puhui.warehouse.bulk import bulk_insert
    from puhui.warehouse.schema import ingest_keys

    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS ingest_keys"))
        ingest_keys.create(conn)
        if existing:
            bulk_insert(conn, ingest_keys, sorted_key_chunks(rng, [existing])[0],
                        {"batch_id": "mobile_payments-20260929-0123456789ab"})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE ingest_keys"))
        conn.execute(text("CHECKPOINT"))
    chunks = sorted_key_chunks(rng, [rows // 3 + (i < rows % 3) for i in range(3)])
    data = workdir / f"perf-{run}.data"
    with engine.begin() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        cpu_before = _cpu_seconds(pid)
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "2999", "-o", str(data),
                                 "-p", str(pid)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # perf attaches
        if perf.poll() is not None:  # refused to attach: it exits at once
            raise PerfFailed
        started = time.perf_counter()
        for chunk in chunks:
            with conn.begin_nested():
                bulk_insert(conn, ingest_keys, chunk,
                            {"batch_id": "mobile_payments-20260930-0123456789ab"})
        seconds = time.perf_counter() - started
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
        cpu_seconds = _cpu_seconds(pid) - cpu_before
    if not data.exists():
        raise PerfFailed
    return seconds, cpu_seconds, _symbols(data, exported)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--existing", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100k rows, 100k existing, once")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.existing, args.repeats = 100_000, 100_000, 1
    if shutil.which("perf") is None:
        print("perf not found (apt-get install linux-perf): nothing measured")
        return 2
    from sqlalchemy import create_engine

    from puhui.throwaway_postgres import throwaway_postgres

    runs = []
    with throwaway_postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(pg.create_database("key_profile"))
        exported = _exported(pg.bin_dir / "postgres")
        rng = np.random.default_rng(1)
        try:
            for run in range(args.repeats):
                try:
                    seconds, cpu_seconds, symbols = profile_once(
                        engine, rng, args.existing, args.rows, run, Path(tmp), exported)
                except PerfFailed:
                    symbols = Counter()
                if not symbols:
                    print("perf could not sample the backend (root, or perf_event_paranoid "
                          "<= 1, is needed): nothing measured")
                    return 2
                total = sum(symbols.values())
                parts: Counter[str] = Counter()
                for symbol, share in symbols.items():
                    parts[_part(symbol)] += share * 100 / total
                runs.append({
                    "seconds": round(seconds, 3),
                    "backend_cpu_seconds": round(cpu_seconds, 2),
                    "parts_percent": {k: round(v, 1) for k, v in parts.most_common()},
                    "top_functions_percent": {k: round(v * 100 / total, 1)
                                              for k, v in symbols.most_common(25)}})
                print(f"run {run + 1}: {seconds:.2f} s (backend CPU {cpu_seconds:.2f} s), "
                      + ", ".join(f"{k} {v:.1f}%" for k, v in parts.most_common()), flush=True)
        finally:
            engine.dispose()
    names = sorted({p for r in runs for p in r["parts_percent"]})
    medians = {p: round(statistics.median(r["parts_percent"].get(p, 0.0) for r in runs), 1)
               for p in names}
    result = {"rows": args.rows, "existing_keys": args.existing, "repeats": args.repeats,
              "median_parts_percent": dict(sorted(medians.items(), key=lambda kv: -kv[1])),
              "runs": runs, "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
              **machine_facts()}
    print("\nmedian share of the backend's samples, per part:")
    for name, share in result["median_parts_percent"].items():
        print(f"  {name:<28} {share:5.1f} %")
    write_results("key_index_profile", result, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
