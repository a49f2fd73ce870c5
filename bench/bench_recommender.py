"""The recommender's training and scoring speed on a synthetic matrix of its real columns.

Training: ``--rows`` (customer, product) rows (default 2M: customers x 7 products, one
group per customer) with every feature the ranking set carries (the feature builder's
catalog, the customer x product features, the product attributes), values
drawn at random (numbers normal, categories from small vocabularies) and a graded
relevance with signal in a few columns. The same run (one child process) times (a)
``train_ranker``, the recommender's own path from the frame (category encoding, Dataset,
lambdarank) and (b) a bare ``lightgbm.train`` lambdarank on the already-encoded numpy
matrix with the same parameters, data and rounds (its Dataset construction timed apart,
so that the time per round is known); the target is (a) within 3x (b). Rounds default to
the configured ``num_boost_round``.

Scoring: ``--customers`` (default 1M) x 7 products through ``Ranker.score`` in chunks of
``--chunk`` customers (the profile refresh's unit of work), as rows per second, with the
peak resident memory of a child process that only scores; the same at ``--customers-small``
(default 100k) shows that the peak follows the chunk, not the number of customers.

Usage: python bench/bench_recommender.py [--rows 2000000] [--customers 1000000]
                                         [--customers-small 100000] [--chunk 50000]
                                         [--rounds N] [--quick]
       (``--phase train|score``: one phase in this process, its figures as a JSON line)
Writes bench/results/recommender.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_ingest import own_peak_kib  # noqa: E402
from bench.results_file import machine_facts, write_results  # noqa: E402
from puhui.config import RecommenderSpec  # noqa: E402
from puhui.recommender.model import ranker_params, train_ranker  # noqa: E402

TARGET_RATIO = 3.0
SCORING_MODEL_CUSTOMERS = 20_000  # the ranker the scoring phase uses is trained on these


def _columns() -> tuple[list[str], list[str], list[str]]:
    """The ranking set's feature names and categorical ones, and the product codes."""
    from puhui.config import FeaturesConfig, ProductsConfig, load_config
    from puhui.features.builder import feature_catalog
    from puhui.recommender.training_set import CUSTOMER_PRODUCT_FEATURES, PRODUCT_FEATURES
    from puhui.settings import load_settings

    config_dir = load_settings().config_dir
    catalog = feature_catalog(load_config(config_dir, FeaturesConfig))
    features = [f.name for f in catalog] + CUSTOMER_PRODUCT_FEATURES + PRODUCT_FEATURES
    categorical = [f.name for f in catalog if f.categorical] + [
        c for c in ("product_code", "product_kind", "scenario") if c in features]
    return features, categorical, load_config(config_dir, ProductsConfig).codes


def _spec(rounds: int | None) -> RecommenderSpec:
    from puhui.config import ModelsConfig, load_config
    from puhui.settings import load_settings

    spec = load_config(load_settings().config_dir, ModelsConfig).product_recommender
    return spec if rounds is None else spec.model_copy(update={"num_boost_round": rounds})


