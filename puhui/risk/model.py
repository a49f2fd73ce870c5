"""Training the risk model: LightGBM (with an optional bounded search), its logistic
benchmark, the choice between them, and the calibration map.

What gets registered is a scorer: ``RiskScorer`` (the booster plus the feature list and
category vocabulary it was trained with) or, when the benchmark wins on the validation window,
``LogisticScorer`` (the benchmark's fitted numbers, as plain JSON). Either carries the
calibration map fitted on the validation window, so ``predict_pd`` gives calibrated PDs while
``contributions`` stay the model's own log-odds parts (what reason codes are made of).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from puhui import console
from puhui.config import MonotoneSpec, RiskModelSpec
from puhui.distributed_training import dask_training_enabled, train_early_stopped
from puhui.errors import PuhuiError
from puhui.lifecycle.params import DataSize, ResolvedLightGBM, resolve_lightgbm
from puhui.risk.calibration import CalibrationChoice, Calibrator, choose_calibration

# Reproducibility is not a tuning choice: the same data and seed must give the same model.
# "basic" monotone constraints keep every leaf left of a split on a constrained feature
# below every leaf right of it, so even the TreeSHAP contributions (weighted averages of
# leaves) move in the constrained direction; the other methods only bound the prediction.
# Early stopping watches log-loss, not AUC: on a small validation window AUC is a coarse
# step function of a few dozen defaults, and a model of two trees can top it by luck (seen
# on ~1,000 loans: iteration 2, validation AUC 0.84, test AUC 0.55). The trials are then
# compared on AUC at the iteration log-loss chose.
FIXED_PARAMS: dict[str, Any] = {
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
    "metric": ["binary_logloss", "auc"],
    "first_metric_only": True,
    "monotone_constraints_method": "basic",
}
LIGHTGBM, LOGISTIC = "lightgbm", "logistic"


def encode_features(frame: pd.DataFrame, features: list[str],
                    categories: dict[str, list[str]]) -> pd.DataFrame:
    """``frame``'s features in order: numbers as float, categories with a fixed vocabulary
    (a value not in it becomes missing), as LightGBM needs them."""
    out = pd.DataFrame(index=frame.index)
    for name in features:
        if name in categories:
            values = frame[name].astype(object).where(frame[name].notna(), None)
            out[name] = pd.Categorical(values, categories=categories[name])
        else:
            out[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    return out


class Scorer(Protocol):
    """What the evaluation, the registry's pyfunc and the profiles need from a model."""

    features: list[str]
    calibration: Calibrator | None

    def predict_raw(self, frame: pd.DataFrame) -> np.ndarray: ...
    def predict_pd(self, frame: pd.DataFrame) -> np.ndarray: ...
    def contributions(self, frame: pd.DataFrame) -> np.ndarray: ...
    def importance(self) -> pd.DataFrame: ...
    def save(self, directory: Path) -> None: ...


def _calibrated(scorer: Scorer, raw: np.ndarray) -> np.ndarray:
    return raw if scorer.calibration is None else scorer.calibration.apply(raw)


@dataclass
class RiskScorer:
    """A trained booster with the exact feature encoding it expects."""

    booster: lgb.Booster
    features: list[str]
    categories: dict[str, list[str]]  # categorical feature -> vocabulary seen in training
    calibration: Calibrator | None = None
    # Prediction's OpenMP threads; None: LightGBM's default, one per core.
    num_threads: int | None = None

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        return encode_features(frame, self.features, self.categories)

    def _threads(self) -> dict[str, int]:
        return {} if self.num_threads is None else {"num_threads": self.num_threads}

    def predict_raw(self, frame: pd.DataFrame) -> np.ndarray:
        """The booster's own probability, before calibration."""
        return self.booster.predict(self.matrix(frame), **self._threads())

    def predict_pd(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of default."""
        return _calibrated(self, self.predict_raw(frame))

    def contributions(self, frame: pd.DataFrame) -> np.ndarray:
        """Per-row log-odds contributions of each feature (last column: the base value), of
        the booster's uncalibrated log-odds."""
        return self.booster.predict(self.matrix(frame), pred_contrib=True, **self._threads())

    def importance(self) -> pd.DataFrame:
        return pd.DataFrame({"feature": self.features,
                             "importance": self.booster.feature_importance("gain"),
                             "splits": self.booster.feature_importance("split")})

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(directory / "booster.txt"))
        (directory / "encoding.json").write_text(json.dumps(
            {"features": self.features, "categories": self.categories},
            ensure_ascii=False, indent=1,
        ), encoding="utf-8")
        if self.calibration is not None:
            self.calibration.save(directory)

    @classmethod
    def load(cls, directory: Path, num_threads: int | None = None) -> RiskScorer:
        encoding = json.loads((directory / "encoding.json").read_text(encoding="utf-8"))
        booster = lgb.Booster(model_file=str(directory / "booster.txt"))
        return cls(booster, encoding["features"], encoding["categories"],
                   Calibrator.load(directory), num_threads)


