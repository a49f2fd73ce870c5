"""Where a benchmark's figures go: bench/results/<name>.json, or <name>-quick.json for a
smoke run (untracked, so a smoke run never overwrites the figures the README quotes)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"


def machine_facts() -> dict[str, object]:
    """The machine, and the commit measured: the benches run ``puhui`` from ROOT."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), **measured_commit()}


def measured_commit() -> dict[str, object]:
    """ROOT's ``git rev-parse HEAD`` and whether the code differs from it: a tracked file
    changed, or an untracked one under ``puhui/`` or ``bench/`` (a new bench script run
    before its commit); None for a checkout without git (an export: its results file's
    label then says what it is)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                                  text=True, timeout=30)
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")  # an export inside another checkout is not it
    commit = git("rev-parse", "HEAD") if top and Path(top).resolve() == ROOT else None
    changes = git("status", "--porcelain", "--untracked-files=no") if commit else None
    if changes == "":  # untracked code measured; ignored files (quick results) are not listed
        changes = git("status", "--porcelain", "--untracked-files=all", "--", "puhui", "bench")
    return {"commit": commit, "uncommitted_changes": None if changes is None else bool(changes)}


def write_results(name: str, result: dict, quick: bool) -> Path:
    """Write ``result`` as JSON and say where; returns the path."""
    path = RESULTS_DIR / f"{name}{'-quick' if quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


def best_of(func: Callable[[], object], repeat: int) -> float:
    """Seconds of the fastest of ``repeat`` runs of ``func`` (the one least slowed by other
    work on a shared machine)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def medians(outcomes: list[dict], fields: tuple[str, ...] = ("wall", "cpu", "load")
            ) -> dict[str, float]:
    """Each of ``fields``' median over ``outcomes`` (the runs of one command), to 2 places."""
    return {f: round(statistics.median(o[f] for o in outcomes), 2) for f in fields}
