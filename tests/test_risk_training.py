"""Training the risk candidate, without a warehouse: size-aware parameters, monotone
constraints, the calibration map, the benchmark as candidate, and the registered pyfunc
(a real MLflow store) serving calibrated PDs from either kind of model."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature

from puhui.config import (
    LightGBMSpec,
    ModelsConfig,
    MonotoneSpec,
    SearchSpace,
    SizeAware,
    load_config,
)
from puhui.lifecycle.params import DataSize, resolve_lightgbm, resolve_value
from puhui.risk.calibration import Calibrator, choose_calibration, fit_map
from puhui.risk.metrics import ranking_metrics
from puhui.risk.model import (
    LIGHTGBM,
    LOGISTIC,
    LogisticScorer,
    load_scorer,
    predict_benchmark,
    train_benchmark,
    train_candidate,
    train_lightgbm,
)
from puhui.risk.pyfunc import SCORER_ARTIFACT, RiskModelPyfunc
from puhui.settings import load_settings

FEATURES = ["x0", "x1", "x2", "x3", "kind"]
CATEGORICAL = ["kind"]


def _model_spec(**lightgbm: object):  # noqa: ANN202 - the shipped RiskModelSpec, edited
    spec = load_config(load_settings().config_dir, ModelsConfig).credit_risk
    changes = {"search": None, "monotone": MonotoneSpec()} | lightgbm
    return spec.model_copy(update={"lightgbm": spec.lightgbm.model_copy(update=changes)})


def _frame(n: int, seed: int, *, nonlinear: float = 0.0, shift: float = 0.0) -> pd.DataFrame:
    """Applicants with a known log-odds: linear in x0..x2, plus an optional cliff in x3."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    x[rng.random((n, 4)) < 0.1] = np.nan
    kind = rng.choice(np.array(["a", "b", "c"], dtype=object), n)
    z = np.nan_to_num(x)
    logit = (-2.6 + shift + 0.9 * z[:, 0] - 0.6 * z[:, 1] + 0.4 * z[:, 2]
             + nonlinear * (z[:, 3] > 0.8) + 0.3 * (kind == "b"))
    frame = pd.DataFrame(x, columns=FEATURES[:4])
    frame["kind"] = pd.Series(kind, dtype=object)
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return frame


# --------------------------------------------------------------------------- size-aware
def test_size_aware_values_resolve_from_the_window_and_stay_in_their_range() -> None:
    rule = SizeAware(of="defaults", fraction=0.08, min=20, max=150)
    assert resolve_value("min_data_in_leaf", rule, DataSize(24_000, 1_900)) == 150
    assert resolve_value("min_data_in_leaf", rule, DataSize(24_000, 1_000)) == 80
    assert resolve_value("min_data_in_leaf", rule, DataSize(700, 50)) == 20
    share = SizeAware(of="rows", fraction=0.001, min=0.0, max=1.0)
    assert resolve_value("feature_fraction_bynode", share, DataSize(500, 5)) == 0.5
    assert resolve_value("num_leaves", 15, DataSize(1, 1)) == 15  # plain values as is

    spec = _model_spec().lightgbm
    big = resolve_lightgbm(spec, DataSize(24_000, 1_900), seed=1)
    small = resolve_lightgbm(spec, DataSize(700, 55), seed=1)
    assert (big.params["min_data_in_leaf"], big.params["num_leaves"]) == (150, 7)
    assert (small.params["min_data_in_leaf"], small.params["num_leaves"]) == (20, 3)
    assert small.num_boost_round < big.num_boost_round
    assert set(small.logged()) >= {"min_data_in_leaf", "num_leaves", "num_boost_round",
                                   "early_stopping_rounds", "size_rows", "size_defaults"}
    assert small.size_aware["min_data_in_leaf"] == "0.08 x defaults in [20, 150]"


def test_search_trials_that_resolve_alike_are_tried_once() -> None:
    leaves = [SizeAware(of="defaults", fraction=0.004, min=3, max=7),
              SizeAware(of="defaults", fraction=0.008, min=3, max=15)]
    leaf_rows = [SizeAware(of="defaults", fraction=0.08, min=20, max=150),
                 SizeAware(of="defaults", fraction=0.027, min=10, max=50)]
    spec = _model_spec().lightgbm.model_copy(update={"search": SearchSpace(
        trials=4, num_leaves=leaves, min_data_in_leaf=leaf_rows, learning_rate=[0.02],
        feature_fraction=[0.5], lambda_l2=[1.0])})
    big = resolve_lightgbm(spec, DataSize(24_000, 1_900), seed=42)
    tiny = resolve_lightgbm(spec, DataSize(300, 20), seed=42)
    assert {(c["num_leaves"], c["min_data_in_leaf"]) for c in big.candidates} == {
        (7, 150), (7, 50), (15, 150), (15, 50)}
    # Every leaf-count rule resolves to 3 on 20 defaults: two distinct trials remain.
    assert [(c["num_leaves"], c["min_data_in_leaf"]) for c in tiny.candidates] == [
        (3, 20), (3, 10)]


