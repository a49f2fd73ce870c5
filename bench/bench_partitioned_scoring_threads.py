"""Partitioned scoring's LightGBM threads: each of the task runner's concurrent partitions
with LightGBM's default (every core), ``num_threads: 2`` (the configs') or the cores divided
by the concurrent partitions (1 on this machine's 2 cores with the default 2 task workers).

The scoring of ``flows/features.py``: 8 partitions (``configs/segments.yaml``) of the demo's
20,000 customers, on a pool of 2 threads (``PUHUI_TASK_WORKERS``' default, the local task
runner), each partition's PD from a booster loaded from its saved file (as
``RiskScorer.load``). The booster: the credit-risk model's configured LightGBM parameters at
the 20k demo's training size (12,000 rows x 2,400 rounds, the size-aware values at their
largest), trained once on a synthetic binary task. Each case is a fresh process (libgomp
reads ``OMP_WAIT_POLICY`` once, when it loads), under libgomp's default wait policy (the
product's) and ``PASSIVE`` (the suite's), on an idle machine and beside one CPU-bound
process. A case reports the median wall seconds of a whole pass over the 8 partitions and a
digest of the scores: the thread count must change no arithmetic.

Usage: python bench/bench_partitioned_scoring_threads.py [--repeat 5] [--quick]
Prints a table and writes bench/results/partitioned_scoring_threads.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_omp_wait_policy import busy_competitor  # noqa: E402
from bench.results_file import machine_facts, write_results  # noqa: E402

CUSTOMERS, PARTITIONS, WORKERS, FEATURES = 20_000, 8, 2, 30
TRAIN = (12_000, 2_400)
QUICK_TRAIN = (2_500, 500)
POLICIES = {"unset": {}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}
# None: no num_threads at predict time, LightGBM's default (OpenMP's, every core): what
# the product passes today.
THREADS = {"default": None, "2": 2, "1 (cores / partitions)": 1}


def _synthetic(rows: int, seed: int):  # noqa: ANN202
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES))
    logit = x[:, :6] @ np.array([1.0, -0.8, 0.6, 0.5, -0.4, 0.3]) - 2.0
    return x, (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)


def train(model_file: Path, rows: int, rounds: int) -> None:
    """The risk model's configured parameters on a synthetic task, saved to ``model_file``."""
    import lightgbm as lgb
    import yaml

    risk = yaml.safe_load((ROOT / "configs" / "models.yaml").read_text())["credit_risk"]
    params = {k: v for k, v in risk["lightgbm"]["params"].items() if not isinstance(v, dict)}
    params |= {"num_leaves": 7, "min_data_in_leaf": 150, "seed": 42, "verbosity": -1,
               "deterministic": True}
    x, y = _synthetic(rows, 7)
    lgb.train(params, lgb.Dataset(x, y), num_boost_round=rounds).save_model(str(model_file))


def child(model_file: str, threads: int | None, repeat: int) -> None:
    """Passes of the partitioned scoring in this process; prints one JSON line."""
    import lightgbm as lgb
    import numpy as np

    x, _ = _synthetic(CUSTOMERS, 11)
    parts = np.array_split(x, PARTITIONS)
    kwargs = {} if threads is None else {"num_threads": threads}

    def score(part: np.ndarray) -> np.ndarray:
        # A booster per partition, as each score-partition task loads its own.
        return lgb.Booster(model_file=model_file).predict(part, **kwargs)

    walls, scores = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        with ThreadPoolExecutor(WORKERS) as pool:
            scores = np.concatenate(list(pool.map(score, parts)))
        walls.append(time.perf_counter() - start)
    digest = hashlib.sha256(np.round(scores, 12).tobytes()).hexdigest()[:16]
    print(json.dumps({"walls": walls, "scores": digest}))


def run_case(model_file: Path, policy: str, threads: int | None, repeat: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env |= POLICIES[policy]
    done = subprocess.run([sys.executable, __file__, "--child", str(model_file),
                           str(threads or 0), str(repeat)], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a small booster, one pass each")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]) or None, int(args.child[2]))
        return 0
    rows, rounds = QUICK_TRAIN if args.quick else TRAIN
    repeat = 1 if args.quick else args.repeat
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "booster.txt"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                        " from bench.bench_partitioned_scoring_threads import train;"
                        " train(__import__('pathlib').Path(sys.argv[2]), *map(int, sys.argv[3:]))",
                        str(ROOT), str(model_file), str(rows), str(rounds)],
                       env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}, check=True)
        print(f"booster: {rows:,} rows x {rounds:,} rounds, trained in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        for condition in ("idle", "one busy process"):
            for policy in POLICIES:
                for label, threads in THREADS.items():
                    load = os.getloadavg()[0]
                    competitor = busy_competitor() if condition != "idle" else None
                    try:
                        time.sleep(0.5 if competitor else 0)
                        result = run_case(model_file, policy, threads, repeat)
                    finally:
                        if competitor:
                            competitor.kill()
                            competitor.wait()
                    case = {"condition": condition, "policy": policy, "threads": label,
                            "wall_median": round(statistics.median(result["walls"]), 3),
                            "walls": [round(w, 3) for w in result["walls"]],
                            "scores": result["scores"], "load_before": round(load, 2)}
                    cases.append(case)
                    print(f"{condition:17} {policy:8} threads {label:23} wall "
                          f"{case['wall_median']:7.3f} s  runs {case['walls']}"
                          f"  load {load:.1f}", flush=True)
    ratios = {}
    for condition in ("idle", "one busy process"):
        for policy in POLICIES:
            wall = {c["threads"]: c["wall_median"] for c in cases
                    if c["condition"] == condition and c["policy"] == policy}
            ratios[f"{condition} / {policy}"] = {
                f"{label} / default": round(wall[label] / wall["default"], 2)
                for label in THREADS if label != "default"}
    print("\nwall-time ratios to LightGBM's default threads (below 1: faster)")
    for key, value in ratios.items():
        print(f"  {key:28} {value}")
    same_scores = len({c["scores"] for c in cases}) == 1
    print(f"same scores in every case: {same_scores}")
    write_results("partitioned_scoring_threads", {
        "machine": machine_facts(), "customers": CUSTOMERS, "partitions": PARTITIONS,
        "workers": WORKERS, "features": FEATURES, "train_rows": rows, "rounds": rounds,
        "repeat": repeat, "cases": cases, "ratios": ratios,
        "same_scores_every_case": same_scores}, args.quick)
    return 0 if same_scores else 1


if __name__ == "__main__":
    sys.exit(main())
