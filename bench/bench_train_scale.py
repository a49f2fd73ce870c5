"""Benchmark: the risk training flow on a large population, on PostgreSQL, in bounded memory.

On one throwaway PostgreSQL server (``bench/bench_scale.py``'s helpers):
1. generate a landing zone of ``--users`` customers with ``--history-days`` of history and
   ingest every feed through the real ingest path, then build the partition-read indexes
   (reported apart, as in the scale benchmark);
2. in a child process (the "client"), run the real ``train-risk`` Prefect flow (features of
   every application, one customer partition at a time; training set; LightGBM with the
   configured search, the benchmark, calibration; evaluation; MLflow registration; gates),
   on an ephemeral Prefect server and a fresh MLflow store under the run's home;
3. while (2) runs, the parent samples the resident memory of every client and PostgreSQL
   process every 0.2 s; each step's peak comes from its task run's start and end times.
4. ``--reference``: then, in another child, the training flow's feature step as it was
   before partitioning (whole raw tables in memory), for its memory on the same data.

``--ab``: the small case instead, as the demo runs it (SQLite, the demo's 730 days of
history): the training flow's feature and training-set steps as they were (whole tables)
and as they are (partitioned; one partition at the demo's size), alternating ``--repeats``
times in one process, each run timed; the two training sets are checked equal.
``--ab --postgres``: the same A/B on PostgreSQL at ``--users`` / ``--history-days``, with
each partition's seconds (``--partitions``, default from the register's size). It prepares
a throwaway server, or, with ``PUHUI_WAREHOUSE_URL`` (and the bench's ``PUHUI_*``) set,
measures the warehouse an earlier run prepared; ``--label`` names the run (e.g. the code
measured), runs of other labels stay in the results file.

The labels mature 180 days after an application (``configs/models.yaml``) and the three
windows need four months of matured applications, so the history must be at least ~330 days
(default 335: a train window of about a month).

Usage: python bench/bench_train_scale.py [--users 1000000] [--history-days 335] [--reference]
       python bench/bench_train_scale.py --ab [--users 20000] [--repeats 3]
       python bench/bench_train_scale.py --ab --postgres --users 45000 [--partitions N]
           [--label NAME]
Writes bench/results/train-scale.json (figures of each size kept, the same size replaced),
train-small-ab.json, or train-postgres-ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_scale import END, KEY, MemorySampler, prepare_size  # noqa: E402
from bench.results_file import machine_facts, write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "train-scale.json"
TARGETS = {"peak_rss_mib_max_all_processes_at_1M": 8192}
MIB = 2**20


def client_flow(out: Path) -> None:
    """The measured work: the real training flow, then its task runs' times from Prefect."""
    from prefect import get_client

    from puhui.pipeline import run_train_risk_flow

    started = time.time()
    summary = run_train_risk_flow(END, force=True, allow_gate_failure=True)
    ended = time.time()
    with get_client(sync_client=True) as client:
        steps = sorted(({"name": r.name, "start": r.start_time.timestamp(),
                         "end": r.end_time.timestamp()}
                        for r in client.read_task_runs()
                        # an attached run's Prefect home may hold a stopped run's tasks
                        if r.start_time and r.end_time and r.start_time.timestamp() >= started),
                       key=lambda s: s["start"])
    (out / "client.json").write_text(json.dumps({
        "start": started, "end": ended, "seconds": round(ended - started, 1),
        "steps": steps, "lines": summary["steps"], "windows": summary.get("windows"),
        "candidate": summary.get("candidate"), "metrics": summary.get("metrics"),
        "gates_passed": summary["gates"]["passed"], "version": summary.get("version")}))


def whole_table_applicants(engine, spec, as_of: date):  # noqa: ANN001, ANN201
    """The applicants' features as the training flow built them before partitioning: whole
    raw tables read into pandas (an ``ApplicantFeatures``)."""
    from puhui.features.builder import build_features
    from puhui.features.sources import load_source_frames
    from puhui.risk.training_set import REGISTER_COLUMNS, ApplicantFeatures, feature_requests

    frames = load_source_frames(engine, spec, as_of)
    apps = feature_requests(engine, spec, as_of)
    features = build_features(frames, apps[["person_key", "as_of_date"]], spec)
    return ApplicantFeatures(as_of, apps, features, frames.customers[REGISTER_COLUMNS],
                             frames.batch_ids)


