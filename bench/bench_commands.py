"""Benchmark: how long the everyday commands take, wall and CPU, with and without a server.

Measures `puhui quarantine list`, `puhui models list` and `puhui run ingest` of a new 4-row
`mobile_payments` file, each in a fresh process as a person would type it:
- with `puhui server` running (Prefect API + UI, and the warm worker that runs ingests);
- with the server but `PUHUI_WARM_WORKER=off` (every command imports what it needs);
- without a server (a flow starts Prefect's temporary server for itself).
Setup (not measured): a 100-customer landing zone of 40 days ingested once, an MLflow store
with two registered versions, SQLite warehouse.

CPU is user+sys of the command's process and its children; for a run in the warm worker it
is the client plus the forked child that ran the command (read from the worker's reaped
children). The machine is shared: the load average is recorded with each run, and runs of
the checkouts compared (``--checkout NAME=PATH``, e.g. the commit before) alternate.

Usage: python bench/bench_commands.py [--runs 5] [--no-server-runs 2]
       [--checkout before=/path/to/other/checkout] [--quick]
Prints a table and writes bench/results/commands.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, medians, write_results  # noqa: E402

AS_OF = "2026-09-30"
KEY = "bench-key-0123456789abcdefghijklmnopqrstuvwxyz"
TICKS = os.sysconf("SC_CLK_TCK")
COMMANDS = {
    "quarantine list": ["quarantine", "list"],
    "models list": ["models", "list"],
    "run ingest (4 rows)": ["run", "ingest", "--as-of", AS_OF],
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PUHUI_", "PREFECT_", "MLFLOW_", "GX_"))}
    env.update({
        "PUHUI_HOME": str(work / "home"), "PUHUI_LANDING": str(work / "landing"),
        "PUHUI_PSEUDONYM_KEY": KEY, "PUHUI_ACTOR": "bench",
        "PREFECT_HOME": str(work / "home" / "prefect"),
        "PUHUI_PREFECT_PORT": str(_free_port()),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'home' / 'mlflow.db'}",
    })
    return env


def _registry(uri: str, artifacts: Path) -> None:
    """Two registered versions with metrics, gates and aliases (what `models list` shows)."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("credit_risk", artifact_location=artifacts.as_uri())
    client.create_registered_model("credit_risk")
    for version, auc in (("1", 0.71), ("2", 0.74)):
        run = client.create_run(experiment)
        client.log_batch(run.info.run_id, metrics=[
            mlflow.entities.Metric("auc_oot", auc, 0, 0),
            mlflow.entities.Metric("ks_oot", auc / 2, 0, 0)])
        client.create_model_version("credit_risk", f"runs:/{run.info.run_id}/model",
                                    run.info.run_id, tags={"training.as_of": AS_OF})
        client.set_model_version_tag("credit_risk", version, "gates.failed", "[]")
        client.set_model_version_tag("credit_risk", version, "gates.passed", "true")
    client.set_registered_model_alias("credit_risk", "champion", "1")
    client.set_registered_model_alias("credit_risk", "challenger", "2")


def _new_payments_file(landing: Path, number: int) -> Path:
    """A new 4-row file for the day (new transaction ids, so nothing is a duplicate)."""
    folder = landing / "mobile_payments" / AS_OF
    source = folder / f"mobile_payments_{AS_OF.replace('-', '')}.csv"
    lines = source.read_text().splitlines()
    rows = [f"T9{number:07d}{line[10:]}" for line in lines[1:5]]
    target = folder / f"mobile_payments_{AS_OF.replace('-', '')}_bench{number}.csv"
    target.write_text("\n".join([lines[0], *rows]) + "\n")
    return target


def _worker_children_cpu(home: Path) -> tuple[int, float] | None:
    """(pid, CPU seconds of the reaped children) of the warm worker, if one runs."""
    from puhui.warm_worker import STATE_FILE

    try:
        pid = int(json.loads((home / "prefect" / STATE_FILE).read_text())["pid"])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, KeyError):
        return None
    return pid, (int(fields[13]) + int(fields[14])) / TICKS  # cutime + cstime


def measure(args: list[str], env: dict[str, str], cwd: Path, home: Path) -> dict:
    """One command in a fresh process: wall, the warm worker child's CPU, load."""
    before = _worker_children_cpu(home)
    load = os.getloadavg()[0]
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "puhui", *args], env=env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate()
    wall = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"{args} failed ({process.returncode}): {err.decode()[-800:]}")
    worker_cpu = 0.0
    if before is not None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the worker reaps its child within 0.5 s
            after = _worker_children_cpu(home)
            if after is None or after[0] != before[0] or after[1] != before[1]:
                break
            time.sleep(0.1)
        if after is not None and after[0] == before[0]:
            worker_cpu = after[1] - before[1]
    return {"wall": round(wall, 3), "cpu_worker_child": round(worker_cpu, 3),
            "load": round(load, 2), "last_line": out.decode().strip().splitlines()[-1:]}


