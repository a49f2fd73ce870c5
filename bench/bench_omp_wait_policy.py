"""LightGBM trainings of the credit-risk model's size under OpenMP's wait policies, on an
idle machine and beside a competing CPU-bound process.

LightGBM's threads (libgomp; ``num_threads: 2`` in configs/models.yaml) wait for each other at
every barrier. Unset, libgomp spins a while before it sleeps; ``ACTIVE`` spins only;
``PASSIVE`` sleeps at once. libgomp reads ``OMP_WAIT_POLICY`` once, when it loads, so each
case is a child process started with the variable set (or removed). A case trains the risk
model's configured LightGBM parameters on a synthetic binary task (fixed rounds, no early
stopping, so every case does the same work) and reports the training's wall and CPU seconds
and a digest of the model: the policy must change no arithmetic.

"idle" means no competing process of the bench's own; the machine's load average before each
run is recorded beside it (on a shared machine "idle" is only as idle as the load says). The
policies run round-robin within each repeat, so a drifting load is shared by all of them.

Usage: python bench/bench_omp_wait_policy.py [--repeat 3] [--sizes suite demo-20k] [--quick]
Prints a table and writes bench/results/omp_wait_policy.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, write_results  # noqa: E402

# Each case's libgomp variables (every other OMP_/GOMP_ variable removed). libgomp's own
# default spins 300,000 times before it sleeps; "spin 10k" is that default with a short spin.
POLICIES = {"unset": {}, "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
            "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin 10k": {"GOMP_SPINCOUNT": "10000"}}
# (rows, features, rounds): the suite's risk training set (4,000 users) and the 20k demo's;
# rounds: the suite's as num_boost_round's size rule gives them (0.2 x rows, at least 300),
# the 20k demo's cut from 2,400 to 1,000 so that the spinning cases under load end in minutes.
SIZES = {"suite": (2_500, 30, 500), "demo-20k": (12_000, 30, 1_000)}
QUICK_SIZES = {"suite": (2_500, 30, 200)}


def child(rows: int, features: int, rounds: int) -> None:
    """One training in this process; prints its figures as one JSON line."""
    import lightgbm as lgb
    import numpy as np
    import yaml

    risk = yaml.safe_load((ROOT / "configs" / "models.yaml").read_text())["credit_risk"]
    params = {k: v for k, v in risk["lightgbm"]["params"].items() if not isinstance(v, dict)}
    # The 20k demo's leaf settings (the size-aware values at the largest of their ranges) for
    # both sizes; the suite's own size rule gives smaller leaves.
    params |= {"num_leaves": 7, "min_data_in_leaf": 150, "seed": 42, "verbosity": -1,
               "deterministic": True}
    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, features))
    logit = x[:, :6] @ np.array([1.0, -0.8, 0.6, 0.5, -0.4, 0.3]) - 2.0
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    data = lgb.Dataset(x, y, params={"max_bin": params["max_bin"]})
    start, cpu = time.perf_counter(), time.process_time()
    booster = lgb.train(params, data, num_boost_round=rounds)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    digest = hashlib.sha256(booster.model_to_string().encode()).hexdigest()[:16]
    print(json.dumps({"wall": wall, "cpu": cpu, "model": digest}))


def run_case(policy: str, size: tuple[int, int, int]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env |= POLICIES[policy]
    done = subprocess.run([sys.executable, __file__, "--child", *map(str, size)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def busy_competitor() -> subprocess.Popen:
    """A CPU-bound process that never waits: another job on the same 2 cores."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one small size, one run each")
    parser.add_argument("--sizes", nargs="*", choices=sorted(SIZES), default=sorted(SIZES))
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    sizes, repeat = (QUICK_SIZES, 1) if args.quick else (
        {name: SIZES[name] for name in args.sizes}, args.repeat)
    cases = []
    for condition in ("idle", "one busy process"):
        for name, size in sizes.items():
            # Round-robin: each repeat runs every policy once, so the others' load drifting
            # during a block lands on all the policies alike instead of on the last ones.
            runs = {policy: [] for policy in POLICIES}
            for _ in range(repeat):
                for policy in POLICIES:
                    competitor = busy_competitor() if condition != "idle" else None
                    try:
                        time.sleep(0.5 if competitor else 0)  # the competitor is running
                        load = os.getloadavg()[0]
                        runs[policy].append(run_case(policy, size) | {"load": round(load, 2)})
                    finally:
                        if competitor:
                            competitor.kill()
                            competitor.wait()
            for policy, done in runs.items():
                case = {"condition": condition, "size": name, "rows": size[0],
                        "features": size[1], "rounds": size[2], "policy": policy,
                        "wall_median": round(statistics.median(r["wall"] for r in done), 2),
                        "cpu_median": round(statistics.median(r["cpu"] for r in done), 2),
                        "walls": [round(r["wall"], 2) for r in done],
                        "loads_before": [r["load"] for r in done],
                        "models": sorted({r["model"] for r in done})}
                cases.append(case)
                print(f"{condition:17} {name:9} {policy:9} wall {case['wall_median']:7.2f} s"
                      f"  cpu {case['cpu_median']:7.2f} s  runs {case['walls']}"
                      f"  loads {case['loads_before']}", flush=True)
    ratios = {}
    for condition in ("idle", "one busy process"):
        for name in sizes:
            wall = {c["policy"]: c["wall_median"] for c in cases
                    if c["condition"] == condition and c["size"] == name}
            ratios[f"{condition} / {name}"] = {
                f"{policy} / unset": round(wall[policy] / wall["unset"], 2)
                for policy in POLICIES if policy != "unset"}
    print("\nwall-time ratios to libgomp's default (below 1: faster than the default)")
    for key, value in ratios.items():
        print(f"  {key:28} {value}")
    same_model = all(len({m for c in cases if c["size"] == name for m in c["models"]}) == 1
                     for name in sizes)
    print(f"same model under every policy and condition: {same_model}")
    write_results("omp_wait_policy", {"machine": machine_facts(), "repeat": repeat,
                                      "cases": cases, "ratios": ratios,
                                      "same_model_every_case": same_model}, args.quick)
    return 0 if same_model else 1


if __name__ == "__main__":
    sys.exit(main())