def client_reference(out: Path) -> None:
    """The feature step before partitioning: whole raw tables read into pandas."""
    from puhui.config import FeaturesConfig, load_config
    from puhui.runtime import open_runtime

    runtime = open_runtime()
    spec = load_config(runtime.settings.config_dir, FeaturesConfig)
    started = time.time()
    whole = whole_table_applicants(runtime.engine, spec, END)
    ended = time.time()
    (out / "client.json").write_text(json.dumps({
        "start": started, "end": ended, "seconds": round(ended - started, 1),
        "steps": [{"name": "whole-table features", "start": started, "end": ended}],
        "applications": len(whole.applications), "feature_rows": len(whole.features)}))


def measure(server, mode: str, work: Path) -> dict:  # noqa: ANN001
    """Run a client ``mode`` in a child process while sampling memory; its figures."""
    out = work / f"client-{mode}"
    out.mkdir()
    home = Path(os.environ["PUHUI_HOME"])
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    # A fresh Prefect home per client; a busy machine may need minutes to start Prefect's
    # ephemeral server, and OpenMP threads that spin while waiting slow everyone down.
    env |= {"PREFECT_HOME": str(home / f"prefect-{mode}"), "PUHUI_ACTOR": "bench",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
            "OMP_WAIT_POLICY": "PASSIVE"}
    child = subprocess.Popen([sys.executable, __file__, "--client", mode, str(out)], env=env)
    with MemorySampler(child.pid, server.data_dir) as sampler:
        code = child.wait()
    if code != 0:
        raise SystemExit(f"client {mode} failed (exit {code})")
    measured = json.loads((out / "client.json").read_text())
    steps = []
    for step in measured.pop("steps"):
        window = [s for s in sampler.timeline if step["start"] <= s[0] <= step["end"]]
        steps.append({
            "name": step["name"], "seconds": round(step["end"] - step["start"], 1),
            "peak_client_tree_mib": round(max((s[1] for s in window), default=0) / MIB),
            "peak_postgres_mib": round(max((s[2] for s in window), default=0) / MIB),
            "peak_all_mib": round(max((s[1] + s[2] for s in window), default=0) / MIB)})
    postgres = {k: v for k, v in sampler.peaks.items() if k.startswith("postgres")}
    client = {k: v for k, v in sampler.peaks.items() if k.startswith("client")}
    result = {
        "mode": mode, **measured, "steps": steps,
        "peak_rss_mib": {
            "processes": processes(sampler.peaks),
            "client_largest_process": round(max(client.values(), default=0) / MIB),
            "client_tree_sum": round(max((s[1] for s in sampler.timeline), default=0) / MIB),
            "postgres_largest_process": round(max(postgres.values(), default=0) / MIB),
            "postgres_sum": round(max((s[2] for s in sampler.timeline), default=0) / MIB),
            "all_processes_sum_sampled": round(sampler.total_peak / MIB),
        },
    }
    print(json.dumps(result, indent=1), flush=True)
    return result


def processes(peaks: dict[str, int]) -> dict[str, int]:
    """Peak MiB per process above 50 MiB, largest first. The sampler names a process by
    role, pid and command line, and a PostgreSQL backend's command line carries its state
    ("idle", "COPY"): one process, one entry, named by its first command line seen."""
    by_pid: dict[str, tuple[str, int]] = {}
    for name, rss in peaks.items():
        pid = ":".join(name.split(":")[:2])
        label, peak = by_pid.get(pid, (name, 0))
        by_pid[pid] = (label, max(peak, rss))
    return {label: round(rss / MIB) for label, rss in sorted(
        by_pid.values(), key=lambda item: -item[1]) if rss > 50 * MIB}


def counts() -> dict[str, int]:
    """Applications and delivered outcomes in the warehouse (the training set's inputs)."""
    from sqlalchemy import text

    from puhui.runtime import open_runtime

    with open_runtime().engine.connect() as conn:
        return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() or 0)
                for t in ("raw_loan_applications", "raw_loan_outcomes", "raw_customers")}


