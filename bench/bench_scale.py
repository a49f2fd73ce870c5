"""Benchmark: features and scoring for every customer, partitioned, on PostgreSQL.

For each population size, on one throwaway PostgreSQL server:
1. generate a landing zone (``--history-days`` of history) and ingest every feed through the
   real ingest path (pseudonymize, validate, COPY);
2. in a child process (the "client"): stage the register, build the point-in-time features of
   every customer as of the landing zone's last day, one partition at a time on a pool of
   ``--workers`` (threads, as the default task runner; or processes), each partition's
   features to staged Parquet; then train a small LightGBM booster on a 50k-customer sample
   of those features (label: a synthetic noisy rule on the bureau score; the registered risk
   model needs application-level features this population-wide run does not build) and
   score every partition with it (``puhui.scoring``, PD per customer, to Parquet);
3. while (2) runs, the parent samples the resident memory of every process involved: the
   client (and its pool processes) and each PostgreSQL process, every 0.2 s (psutil).

Usage: python bench/bench_scale.py [--sizes 200000 1000000] [--history-days 180]
       [--workers 2] [--pool threads|processes] [--split auto|on|off ...] [--results NAME]
       [--quick]
``--split off on``: the client runs twice on the same data, the partitions probing the
phone-keyed feeds' indexes (off) and reading the feeds split once into the staging
directory (on: ``stage_phone_feeds`` with the size threshold at 0). ``auto`` (default) is
what the flow does: split if the feeds' on-disk size reaches the configured threshold
(``partitioning.split_phone_feeds_min_mib``); each run records the size and the decision.
Prints a table and writes bench/results/NAME.json (default scale.json; figures of sizes
measured so far are written after each size, so an interrupted 1M run keeps the 200k figures).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, write_results  # noqa: E402

END = date(2026, 9, 30)
KEY = "bench-key-" + "0" * 40
RESULTS = ROOT / "bench" / "results" / "scale.json"
TARGETS = {"seconds_max_at_1M": 600, "peak_rss_mib_max_at_1M": 4096,
           "growth_ratio_200k_to_1M_max": 5.5}


def ingest_all(as_of: date) -> int:
    """Every configured feed through the real ingest path; returns rows loaded."""
    from sqlalchemy import text

    from puhui.ingest.feeds import ingest_all_feeds
    from puhui.runtime import open_runtime

    runtime = open_runtime()
    ingest_all_feeds(runtime, as_of)
    with runtime.engine.begin() as conn:
        conn.execute(text("ANALYZE"))
        return int(conn.execute(text(
            "SELECT sum(n_live_tup) FROM pg_stat_user_tables WHERE relname LIKE 'raw_%'"
        )).scalar() or 0)


def build_read_indexes() -> float:
    """The partition-read indexes, built once after the bulk load (what the first
    partitioned run would do); returns seconds. Reported apart: later runs find them."""
    from puhui.config import FeaturesConfig, load_config
    from puhui.features.partitioned import ensure_partition_indexes
    from puhui.settings import load_settings
    from puhui.warehouse.engine import get_engine

    settings = load_settings()
    started = time.perf_counter()
    ensure_partition_indexes(get_engine(settings.warehouse_url),
                             load_config(settings.config_dir, FeaturesConfig))
    return time.perf_counter() - started


def client(as_of: date, workers: int, pool: str, out: Path, split: str = "auto") -> None:
    """The measured work, in its own process: features, then scoring, of every customer."""
    import resource
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    import lightgbm as lgb
    import numpy as np
    import pandas as pd

    from puhui.config import FeaturesConfig, load_config
    from puhui.features.partitioned import phone_feeds_bytes, stage_phone_feeds, stage_register
    from puhui.risk.model import RiskScorer, category_vocabulary, encode_features
    from puhui.scoring import score_staged_partition
    from puhui.settings import load_settings
    from puhui.warehouse.engine import get_engine

    settings = load_settings()
    engine = get_engine(settings.warehouse_url)
    spec = load_config(settings.config_dir, FeaturesConfig)
    staging = out / "staging"
    figures: dict[str, float] = {}
    started = time.perf_counter()
    parts = stage_register(engine, spec, as_of, staging)
    figures["stage_seconds"] = time.perf_counter() - started
    decision = {"phone_feeds_split": False, "phone_feeds_mib": round(phone_feeds_bytes(
        engine, [s.table for s in spec.sources if s.key == "phone_key"]) / 2**20)}
    if split != "off":
        if split == "on":  # forced: the threshold at 0
            spec = spec.model_copy(update={"partitioning": spec.partitioning.model_copy(
                update={"split_phone_feeds_min_mib": 0})})
        t = time.perf_counter()
        made = stage_phone_feeds(engine, spec, as_of, staging, len(parts))
        figures["split_seconds"] = time.perf_counter() - t
        decision |= {"phone_feeds_split": made.split, "split_reason": made.reason}
    if pool == "threads":
        executor = ThreadPoolExecutor(max_workers=workers)
    else:  # spawned, not forked: a forked child would share the parent's open connections
        executor = ProcessPoolExecutor(max_workers=workers,
                                       mp_context=multiprocessing.get_context("spawn"))
    with executor as ex:
        rows = list(ex.map(_feature_partition, [as_of] * len(parts), [str(staging)] * len(parts),
                           parts))
    figures["features_seconds"] = time.perf_counter() - started
    t = time.perf_counter()
    sample = pd.read_parquet(staging / "features-00000.parquet").head(50_000)
    categorical = [f.name for f in _catalog(spec) if f.categorical]
    names = list(sample.columns[2:])
    categories = category_vocabulary(sample, categorical)
    rng = np.random.default_rng(0)
    score = sample["bureau_score"].fillna(550).to_numpy()
    label = (score + rng.normal(0, 60, len(score)) < 560).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": workers},
                        lgb.Dataset(encode_features(sample, names, categories), label),
                        num_boost_round=50)
    scorer = RiskScorer(booster, names, categories)
    figures["train_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        scored = list(ex.map(lambda p: score_staged_partition(staging, p, scorer), parts))
    figures["scoring_seconds"] = time.perf_counter() - t
    result = {"partitions": len(parts), "customers": sum(rows), "scored": sum(scored),
              **decision,
              **{k: round(v, 2) for k, v in figures.items()},
              "client_peak_rss_mib": round(
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "pool_children_peak_rss_mib": round(
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}
    (out / "client.json").write_text(json.dumps(result))


def _catalog(spec):  # noqa: ANN001, ANN202
    from puhui.features.builder import feature_catalog

    return feature_catalog(spec)


def _feature_partition(as_of: date, staging: str, partition) -> int:  # noqa: ANN001
    """One partition (a module-level function: a process pool pickles it by name)."""
    from puhui.config import FeaturesConfig, load_config
    from puhui.features.partitioned import build_staged_partition
    from puhui.settings import load_settings
    from puhui.warehouse.engine import get_engine

    settings = load_settings()
    return build_staged_partition(get_engine(settings.warehouse_url),
                                  load_config(settings.config_dir, FeaturesConfig), as_of,
                                  Path(staging), partition)


class MemorySampler:
    """Peak RSS of each process of the client's tree and of the PostgreSQL server's tree."""

    def __init__(self, client_pid: int, pg_data_dir: Path) -> None:
        import psutil

        self.psutil = psutil
        self.client = psutil.Process(client_pid)
        self.postmaster = next(p for p in psutil.process_iter(["cmdline"])
                               if p.info["cmdline"] and str(pg_data_dir) in " ".join(
                                   p.info["cmdline"]) and "postgres" in p.info["cmdline"][0])
        self.peaks: dict[str, int] = {}
        self.total_peak = 0
        # (unix time, client tree bytes, PostgreSQL tree bytes) per sample: lets a caller
        # attribute the peak to a step of the measured work by its start and end times.
        self.timeline: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self, root) -> list:  # noqa: ANN001
        try:
            return [root, *root.children(recursive=True)]
        except self.psutil.Error:
            return []

    def _run(self) -> None:
        while not self._stop.is_set():
            sums = {"client": 0, "postgres": 0}
            for role, root in (("client", self.client), ("postgres", self.postmaster)):
                for proc in self._tree(root):
                    try:
                        rss = proc.memory_info().rss
                        name = f"{role}:{proc.pid}:{' '.join(proc.cmdline())[:60]}"
                    except self.psutil.Error:
                        continue
                    sums[role] += rss
                    self.peaks[name] = max(self.peaks.get(name, 0), rss)
            self.total_peak = max(self.total_peak, sums["client"] + sums["postgres"])
            self.timeline.append((time.time(), sums["client"], sums["postgres"]))
            self._stop.wait(0.2)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_size(server, users: int, history_days: int, workers: int,  # noqa: ANN001
             pools: list[str], work: Path, splits: list[str] | None = None) -> list[dict]:
    rows, generate_seconds, ingest_seconds, index_seconds = prepare_size(
        server, users, history_days, work)
    return [measure_client(server, users, history_days, workers, pool, rows,
                           generate_seconds, ingest_seconds, index_seconds, work, split)
            for pool in pools for split in splits or ["auto"]]


def prepare_size(server, users: int, history_days: int,  # noqa: ANN001
                 work: Path) -> tuple[int, float, float, float]:
    """A database of ``users`` customers on ``server``, generated, ingested and indexed,
    with PUHUI_* pointing at it; returns (raw rows, generate s, ingest s, index build s)."""
    from puhui.generate import generate_landing_zone
    from puhui.warehouse.engine import dispose_engines

    home = work / f"home-{users}"
    landing = work / f"landing-{users}"
    url = server.create_database(f"scale_{users}")
    os.environ.update({"PUHUI_HOME": str(home), "PUHUI_WAREHOUSE_URL": url,
                       "PUHUI_LANDING": str(landing), "PUHUI_PSEUDONYM_KEY": KEY,
                       "PUHUI_AUDIT_KEY": "bench-audit-key-0123456789abcdefghijklmnop"})
    t = time.perf_counter()
    generate_landing_zone(landing, users=users, days=1, seed=11, end_date=END,
                          history_days=history_days)
    generate_seconds = time.perf_counter() - t
    print(f"{users:,} users: generated in {generate_seconds:.0f} s", flush=True)
    t = time.perf_counter()
    rows = ingest_all(END)
    ingest_seconds = time.perf_counter() - t
    print(f"{users:,} users: ingested {rows:,} rows in {ingest_seconds:.0f} s", flush=True)
    index_seconds = build_read_indexes()
    dispose_engines()
    print(f"{users:,} users: partition-read indexes in {index_seconds:.0f} s", flush=True)
    return rows, generate_seconds, ingest_seconds, index_seconds


def measure_client(server, users: int, history_days: int, workers: int,  # noqa: ANN001
                   pool: str, rows: int, generate_seconds: float, ingest_seconds: float,
                   index_seconds: float, work: Path, split: str = "auto") -> dict:
    # A new directory each time: the same setting may be measured twice (--split off on off).
    out = Path(tempfile.mkdtemp(prefix=f"client-{users}-{pool}-split-{split}-", dir=work))
    load = os.getloadavg()
    t = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--client", str(out),
                              "--workers", str(workers), "--pool", pool, "--split", split])
    with MemorySampler(child.pid, server.data_dir) as sampler:
        code = child.wait()
    wall = time.perf_counter() - t
    if code != 0:
        raise SystemExit(f"client failed at {users:,} users (exit {code})")
    measured = json.loads((out / "client.json").read_text())
    # The target's work: staging the register, features, scoring (not the sample model's
    # training nor the child's interpreter start, reported apart).
    seconds = measured["features_seconds"] + measured["scoring_seconds"]
    postgres = {k: v for k, v in sampler.peaks.items() if k.startswith("postgres")}
    result = {
        "users": users, "history_days": history_days, "workers": workers, "pool": pool,
        "split_setting": split,
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "raw_rows": rows, "generate_seconds": round(generate_seconds, 1),
        "ingest_seconds": round(ingest_seconds, 1),
        "ingest_rows_per_second": round(rows / ingest_seconds),
        "index_build_seconds": round(index_seconds, 1),
        **measured,
        "features_and_scoring_seconds": round(seconds, 1),
        "client_wall_seconds": round(wall, 1),
        "customers_per_second": round(measured["customers"] / seconds),
        "raw_rows_per_second": round(rows / seconds),
        "peak_rss_mib": {
            "client": measured["client_peak_rss_mib"],
            "client_tree_max_sampled": round(max(
                (v for k, v in sampler.peaks.items() if k.startswith("client")),
                default=0) / 2**20),
            "postgres_largest_process": round(max(postgres.values(), default=0) / 2**20),
            "postgres_processes": len(postgres),
            "all_processes_sum_sampled": round(sampler.total_peak / 2**20),
        },
    }
    print(json.dumps(result, indent=1), flush=True)
    return result


def print_table(runs: list[dict]) -> None:
    print(f"\n{'customers':>10} {'pool':>9} {'split':>8} {'raw rows':>11} {'parts':>5} "
          f"{'features s':>10} {'scoring s':>9} {'total s':>8} {'cust/s':>8} {'client MiB':>10} "
          f"{'pg max MiB':>10} {'sum MiB':>8}")
    for r in runs:
        m = r["peak_rss_mib"]
        split = "on" if r.get("phone_feeds_split", True) else "off"
        if r.get("split_setting") == "auto":
            split = f"auto:{split}"
        print(f"{r['users']:>10,} {r['pool']:>9} {split:>8} {r['raw_rows']:>11,} "
              f"{r['partitions']:>5} {r['features_seconds']:>10.1f} {r['scoring_seconds']:>9.1f} "
              f"{r['features_and_scoring_seconds']:>8.1f} {r['customers_per_second']:>8,} "
              f"{m['client']:>10,} {m['postgres_largest_process']:>10,} "
              f"{m['all_processes_sum_sampled']:>8,}")


def _setting(run: dict) -> str:
    """A run's --split (runs before ``auto`` existed record only whether they split)."""
    return run.get("split_setting") or ("on" if run.get("phone_feeds_split", True) else "off")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--history-days", type=int, default=180)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", choices=["threads", "processes"], nargs="+",
                        default=["threads"], help="several: each measured on the same data")
    parser.add_argument("--split", choices=["auto", "on", "off"], nargs="+",
                        default=["auto"],
                        help="phone-keyed feeds split once (on), probed per partition (off) "
                             "or as the size threshold says (auto); several: each measured "
                             "on the same data, in this order")
    parser.add_argument("--results", default="scale", help="bench/results/NAME.json")
    parser.add_argument("--quick", action="store_true", help="20k customers (smoke run)")
    parser.add_argument("--client", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(END, args.workers, args.pool[0], args.client, args.split[0])
        return 0
    from puhui.throwaway_postgres import throwaway_postgres

    sizes = [20_000] if args.quick else args.sizes
    # Sizes run separately (200k now, 1M later in the background) share one results file:
    # a new run replaces the figures of the same size and pool, and keeps the others.
    previous = RESULTS.with_name(f"{args.results}{'-quick' if args.quick else ''}.json")
    runs: list[dict] = []
    if previous.exists():
        runs = [r for r in json.loads(previous.read_text()).get("runs", [])
                if r["users"] not in sizes]
    with throwaway_postgres() as server, tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        for users in sizes:
            runs += run_size(server, users, args.history_days, args.workers, args.pool,
                             Path(tmp), args.split)
            result = {"benchmark": "scale", "machine": machine_facts(), "targets": TARGETS,
                      "runs": runs}
            # One pool and one split setting, so the ratio compares like with like.
            by_size = {r["users"]: r for r in runs if r["pool"] == args.pool[0]
                       and _setting(r) == args.split[0]}
            if 200_000 in by_size and 1_000_000 in by_size:
                result["growth_ratio_200k_to_1M"] = round(
                    by_size[1_000_000]["features_and_scoring_seconds"]
                    / by_size[200_000]["features_and_scoring_seconds"], 2)
            write_results(args.results, result, args.quick)
    print_table(runs)
    if "growth_ratio_200k_to_1M" in result:
        print(f"growth 200k -> 1M: {result['growth_ratio_200k_to_1M']} x "
              f"(target <= {TARGETS['growth_ratio_200k_to_1M_max']} x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
