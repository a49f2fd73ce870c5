"""Benchmark: the risk template's ingest into SQLite, this code against ``--baseline REF``.

The suite's risk templates (``tests/conftest.py``: ``RISK_DATASETS``) are a landing zone of
every feed with 540 days of history ingested into SQLite. This ingests such a landing zone
into a fresh SQLite warehouse with the code at ROOT and with the code of ``--baseline`` (a
git ref, exported with ``git archive`` into a temporary folder; its commit id is stored),
alternating run by run (the order swapped every other round, so the machine's load falls on
both alike), each run in a process of its own with GX imported before the clock starts (as
in the suite, where an earlier test paid it). The 1-minute load is read before and after
every run.

Per run: the ingest's wall time (the figure to judge by), and, in the main thread, the time
in ``KeyIndex.claim``, in the raw rows' ``bulk_insert`` and waiting on GX's validations
(``Future.result``); GX's own time in its thread too. ``--block-kib`` makes the reader's
blocks smaller so files load in several chunks (the template's files are each one chunk at
the reader's 32 MiB).

Without ``--baseline`` it prints why and does nothing (``make bench`` runs every bench_*.py
with no arguments: an A/A run of main against itself would only overwrite the figures).

Usage: python bench/bench_sqlite_key_claims.py --baseline REF [--repeats 3] [--users 4000]
    [--block-kib N] [--quick]
Prints a table and writes bench/results/sqlite_key_claims.json.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, write_results  # noqa: E402

AS_OF = "2026-09-30"
PSEUDONYM_KEY = "test-key-" + "0123456789abcdef" * 3  # the suite's (tests/conftest.py)
AUDIT_KEY = "test-audit-key-" + "fedcba9876543210" * 3
STAGES = ("claim", "insert", "validation_wait", "validate")

# Run in a child whose working directory is the code measured (its `puhui` is imported).
# argv: as-of date, reader block size in bytes (0: the reader's own).
CHILD = """
import json, os, sys, threading, time
from datetime import date
sys.path.insert(0, os.getcwd())
import great_expectations  # noqa: F401  paid before the clock, as an earlier test does
from puhui.ingest import batches, key_index, reading
from puhui.ingest.feeds import ingest_all_feeds
from puhui.runtime import open_runtime
from puhui.validation import BatchValidator

spent = {"claim": 0.0, "insert": 0.0, "validation_wait": 0.0, "validate": 0.0}
calls = {"claim": 0, "files": 0}
lock = threading.Lock()

def timed(name, real):
    def call(*args, **kwargs):
        started = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                spent[name] += time.perf_counter() - started
    return call

if int(sys.argv[2]):
    reading.iter_file_chunks.__defaults__ = (int(sys.argv[2]),)
real_claim = key_index.KeyIndex.claim
def claim(self, chunk):
    calls["claim"] += 1
    return real_claim(self, chunk)
key_index.KeyIndex.claim = timed("claim", claim)
batches.bulk_insert = timed("insert", batches.bulk_insert)  # the raw rows' insert only
BatchValidator.validate_frame = timed("validate", BatchValidator.validate_frame)
real_submit = batches._VALIDATION_POOL.submit
def submit(*args, **kwargs):
    future = real_submit(*args, **kwargs)
    future.result = timed("validation_wait", future.result)
    return future
batches._VALIDATION_POOL.submit = submit
real_load = batches.FileIngestor._load_chunks
def load_chunks(*args, **kwargs):
    calls["files"] += 1
    return real_load(*args, **kwargs)
batches.FileIngestor._load_chunks = load_chunks

runtime = open_runtime()
started = time.perf_counter()
ingest_all_feeds(runtime, date.fromisoformat(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - started,
                  **{f"{k}_seconds": v for k, v in spent.items()},
                  "chunks": calls["claim"], "files": calls["files"]}))