def ab_small(users: int, repeats: int, work: Path) -> dict:
    """Whole-table against partitioned feature + training-set steps on the demo's data."""
    from puhui.config import FeaturesConfig, ModelsConfig, load_config
    from puhui.demo import DEMO_HISTORY_DAYS
    from puhui.generate import generate_landing_zone
    from puhui.ingest.feeds import ingest_all_feeds
    from puhui.runtime import open_runtime

    os.environ.update({"PUHUI_HOME": str(work / "home"), "PUHUI_LANDING": str(work / "landing"),
                       "PUHUI_PSEUDONYM_KEY": KEY,
                       "PUHUI_AUDIT_KEY": "bench-audit-key-0123456789abcdefghijklmnop"})
    os.environ.pop("PUHUI_WAREHOUSE_URL", None)  # the demo's SQLite warehouse
    t = time.perf_counter()
    generate_landing_zone(work / "landing", users=users, days=1, seed=11, end_date=END,
                          history_days=DEMO_HISTORY_DAYS)
    runtime = open_runtime()
    ingest_all_feeds(runtime, END)
    prepared = time.perf_counter() - t
    engine = runtime.engine
    spec = load_config(runtime.settings.config_dir, FeaturesConfig)
    model = load_config(runtime.settings.config_dir, ModelsConfig).credit_risk

    return {"users": users, "history_days": DEMO_HISTORY_DAYS, "warehouse": "sqlite",
            "prepare_seconds": round(prepared, 1),
            **alternate(engine, spec, model, repeats, None)}


def alternate(engine, spec, model, repeats: int,  # noqa: ANN001
              partitions: int | None) -> dict:
    """Whole-table and partitioned feature + training-set steps, alternating ``repeats``
    times, each run timed (and each partition of the partitioned runs); the two training
    sets checked equal, every value."""
    import statistics

    import pandas as pd

    import puhui.features.partitioned as partitioned
    from puhui.risk.training_set import applicant_features, build_training_set

    part_seconds: list[float] = []
    build_partition = partitioned.build_partition

    def timed_partition(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        t = time.perf_counter()
        piece = build_partition(*args, **kwargs)
        part_seconds.append(round(time.perf_counter() - t, 2))
        return piece

    partitioned.build_partition = timed_partition  # the bench's stopwatch, nothing else
    ways = {"whole_table": lambda: whole_table_applicants(engine, spec, END),
            "partitioned": lambda: applicant_features(engine, spec, END, partitions)}
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    per_partition: list[list[float]] = []
    loads: list[list[float]] = []
    sets = {}
    try:
        for _ in range(repeats):
            for way, build in ways.items():
                part_seconds.clear()
                t = time.perf_counter()
                sets[way] = build_training_set(engine, spec, model, build())
                seconds[way].append(round(time.perf_counter() - t, 2))
                loads.append(load_average())
                if way == "partitioned":
                    per_partition.append(list(part_seconds))
                print(f"{way}: {seconds[way][-1]:.1f} s"
                      + (f", partitions {part_seconds} s" if way == "partitioned" else "")
                      + f" (load {loads[-1]})", flush=True)
    finally:
        partitioned.build_partition = build_partition
    pd.testing.assert_frame_equal(sets["partitioned"].frame, sets["whole_table"].frame,
                                  check_exact=True)
    median = {w: statistics.median(s) for w, s in seconds.items()}
    return {"applications": len(sets["partitioned"].frame),
            "training_rows": int(sets["partitioned"].frame["split"].notna().sum()),
            "partitions": len(per_partition[0]) if per_partition else 0,
            "seconds": seconds, "median_seconds": median,
            "partition_seconds": per_partition,
            "partitioned_over_whole_table": round(median["partitioned"]
                                                  / median["whole_table"], 3),
            "load_average_after_each_run": loads,
            "training_sets_equal": True}


def partition_reads(engine, spec, partitions: int) -> dict:  # noqa: ANN001
    """Each source's partition reads, summed over the partitions, as the server ran them
    (``EXPLAIN ANALYZE``): entries read from the feed's partition-read index, rows returned,
    server ms and plans, with the plan the reads set (``KEY_RANGE_PLAN``) and with the
    planner left alone but for the scan (what the reads set before). Entries read do not
    depend on the machine's load; ms do (and on what the page cache holds)."""
    from sqlalchemy import text

    from puhui.features.sources import (
        KEY_RANGE_PLAN,
        _reflect,
        partition_query,
        source_query,
    )
    from puhui.partitioning import all_partitions

    plans = {"planner_left_alone": {"enable_seqscan": "off"}, "key_range_plan": KEY_RANGE_PLAN}
    out: dict = {}
    with engine.connect() as conn:
        for source in spec.sources:
            table = _reflect(engine, source.table)
            index = f"ix_{source.table}_partition_read"
            figures: dict = {"table_rows": int(conn.execute(
                text(f'SELECT count(*) FROM "{source.table}"')).scalar() or 0)}
            for name, settings in plans.items():
                conn.execute(text("RESET ALL"))
                conn.execute(text("SET jit = off"))
                for setting, value in settings.items():
                    conn.execute(text(f"SET {setting} = {value}"))
                total = {"index_entries_read": 0, "rows": 0, "server_ms": 0.0, "plans": set()}
                for part in all_partitions(partitions):
                    query = partition_query(engine, source_query(table, source), table,
                                            source.key, part, spec.customer.table)
                    sql = str(query.compile(dialect=engine.dialect,
                                            compile_kwargs={"literal_binds": True}))
                    plan = conn.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
                                        ).scalar()[0]
                    top = plan["Plan"]
                    total["index_entries_read"] += _index_rows(top, index)
                    total["rows"] += top["Actual Rows"]
                    total["server_ms"] += plan["Execution Time"]
                    total["plans"].add(top["Node Type"] + "".join(
                        f" / {p['Node Type']}" for p in top.get("Plans", [])))
                figures[name] = {**total, "server_ms": round(total["server_ms"]),
                                 "plans": sorted(total["plans"])}
            out[source.name] = figures
            print(source.name, json.dumps(figures), flush=True)
        conn.execute(text("RESET ALL"))
    return out


