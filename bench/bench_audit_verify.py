"""Benchmark: `puhui audit verify` (and `--deep`) on a registry of many versions, wall and CPU.

Setup (not measured): a fresh PUHUI_HOME with a SQLite warehouse and MLflow store, VERSIONS
versions of credit_risk registered through the audited path (register, gate verdict,
evaluation rows, headline metrics in the registration event), each model carrying a
MODEL_MB file (a booster's size), the last two as champion and challenger. Each command
runs in a fresh process, as an auditor types it; CPU is the process's user+sys. The machine
is shared: the load average is recorded with each run.

With --server the commands read the registry through a local ``mlflow server`` (an http
tracking URI, over the same SQLite store) instead of the database URI, and the requests
each command made to it are counted from its access log.

Usage: python bench/bench_audit_verify.py [--versions 30] [--model-mb 8] [--runs 3] [--server]
       [--label NAME] [--quick]
Prints a table and writes bench/results/audit_verify-<label>[-server].json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import mlflow.pyfunc  # noqa: E402 - the versions' models are made in this process

from bench.results_file import machine_facts, write_results  # noqa: E402
from puhui.throwaway_mlflow_server import requests_logged, running_mlflow_server  # noqa: E402

NAME, AS_OF = "credit_risk", "2026-09-30"
KEYS = {"PUHUI_PSEUDONYM_KEY": "bench-key-0123456789abcdefghijklmnopqrstuvwxyz",
        "PUHUI_AUDIT_KEY": "bench-audit-9876543210zyxwvutsrqponmlkjihgfedcba"}


def _environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PUHUI_", "PREFECT_", "MLFLOW_", "GX_"))}
    env.update({"PUHUI_HOME": str(work / "home"), "PUHUI_ACTOR": "bench", **KEYS,
                "PREFECT_HOME": str(work / "home" / "prefect")})
    return env


def _registry(versions: int, model_mb: int, work: Path) -> None:
    """``versions`` audited registrations (in this process, under ``work``'s home)."""
    import mlflow

    from puhui.lifecycle.gates import GateChecks
    from puhui.lifecycle.publish import apply_verdict, write_evaluations
    from puhui.registry import mlflow_client, register_version, use_experiment
    from puhui.registry_read import metric_name
    from puhui.runtime import open_runtime

    runtime = open_runtime()
    uri = runtime.settings.mlflow_tracking_uri
    use_experiment(NAME, uri, runtime.settings.home / "mlartifacts")
    client = mlflow_client(uri)
    booster = work / "booster.txt"
    booster.write_bytes(os.urandom(model_mb << 20))
    passed = GateChecks().result()
    for i in range(versions):
        metrics = {"auc_oot": 0.7 + i / 1000, "ks_oot": 0.3 + i / 1000}
        segments = {metric_name("adverse_impact_ratio", f"region_type={r}"): 0.9
                    for r in ("rural", "urban")}
        with mlflow.start_run() as run:
            mlflow.log_metrics({**metrics, **segments})
            info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(),
                                           artifacts={"booster": str(booster)},
                                           pip_requirements=["mlflow"])
        version = register_version(runtime.engine, runtime.audit, name=NAME,
                                   model_uri=info.model_uri, run_id=run.info.run_id, tags={},
                                   details={"as_of": AS_OF, "metrics": metrics})
        write_evaluations(runtime.engine, NAME, version, date.fromisoformat(AS_OF), [
            *({"metric": m, "segment": "all", "value": v} for m, v in metrics.items()),
            *({"metric": "adverse_impact_ratio", "segment": f"region_type={r}", "value": 0.9}
              for r in ("rural", "urban"))], run.info.run_id)
        # Every version passes: the second last ends champion, the last challenger.
        apply_verdict(client, runtime.engine, runtime.audit, NAME, version, passed,
                      auto_promote=i == versions - 2)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(args: list[str], env: dict[str, str], server_log: Path | None = None) -> dict:
    load = os.getloadavg()[0]
    since = len(server_log.read_text()) if server_log else 0
    spent, started = _children_cpu(), time.monotonic()
    done = subprocess.run([sys.executable, "-m", "puhui", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{args} failed ({done.returncode}): {done.stderr[-800:]}")
    figures = {"wall": round(wall, 3), "cpu": round(_children_cpu() - spent, 3),
               "load": round(load, 2)}
    if server_log is not None:
        lines = requests_logged(server_log, env["MLFLOW_TRACKING_URI"], since).splitlines()
        figures["requests"] = sum("/api/" in line for line in lines)
        figures["runs_get"] = sum("/runs/get" in line for line in lines)
        figures["by_endpoint"] = dict(sorted(Counter(
            match.group(1) for line in lines
            if (match := re.search(r"/api/[\d.]+/mlflow/([\w/-]+)", line))).items()))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=30)
    parser.add_argument("--model-mb", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--label", default="now", help="name of this code's figures")
    parser.add_argument("--server", action="store_true",
                        help="through a local mlflow server (http tracking URI)")
    parser.add_argument("--quick", action="store_true", help="3 versions, 1 run (smoke)")
    options = parser.parse_args()
    versions, runs = (3, 1) if options.quick else (options.versions, options.runs)
    work = Path(tempfile.mkdtemp(prefix="puhui-bench-verify-"))
    try:
        env = _environment(work)
        os.environ.update(env)
        started = time.monotonic()
        _registry(versions, options.model_mb, work)
        print(f"{versions} versions registered in {time.monotonic() - started:.0f} s",
              flush=True)
        commands = {"audit verify": ["audit", "verify"],
                    "audit verify --deep": ["audit", "verify", "--deep"]}
        results: dict[str, list[dict]] = {name: [] for name in commands}
        with contextlib.ExitStack() as stack:
            server_log = None
            if options.server:
                server_log = work / "mlflow-server.log"
                env["MLFLOW_TRACKING_URI"] = stack.enter_context(running_mlflow_server(
                    f"sqlite:///{work / 'home' / 'mlflow.db'}", work / "server-artifacts",
                    server_log))
            for _ in range(runs):
                for name, args in commands.items():
                    results[name].append(measure(args, env, server_log))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'command':24} {'wall s (median)':>16} {'cpu s (median)':>15}  runs")
    for name, figures in results.items():
        print(f"{name:24} {statistics.median(f['wall'] for f in figures):16.2f} "
              f"{statistics.median(f['cpu'] for f in figures):15.2f}  "
              + " ".join(f"{f['wall']}/{f['cpu']}@{f['load']}" for f in figures))
        if options.server:  # runs differ: the first verify hashes, a repeat may not
            for index, f in enumerate(figures, 1):
                print(f"{'':24}   run {index}: {f['requests']} requests {f['by_endpoint']}")
    write_results(f"audit_verify-{options.label}" + ("-server" * options.server), {
        "versions": versions, "model_mb": options.model_mb, "server": options.server,
        "runs": results,
        "median": {name: {"wall": statistics.median(f["wall"] for f in figures),
                          "cpu": statistics.median(f["cpu"] for f in figures)}
                   for name, figures in results.items()},
        "machine": machine_facts()}, options.quick)


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context: object, model_input: list[float],
                params: dict | None = None) -> list[float]:
        return [0.1] * len(model_input)


if __name__ == "__main__":
    main()
