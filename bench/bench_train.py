"""Benchmark: risk-model training + evaluation against a bare ``lightgbm.train``.

On one synthetic matrix of labelled applications (default 500k x 60 features: 55 numeric with
missing values, 5 categorical), measured in one run:
- puhui: ``train_candidate`` (LightGBM with the configured parameters, early stopping on the
  validation window, no search; the logistic benchmark; the calibration map) +
  ``evaluate_risk_model`` (AUC/KS/Brier,
  calibration with Jeffreys tests, gains, PSI of score and every feature, importance,
  fairness with fairlearn, reason codes for every decline);
- bare: ``lightgbm.Dataset`` + ``lightgbm.train`` with the same parameters, the same number of
  boosting rounds as puhui ran, on the same (already encoded) training matrix;
- peak RSS of the whole process.

Usage: python bench/bench_train.py [--rows 500000] [--features 60] [--quick]
Prints a table and writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results_file import machine_facts, write_results  # noqa: E402

TARGETS = {"ratio_vs_bare_lightgbm_max": 3.0, "peak_rss_mib_max": 6144}
CATEGORICAL = 5


def synthetic_training_set(rows: int, features: int, seed: int = 7):  # noqa: ANN201
    """A TrainingSet of ``rows`` labelled applications over 12 months (last 2 out of time)."""
    from puhui.config import FeaturesConfig, load_config
    from puhui.features.builder import FeatureInfo
    from puhui.risk.training_set import OOT, TRAIN, VALID, TrainingSet

    reasons = sorted(load_config(ROOT / "configs", FeaturesConfig).reasons)
    rng = np.random.default_rng(seed)
    numeric = features - CATEGORICAL
    x = rng.standard_normal((rows, numeric)).astype(np.float64)
    x[rng.random((rows, numeric)) < 0.1] = np.nan  # thin files: missing is information
    cats = rng.integers(0, 8, (rows, CATEGORICAL))
    signal = (np.nan_to_num(x[:, :10]) @ rng.normal(0, 0.5, 10)
              + 0.8 * np.sin(np.nan_to_num(x[:, 10]) * 2) + 0.6 * (cats[:, 0] == 3)
              + 0.5 * np.isnan(x[:, 1]))
    label = (rng.random(rows) < 1 / (1 + np.exp(-(signal - 2.6)))).astype(float)
    frame = pd.DataFrame(x, columns=[f"num_{i:02d}" for i in range(numeric)])
    for j in range(CATEGORICAL):
        frame[f"cat_{j}"] = pd.Series(np.array(list("abcdefgh"), dtype=object)[cats[:, j]],
                                      dtype=object)
    start = date(2025, 1, 1)
    days = np.sort(rng.integers(0, 365, rows))
    frame["application_date"] = [start + timedelta(days=int(d)) for d in days]
    frame["application_id"] = [f"A{i:09d}" for i in range(rows)]
    frame["label"] = label
    oot_start = start + timedelta(days=305)
    frame["split"] = np.where(days >= 305, OOT, np.where(days >= 245, VALID, TRAIN))
    frame["region_type"] = np.array(["rural", "county", "urban"], dtype=object)[
        rng.integers(0, 3, rows)]
    frame["gender"] = np.array(["male", "female"], dtype=object)[rng.integers(0, 2, rows)]
    frame["age_band"] = np.array(["age_18_25", "age_26_35", "age_36_45", "age_46_59",
                                  "age_60_plus"], dtype=object)[rng.integers(0, 5, rows)]
    frame["as_of_date"] = frame["application_date"]
    catalog = [FeatureInfo(c, c.startswith("cat_"), reasons[i % len(reasons)])
               for i, c in enumerate(frame.columns[:features])]
    return TrainingSet(start + timedelta(days=545), frame, catalog, oot_start,
                       start + timedelta(days=364), set(), start + timedelta(days=245))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(rows: int, features: int) -> dict:
    import lightgbm as lgb

    from puhui.config import FeaturesConfig, ModelsConfig, MonotoneSpec, load_config
    from puhui.risk.evaluation import evaluate_risk_model
    from puhui.risk.model import (
        FIXED_PARAMS,
        category_vocabulary,
        encode_features,
        train_candidate,
    )

    spec = load_config(ROOT / "configs", FeaturesConfig)
    model = load_config(ROOT / "configs", ModelsConfig).credit_risk
    # The configured parameters without the search (each trial is a training of its own);
    # the synthetic features have no known direction to constrain.
    model = model.model_copy(update={"lightgbm": model.lightgbm.model_copy(
        update={"search": None, "monotone": MonotoneSpec()})})
    training = synthetic_training_set(rows, features)
    train, valid = training.split("train"), training.split("valid")
    oot = training.split("oot")
    print(f"{rows:,} labelled applications x {features} features: train {len(train):,}, "
          f"validation {len(valid):,}, test {len(oot):,}, default rate "
          f"{training.frame['label'].mean():.3f}", flush=True)

    started = time.perf_counter()
    trained, benchmark = train_candidate(train, valid, training.features,
                                         training.categorical, model)
    train_seconds = time.perf_counter() - started
    evaluation = evaluate_risk_model(training, trained, benchmark, model, spec)
    puhui_seconds = time.perf_counter() - started
    resolved = trained.resolved
    assert resolved is not None
    rounds = min(trained.best_iteration + resolved.early_stopping_rounds,
                 resolved.num_boost_round)

    x_train = encode_features(train, training.features,
                              category_vocabulary(train, training.categorical))
    y_train = train["label"].to_numpy(float)
    params = resolved.candidates[0] | FIXED_PARAMS | {"seed": model.seed}
    params.pop("metric")
    started = time.perf_counter()
    lgb.train(params, lgb.Dataset(x_train, y_train), num_boost_round=rounds)
    bare_seconds = time.perf_counter() - started

    result = {
        "rows": rows, "features": features, "train_rows": len(train), "oot_rows": len(oot),
        "boosting_rounds": rounds, "best_iteration": trained.best_iteration,
        "puhui_seconds": round(puhui_seconds, 2),
        "candidate": trained.kind, "calibration": trained.params["calibration"],
        "puhui_train_seconds": round(train_seconds, 2),
        "puhui_evaluation_seconds": round(puhui_seconds - train_seconds, 2),
        "bare_lightgbm_seconds": round(bare_seconds, 2),
        "ratio_vs_bare_lightgbm": round(puhui_seconds / bare_seconds, 2),
        "auc_oot": round(evaluation.metrics["auc_oot"], 4),
        "auc_oot_benchmark": round(evaluation.metrics["auc_oot_benchmark"], 4),
        "peak_rss_mib": round(peak_rss_mib()),
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--features", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="50k rows (smoke run)")
    args = parser.parse_args()
    rows = 50_000 if args.quick else args.rows
    r = run(rows, args.features)
    print()
    for label, key in (("puhui: train + benchmark + evaluation", "puhui_seconds"),
                       ("  of which LightGBM, benchmark, calibration", "puhui_train_seconds"),
                       ("  of which evaluation", "puhui_evaluation_seconds"),
                       ("bare lightgbm.train, same rounds", "bare_lightgbm_seconds")):
        print(f"{label:<40} {r[key]:>8.2f} s")
    print(f"{'ratio puhui / bare':<40} {r['ratio_vs_bare_lightgbm']:>8.2f} x "
          f"(target <= {TARGETS['ratio_vs_bare_lightgbm_max']:.0f} x)")
    print(f"{'peak RSS':<40} {r['peak_rss_mib']:>8,} MiB "
          f"(target < {TARGETS['peak_rss_mib_max']:,} MiB)")
    print(f"{'AUC out of time (LightGBM / logistic)':<40} {r['auc_oot']:.4f} / "
          f"{r['auc_oot_benchmark']:.4f}")
    write_results("train", {"benchmark": "train", "machine": machine_facts(),
                            "targets": TARGETS, **r}, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