def _index_rows(node: dict, index: str) -> int:
    """Rows a plan's scans of ``index`` returned, over all their loops."""
    own = node["Actual Rows"] * node["Actual Loops"] if node.get("Index Name") == index else 0
    return own + sum(_index_rows(child, index) for child in node.get("Plans", []))


def ab_postgres(args: argparse.Namespace) -> int:
    """``--ab --postgres``: the A/B on PostgreSQL, on a warehouse prepared here or before."""
    from contextlib import nullcontext

    from puhui.config import FeaturesConfig, ModelsConfig, load_config
    from puhui.runtime import open_runtime
    from puhui.throwaway_postgres import throwaway_postgres

    prepared = os.environ.get("PUHUI_WAREHOUSE_URL")
    load = {"before": load_average()}
    with (nullcontext() if prepared else throwaway_postgres()) as server, \
            tempfile.TemporaryDirectory(prefix="train-pg-ab-") as tmp:
        run: dict = {"label": args.label, "users": args.users,
                     "history_days": args.history_days, "warehouse": "postgresql"}
        if server is not None:
            rows, generate_s, ingest_s, index_s = prepare_size(
                server, args.users, args.history_days, Path(tmp))
            run |= {"raw_rows": rows, "generate_seconds": round(generate_s, 1),
                    "ingest_seconds": round(ingest_s, 1),
                    "index_build_seconds": round(index_s, 1)}
        runtime = open_runtime()
        spec = load_config(runtime.settings.config_dir, FeaturesConfig)
        model = load_config(runtime.settings.config_dir, ModelsConfig).credit_risk
        run |= counts()
        run |= alternate(runtime.engine, spec, model, args.repeats, args.partitions)
        run["partition_reads"] = partition_reads(runtime.engine, spec, run["partitions"])
    load["after"] = load_average()
    run["load_average_1_5_15"] = load
    runs = _other_runs(RESULTS.with_name("train-postgres-ab.json"), args, label=args.label)
    write_results("train-postgres-ab", {"benchmark": "train-postgres-ab",
                                        "machine": machine_facts(), "runs": [*runs, run]},
                  False)
    print(json.dumps(run, indent=1))
    return 0


def load_average() -> list[float]:
    return [round(x, 1) for x in os.getloadavg()]


