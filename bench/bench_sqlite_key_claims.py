"""Benchmark: the key index's claims on SQLite in the risk template's ingest.

The suite's risk templates (``tests/conftest.py``: ``RISK_DATASETS``) are a 4,000-user
landing zone (every feed, 540 days of history) ingested into SQLite; the key index's claims
were its largest part (README "Performance"). This ingests that landing zone into a fresh
SQLite warehouse with the code at ROOT and with the code of ``--baseline`` (a git ref,
exported with ``git archive`` into a temporary folder), alternating, each run in a process
of its own with GX imported before the clock starts (as in the suite, where an earlier test
paid it). Per run: the ingest's wall time and the time spent in ``KeyIndex.claim``.

Usage: python bench/bench_sqlite_key_claims.py [--baseline main] [--repeats 3] [--users 4000]
    [--quick]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, write_results  # noqa: E402

AS_OF = "2026-09-30"
PSEUDONYM_KEY = "test-key-" + "0123456789abcdef" * 3  # the suite's (tests/conftest.py)
AUDIT_KEY = "test-audit-key-" + "fedcba9876543210" * 3

# Run in a child whose working directory is the code measured (its `puhui` is imported).
CHILD = """
import json, os, sys, time
from datetime import date
sys.path.insert(0, os.getcwd())
import great_expectations  # noqa: F401  paid before the clock, as an earlier test does
from puhui.ingest import key_index
from puhui.ingest.feeds import ingest_all_feeds
from puhui.runtime import open_runtime

real, spent = key_index.KeyIndex.claim, [0.0, 0]
def claim(self, chunk):
    started = time.perf_counter()
    try:
        return real(self, chunk)
    finally:
        spent[0] += time.perf_counter() - started
        spent[1] += 1
key_index.KeyIndex.claim = claim
runtime = open_runtime()
started = time.perf_counter()
ingest_all_feeds(runtime, date.fromisoformat(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - started, "claims_seconds": spent[0],
                  "claims": spent[1]}))
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


def ingest_once(code: Path, landing: Path, home: Path) -> dict[str, float]:
    """One ingest of ``landing`` into a fresh SQLite warehouse at ``home`` by ``code``."""
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
        [sys.executable, "-c", CHILD, AS_OF],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default="main", help="git ref measured against ROOT")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--quick", action="store_true", help="400 users, one run each")
    args = parser.parse_args()
    if args.quick:
        args.users, args.repeats = 400, 1
    with tempfile.TemporaryDirectory(prefix="bench-claims-") as tmp:
        folder = Path(tmp)
        baseline = folder / "baseline"
        baseline.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.baseline], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        print(f"generating the landing zone ({args.users:,} users)...", flush=True)
        landing = landing_zone(folder, args.users)
        codes = {"this": ROOT, "baseline": baseline}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in codes}
        for run in range(args.repeats):
            # Alternating, the first one swapped every other run.
            for name in list(codes) if run % 2 == 0 else list(reversed(codes)):
                result = ingest_once(codes[name], landing, folder / f"home-{name}-{run}")
                result["load_1min"] = os.getloadavg()[0]
                runs[name].append(result)
                print(
                    f"run {run + 1}/{args.repeats} {name}: ingest {result['seconds']:.2f} s, "
                    f"claims {result['claims_seconds']:.2f} s ({result['claims']} calls), "
                    f"load {result['load_1min']:.2f}",
                    flush=True,
                )
    summary = {
        name: {
            "median_seconds": statistics.median(r["seconds"] for r in rs),
            "median_claims_seconds": statistics.median(r["claims_seconds"] for r in rs),
        }
        for name, rs in runs.items()
    }
    print(f"\n{'code':10s} {'ingest, median':>15s} {'claims, median':>15s}")
    for name, figures in summary.items():
        print(
            f"{name:10s} {figures['median_seconds']:14.2f}s "
            f"{figures['median_claims_seconds']:14.2f}s"
        )
    write_results(
        "sqlite_key_claims",
        {
            "what": "risk template landing zone ingested into SQLite: wall and KeyIndex.claim time",
            "baseline": args.baseline,
            "users": args.users,
            "repeats": args.repeats,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_at_end": os.getloadavg(),
            "machine": machine_facts(),
            "runs": runs,
            "summary": summary,
        },
        args.quick,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