# --------------------------------------------------------------------------- monotone
def test_a_monotone_constraint_holds_in_the_booster_contributions() -> None:
    """Planted violation: x0 *lowers* the PD in the data, but the config says it never
    may. Unconstrained, the booster learns the decrease; constrained, the prediction and x0's
    TreeSHAP contribution never fall as x0 rises, for every applicant on a grid."""
    train, valid = _frame(6000, 1), _frame(3000, 2)
    for frame in (train, valid):  # a strong decreasing effect of x0, a mild cliff
        frame["x0"] = -frame["x0"]
    resolved = resolve_lightgbm(_model_spec().lightgbm, DataSize(6000, 500), seed=3)
    grid = np.linspace(-2.5, 2.5, 26)
    rows = valid.head(40)

    def along_grid(fit, what: str) -> np.ndarray:  # noqa: ANN001
        out = []
        for value in grid:
            probe = rows.assign(x0=value)
            if what == "pd":
                out.append(fit.scorer.predict_raw(probe))
            else:
                out.append(fit.scorer.contributions(probe)[:, FEATURES.index("x0")])
        return np.array(out)  # grid x rows

    free = train_lightgbm(train, valid, FEATURES, CATEGORICAL, resolved, seed=3)
    assert (np.diff(along_grid(free, "contribution"), axis=0) < -1e-9).any(), \
        "the planted decrease must be learned without the constraint"
    bound = train_lightgbm(train, valid, FEATURES, CATEGORICAL, resolved, seed=3,
                           monotone={"x0": 1})
    assert (np.diff(along_grid(bound, "pd"), axis=0) >= -1e-12).all()
    assert (np.diff(along_grid(bound, "contribution"), axis=0) >= -1e-12).all()


def test_a_constraint_on_an_unknown_or_categorical_feature_is_refused() -> None:
    train, valid = _frame(1500, 1), _frame(600, 2)
    for monotone, word in ((MonotoneSpec(increasing=["nope"]), "unknown"),
                           (MonotoneSpec(decreasing=["kind"]), "numeric")):
        with pytest.raises(Exception, match=word):
            train_candidate(train, valid, FEATURES, CATEGORICAL, _model_spec(monotone=monotone))