def attach(args: argparse.Namespace) -> int:
    """Measure the flow (and ``--reference``) on a warehouse an earlier run prepared, whose
    parent still holds the server (its client stopped): generate and ingest again cost ~15
    minutes at 200k customers on a busy machine."""
    from types import SimpleNamespace

    pid, data_dir = args.attach
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    os.environ.update(dict(line.split("=", 1) for line in environ
                           if line.startswith("PUHUI_")))
    os.environ["PUHUI_HOME"] += "-attached"
    server = SimpleNamespace(data_dir=Path(data_dir))
    load = {"flow_start": load_average()}
    with tempfile.TemporaryDirectory(prefix="train-attached-") as scratch:  # left in /tmp
        work = Path(scratch)
        run = {"users": args.users, "history_days": args.history_days, **counts(),
               "attached": True, "flow": measure(server, "flow", work)}
        load["flow_end"] = load_average()
        if args.reference:
            run["reference_features"] = measure(server, "reference", work)
            load["reference_end"] = load_average()
    run["load_average_1_5_15"] = load
    write_results("train-scale", {"benchmark": "train-scale", "machine": machine_facts(),
                                  "targets": TARGETS,
                                  "runs": [*_other_runs(RESULTS, args), run]}, False)
    return 0


def _other_runs(results: Path, args: argparse.Namespace, **same: object) -> list[dict]:
    """The runs already in ``results``, but those of this size (and of the ``same`` fields,
    e.g. the A/B's label), which this run replaces."""
    if not results.exists():
        return []
    this = {"users": args.users, "history_days": args.history_days, **same}
    return [r for r in json.loads(results.read_text()).get("runs", [])
            if any(r.get(field) != value for field, value in this.items())]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--history-days", type=int, default=335)
    parser.add_argument("--reference", action="store_true",
                        help="also measure the whole-table feature step on the same data")
    parser.add_argument("--ab", action="store_true",
                        help="the small case: whole-table vs partitioned steps, alternating")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres", action="store_true",
                        help="with --ab: on PostgreSQL at --users / --history-days")
    parser.add_argument("--partitions", type=int, default=None,
                        help="with --ab --postgres: partitions (default: from the size)")
    parser.add_argument("--label", default="current",
                        help="with --ab --postgres: the run's name in the results file")
    parser.add_argument("--attach", nargs=2, metavar=("PID", "PG_DATA_DIR"),
                        help="measure on the warehouse an earlier run prepared: its client's "
                             "pid (PUHUI_* settings read from it) and its server's data dir")
    parser.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        mode, out = args.client
        (client_flow if mode == "flow" else client_reference)(Path(out))
        return 0
    if args.ab and args.postgres:
        return ab_postgres(args)
    if args.ab:
        with tempfile.TemporaryDirectory(prefix="train-ab-") as tmp:
            load = {"before": load_average()}
            result = ab_small(args.users, args.repeats, Path(tmp))
            load["after"] = load_average()
        write_results("train-small-ab", {"benchmark": "train-small-ab",
                                         "machine": machine_facts(), **result,
                                         "load_average_1_5_15": load}, False)
        print(json.dumps(result, indent=1))
        return 0
    if args.attach:
        return attach(args)
    from puhui.throwaway_postgres import throwaway_postgres

    runs = _other_runs(RESULTS, args)
    with throwaway_postgres() as server, tempfile.TemporaryDirectory(prefix="train-") as tmp:
        load = {"before": load_average()}
        rows, generate_s, ingest_s, index_s = prepare_size(server, args.users,
                                                           args.history_days, Path(tmp))
        run = {"users": args.users, "history_days": args.history_days, "raw_rows": rows,
               **counts(), "generate_seconds": round(generate_s, 1),
               "ingest_seconds": round(ingest_s, 1), "index_build_seconds": round(index_s, 1)}
        load["flow_start"] = load_average()
        run["flow"] = measure(server, "flow", Path(tmp))
        load["flow_end"] = load_average()
        if args.reference:
            run["reference_features"] = measure(server, "reference", Path(tmp))
            load["reference_end"] = load_average()
        run["load_average_1_5_15"] = load
        runs.append(run)
        write_results("train-scale", {"benchmark": "train-scale", "machine": machine_facts(),
                                      "targets": TARGETS, "runs": runs}, False)
    for step in run["flow"]["steps"]:
        print(f"{step['name']:<50} {step['seconds']:>8.1f} s {step['peak_all_mib']:>7,} MiB")
    print(f"all processes peak: {run['flow']['peak_rss_mib']['all_processes_sum_sampled']:,} "
          f"MiB (target < {TARGETS['peak_rss_mib_max_all_processes_at_1M']:,} at 1M)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