MISSING_CATEGORY = "(missing)"


@dataclass
class LogisticScorer:
    """The logistic benchmark as plain numbers: median imputation with missing flags,
    standardization, one-hot categories, coefficients. Scores like the fitted scikit-learn
    pipeline, without a pickle in the registry."""

    features: list[str]
    numeric: list[str]
    medians: list[float]
    flagged: list[str]  # numeric features with a missing-value flag
    means: list[float]  # standardization of [numeric..., flags...]
    scales: list[float]
    categories: dict[str, list[str]]
    coef: list[float]
    intercept: float
    column_means: list[float] = field(default_factory=list)  # design matrix, training rows
    calibration: Calibrator | None = None

    FILE = "logistic.json"

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline, train: pd.DataFrame, features: list[str],
                      categorical: list[str]) -> LogisticScorer:
        prepare: ColumnTransformer = pipeline.named_steps["prepare"]
        numeric = [f for f in features if f not in categorical]
        imputer, scaler = prepare.named_transformers_["numeric"].steps[0][1], \
            prepare.named_transformers_["numeric"].steps[1][1]
        flagged_idx = [] if imputer.indicator_ is None else list(imputer.indicator_.features_)
        categories: dict[str, list[str]] = {}
        if categorical:
            encoder = prepare.named_transformers_["categorical"]
            categories = {name: [str(v) for v in values]
                          for name, values in zip(categorical, encoder.categories_,
                                                  strict=True)}
        logistic = pipeline.named_steps["logistic"]
        scorer = cls(features, numeric, [float(v) for v in imputer.statistics_],
                     [numeric[i] for i in flagged_idx], [float(v) for v in scaler.mean_],
                     [float(v) for v in scaler.scale_], categories,
                     [float(v) for v in logistic.coef_[0]], float(logistic.intercept_[0]))
        scorer.column_means = scorer.design(train).mean(axis=0).tolist()
        return scorer

    def _groups(self) -> list[str]:
        """The feature each column of the design matrix belongs to."""
        return [*self.numeric, *self.flagged,
                *(name for name, values in self.categories.items() for _ in values)]

    def design(self, frame: pd.DataFrame) -> np.ndarray:
        x = np.column_stack([pd.to_numeric(frame[n], errors="coerce").to_numpy(float)
                             for n in self.numeric]) if self.numeric else np.empty(
            (len(frame), 0))
        missing = np.isnan(x)
        imputed = np.where(missing, np.asarray(self.medians), x)
        flags = missing[:, [self.numeric.index(n) for n in self.flagged]].astype(float)
        scaled = (np.hstack([imputed, flags]) - np.asarray(self.means)) / np.asarray(
            self.scales)
        blocks = [scaled]
        for name, values in self.categories.items():
            column = frame[name].astype(object).where(frame[name].notna(), MISSING_CATEGORY)
            text = column.map(str).to_numpy()
            blocks.append((text[:, None] == np.asarray(values, dtype=object)[None, :])
                          .astype(float))
        return np.hstack(blocks)

    def predict_raw(self, frame: pd.DataFrame) -> np.ndarray:
        logit = self.design(frame) @ np.asarray(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-logit))

    def predict_pd(self, frame: pd.DataFrame) -> np.ndarray:
        return _calibrated(self, self.predict_raw(frame))

    def contributions(self, frame: pd.DataFrame) -> np.ndarray:
        """Per-row log-odds contributions per feature, coefficient x (value - training
        mean) summed over a feature's columns; last column the base value (as
        ``pred_contrib``): they add up to the uncalibrated log-odds."""
        coef, means = np.asarray(self.coef), np.asarray(self.column_means)
        parts = (self.design(frame) - means) * coef
        groups = np.asarray(self._groups(), dtype=object)
        out = np.zeros((len(frame), len(self.features) + 1))
        for j, name in enumerate(self.features):
            out[:, j] = parts[:, groups == name].sum(axis=1)
        out[:, -1] = self.intercept + float(coef @ means)
        return out

    def importance(self) -> pd.DataFrame:
        """Spread of each feature's log-odds contribution: |coefficient| x its training
        standard deviation, summed over its columns (standardized columns: |coefficient|)."""
        coef = np.abs(np.asarray(self.coef))
        groups = np.asarray(self._groups(), dtype=object)
        means = np.asarray(self.column_means)
        spread = np.where(np.arange(len(coef)) < len(self.numeric) + len(self.flagged), 1.0,
                          np.sqrt(np.clip(means * (1 - means), 0, None)))
        return pd.DataFrame({"feature": self.features,
                             "importance": [float((coef * spread)[groups == n].sum())
                                            for n in self.features]})

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        data = {k: getattr(self, k) for k in ("features", "numeric", "medians", "flagged",
                                              "means", "scales", "categories", "coef",
                                              "intercept", "column_means")}
        (directory / self.FILE).write_text(json.dumps(data, ensure_ascii=False, indent=1),
                                           encoding="utf-8")
        if self.calibration is not None:
            self.calibration.save(directory)

    @classmethod
    def load(cls, directory: Path) -> LogisticScorer:
        data = json.loads((directory / cls.FILE).read_text(encoding="utf-8"))
        return cls(**data, calibration=Calibrator.load(directory))