def synthetic_frame(customers: int, features: list[str], categorical: list[str],
                    codes: list[str], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = customers * len(codes)
    cols: dict[str, object] = {}
    for name in features:
        if name == "product_code":
            cols[name] = np.tile(np.array(codes, dtype=object), customers)
        elif name in categorical:
            vocab = np.array([f"{name}_{i}" for i in range(6)], dtype=object)
            cols[name] = np.repeat(vocab[rng.integers(0, 6, customers)], len(codes))
        else:
            cols[name] = rng.normal(size=n)
    frame = pd.DataFrame(cols)
    signal = (frame[[c for c in features if c not in categorical][:3]].sum(axis=1)
              + (frame["product_code"] == codes[0]) * 0.5).to_numpy()
    relevance = np.clip(np.floor(signal + rng.normal(size=n) - 1.5), 0, 3)
    frame["relevance"] = relevance
    frame["group"] = np.repeat(np.arange(customers), len(codes))
    return frame


def bare_matrix(frame: pd.DataFrame, features: list[str],
                categorical: list[str]) -> np.ndarray:
    """The numbers LightGBM sees from ``train_ranker``'s frame, as one float64 matrix:
    category codes of the same vocabulary (missing as NaN) and floats."""
    from puhui.risk.model import category_vocabulary, encode_features

    x = encode_features(frame, features, category_vocabulary(frame, categorical))
    matrix = np.empty((len(x), len(features)), dtype=np.float64)
    for j, c in enumerate(features):
        if isinstance(x[c].dtype, pd.CategoricalDtype):
            codes = x[c].cat.codes.to_numpy()
            matrix[:, j] = np.where(codes < 0, np.nan, codes)
        else:
            matrix[:, j] = x[c].to_numpy(dtype=np.float64)
    return matrix


def bare_dataset(matrix: np.ndarray, label: np.ndarray, sizes: np.ndarray,
                 features: list[str], categorical: list[str],
                 spec: RecommenderSpec) -> lgb.Dataset:
    """The bare path's Dataset: the matrix, the same categorical columns and params."""
    return lgb.Dataset(matrix, label=label, group=sizes,
                       categorical_feature=[features.index(c) for c in categorical],
                       params=ranker_params(spec, len(label)))


def bench_training(rows: int, rounds: int | None) -> dict[str, object]:
    """In a child: both trainings on the same frame, same params and rounds."""
    features, categorical, codes = _columns()
    spec = _spec(rounds)
    customers = rows // len(codes)
    frame = synthetic_frame(customers, features, categorical, codes, seed=1)
    frame_mib = frame.memory_usage(deep=False).sum() / 2**20

    started, cpu_started = time.perf_counter(), time.process_time()
    ranker = train_ranker(frame, features, categorical, spec)
    ours = time.perf_counter() - started
    ours_cpu = time.process_time() - cpu_started
    ours_trees = ranker.booster.num_trees()
    del ranker
    gc.collect()

    matrix = bare_matrix(frame, features, categorical)  # not timed
    label = frame["relevance"].to_numpy()
    del frame
    gc.collect()
    sizes = np.full(customers, len(codes))
    started, cpu_started = time.perf_counter(), time.process_time()
    data = bare_dataset(matrix, label, sizes, features, categorical, spec)
    data.construct()
    construct = time.perf_counter() - started
    booster = lgb.train(ranker_params(spec, len(label)), data,
                        num_boost_round=spec.num_boost_round)
    bare = time.perf_counter() - started
    bare_cpu = time.process_time() - cpu_started
    if booster.num_trees() != ours_trees:
        raise RuntimeError(f"tree counts differ: {ours_trees} vs {booster.num_trees()}")
    per_round = (bare - construct) / spec.num_boost_round
    return {"rows": customers * len(codes), "customers": customers, "features": len(features),
            "rounds": spec.num_boost_round, "configured_rounds": _spec(None).num_boost_round,
            "frame_mib": round(frame_mib), "train_ranker_seconds": round(ours, 1),
            "bare_lightgbm_seconds": round(bare, 1),
            "bare_dataset_seconds": round(construct, 1),
            "bare_seconds_per_round": round(per_round, 3), "ratio": round(ours / bare, 2),
            "train_ranker_cpu_seconds": round(ours_cpu, 1),
            "bare_lightgbm_cpu_seconds": round(bare_cpu, 1),
            "target_ratio": TARGET_RATIO, "met": ours <= TARGET_RATIO * bare,
            "peak_rss_mib": round(own_peak_kib() / 1024)}


def bench_scoring(customers: int, chunk: int, rounds: int | None) -> dict[str, object]:
    """In a child: train a small ranker, then score ``customers`` chunk by chunk."""
    features, categorical, codes = _columns()
    spec = _spec(rounds)
    ranker = train_ranker(
        synthetic_frame(SCORING_MODEL_CUSTOMERS, features, categorical, codes, seed=2),
        features, categorical, spec)
    gc.collect()
    before_kib = own_peak_kib()
    scored = 0
    seconds = cpu = 0.0
    for start in range(0, customers, chunk):
        part = synthetic_frame(min(chunk, customers - start), features, categorical, codes,
                               seed=3 + start)
        started, cpu_started = time.perf_counter(), time.process_time()
        ranker.score(part)  # timed: scoring only, not drawing the synthetic rows
        seconds += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        scored += len(part)
        del part
    return {"customers": customers, "products": len(codes), "rows": scored,
            "chunk_customers": chunk, "trees": ranker.booster.num_trees(),
            "seconds": round(seconds, 1), "rows_per_second": round(scored / seconds),
            "cpu_seconds": round(cpu, 1),
            "customers_per_second": round(customers / seconds),
            "peak_rss_mib_after_training": round(before_kib / 1024),
            "peak_rss_mib": round(own_peak_kib() / 1024)}


def _child(argv: list[str]) -> dict[str, object]:
    """Run one phase in a fresh process (its own peak memory) and read its JSON line."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv],
                          stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_recommender: phase {argv[1]} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--customers-small", type=int, default=100_000,
                        help="a second scoring size, to show the peak follows the chunk")
    parser.add_argument("--chunk", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=None,
                        help="boosting rounds for every training (default: the configured "
                             "num_boost_round)")
    parser.add_argument("--phase", choices=("all", "train", "score"), default="all")
    parser.add_argument("--quick", action="store_true",
                        help="200k rows, 100k and 50k customers, 20 rounds (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.customers, args.customers_small = 200_000, 100_000, 50_000
        args.rounds = args.rounds or 20
    if args.phase == "train":
        print(json.dumps(bench_training(args.rows, args.rounds)))
        return 0
    if args.phase == "score":
        print(json.dumps(bench_scoring(args.customers, args.chunk, args.rounds)))
        return 0

    rounds = [] if args.rounds is None else ["--rounds", str(args.rounds)]
    training = _child(["--phase", "train", "--rows", str(args.rows), *rounds])
    print(f"training {training['rows']:,} rows x {training['features']} features, "
          f"{training['rounds']} rounds (configured {training['configured_rounds']}): "
          f"train_ranker {training['train_ranker_seconds']}s, bare lightgbm.train "
          f"{training['bare_lightgbm_seconds']}s (Dataset {training['bare_dataset_seconds']}s"
          f"), ratio {training['ratio']} (target <= {TARGET_RATIO}: "
          f"{'met' if training['met'] else 'NOT met'}), peak RSS {training['peak_rss_mib']} MiB",
          flush=True)
    scoring = []
    for customers in sorted({args.customers_small, args.customers}):
        s = _child(["--phase", "score", "--customers", str(customers), "--chunk",
                    str(args.chunk), *rounds])
        print(f"scoring {s['customers']:,} customers x {s['products']} products "
              f"({s['trees']} trees, {s['chunk_customers']:,}-customer chunks): "
              f"{s['seconds']}s, {s['rows_per_second']:,} rows/s, peak RSS "
              f"{s['peak_rss_mib']} MiB (after training the scoring model: "
              f"{s['peak_rss_mib_after_training']} MiB)", flush=True)
        scoring.append(s)
    write_results("recommender", {"training": training, "scoring": scoring[-1],
                                  "scoring_sizes": scoring, "machine": machine_facts()},
                  args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
