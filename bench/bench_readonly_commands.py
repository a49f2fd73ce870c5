"""Benchmark: every read-only command, cold (a fresh process each), on a prepared demo state,
with the SQLite warehouse and with the same warehouse copied into PostgreSQL.

The standard: a read-only command answers in a second or two. Each command runs ``--runs``
times in a fresh ``python -m puhui`` process, as typed; the table shows the median wall and
CPU (user+sys of the process and its children; with PostgreSQL the server's backend is
not a child, so its CPU is not counted) and the load average at the time (the machine is
shared: wall time grows with the load, CPU time much less). ``--help`` of every
command and subcommand touches no warehouse and is timed once per run with SQLite only.

The state is ``--home`` (default ``$PUHUI_HOME`` or ``./.puhui``) as ``puhui demo`` leaves
it; a home without a warehouse is built first with ``puhui demo --users 1500 --days 3``
(minutes; not measured). For PostgreSQL a throwaway server is started, the schema migrated
and every contract table copied from the SQLite warehouse (not measured); the MLflow store
and the keys stay those of the home.

Usage: python bench/bench_readonly_commands.py [--home DIR] [--runs 3] [--no-postgres]
       [--label NAME] [--quick]
Prints a table and writes bench/results/readonly_commands[-NAME].json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, medians, write_results  # noqa: E402

# label -> arguments; each reads only (none writes the warehouse, MLflow or the trail).
DATA_COMMANDS: dict[str, list[str]] = {
    "models list": ["models", "list"],
    "models list --json": ["models", "list", "--json"],
    "models list product_recommender --json": ["models", "list", "product_recommender",
                                               "--json"],
    "models show credit_risk --version 1": ["models", "show", "credit_risk", "--version", "1"],
    "models compare credit_risk": ["models", "compare", "credit_risk"],
    "audit verify --no-repair": ["audit", "verify", "--no-repair"],
    "audit verify --no-repair --json": ["audit", "verify", "--no-repair", "--json"],
    "audit anchor": ["audit", "anchor"],
    "audit log": ["audit", "log"],
    "audit log --format json": ["audit", "log", "--format", "json"],
    "audit lineage credit_risk --version 1": ["audit", "lineage", "credit_risk", "--version",
                                              "1"],
    "quarantine list": ["quarantine", "list"],
    "quarantine list --all --json": ["quarantine", "list", "--all", "--json"],
    "server status": ["server", "status"],
    "db status": ["db", "status"],
    "config check": ["config", "check"],
}
HELP_COMMANDS: list[list[str]] = [
    [], ["run"], ["run", "daily"], ["run", "ingest"], ["run", "train"], ["run", "profiles"],
    ["run", "report"], ["models"], ["models", "list"], ["models", "show"],
    ["models", "compare"], ["models", "promote"], ["models", "rollback"], ["quarantine"],
    ["quarantine", "list"], ["quarantine", "show"], ["quarantine", "release"], ["audit"],
    ["audit", "log"], ["audit", "verify"], ["audit", "anchor"], ["audit", "lineage"],
    ["profiles", "explain"], ["server", "start"], ["server", "status"], ["db", "status"],
    ["config", "check"], ["demo"], ["generate"], ["backfill"], ["serve"], ["data-docs"],
]


def _environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PUHUI_", "PREFECT_", "MLFLOW_", "GX_"))}
    env.update({"PUHUI_HOME": str(home), "PUHUI_ACTOR": "bench",
                "PREFECT_HOME": str(home / "prefect")})
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(args: list[str], env: dict[str, str]) -> dict:
    """One command in a fresh process: wall, CPU, exit code, load, lines printed."""
    load = os.getloadavg()[0]
    spent, started = _children_cpu(), time.monotonic()
    done = subprocess.run([sys.executable, "-m", "puhui", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    return {"wall": round(time.monotonic() - started, 3),
            "cpu": round(_children_cpu() - spent, 3), "load": round(load, 2),
            "rc": done.returncode, "lines": len(done.stdout.splitlines()),
            "error": done.stderr.strip().splitlines()[-1:] if done.returncode else []}


def _prepare(home: Path, quick: bool) -> None:
    if (home / "warehouse.db").exists():
        return
    users = "300" if quick else "1500"
    print(f"no warehouse under {home}: building a demo state ({users} users, 3 days)...",
          flush=True)
    subprocess.run([sys.executable, "-m", "puhui", "demo", "--users", users, "--days", "3"],
                   env=_environment(home), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def _copy_warehouse(sqlite_url: str, target_url: str) -> None:
    """The contract tables of the SQLite warehouse, row for row, into a migrated database
    (the audit chain's hashes are stored values: the copy verifies as the original)."""
    from sqlalchemy import inspect

    from puhui.warehouse.engine import create_warehouse_engine, upgrade_schema
    from puhui.warehouse.schema import metadata

    source, target = create_warehouse_engine(sqlite_url), create_warehouse_engine(target_url)
    upgrade_schema(target)
    present = set(inspect(source).get_table_names())
    with source.connect() as read, target.begin() as write:
        for table in metadata.sorted_tables:
            if table.name in present:
                rows = [dict(r._mapping) for r in read.execute(table.select())]
                if rows:
                    write.execute(table.insert(), rows)
    source.dispose()
    target.dispose()


def _run_all(commands: dict[str, list[str]], env: dict[str, str], runs: int,
             dialect: str) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {label: [] for label in commands}
    for index in range(runs):
        for label, args in commands.items():
            outcome = measure(args, env)
            results[label].append(outcome)
            print(f"[{index + 1}/{runs}] {dialect:10} {label:42} wall {outcome['wall']:6.2f} s"
                  f"  cpu {outcome['cpu']:5.2f} s  rc {outcome['rc']}  load "
                  f"{outcome['load']:5.2f}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path,
                        default=Path(os.environ.get("PUHUI_HOME", ROOT / ".puhui")))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--label", default="", help="suffix of the results file (e.g. before)")
    parser.add_argument("--quick", action="store_true", help="1 run, SQLite only (smoke)")
    options = parser.parse_args()
    runs = 1 if options.quick else options.runs
    home = options.home.resolve()
    _prepare(home, options.quick)
    env = _environment(home)
    helps = {"puhui " + " ".join([*args, "--help"]): [*args, "--help"] for args in HELP_COMMANDS}
    results = {"sqlite": _run_all({**DATA_COMMANDS, **helps}, env, runs, "sqlite")}
    if not (options.quick or options.no_postgres):
        from puhui.throwaway_postgres import throwaway_postgres

        with contextlib.ExitStack() as stack:
            server = stack.enter_context(throwaway_postgres())
            url = server.create_database("bench_readonly")
            _copy_warehouse(f"sqlite:///{home / 'warehouse.db'}", url)
            results["postgresql"] = _run_all(DATA_COMMANDS, {**env, "PUHUI_WAREHOUSE_URL": url},
                                             runs, "postgresql")
    _report(results, home, options.label, options.quick)


def _report(results: dict[str, dict[str, list[dict]]], home: Path, label: str,
            quick: bool) -> None:
    summary: dict[str, dict[str, dict]] = {}
    print(f"\n{'warehouse':10} {'command':42} {'wall':>6} {'cpu':>6} {'load':>6} rc  (medians)")
    for dialect, commands in results.items():
        for command, outcomes in commands.items():
            figures = medians(outcomes)
            codes = sorted({o["rc"] for o in outcomes})
            summary.setdefault(dialect, {})[command] = {**figures, "rc": codes,
                                                        "runs": len(outcomes)}
            print(f"{dialect:10} {command:42} {figures['wall']:6.2f} {figures['cpu']:6.2f} "
                  f"{figures['load']:6.2f} {codes}")
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(uptime)
    write_results("readonly_commands" + (f"-{label}" if label else ""), {
        "machine": machine_facts(), "uptime": uptime,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "state": f"puhui demo state under {home.name}", "summary": summary, "runs": results},
        quick=quick)


if __name__ == "__main__":
    main()
