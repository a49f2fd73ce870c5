"""Benchmark: what the lighter GX expectation kwargs (``lighten_gx_expectation_kwargs`` in
puhui/validation.py) save an ingest, and that they change no validation result.

Setup (not measured): a landing zone of USERS customers, one delivery and 540 days of history
(the terminal demo's size: 148 files, ~28k rows, each file one GX validation). Measured: the
plain-Python ingest of every feed (``ingest_all_feeds``, SQLite, a fresh home each time) with
GX's own ``Expectation`` kwargs methods and with the rewrites, in PAIRS pairs whose order
alternates; wall time and this process's CPU time (which other work on the shared cores does
not inflate). Ratios are of one run. Every run's validation results (``gx/validations``) are
compared with the first's, the run-specific fields (ids, times) left out: they must be equal.

Usage: python bench/bench_gx_validation.py [--users 300] [--pairs 2] [--quick]
Prints a table and writes bench/results/gx_validation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, write_results  # noqa: E402

END = date(2026, 9, 30)
_RUN_FIELDS = {
    "run_id",
    "validation_time",
    "id",
    "batch_id",
    "active_batch_id",
    "batch_spec",
    "batch_markers",
    "checkpoint_id",
    "validation_id",
}


def _normalized(value: object) -> object:
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items() if k not in _RUN_FIELDS}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def _results(home: Path) -> dict[str, list[str]]:
    """Each suite's validation results, normalized and sorted (file names carry batch ids)."""
    found: dict[str, list[str]] = {}
    for path in (home / "gx" / "validations").rglob("*.json"):
        text = json.dumps(_normalized(json.loads(path.read_text())), sort_keys=True)
        found.setdefault(path.parent.name, []).append(text)
    return {suite: sorted(texts) for suite, texts in found.items()}


def _use(lighter: bool) -> None:
    """GX's own methods, or the rewrites (installed by the first ``_gx()``)."""
    from puhui import validation

    assert validation.lighten_gx_expectation_kwargs(validation.import_gx(), lighter) == lighter


def _ingest(root: Path, landing: Path, lighter: bool) -> tuple[float, float, dict]:
    from puhui.ingest.feeds import ingest_all_feeds
    from puhui.runtime import open_runtime
    from puhui.warehouse.engine import dispose_engines

    home = root / f"home-{time.monotonic_ns()}"
    os.environ.update(
        {"PUHUI_HOME": str(home), "PUHUI_WAREHOUSE_URL": f"sqlite:///{home / 'warehouse.db'}"}
    )
    runtime = open_runtime()
    _use(lighter)
    wall, cpu = time.perf_counter(), time.process_time()
    ingest_all_feeds(runtime, END)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    dispose_engines()
    return wall, cpu, _results(home)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="100 users, one pair")
    args = parser.parse_args()
    users, pairs = (100, 1) if args.quick else (args.users, args.pairs)

    from puhui.settings import QUIET_ENVIRONMENT

    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    root = Path(tempfile.mkdtemp(prefix="bench-gx-validation-"))
    landing = root / "landing"
    os.environ.update(
        {
            "PUHUI_LANDING": str(landing),
            "PUHUI_PSEUDONYM_KEY": "bench-key-" + "0123456789abcdef" * 3,
            "PUHUI_AUDIT_KEY": "bench-audit-key-" + "fedcba9876543210" * 3,
        }
    )
    from puhui.generate import generate_landing_zone
    from puhui.validation import _gx

    generate_landing_zone(landing, users=users, days=1, seed=7, history_days=540, end_date=END)
    _gx()  # GX's import and context, paid once, outside the measurements
    load = os.getloadavg()[0]
    runs: dict[str, list[tuple[float, float]]] = {"gx": [], "lighter": []}
    first: dict | None = None
    for pair in range(pairs):
        for lighter in (False, True) if pair % 2 == 0 else (True, False):
            wall, cpu, results = _ingest(root, landing, lighter)
            first = results if first is None else first
            assert results == first, "a validation result differs between the runs"
            runs["lighter" if lighter else "gx"].append((wall, cpu))
            print(
                f"  pair {pair + 1} {'lighter' if lighter else 'gx     '}: "
                f"wall {wall:6.1f} s  cpu {cpu:6.1f} s",
                flush=True,
            )
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    result = {
        "benchmark": "gx_validation",
        "users": users,
        "pairs": pairs,
        "files": sum(len(v) for v in (first or {}).values()),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "runs": {
            k: [{"wall_s": round(w, 2), "cpu_s": round(c, 2)} for w, c in v]
            for k, v in runs.items()
        },
        "cpu_ratio_lighter_to_gx": round(cpu["lighter"] / cpu["gx"], 3),
        "wall_ratio_lighter_to_gx": round(wall["lighter"] / wall["gx"], 3),
        "results_equal": True,
        **machine_facts(),
    }
    print(
        f"ingest of {result['files']} files, {users} users (median of {pairs}): "
        f"CPU {cpu['gx']:.1f} -> {cpu['lighter']:.1f} s "
        f"(x{result['cpu_ratio_lighter_to_gx']}), wall {wall['gx']:.1f} -> "
        f"{wall['lighter']:.1f} s (x{result['wall_ratio_lighter_to_gx']}); "
        f"validation results equal; load {load:.1f}"
    )
    write_results("gx_validation", result, args.quick)
    shutil.rmtree(root, ignore_errors=True)  # the landing zone and every run's home


if __name__ == "__main__":
    main()
