"""Benchmark: the synthetic landing-zone generator at several population sizes.

Each size runs in a fresh child process (so its peak memory is its own), writing into a
temporary directory that is deleted afterwards. Peak RSS is the larger of what the child
reports for itself (``getrusage``) and the largest sum of RSS over the child's process tree
seen by polling every 0.1 s.

Usage: python bench/bench_generate.py [--users 100000 1000000] [--days 30]
           [--history-days 365] [--faults] [--quick]
Prints a table and writes bench/results/generate.json (generate-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, write_results  # noqa: E402

TARGETS = {"seconds_max_at_1M_users": 600, "peak_rss_mib_max": 4096}


def run_child(args: argparse.Namespace) -> int:
    """In the child: generate, then print the summary and own peak RSS as JSON."""
    from puhui.generate import generate_landing_zone

    summary = generate_landing_zone(
        Path(args.out), users=args.users[0], days=args.days, seed=args.seed,
        history_days=args.history_days, faults=args.faults,
    )
    print(json.dumps({
        "rows": sum(summary.rows_by_partner.values()),
        "rows_by_partner": summary.rows_by_partner,
        "files": summary.files,
        "bytes_written": summary.bytes_written,
        "generator_seconds": summary.seconds,
        "self_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))
    return 0


def _tree_rss(process: psutil.Process) -> int:
    try:
        members = [process, *process.children(recursive=True)]
        return sum(p.memory_info().rss for p in members)
    except psutil.Error:
        return 0


def measure(users: int, days: int, history_days: int, seed: int, faults: bool) -> dict:
    """Run one size in a child process; wall time, summary and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="puhui-bench-generate-") as tmp:
        out = Path(tmp) / "landing"
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--out", str(out),
                "--users", str(users), "--days", str(days), "--history-days",
                str(history_days), "--seed", str(seed), *(["--faults"] if faults else [])]
        started = time.perf_counter()
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watched = psutil.Process(child.pid)
        polled_peak = 0
        while child.poll() is None:
            polled_peak = max(polled_peak, _tree_rss(watched))
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        stdout, stderr = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"generator failed for {users:,} users:\n{stderr[-3000:]}")
        result = json.loads(stdout.strip().splitlines()[-1])
        shutil.rmtree(out, ignore_errors=True)
    peak = max(result.pop("self_peak_rss_mib"), polled_peak / 2**20)
    return {
        "users": users, "days": days, "history_days": history_days, "faults": faults,
        "rows": result["rows"], "files": result["files"],
        "gb_written": round(result["bytes_written"] / 1e9, 3),
        "seconds": round(seconds, 1), "generator_seconds": round(result["generator_seconds"], 1),
        "rows_per_second": round(result["rows"] / seconds),
        "peak_rss_mib": round(peak), "rows_by_partner": result["rows_by_partner"],
    }


def print_table(runs: list[dict]) -> None:
    header = (f"{'users':>10} {'days':>5} {'rows':>12} {'files':>6} {'GB':>7} {'seconds':>8} "
              f"{'rows/s':>10} {'peak RSS MiB':>13}")
    print(header)
    print("-" * len(header))
    for r in runs:
        print(f"{r['users']:>10,} {r['days']:>5} {r['rows']:>12,} {r['files']:>6} "
              f"{r['gb_written']:>7.2f} {r['seconds']:>8.1f} {r['rows_per_second']:>10,} "
              f"{r['peak_rss_mib']:>13,}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--history-days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--faults", action="store_true", help="plant the faults too")
    parser.add_argument("--quick", action="store_true", help="20k and 100k users (smoke run)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_child(args)
    if args.quick:
        args.users = [20_000, 100_000]
    runs = []
    for users in args.users:
        print(f"generating {users:,} users x {args.days} days "
              f"(+{args.history_days} days history)...", flush=True)
        runs.append(measure(users, args.days, args.history_days, args.seed, args.faults))
    print()
    print_table(runs)
    result = {
        "benchmark": "generate",
        "machine": machine_facts(),
        "targets": TARGETS,
        "runs": runs,
    }
    write_results("generate", result, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
