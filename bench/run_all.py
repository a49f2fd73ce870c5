"""Run every benchmark in bench/ (each prints its figures and writes bench/results/<name>.json).

Usage: python bench/run_all.py [--only NAME ...] [--quick]
``--quick`` passes each benchmark its small sizes only (a smoke run, not for the README).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names, e.g. generate")
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    args = parser.parse_args()
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    failed = []
    for script in scripts:
        print(f"== {script.stem} ==", flush=True)
        argv = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        if subprocess.run(argv, cwd=BENCH_DIR.parent).returncode != 0:
            failed.append(script.stem)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
