"""The recommender's training and scoring speed on a synthetic matrix of its real columns.

Training: ``--rows`` (customer, product) rows (default 2M: customers x 7 products, one
group per customer) with every feature the ranking set carries (the feature builder's
catalog, the customer x product features, the product attributes), values
drawn at random (numbers normal, categories from small vocabularies) and a graded
relevance with signal in a few columns. The same run times (a) ``train_ranker``, the
recommender's own path from the frame (category encoding, Dataset, lambdarank) and (b) a
bare ``lightgbm.train`` lambdarank on the already-encoded numpy matrix with the same
parameters and rounds; the target is (a) within 3x (b).

Scoring: ``--customers`` (default 1M) x 7 products through ``Ranker.score`` in chunks of
``--chunk`` customers (the profile refresh's unit of work), as rows per second, with the
process's peak resident memory.

Usage: python bench/bench_recommender.py [--rows 2000000] [--customers 1000000]
                                         [--rounds 50] [--quick]
Writes bench/results/recommender.json.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, write_results  # noqa: E402

TARGET_RATIO = 3.0


def _columns() -> tuple[list[str], list[str], list[str]]:
    """The ranking set's feature names and categorical ones, and the product codes."""
    from puhui.config import FeaturesConfig, ProductsConfig, load_config
    from puhui.features.builder import feature_catalog
    from puhui.recommender.training_set import (
            CUSTOMER_PRODUCT_FEATURES,
        PRODUCT_FEATURES,
    )
    from puhui.settings import load_settings

    config_dir = load_settings().config_dir
    catalog = feature_catalog(load_config(config_dir, FeaturesConfig))
    features = ([f.name for f in catalog] + CUSTOMER_PRODUCT_FEATURES + PRODUCT_FEATURES
                )
    categorical = [f.name for f in catalog if f.categorical] + [
        c for c in ("product_code", "product_kind", "scenario") if c in features]
    return features, categorical, load_config(config_dir, ProductsConfig).codes


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


def bench_training(rows: int, rounds: int) -> dict[str, object]:
    import lightgbm as lgb

    from puhui.config import ModelsConfig, load_config
    from puhui.recommender.model import train_ranker
    from puhui.risk.model import category_vocabulary, encode_features
    from puhui.settings import load_settings

    features, categorical, codes = _columns()
    spec = load_config(load_settings().config_dir, ModelsConfig).product_recommender
    spec = spec.model_copy(update={"num_boost_round": rounds})
    customers = rows // len(codes)
    frame = synthetic_frame(customers, features, categorical, codes, seed=1)

    started = time.perf_counter()
    train_ranker(frame, features, categorical, spec)
    ours = time.perf_counter() - started

    x = encode_features(frame, features, category_vocabulary(frame, categorical))
    matrix = np.column_stack([
        np.where(x[c].cat.codes < 0, np.nan, x[c].cat.codes).astype(np.float64)
        if isinstance(x[c].dtype, pd.CategoricalDtype) else x[c].to_numpy(dtype=np.float64)
        for c in features])
    sizes = np.full(customers, len(codes))
    params = {**spec.lightgbm, "seed": spec.seed, "deterministic": True,
              "force_row_wise": True,
              "label_gain": [float(2**g - 1) for g in range(max(spec.grading.values()) + 1)]}
    started = time.perf_counter()
    data = lgb.Dataset(matrix, label=frame["relevance"].to_numpy(), group=sizes,
                       categorical_feature=[features.index(c) for c in categorical])
    lgb.train(params, data, num_boost_round=rounds)
    bare = time.perf_counter() - started
    return {"rows": customers * len(codes), "customers": customers, "features": len(features),
            "rounds": rounds, "train_ranker_seconds": round(ours, 1),
            "bare_lightgbm_seconds": round(bare, 1), "ratio": round(ours / bare, 2),
            "target_ratio": TARGET_RATIO, "met": ours <= TARGET_RATIO * bare}


def bench_scoring(customers: int, chunk: int, rounds: int) -> dict[str, object]:
    from puhui.config import ModelsConfig, load_config
    from puhui.recommender.model import train_ranker
    from puhui.settings import load_settings

    features, categorical, codes = _columns()
    spec = load_config(load_settings().config_dir, ModelsConfig).product_recommender
    spec = spec.model_copy(update={"num_boost_round": rounds})
    ranker = train_ranker(synthetic_frame(20_000, features, categorical, codes, seed=2),
                          features, categorical, spec)
    scored = 0
    seconds = 0.0
    for start in range(0, customers, chunk):
        part = synthetic_frame(min(chunk, customers - start), features, categorical, codes,
                               seed=3 + start)
        started = time.perf_counter()  # scoring only, not drawing the synthetic rows
        ranker.score(part)
        seconds += time.perf_counter() - started
        scored += len(part)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"customers": customers, "products": len(codes), "rows": scored,
            "chunk_customers": chunk, "trees": rounds, "seconds": round(seconds, 1),
            "rows_per_second": round(scored / seconds), "customers_per_second":
            round(customers / seconds), "peak_rss_mb": round(peak_mb)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=50,
                        help="boosting rounds for both trainings (same for both)")
    parser.add_argument("--quick", action="store_true", help="200k rows, 100k customers")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.customers = 200_000, 100_000
    training = bench_training(args.rows, args.rounds)
    print(f"training {training['rows']:,} rows x {training['features']} features, "
          f"{args.rounds} rounds: train_ranker {training['train_ranker_seconds']}s, bare "
          f"lightgbm.train {training['bare_lightgbm_seconds']}s, ratio {training['ratio']} "
          f"(target <= {TARGET_RATIO}: {'met' if training['met'] else 'NOT met'})")
    scoring = bench_scoring(args.customers, args.chunk, args.rounds)
    print(f"scoring {scoring['customers']:,} customers x {scoring['products']} products: "
          f"{scoring['seconds']}s, {scoring['rows_per_second']:,} rows/s, peak RSS "
          f"{scoring['peak_rss_mb']} MB")
    write_results("recommender", {"training": training, "scoring": scoring,
                                  "machine": machine_facts()}, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