"""


def landing_zone(folder: Path, users: int) -> Path:
    """The risk templates' landing zone (their generator arguments) for ``users``."""
    from datetime import date

    from puhui.generate import generate_landing_zone

    landing = folder / "landing"
    generate_landing_zone(
        landing,
        users=users,
        days=2,
        seed=7,
        history_days=540,
        end_date=date.fromisoformat(AS_OF),
        penalize_segment=None,
        drift=False,
    )
    return landing


def ingest_once(code: Path, landing: Path, home: Path, block_bytes: int) -> dict[str, Any]:
    """One ingest of ``landing`` into a fresh SQLite warehouse at ``home`` by ``code``: its
    seconds (total and by stage), chunks and files."""
    home.mkdir(parents=True)
    env = {
        **os.environ,
        "PUHUI_HOME": str(home),
        "PUHUI_LANDING": str(landing),
        "PUHUI_WAREHOUSE_URL": f"sqlite:///{home / 'warehouse.db'}",
        "PUHUI_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "PUHUI_AUDIT_KEY": AUDIT_KEY,
        "GX_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(code),
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD, AS_OF, str(block_bytes)],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", help="git ref measured against ROOT (required)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--block-kib", type=int, default=0, help="reader block (0: its own)")
    parser.add_argument("--quick", action="store_true", help="400 users, one run each")
    args = parser.parse_args()
    if not args.baseline:
        print("skipped: an A/B of the SQLite ingest needs --baseline REF (the code before")
        print("the change measured); see this script's docstring")
        return 0
    if args.quick:
        args.users, args.repeats = 400, 1
    baseline_commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{args.baseline}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    block_bytes = args.block_kib << 10
    with tempfile.TemporaryDirectory(prefix="bench-claims-") as tmp:
        folder = Path(tmp)
        baseline = folder / "baseline"
        baseline.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", baseline_commit], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        print(f"generating the landing zone ({args.users:,} users)...", flush=True)
        landing = landing_zone(folder, args.users)
        codes = {"this": ROOT, "baseline": baseline}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in codes}
        for run in range(args.repeats):
            for name in list(codes) if run % 2 == 0 else list(reversed(codes)):
                load_before = os.getloadavg()[0]
                home = folder / f"home-{name}-{run}"
                result = ingest_once(codes[name], landing, home, block_bytes)
                result |= {"load_1min_before": load_before, "load_1min_after": os.getloadavg()[0]}
                runs[name].append(result)
                print(
                    f"run {run + 1}/{args.repeats} {name:8s}: total {result['seconds']:6.2f} s, "
                    + ", ".join(f"{s} {result[f'{s}_seconds']:.2f}" for s in STAGES)
                    + f" ({result['chunks']} chunks, {result['files']} files), "
                    f"load {load_before:.2f} -> {result['load_1min_after']:.2f}",
                    flush=True,
                )
    summary = {
        name: {
            key: spread([r[key] for r in rs])
            for key in ("seconds", *(f"{s}_seconds" for s in STAGES), "load_1min_before")
        }
        for name, rs in runs.items()
    }
    print(f"\n{'code':9s} " + " ".join(f"{k:>22s}" for k in ("total", *STAGES)))
    for name, figures in summary.items():
        cells = [figures[k] for k in ("seconds", *(f"{s}_seconds" for s in STAGES))]
        print(
            f"{name:9s} "
            + " ".join(f"{c['median']:7.2f} ({c['min']:6.2f}-{c['max']:6.2f})" for c in cells)
        )
    write_results(
        "sqlite_key_claims",
        {
            "what": "risk template landing zone ingested into SQLite, this code against the "
            "baseline, alternating: total seconds; main-thread seconds in KeyIndex.claim, the "
            "raw rows' bulk_insert and waiting on validations; GX's own seconds",
            "baseline": {"ref": args.baseline, "commit": baseline_commit},
            "users": args.users,
            "block_bytes": block_bytes or "reader default",
            "repeats": args.repeats,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_facts(),
            "runs": runs,
            "summary": summary,
        },
        args.quick,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