def _rusage_children() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_command(args: list[str], env: dict[str, str], cwd: Path, home: Path) -> dict:
    """``measure`` plus the command process's own CPU (this process's reaped children)."""
    spent = _rusage_children()
    result = measure(args, env, cwd, home)
    result["cpu_client"] = round(_rusage_children() - spent, 3)
    result["cpu"] = round(result["cpu_client"] + result["cpu_worker_child"], 3)
    return result


def _puhui(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
    subprocess.run([sys.executable, "-m", "puhui", *args], env=env, cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-server-runs", type=int, default=2)
    parser.add_argument("--checkout", action="append", default=[],
                        help="NAME=PATH of another checkout to alternate with (its own code, "
                             "this interpreter)")
    parser.add_argument("--quick", action="store_true", help="1 run each (smoke)")
    options = parser.parse_args()
    runs = 1 if options.quick else options.runs
    no_server_runs = 1 if options.quick else options.no_server_runs
    checkouts = {"now": ROOT}
    for item in options.checkout:
        name, _, path = item.partition("=")
        checkouts[name] = Path(path).resolve()

    from puhui.generate import generate_landing_zone

    work = Path(tempfile.mkdtemp(prefix="puhui-bench-commands-"))
    env = _environment(work)
    home = work / "home"
    generate_landing_zone(work / "landing", users=100, days=1, seed=3, history_days=40,
                          end_date=date.fromisoformat(AS_OF))
    home.mkdir(parents=True)
    _registry(env["MLFLOW_TRACKING_URI"], work / "mlartifacts")
    print(f"workdir {work}; starting the server...", flush=True)
    try:
        results = _measure_all(env, work, checkouts, runs, no_server_runs)
    finally:
        subprocess.run([sys.executable, "-m", "puhui", "server", "stop"], env=env, cwd=ROOT,
                       check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)  # a failed run's too
    _report(results, checkouts, options.quick)


def _measure_all(env: dict[str, str], work: Path, checkouts: dict[str, Path], runs: int,
                 no_server_runs: int) -> dict[str, dict[str, list[dict]]]:
    home = work / "home"
    _puhui(["server", "start"], env)
    _puhui(["run", "ingest", "--as-of", AS_OF], {**env, "PUHUI_WARM_WORKER": "off"})

    # (checkout, mode) pairs; only this checkout has a warm worker to switch off.
    modes = [(name, "server") for name in checkouts]
    modes.insert(1, ("now", "server, warm worker off"))
    results: dict[str, dict[str, list[dict]]] = {}
    number = 0
    for index in range(runs):
        for name, mode in modes:
            mode_env = {**env, "PUHUI_WARM_WORKER": "off"} if "off" in mode else env
            for label, args in COMMANDS.items():
                if "ingest" in args:
                    number += 1
                    _new_payments_file(work / "landing", number)
                outcome = run_command(args, mode_env, checkouts[name], home)
                results.setdefault(f"{name} | {mode}", {}).setdefault(label, []).append(outcome)
                print(f"[{index + 1}/{runs}] {name:7} {mode:24} {label:20} wall "
                      f"{outcome['wall']:6.2f} s  cpu {outcome['cpu']:5.2f} s  "
                      f"load {outcome['load']:5.2f}", flush=True)

    _puhui(["server", "stop"], env)
    for index in range(no_server_runs):
        for name in checkouts:
            number += 1
            _new_payments_file(work / "landing", number)
            outcome = run_command(COMMANDS["run ingest (4 rows)"], env, checkouts[name], home)
            results.setdefault(f"{name} | no server", {}).setdefault(
                "run ingest (4 rows)", []).append(outcome)
            print(f"[{index + 1}/{no_server_runs}] {name:7} {'no server':24} run ingest "
                  f"(4 rows)     wall {outcome['wall']:6.2f} s  cpu {outcome['cpu']:5.2f} s  "
                  f"load {outcome['load']:5.2f}", flush=True)
    return results


def _report(results: dict[str, dict[str, list[dict]]], checkouts: dict[str, Path],
            quick: bool) -> None:
    summary: dict[str, dict[str, dict]] = {}
    print(f"\n{'checkout | mode':40} {'command':20} {'wall':>7} {'cpu':>6} {'load':>6}  (medians)")
    for key, commands in results.items():
        for label, outcomes in commands.items():
            figures = medians(outcomes)
            summary.setdefault(key, {})[label] = {**figures, "runs": len(outcomes)}
            print(f"{key:40} {label:20} {figures['wall']:7.2f} {figures['cpu']:6.2f} "
                  f"{figures['load']:6.2f}")
    write_results("commands", {
        "machine": machine_facts(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                 time.gmtime()),
        "setup": "100 customers, 40 days ingested; SQLite warehouse; MLflow store with two "
                 "versions; a new 4-row mobile_payments file per ingest",
        "checkouts": {k: str(v) for k, v in checkouts.items()},
        "summary": summary, "runs": results}, quick=quick)


if __name__ == "__main__":
    main()