# --------------------------------------------------------------------------- calibration
def test_calibration_fixes_a_biased_score_and_keeps_the_ranking(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    true_pd = 1 / (1 + np.exp(-rng.normal(-2.5, 1.1, 20_000)))
    labels = (rng.random(20_000) < true_pd).astype(int)
    raw = true_pd * 0.5  # ranks perfectly, under-predicts by half
    valid, test = slice(0, 10_000), slice(10_000, None)
    for method in ("platt", "isotonic"):
        mapped = fit_map(method, raw[valid], labels[valid])
        calibrated = mapped.apply(raw[test])
        assert abs(calibrated.mean() - labels[test].mean()) < 0.01, method
        assert ranking_metrics(labels[test], calibrated)["brier"] < \
            ranking_metrics(labels[test], raw[test])["brier"]
        # Ties broken by the raw score: the ranking, hence AUC, is exactly the raw one.
        assert ranking_metrics(labels[test], calibrated)["auc"] == pytest.approx(
            ranking_metrics(labels[test], raw[test])["auc"], abs=1e-12)
        (tmp_path / method).mkdir()
        mapped.save(tmp_path / method)
        again = Calibrator.load(tmp_path / method)
        assert np.allclose(again.apply(raw[test]), calibrated)
    steps = fit_map("isotonic", raw[valid], labels[valid]).apply(raw[test], break_ties=False)
    assert len(np.unique(steps)) < len(np.unique(raw[test])) / 10  # steps do tie applicants
    assert fit_map("isotonic", raw[valid], labels[valid]).apply(np.array([0.0]))[0] > 0


def test_auto_picks_the_map_with_the_lower_held_out_log_loss() -> None:
    rng = np.random.default_rng(6)
    raw = rng.uniform(0.01, 0.5, 8000)
    # Observed rate is a step function of the score: Platt's S-curve cannot follow it.
    labels = (rng.random(8000) < np.where(raw > 0.25, 0.4, 0.03)).astype(int)
    choice = choose_calibration(raw, labels, "auto", folds=5, seed=0)
    assert choice.scores["isotonic"]["log_loss"] < choice.scores["platt"]["log_loss"]
    assert choice.method == "isotonic" and "log-loss" in choice.describe()
    smooth = (rng.random(8000) < raw * 0.6).astype(int)
    assert choose_calibration(raw, smooth, "platt", folds=5, seed=0).method == "platt"


# --------------------------------------------------------------------------- candidates
def test_the_logistic_scorer_scores_like_the_fitted_pipeline() -> None:
    train, other = _frame(3000, 3), _frame(500, 4)
    other.loc[0, "kind"] = "never seen"
    pipeline = train_benchmark(train, FEATURES, CATEGORICAL, seed=1)
    scorer = LogisticScorer.from_pipeline(pipeline, train, FEATURES, CATEGORICAL)
    assert np.allclose(scorer.predict_raw(other),
                       predict_benchmark(pipeline, other, FEATURES, CATEGORICAL), atol=1e-10)
    parts = scorer.contributions(other)
    logit = np.log(scorer.predict_raw(other) / (1 - scorer.predict_raw(other)))
    assert np.allclose(parts.sum(axis=1), logit)  # like pred_contrib: they add up
    assert parts[:, FEATURES.index("x0")].std() > parts[:, FEATURES.index("x3")].std()


def test_on_a_small_linear_portfolio_the_benchmark_is_the_candidate(
        tmp_path: Path, mlflow_store: str) -> None:
    """A few hundred loans whose risk is linear: no booster trial beats the logistic
    benchmark on validation, so the benchmark is registered, calibrated, and served by the
    pyfunc from a real MLflow store."""
    train, valid, test = _frame(700, 31, shift=0.3), _frame(300, 32, shift=0.6), \
        _frame(250, 33, shift=0.6)
    trained, benchmark = train_candidate(train, valid, FEATURES, CATEGORICAL, _model_spec())
    assert trained.kind == LOGISTIC, trained.selection
    sel = trained.selection
    assert sel["auc_valid_benchmark"] >= sel["auc_valid_lightgbm_cross_fitted"]
    # The AUC of the trial and iteration chosen on these very rows flatters the booster.
    assert sel["auc_valid_lightgbm"] >= sel["auc_valid_lightgbm_cross_fitted"]
    assert trained.params["candidate"] == LOGISTIC
    assert trained.params["min_data_in_leaf"] == 20  # resolved for 700 rows
    scorer = trained.scorer
    assert scorer.calibration is not None
    # Calibrated on a riskier validation window: the PDs move up towards it.
    assert scorer.predict_pd(test).mean() > scorer.predict_raw(test).mean()
    served = _serve(scorer, test[FEATURES], tmp_path, mlflow_store)
    assert np.allclose(served, scorer.predict_pd(test[FEATURES]))
    assert not np.allclose(served, scorer.predict_raw(test[FEATURES]))


def test_a_booster_that_wins_on_validation_is_the_candidate(
        tmp_path: Path, mlflow_store: str) -> None:
    train, valid, test = (_frame(5000, 21, nonlinear=2.5), _frame(2500, 22, nonlinear=2.5),
                          _frame(500, 23, nonlinear=2.5))
    trained, _ = train_candidate(train, valid, FEATURES, CATEGORICAL, _model_spec())
    assert trained.kind == LIGHTGBM, trained.selection
    assert trained.best_iteration > 0
    served = _serve(trained.scorer, test[FEATURES], tmp_path, mlflow_store)
    assert np.allclose(served, trained.scorer.predict_pd(test[FEATURES]))
    assert isinstance(load_scorer(tmp_path / "saved"), type(trained.scorer))


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real MLflow store for the module (creating its schema costs seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.create_experiment("risk-pyfunc", artifact_location=(root / "a").as_uri())


def _serve(scorer, rows: pd.DataFrame, tmp_path: Path, experiment: str) -> np.ndarray:  # noqa: ANN001
    """Log ``scorer`` as the registered pyfunc in a real MLflow store, load it back by URI
    and score ``rows`` with it."""
    scorer.save(tmp_path / "saved")
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", python_model=RiskModelPyfunc(),
                                       artifacts={SCORER_ARTIFACT: str(tmp_path / "saved")},
                                       pip_requirements=["lightgbm"])
    return np.asarray(mlflow.pyfunc.load_model(info.model_uri).predict(rows))


def test_lightgbm_spec_accepts_plain_and_size_aware_values() -> None:
    spec = LightGBMSpec(params={"num_leaves": {"of": "rows", "fraction": 0.01, "min": 3,
                                               "max": 31}, "learning_rate": 0.05},
                        num_boost_round=100, early_stopping_rounds=10)
    assert isinstance(spec.params["num_leaves"], SizeAware)
    with pytest.raises(ValueError, match="min must not exceed max"):
        SizeAware(of="rows", fraction=0.1, min=5, max=1)


def test_the_ceiling_is_measured_on_exactly_the_test_window_rows(tmp_path: Path) -> None:
    """The true PDs are read from the landing zone's risk truth by application id; the
    ceiling is their AUC on the scored rows only, and a truth that misses a row gives none
    (it would be another population's ceiling)."""
    from puhui.generate.truth import RISK_TRUTH_FILE, load_true_pd
    from puhui.risk.evaluation import ceiling_metrics

    frame = _frame(2000, 11)
    frame["application_id"] = [f"A{i:010d}" for i in range(len(frame))]
    z = np.nan_to_num(frame[FEATURES[:3]].to_numpy())
    true_pd = 1 / (1 + np.exp(-(-2.6 + 0.9 * z[:, 0] - 0.6 * z[:, 1] + 0.4 * z[:, 2])))
    assert load_true_pd(str(tmp_path)) is None  # not a generated landing zone
    other = pd.DataFrame({"application_id": ["A9999999999"], "true_pd": [0.5]})
    pd.concat([pd.DataFrame({"application_id": frame["application_id"],
                             "true_pd": true_pd}), other]).to_csv(
        tmp_path / RISK_TRUTH_FILE, index=False, compression="gzip")
    truth = load_true_pd(str(tmp_path))
    assert truth is not None and len(truth) == len(frame) + 1

    window = frame.iloc[:600].copy()
    window["pd"] = np.nan_to_num(window["x0"].to_numpy())  # a weaker model
    auc = ranking_metrics(window["label"].to_numpy(int), window["pd"])["auc"]
    m = ceiling_metrics(window, truth, auc)
    expected = ranking_metrics(window["label"].to_numpy(int), true_pd[:600])["auc"]
    assert m["auc_ceiling_test_window"] == pytest.approx(expected)
    assert m["auc_ceiling_test_window"] != pytest.approx(
        ranking_metrics(frame["label"].to_numpy(int), true_pd)["auc"], abs=1e-6)
    assert m["auc_gap_to_ceiling_test_window"] == pytest.approx(expected - auc)
    assert m["auc_gap_to_ceiling_test_window"] > 0
    window.loc[window.index[0], "application_id"] = "A0000000000-not-generated"
    assert ceiling_metrics(window, truth, auc) == {}


def test_the_truth_files_are_read_without_loading_the_landing_zone_writer(
    tmp_path: Path,
) -> None:
    """The training reads the generator's truth files through ``puhui.generate.truth``,
    which needs nothing of the writer: the evaluation and the truth reader load no other
    generator module (the evaluation used to load the whole writer, its feeds and pyarrow's
    parquet, for a file name)."""
    import json
    import subprocess
    import sys

    from puhui.generate.truth import TRUTH_FILE, read_truth

    code = ("import sys, puhui.risk.evaluation, puhui.generate.truth; "
            "print(sorted(m for m in sys.modules if m.startswith('puhui.generate')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['puhui.generate', 'puhui.generate.truth']"
    assert read_truth(tmp_path) is None  # not a generated landing zone
    (tmp_path / TRUTH_FILE).write_text(json.dumps({"recommender": {"x": 1}}), encoding="utf-8")
    assert read_truth(str(tmp_path)) == {"recommender": {"x": 1}}


def test_a_category_missing_in_every_example_row_is_still_text_in_the_signature(
    mlflow_store: str, tmp_path: Path,
) -> None:
    """The registered pyfunc's signature comes from the feature kinds: with the example rows'
    category all missing (the default demo: no co-op crop in the first test rows), an
    inferred signature took it for a number and refused every real row with text in it."""
    from mlflow.exceptions import MlflowException

    from puhui.lifecycle.publish import model_signature
    from puhui.profiles.models import model_input

    train = _frame(1500, 21)
    benchmark = train_benchmark(train, FEATURES, CATEGORICAL, 42)
    scorer = LogisticScorer.from_pipeline(benchmark, train, FEATURES, CATEGORICAL)
    scorer.save(tmp_path / "saved")
    rows = model_input(_frame(50, 22), FEATURES, CATEGORICAL)
    example = rows.head(5).copy()
    example["kind"] = pd.Series([np.nan] * 5, dtype=object)  # as the training frame has it
    served = []
    for signature in (infer_signature(example, scorer.predict_pd(example)),
                      model_signature(FEATURES, CATEGORICAL, example,
                                      scorer.predict_pd(example))):
        with mlflow.start_run(experiment_id=mlflow_store):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=RiskModelPyfunc(), signature=signature,
                artifacts={SCORER_ARTIFACT: str(tmp_path / "saved")},
                input_example=example, pip_requirements=["lightgbm"])
        served.append(mlflow.pyfunc.load_model(info.model_uri))
    with pytest.raises(MlflowException, match="column kind"):
        served[0].predict(rows)  # the inferred signature: what failed on the demo
    np.testing.assert_allclose(np.asarray(served[1].predict(rows)), scorer.predict_pd(rows))