def load_scorer(directory: Path) -> RiskScorer | LogisticScorer:
    """The scorer saved in ``directory``, whichever kind it is."""
    if (directory / LogisticScorer.FILE).exists():
        return LogisticScorer.load(directory)
    return RiskScorer.load(directory)


def category_vocabulary(frame: pd.DataFrame, categorical: list[str]) -> dict[str, list[str]]:
    return {
        name: sorted(str(v) for v in frame[name].dropna().unique()) for name in categorical
    }


@dataclass
class BoosterFit:
    """The best LightGBM trial, cut at its best iteration."""

    scorer: RiskScorer
    params: dict[str, Any]
    best_iteration: int
    auc_valid: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    auc_valid_cross_fitted: float = float("nan")


@dataclass
class TrainedModel:
    """The registered candidate and how it was chosen."""

    scorer: RiskScorer | LogisticScorer
    kind: str  # LIGHTGBM or LOGISTIC
    params: dict[str, Any]  # logged as MLflow params: resolved values, choice, calibration
    best_iteration: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    selection: dict[str, Any] = field(default_factory=dict)
    calibration: CalibrationChoice | None = None
    resolved: ResolvedLightGBM | None = None
    monotone: dict[str, int] = field(default_factory=dict)  # feature -> +1 / -1


def monotone_vector(monotone: MonotoneSpec, features: list[str],
                    categorical: list[str]) -> dict[str, int]:
    """Feature -> +1 (never lowers the PD) / -1 (never raises it); unknown or categorical
    features in the config are an error, not silently unconstrained."""
    direction = {**{f: 1 for f in monotone.increasing}, **{f: -1 for f in monotone.decreasing}}
    unknown = [f for f in direction if f not in features]
    if unknown:
        raise PuhuiError(f"configs/models.yaml: monotone constraint on unknown feature(s): "
                         f"{', '.join(unknown)}")
    categorical_ones = [f for f in direction if f in categorical]
    if categorical_ones:
        raise PuhuiError("configs/models.yaml: monotone constraints need numeric features, "
                         f"not {', '.join(categorical_ones)}")
    return direction


def _train_local(params: dict[str, Any], train_set: lgb.Dataset, stop_set: lgb.Dataset,
                 resolved: ResolvedLightGBM, label: str) -> lgb.Booster:
    with console.progress(label, total=resolved.num_boost_round) as bar:
        return lgb.train(
            params, train_set, num_boost_round=resolved.num_boost_round,
            valid_sets=[stop_set],
            callbacks=[lgb.early_stopping(resolved.early_stopping_rounds,
                                          first_metric_only=True, verbose=False),
                       lambda _env: bar.advance(1)],
        )


def _best_trial(train_set: lgb.Dataset, stop_set: lgb.Dataset, resolved: ResolvedLightGBM,
                fixed: dict[str, Any]) -> tuple[lgb.Booster, dict[str, Any], float,
                                                list[dict[str, Any]]]:
    """Every search trial early-stopped on ``stop_set``; the one with the best AUC there."""
    best: tuple[lgb.Booster, dict[str, Any], float] | None = None
    trials = []
    total = len(resolved.candidates)
    for number, candidate in enumerate(resolved.candidates, start=1):
        if dask_training_enabled():  # PUHUI_TASK_RUNNER=dask: the same booster kind
            booster = train_early_stopped(candidate | fixed, train_set, stop_set,
                                          resolved.num_boost_round,
                                          resolved.early_stopping_rounds)
        else:
            booster = _train_local(candidate | fixed, train_set, stop_set, resolved,
                                   f"LightGBM trial {number}/{total} rounds")
        score = float(booster.best_score["valid_0"]["auc"])
        trials.append({"params": candidate, "auc_valid": round(score, 6),
                       "best_iteration": booster.best_iteration})
        if best is None or score > best[2]:
            best = (booster, candidate, score)
    assert best is not None
    return *best, trials


def train_lightgbm(
    train: pd.DataFrame, valid: pd.DataFrame, features: list[str], categorical: list[str],
    resolved: ResolvedLightGBM, seed: int, monotone: dict[str, int] | None = None,
    cross_fit: bool = True,
) -> BoosterFit:
    """Train on ``train`` with early stopping on ``valid``; with a search, keep the best AUC.

    With ``cross_fit``, also the whole procedure's honest validation AUC: the search and
    early stopping run on one half of the window and score the other half, and the other
    way round. The AUC of the chosen trial at the iteration early stopping chose is the best
    of many looks at the same rows; on a small window that alone can lift a booster above a
    logistic regression that ranks new loans better, so the choice of candidate uses the
    cross-fitted figure. It costs two more searches."""
    vocabulary = category_vocabulary(train, categorical)
    x_train = encode_features(train, features, vocabulary)
    x_valid = encode_features(valid, features, vocabulary)
    y_train, y_valid = train["label"].to_numpy(float), valid["label"].to_numpy(float)
    # One binned Dataset serves every search trial; pre-filtering features by the first
    # trial's min_data_in_leaf would make later trials inconsistent.
    no_prefilter = {"feature_pre_filter": False}
    train_set = lgb.Dataset(x_train, y_train, categorical_feature=categorical,
                            free_raw_data=False, params=no_prefilter)
    fixed = FIXED_PARAMS | {"seed": seed}
    if monotone:
        fixed["monotone_constraints"] = [monotone.get(f, 0) for f in features]
    valid_set = lgb.Dataset(x_valid, y_valid, reference=train_set, params=no_prefilter)
    booster, params, score, trials = _best_trial(train_set, valid_set, resolved, fixed)
    # Keep only the trees up to the best iteration so every later prediction uses them.
    cut = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    fit = BoosterFit(RiskScorer(cut, features, vocabulary), params, booster.best_iteration,
                     score, trials)
    if cross_fit:
        halves = np.zeros(len(y_valid), dtype=bool)
        rng = np.random.default_rng(seed)
        for label in (0.0, 1.0):  # stratified: both halves get their share of defaults
            rows = np.flatnonzero(y_valid == label)
            halves[rng.permutation(rows)[: len(rows) // 2]] = True
        scores = np.empty(len(y_valid))
        for stop_on in (halves, ~halves):
            stop_set = lgb.Dataset(x_valid[stop_on], y_valid[stop_on], reference=train_set,
                                   params=no_prefilter)
            half_best = _best_trial(train_set, stop_set, resolved, fixed)[0]
            scores[~stop_on] = half_best.predict(x_valid[~stop_on],
                                                 num_iteration=half_best.best_iteration)
        fit.auc_valid_cross_fitted = auc(y_valid, scores)
    return fit


def train_candidate(train: pd.DataFrame, valid: pd.DataFrame, features: list[str],
                    categorical: list[str], model: RiskModelSpec) -> tuple[TrainedModel,
                                                                           Pipeline]:
    """LightGBM and the logistic benchmark on ``train``; the candidate is the booster only if
    it beats the benchmark on the validation window (else the benchmark itself); then the
    calibration map is fitted on the candidate's validation predictions.

    Returns the candidate and the benchmark pipeline (the comparison in every report)."""
    size = DataSize(len(train), int(train["label"].sum()))
    resolved = resolve_lightgbm(model.lightgbm, size, model.seed)
    monotone = monotone_vector(model.lightgbm.monotone, features, categorical)
    y_valid = valid["label"].to_numpy(int)
    # Selection optimism shrinks as the window grows: above the configured number of
    # validation defaults the early-stopped AUC is compared as it is (two searches saved).
    cross_fit = int(y_valid.sum()) < model.lightgbm.cross_fit_below_defaults
    booster = train_lightgbm(train, valid, features, categorical, resolved, model.seed,
                             monotone, cross_fit=cross_fit)
    benchmark = train_benchmark(train, features, categorical, model.seed)
    bench_valid = auc(y_valid, predict_benchmark(benchmark, valid, features, categorical))
    # Like for like: the booster's cross-fitted AUC (not the one its search and early
    # stopping chose) against the benchmark's, which was not tuned on the window at all.
    compared = booster.auc_valid_cross_fitted if cross_fit else booster.auc_valid
    how = "cross-fitted" if cross_fit else "early-stopped"
    selection = {"auc_valid_lightgbm": booster.auc_valid, "auc_valid_benchmark": bench_valid,
                 "auc_valid_lightgbm_compared": compared, "compared": how}
    if cross_fit:
        selection["auc_valid_lightgbm_cross_fitted"] = compared
    scorer: RiskScorer | LogisticScorer
    if compared > bench_valid:
        kind, scorer, best_iteration = LIGHTGBM, booster.scorer, booster.best_iteration
        selection["reason"] = (f"LightGBM beats the logistic benchmark on the validation "
                               f"window ({how} AUC {compared:.4f} vs {bench_valid:.4f})")
    else:
        kind, best_iteration = LOGISTIC, 0
        scorer = LogisticScorer.from_pipeline(benchmark, train, features, categorical)
        selection["reason"] = (f"the logistic benchmark ranks the validation window at least "
                               f"as well as the best LightGBM trial (AUC {bench_valid:.4f} vs "
                               f"{how} {compared:.4f}), so it is the candidate")
    selection["candidate"] = kind
    choice = choose_calibration(scorer.predict_raw(valid), y_valid, model.calibration.method,
                                model.calibration.folds, model.seed)
    scorer.calibration = choice.calibrator
    # The best trial's parameters (size-aware ones resolved), what they resolved from, and
    # the choices made: what a reviewer needs to retrain the same model.
    params = {**resolved.logged(), **booster.params, "candidate": kind,
              "calibration": choice.method,
              "calibration_configured": choice.configured,
              "monotone_increasing": ",".join(f for f, d in monotone.items() if d > 0),
              "monotone_decreasing": ",".join(f for f, d in monotone.items() if d < 0),
              **{f"size_aware.{k}": v for k, v in resolved.size_aware.items()}}
    return TrainedModel(scorer, kind, params, best_iteration, booster.trials, selection,
                        choice, resolved, monotone), benchmark


def train_benchmark(
    train: pd.DataFrame, features: list[str], categorical: list[str], seed: int
) -> Pipeline:
    """Logistic regression on the same features: median-imputed (with missing flags) and
    standardized numbers, one-hot categories."""
    numeric = [f for f in features if f not in categorical]
    prepare = ColumnTransformer([
        ("numeric", make_pipeline(SimpleImputer(strategy="median", add_indicator=True,
                                                keep_empty_features=True),
                                  StandardScaler()), numeric),
        ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
    ])
    model = Pipeline([
        ("prepare", prepare),
        ("logistic", LogisticRegression(max_iter=2000, C=1.0, random_state=seed)),
    ])
    model.fit(_benchmark_input(train, features, categorical), train["label"].astype(int))
    return model


def _benchmark_input(frame: pd.DataFrame, features: list[str],
                     categorical: list[str]) -> pd.DataFrame:
    out = frame[features].copy()
    for name in features:
        if name in categorical:
            out[name] = out[name].astype(object).where(out[name].notna(), MISSING_CATEGORY)
        else:
            out[name] = pd.to_numeric(out[name], errors="coerce").astype("float64")
    return out


def predict_benchmark(model: Pipeline, frame: pd.DataFrame, features: list[str],
                      categorical: list[str]) -> np.ndarray:
    return model.predict_proba(_benchmark_input(frame, features, categorical))[:, 1]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores))

