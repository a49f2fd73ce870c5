"""The product recommender (issue 12): truth in the generator, groups without leakage,
eligibility, the non-personalised ranking for customers who refused personalisation, and
training on ingested data."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from puhui.config import ModelsConfig, ProductsConfig, RecommenderSpec, load_config
from puhui.errors import PuhuiError
from puhui.features.sources import day_number
from puhui.generate import generate_landing_zone
from puhui.recommender.evaluation import MODEL, NON_PERSONAL
from puhui.recommender.gates import check_recommender_gates
from puhui.recommender.model import (
    eligibility,
    final_scores,
    popularity_scores,
    ranker_params,
    train_ranker,
)
from puhui.recommender.publish import run_params
from puhui.recommender.train import fit_and_evaluate, oot_top1
from puhui.recommender.training_set import (
    CUSTOMER_PRODUCT_FEATURES,
    OOT,
    POPULARITY_FEATURES,
    TRAIN,
    RankingSet,
    build_groups,
    popularity_features,
    require_out_of_time_groups,
    window_as_of_days,
)
from puhui.runtime import open_runtime
from puhui.settings import load_settings

AS_OF = date(2026, 9, 30)


def _configs() -> tuple[ModelsConfig, ProductsConfig]:
    config_dir = load_settings().config_dir
    return load_config(config_dir, ModelsConfig), load_config(config_dir, ProductsConfig)


# ----------------------------------------------------------------------------- truth
@pytest.fixture(scope="module")
def truths(tmp_path_factory: pytest.TempPathFactory) -> dict[float, dict]:
    out = {}
    for boost in (0.0, 3.0):
        d = tmp_path_factory.mktemp(f"reco-truth-{boost}")
        generate_landing_zone(d, users=1500, days=2, seed=11, history_days=200,
                              rural_agri_boost=boost)
        out[boost] = json.loads((d / "truth.json").read_text())
    return out


def test_truth_states_the_ceiling_and_impressions_of_every_product(truths: dict) -> None:
    truth = truths[0.0]
    reco = truth["recommender"]
    _, products = _configs()
    assert set(reco["impressions_by_product"]) == set(products.codes)
    assert min(reco["impressions_by_product"].values()) >= 200  # every product learnable
    assert min(reco["oot_impressions_by_product"].values()) > 0
    ceiling = reco["ceiling"]
    assert 0 < ceiling["groups_with_response"] < ceiling["groups"]
    assert truth["recommender_ndcg3_ceiling"] == pytest.approx(ceiling["ndcg_every"], abs=1e-6)
    # Per segment too: each dimension's segments split the groups, and their NDCG@3 averages
    # back to the overall ceiling.
    by_segment = reco["ceiling_by_segment"]
    for dim in ("region_type", "gender", "occupation", "age_band"):
        cells = {k: v for k, v in by_segment.items() if k.startswith(dim + "=")}
        assert len(cells) >= 2
        if dim != "age_band":  # under 18 is in no band
            assert sum(c["groups"] for c in cells.values()) == ceiling["groups"]
            assert sum(c["ndcg_every"] * c["groups"] for c in cells.values()) == pytest.approx(
                ceiling["ndcg_every"] * ceiling["groups"])
    assert {"region_type=rural", "gender=female", "occupation=retired"} <= set(by_segment)
    # every customer counts a no-response group as 0, so it sits below the responders' value
    assert 0 < ceiling["ndcg_every"] < ceiling["ndcg_responders"] <= 1
    assert reco["oot_days"] == _configs()[0].product_recommender.window_days


def test_rural_agri_switch_moves_rural_uptake_to_agri(truths: dict) -> None:
    plain, boosted = truths[0.0]["recommender"], truths[3.0]["recommender"]
    assert boosted["rural_agri_boost"] == 3.0
    # same offers (same seed), more responses to agri, and the truth ranking follows
    assert boosted["impressions_by_product"] == plain["impressions_by_product"]
    for code in ("agri_loan", "crop_insurance"):
        assert boosted["responses_by_product"][code] > plain["responses_by_product"][code]
    assert boosted["responses_by_product"]["savings"] == plain["responses_by_product"]["savings"]
    assert boosted["rural_top1_agri_share"] > plain["rural_top1_agri_share"]


# ----------------------------------------------------------------------------- groups
def _events() -> pd.DataFrame:
    end = day_number(AS_OF)
    rows = [
        # person, day, product, scenario, type
        ("p1", end - 40, "savings", "WALLET", "impression"),
        ("p1", end - 40, "savings", "WALLET", "click"),
        ("p1", end - 40, "savings", "WALLET", "application"),
        ("p1", end - 40, "savings", "WALLET", "uptake"),
        ("p1", end - 5, "bill_pay", "WALLET", "impression"),
        ("p1", end - 5, "bill_pay", "WALLET", "click"),
        ("p2", end - 3, "agri_loan", "COOP", "impression"),
        ("p2", end - 2, "crop_insurance", "COOP", "impression"),
        ("p2", end - 2, "crop_insurance", "COOP", "click"),
        ("p2", end - 2, "crop_insurance", "COOP", "application"),
        ("p2", end - 2, "crop_insurance", "COOP", "uptake"),
    ]
    frame = pd.DataFrame(rows, columns=["person_key", "day", "product_code", "scenario",
                                        "event_type"])
    frame["event_time"] = pd.to_datetime(frame["day"], unit="D")
    frame["batch_id"] = "b1"
    return frame


def test_groups_grade_the_funnel_and_see_only_the_past() -> None:
    models, products = _configs()
    spec = models.product_recommender
    frame = build_groups(_events(), products, spec, AS_OF)
    oot = frame[frame["split"] == OOT].set_index(["person_key", "product_code"])
    assert len(oot) == 2 * len(products.codes)  # every product a row of both groups
    assert oot.loc[("p1", "bill_pay"), "relevance"] == 1  # clicked
    assert oot.loc[("p2", "crop_insurance"), "relevance"] == 3  # taken up
    assert oot.loc[("p2", "agri_loan"), "relevance"] == 0  # shown, no response
    assert oot.loc[("p1", "microloan"), "relevance"] == 0  # not shown
    assert oot.loc[("p2", "agri_loan"), "scenario"] == "COOP"  # the request's context
    # p1 came through WALLET before: what that shelf holds is likelier shown to p1
    assert oot.loc[("p1", "bill_pay"), "exposure"] > oot.loc[("p1", "agri_loan"), "exposure"]
    # p1's savings uptake 40 days ago is past use; the window's own click is not
    assert oot.loc[("p1", "savings"), "past_uptakes"] == 1
    assert oot.loc[("p1", "savings"), "past_kind_uptakes"] == 1
    assert oot.loc[("p1", "bill_pay"), "past_best_grade"] != 1
    assert oot.loc[("p1", "bill_pay"), "past_impressions"] == 0
    feature_day = window_as_of_days(AS_OF, spec)[0]
    assert (frame.loc[frame["split"] == OOT, "as_of_date"] == date.fromordinal(
        date(1970, 1, 1).toordinal() + feature_day)).all()
    # The older window holds p1's savings uptake as its relevance, trained on
    train = frame[frame["split"] == TRAIN].set_index(["person_key", "product_code"])
    assert train.loc[("p1", "savings"), "relevance"] == 3
    # groups are contiguous, as lambdarank needs them
    assert (np.diff(frame["group"].to_numpy()) >= 0).all()


def test_a_training_date_after_the_offers_is_refused_with_the_date_to_use() -> None:
    models, products = _configs()
    spec = models.product_recommender
    events = _events()
    frame = build_groups(events, products, spec, AS_OF)
    require_out_of_time_groups(frame, events, AS_OF, spec)  # offers in the newest window
    late = AS_OF + timedelta(days=60)
    stale = build_groups(events, products, spec, late)
    assert not (stale["split"] == OOT).any() and len(stale)  # older windows still have rows
    with pytest.raises(PuhuiError) as raised:
        require_out_of_time_groups(stale, events, late, spec)
    message = str(raised.value)
    assert f"out-of-time window {late - timedelta(days=spec.window_days - 1)}..{late}" in message
    assert f"--as-of {AS_OF - timedelta(days=2)}" in message  # p2's last offer


def test_features_do_not_change_when_the_future_is_removed() -> None:
    """Leakage: dropping every event after a window's feature day changes no feature."""
    models, products = _configs()
    spec = models.product_recommender
    events = _events()
    full = build_groups(events, products, spec, AS_OF)
    feature_day = window_as_of_days(AS_OF, spec)[0]
    cols = [*CUSTOMER_PRODUCT_FEATURES, "as_of_date", "relevance"]
    # the older windows' rows, features and relevance alike, without the newest window
    past_only = build_groups(events[events["day"] <= feature_day], products, spec, AS_OF)
    assert len(past_only) and (past_only["window"] > 0).all()
    key = ["person_key", "window", "product_code"]
    a = full.set_index(key)[cols].sort_index()
    b = past_only.set_index(key)[cols].sort_index()
    pd.testing.assert_frame_equal(a.loc[b.index], b)
    # and the window's events decide no feature of its own rows
    silent = events[~((events["day"] > feature_day) & (events["event_type"] != "impression"))]
    features = cols[:-1]
    c = build_groups(silent, products, spec, AS_OF).set_index(key)[features].sort_index()
    pd.testing.assert_frame_equal(a.loc[c.index, features], c)


def test_features_kept_for_fewer_windows_are_completed_not_left_blank(
        risk_templates, puhui_env, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Features kept from a run with fewer windows (the seeds bench's cache): the requests
    they lack are built; they were joined to blanks before."""
    from puhui.config import FeaturesConfig
    from puhui.features.builder import feature_catalog
    from puhui.features.sources import load_source_frames
    from puhui.recommender.train import build_ranking_set
    from puhui.warehouse.engine import get_engine
    from tests.conftest import RISK_AS_OF, risk_env

    engine = get_engine(risk_env(risk_templates, "clean", "sqlite", puhui_env, monkeypatch))
    config_dir = load_settings().config_dir
    features = load_config(config_dir, FeaturesConfig)
    models, products = _configs()
    spec = models.product_recommender.model_copy(update={"train_windows": 2})
    frames = load_source_frames(engine, features, date.fromisoformat(RISK_AS_OF))

    def ranking_set(known: pd.DataFrame | None) -> pd.DataFrame:
        return build_ranking_set(engine, frames, features, spec, models.credit_risk,
                                 products, features=known).frame

    whole = ranking_set(None)
    keys = ["person_key", "as_of_date"]
    columns = [*keys, *(f.name for f in feature_catalog(features))]
    kept = whole[columns].drop_duplicates(keys)
    oldest = kept["as_of_date"] == kept["as_of_date"].min()  # the window a shorter run lacks
    assert oldest.sum() and (~oldest).sum()
    pd.testing.assert_frame_equal(ranking_set(kept[~oldest])[columns], whole[columns])


def test_popularity_features_use_only_older_windows() -> None:
    rows = [{"window": w, "occupation": occ, "product_code": code,
             "relevance": float((w + i) % 3)}
            for w in range(3) for i, occ in enumerate(["farmer"] * 40 + ["salaried"] * 10)
            for code in ("a", "b")]
    frame = pd.DataFrame(rows)
    first = popularity_features(frame)
    assert first.loc[first["window"] == 2, POPULARITY_FEATURES].isna().all().all()
    older = frame[frame["window"] == 2]
    farmer_a = older[(older["occupation"] == "farmer") & (older["product_code"] == "a")]
    got = first[(first["window"] == 1) & (first["occupation"] == "farmer")
                & (first["product_code"] == "a")]
    assert (got["occupation_product_popularity"] == farmer_a["relevance"].mean()).all()
    # salaried: 10 rows a window, too few for a cell until two windows pool (20 < 30)
    salaried = first[(first["window"] == 1) & (first["occupation"] == "salaried")]
    assert (salaried["occupation_product_popularity"]
            == salaried["product_popularity"]).all()
    # what happens in a window, or after it, never moves its own features
    changed = frame.assign(relevance=np.where(frame["window"] <= 1, 3.0, frame["relevance"]))
    second = popularity_features(changed)
    same = first["window"] >= 1
    pd.testing.assert_frame_equal(first.loc[same, POPULARITY_FEATURES],
                                  second.loc[same, POPULARITY_FEATURES])


# ------------------------------------------------------------------ size-aware params
def test_the_leaf_count_follows_the_training_rows() -> None:
    """The shipped config: 4 leaves where data are few (the rural agri switch's 2,500
    customers give ~64,000 training rows), 8 at the demo's size (~580,000); the trained
    ranker carries what it was trained with, and values of defaults are refused."""
    models, _ = _configs()
    spec = models.product_recommender
    assert [ranker_params(spec, rows)["num_leaves"]
            for rows in (1_000, 64_000, 320_000, 580_000, 2_000_000)] == [4, 4, 5, 8, 8]
    data = _synthetic_set()
    train = data.frame[data.frame["split"] == TRAIN]
    ranker = train_ranker(train, data.features, data.categorical,
                          spec.model_copy(update={"num_boost_round": 5}))
    assert ranker.params == ranker_params(spec, len(train))
    assert max(t["num_leaves"] for t in ranker.booster.dump_model()["tree_info"]) <= 4
    settings = spec.model_dump()
    settings["lightgbm"]["num_leaves"] = {"of": "defaults", "fraction": 0.01, "min": 4,
                                          "max": 8}
    with pytest.raises(ValueError, match="num_leaves"):
        RecommenderSpec.model_validate(settings)


# ------------------------------------------------------------------------ eligibility
def test_eligibility_removes_and_counts_each_rule() -> None:
    models, _ = _configs()
    spec = models.product_recommender
    frame = pd.DataFrame({
        "product_code": ["business_loan", "business_loan", "agri_loan", "agri_loan",
                         "microloan", "savings", "microloan"],
        # no grade (no risk champion): no credit product, a non-credit one is not limited
        "risk_grade": ["D", "C", "B", "B", "A", None, None],
        "occupation": ["salaried", "salaried", "salaried", "salaried", "retired", "retired",
                       "salaried"],
        "agri_coop_member": [0, 0, 0, 1, 0, 0, 0],
        "age": [40, 40, 40, 40, 70, 70, 40],
    })
    result = eligibility(frame, spec)
    assert result.eligible.tolist() == [False, True, False, True, False, True, False]
    assert result.removed == {"credit_no_risk_grade": 1, "credit_grade": 1,
                              "agricultural_activity": 1, "age": 1}


def test_a_customer_who_refused_personalisation_gets_the_non_personal_ranking() -> None:
    rows = pd.DataFrame({"person_key": ["a", "a", "b", "b"]})
    personal = np.array([0.9, 0.1, 0.9, 0.1])
    non_personal = np.array([0.2, 0.8, 0.2, 0.8])
    scores = final_scores(personal, non_personal, rows["person_key"], {"b"})
    assert scores.tolist() == [0.9, 0.1, 0.2, 0.8]


def test_popularity_is_by_cell_with_a_fallback() -> None:
    train = pd.DataFrame({"product_code": ["x"] * 40 + ["y"] * 40,
                          "scenario": ["S"] * 30 + ["T"] * 10 + ["S"] * 40,
                          "relevance": [1.0] * 30 + [0.0] * 10 + [0.5] * 40})
    rows = pd.DataFrame({"product_code": ["x", "x", "y"], "scenario": ["S", "T", "T"]})
    assert popularity_scores(train, rows, []).tolist() == [0.75, 0.75, 0.5]
    # T has only 10 rows of x (< 30): the global value; y has no T rows at all
    assert popularity_scores(train, rows, ["scenario"]).tolist() == [1.0, 0.75, 0.5]


def test_recommender_gates_name_what_failed() -> None:
    from puhui.recommender.evaluation import RecommenderEvaluation

    models, _ = _configs()
    spec = models.product_recommender
    segments = pd.DataFrame([
        {"dimension": "region_type", "segment": "rural", "gated": True, "model": 0.1,
         "model_responders": 0.45, "chance_responders": 0.40},
        {"dimension": "region_type", "segment": "urban", "gated": False, "model": 0.0,
         "model_responders": 0.0, "chance_responders": 0.40}])
    evaluation = RecommenderEvaluation(
        {"ndcg_at_3_oot": 0.10, "ndcg_at_3_oot_segment_popularity": 0.12,
         "rural_agri_top1_share": 0.2}, segments, pd.DataFrame(), {}, {"k": 3})
    result = check_recommender_gates(evaluation, spec.gates, truth_rural_agri_share=0.5)
    assert not result.passed
    assert [c["gate"] for c in result.checks if not c["passed"]] == [
        "ndcg_lift_vs_segment_popularity", "segment_ndcg_over_chance",
        "rural_agri_top1_vs_truth"]
    assert any("region_type=rural" in f for f in result.failed)
    ok = check_recommender_gates(RecommenderEvaluation(
        {"ndcg_at_3_oot": 0.2, "ndcg_at_3_oot_segment_popularity": 0.1}, segments.iloc[1:],
        pd.DataFrame(), {}, {"k": 3}), spec.gates, truth_rural_agri_share=None)
    assert ok.passed and len(ok.checks) == 1




def _segment_oot(responders: dict[str, int], customers: int = 200) -> pd.DataFrame:
    """Out-of-time rows: 6 products per customer; in occupation ``o`` the first
    ``responders[o]`` customers took up product p3 (relevance 3), the rest did not respond."""
    rows = []
    for occupation, n in responders.items():
        for c in range(customers):
            for p in range(6):
                rows.append({"person_key": f"{occupation}{c}", "product_code": f"p{p}",
                             "relevance": 3.0 if (c < n and p == 3) else 0.0,
                             "occupation": occupation, "region_type": "urban",
                             "age_band": "age_26_35", "gender": "female"})
    oot = pd.DataFrame(rows)
    oot["group"] = oot.groupby("person_key", sort=False).ngroup()
    return oot


def test_segment_floor_judges_the_ranking_not_the_response_rate() -> None:
    """A segment where few respond (retired on seed 42: 7 of 120) ranked perfectly passes
    the floor, which the old floor over every customer failed (NDCG@3 <= share responding);
    a bad ranking (the worst order, or a random one) fails it in every gated segment; a
    segment with fewer responders than ``min_segment_responders`` is reported, not gated."""
    from puhui.recommender.evaluation import evaluate

    models, _ = _configs()
    spec = models.product_recommender
    oot = _segment_oot({"retired": 6, "salaried": 60, "farmer": 40})
    best = oot["relevance"].to_numpy()
    pop = np.tile(np.arange(6, dtype=float), len(oot) // 6)  # p5 first: never taken up

    def gates(model: np.ndarray) -> tuple[pd.DataFrame, list[str]]:
        ev = evaluate(oot, {MODEL: model, "popularity": pop, "segment_popularity": pop},
                      spec.model_copy(update={"min_segment_responders": 5}), {})
        result = check_recommender_gates(ev, spec.gates, None)
        return ev.segments.set_index("segment"), [
            c["subject"] for c in result.checks if c["gate"] == "segment_ndcg_over_chance"
            and not c["passed"] and c["subject"].startswith("occupation=")]

    seg, failed = gates(best)
    retired = seg.loc["retired"]
    assert retired["model"] == pytest.approx(6 / 200) and retired["model"] < 0.05
    assert retired["model_responders"] == pytest.approx(1.0) and failed == []
    assert seg["gated"].all()
    assert retired["chance_responders"] == pytest.approx((1 + 1 / np.log2(3) + 0.5) / 6)
    seg, failed = gates(-best)  # the responded product always last: way -0.55
    assert seg["model_responders"].eq(0).all()
    assert failed == [f"occupation={o}" for o in ("farmer", "retired", "salaried")]
    _, failed = gates(np.random.default_rng(5).random(len(oot)))
    assert len(failed) >= 2  # a random order is chance: its lead is about 0
    # The gate's value: the share of the way from chance to a perfect order (1).
    from puhui.recommender.gates import way_from_chance
    assert way_from_chance(0.7, 0.4) == pytest.approx(0.5)
    assert way_from_chance(0.2, 0.4) == pytest.approx(-1 / 3)
    assert way_from_chance(None, 0.4) is None and way_from_chance(1.0, 1.0) is None
    # Fewer responders than the minimum: reported, not gated.
    ev = evaluate(oot, {MODEL: -best}, spec.model_copy(update={"min_segment_responders": 10}),
                  {})
    assert not ev.segments.set_index("segment").loc["retired", "gated"]
    assert ev.segments.set_index("segment").loc["salaried", "gated"]



# ------------------------------------------------------------------ fit and evaluate
def _synthetic_set(seed: int = 3) -> RankingSet:
    """Customers x products over three windows: farmers like agri, wallets like bill_pay."""
    models, products = _configs()
    rng = np.random.default_rng(seed)
    codes = products.codes
    rows = []
    for window in range(3):
        for person in range(300):
            occupation = ["farmer", "salaried", "gig_worker"][person % 3]
            scenario = ["COOP", "WALLET", "ECOMMERCE"][person % 3]
            for code in codes:
                like = (occupation == "farmer") * (code in ("agri_loan", "crop_insurance")) \
                    + (scenario == "WALLET") * (code == "bill_pay")
                rel = int(rng.random() < 0.1 + 0.5 * like) * int(rng.integers(1, 4))
                rows.append({"person_key": f"p{person}", "window": window, "product_code": code,
                             "relevance": float(rel), "scenario": scenario,
                             "occupation": occupation, "region_type": "rural" if person % 2
                             else "urban", "gender": "female", "age_band": "age_26_35",
                             "age": 30.0, "agri_coop_member": 0, "x": rng.normal(),
                             "risk_grade": "A",
                             "split": OOT if window == 0 else TRAIN})
    frame = pd.DataFrame(rows).sort_values(["window", "person_key", "product_code"])
    frame["group"] = frame.groupby(["window", "person_key"], sort=False).ngroup()
    frame["as_of_date"] = AS_OF
    return RankingSet(AS_OF, frame.reset_index(drop=True),
                      ["x", "occupation", "product_code"], ["occupation", "product_code"],
                      AS_OF)


def test_fit_and_evaluate_ranks_only_eligible_rows_and_honours_opt_outs() -> None:
    models, _ = _configs()
    spec = models.product_recommender.model_copy(update={"min_segment_size": 10})
    data = _synthetic_set()
    refused = {"p1", "p4"}
    run = fit_and_evaluate(data, spec, opted_out=refused)
    oot = run.oot
    assert run.eligibility_violations == 0
    # non-farmers were never ranked an agri product (removed, not ranked low)
    assert not ((oot["occupation"] != "farmer") & oot["product_code"].isin(
        ["agri_loan", "crop_insurance"])).any()
    assert run.evaluation.eligibility_removed["agricultural_activity"] == 3 * 200 * 2
    mine = oot["person_key"].isin(refused)
    assert np.array_equal(oot.loc[mine, MODEL], oot.loc[mine, NON_PERSONAL])
    assert not np.array_equal(oot.loc[~mine, MODEL], oot.loc[~mine, NON_PERSONAL])
    m = run.evaluation.metrics
    assert m["ndcg_at_3_oot"] > m["ndcg_at_3_oot_popularity"]
    assert run.evaluation.counts["groups_oot"] == 300
    top1 = oot_top1(run)
    assert (top1[[f"p{i}" for i in range(0, 300, 3)]].isin(
        ["agri_loan", "crop_insurance"])).mean() > 0.9  # farmers get agri first
    shares = run.evaluation.top1_share
    assert set(shares["dimension"]) == set(spec.segments)
    assert shares.groupby(["dimension", "segment"])["share"].sum().round(6).eq(1).all()
    # MLflow's params say which rows they count: the leaf count follows the eligible ones
    params = run_params(data, run)
    assert params["rows_train"] == (data.frame["split"] == TRAIN).sum()
    assert params["rows_train_eligible"] == params["rows_train"] - 2 * 200 * 2
    assert params["lightgbm.num_leaves"] == ranker_params(
        spec, params["rows_train_eligible"])["num_leaves"]


# ------------------------------------------------------------------------ scoring
def test_score_recommendations_ranks_eligible_products_and_honours_opt_outs(
        tmp_path) -> None:  # noqa: ANN001 - pytest's tmp_path
    from puhui.recommender.model import load_ranker, save_ranker
    from puhui.recommender.scoring import score_recommendations

    models, products = _configs()
    spec = models.product_recommender.model_copy(update={"min_segment_size": 10})
    run = fit_and_evaluate(_synthetic_set(), spec)
    save_ranker(run.ranker, tmp_path / "ranker")
    ranker = load_ranker(tmp_path / "ranker")  # what a registered version serves
    assert ranker.popularity["all"] and ranker.popularity["by_scenario"]
    customers = pd.DataFrame({
        "person_key": ["p0", "p1", "p2", "p3"],
        "occupation": ["farmer", "salaried", "farmer", "farmer"],
        "agri_coop_member": [0, 0, 1, 0], "age": [30.0, 30.0, 30.0, 30.0],
        "x": [0.0, 0.0, 0.0, 0.0], "risk_grade": ["A", "A", None, "A"]})
    out = score_recommendations(ranker, customers, _events(), AS_OF, products, spec,
                                [False, False, False, True], model="m", version="3")
    farmer, salaried, ungraded, refused = out
    assert [len(o["non_personalised"]) for o in out] == [3, 3, 3, 3]
    assert farmer["personalised"][0] in ("agri_loan", "crop_insurance")
    assert farmer["model"] == "m" and farmer["version"] == "3"
    # eligibility first: never offered, and said why
    assert salaried["not_eligible"] == {"agri_loan": "agricultural_activity",
                                        "crop_insurance": "agricultural_activity"}
    assert ungraded["not_eligible"] == {"microloan": "credit_no_risk_grade",
                                        "agri_loan": "credit_no_risk_grade",
                                        "business_loan": "credit_no_risk_grade"}
    for o in out:
        offered = set(o["personalised"]) | set(o["non_personalised"])
        assert not offered & set(o["not_eligible"])
    # a customer who refused personalisation gets the non-personalised ranking only
    assert refused["personalised"] == [] and refused["personalisation_opt_out"]
    assert refused["non_personalised"] == farmer["non_personalised"]


def test_exposure_of_a_customer_does_not_depend_on_the_scoring_chunk() -> None:
    """Profiles score by partition: with everyone's scenario mix passed in, a customer's
    exposure equals the one computed over every customer's events (as in training)."""
    from puhui.recommender.training_set import (
        graded_events,
        past_use_features,
        scenario_prior,
    )

    models, products = _configs()
    past = graded_events(_events(), products, models.product_recommender)
    rows = pd.DataFrame({"person_key": "p0", "product_code": products.codes})
    day = day_number(AS_OF)
    whole = past_use_features(rows, past, products, day)["exposure"].to_numpy()
    chunk = past[past["person_key"] == "p0"]  # p0 was never shown anything
    alone = past_use_features(rows, chunk, products, day, scenario_prior(past, products))
    assert np.allclose(whole, alone["exposure"].to_numpy())
    # without the shared mix the chunk's own (empty) mix would change it
    own = past_use_features(rows, chunk, products, day)["exposure"].to_numpy()
    assert not np.allclose(whole, own)


# ------------------------------------------------- the champion risk model's grades
@pytest.mark.slow  # trains a risk champion and the recommender through real flows (~1 min)
# PostgreSQL only: on SQLite the same training (the run's clean champion, the same configs
# and date) is test_profiles_offers.py's, which asserts the same of its result.
@pytest.mark.parametrize("dialect", ["postgres"], indirect=True)
def test_credit_eligibility_follows_the_champion_risk_grade(
        risk_templates, dialect: str, puhui_env, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
        tmp_path, prefect_harness: None) -> None:  # noqa: ANN001
    from flows.recommender import train_recommender_flow
    from puhui.recommender.risk_grades import champion_risk_grader
    from tests.conftest import RISK_AS_OF, no_search_config, risk_env, use_test_home
    from tests.test_profiles import champion_env

    risk_env(risk_templates, "clean", dialect, puhui_env, monkeypatch)
    no_search_config(tmp_path, monkeypatch)
    uri = load_settings().mlflow_tracking_uri
    none = champion_risk_grader(open_runtime().engine, uri, "credit_risk")
    assert none.scorer is None and "credit products ineligible" in none.describe()
    # The worker's clean PostgreSQL champion, copied into a home of its own.
    champion_env(risk_templates, use_test_home(tmp_path / "trained", monkeypatch),
                 monkeypatch, tmp_path / "trained-configs", dialect)
    version = "1"
    result = train_recommender_flow(as_of=date.fromisoformat(RISK_AS_OF))
    assert_credit_follows_grades(result, version)


def assert_credit_follows_grades(result: dict, risk_version: str) -> None:
    """A ``train_recommender_flow`` result whose credit eligibility followed the grades of
    the credit_risk champion ``risk_version`` (here, and for the SQLite training, in
    ``test_profiles_offers.py``)."""
    assert f"credit limited by credit_risk v{risk_version} grades" in result["steps"][0]
    removed = result["eligibility_removed"]
    assert removed["credit_no_risk_grade"] == 0  # every customer graded by the champion
    assert removed["credit_grade"] > 0  # and some graded above a product's limit
    assert result["eligibility_violations"] == 0


# ------------------------------------------------ the generator's rural agri switch
def _offers_set(boost: float, users: int = 2500, seed: int = 5) -> RankingSet:
    """The generator's offers and responses for the recommender's windows, straight from
    its offer process (no landing zone or ingest: the funnel is the same ``offer_day`` the
    product_events feed writes), with a few of its people's facts standing in for the
    feature builder's columns."""
    from puhui.generate import reference as ref
    from puhui.generate.feeds import World, offer_day
    from puhui.generate.population import build_population
    from puhui.generate.timeline import Timeline, epoch_day

    models, products = _configs()
    spec = models.product_recommender
    days = spec.window_days * (spec.train_windows + 1)
    timeline = Timeline(AS_OF, 1, days + 30)
    pop = build_population(users, seed, timeline)
    world = World(pop, None, None, timeline, seed, ref.DEFAULT_PRODUCTS,  # type: ignore[arg-type]
                  rural_agri_boost=boost)
    parts = []
    for d in timeline.all_days[-days:]:
        o = offer_day(world, epoch_day(d))
        for stage, reached in enumerate((np.ones(len(o.people), bool), o.click, o.apply,
                                         o.uptake)):
            parts.append(pd.DataFrame({
                "person_key": [f"p{i}" for i in o.people[reached]], "day": day_number(d),
                "event_time": pd.Timestamp(d) + pd.to_timedelta(
                    o.seconds[reached] + stage, unit="s"),
                "product_code": np.array(ref.DEFAULT_PRODUCTS)[o.product[reached]],
                "scenario": np.array(ref.SCENARIOS)[o.scenario[reached]],
                "event_type": ref.EVENT_TYPES[stage]}))
    frame = build_groups(pd.concat(parts, ignore_index=True), products, spec, AS_OF)
    person = frame["person_key"].str[1:].astype(int).to_numpy()
    frame["occupation"] = np.array(ref.OCCUPATIONS, dtype=object)[pop.occupation[person]]
    frame["region_type"] = np.array(ref.REGION_TYPES, dtype=object)[pop.region[person]]
    frame["agri_coop_member"] = pop.is_coop_member[person].astype(float)
    frame["has_wallet"] = pop.has_wallet[person].astype(float)
    frame["is_shopper"] = pop.is_shopper[person].astype(float)
    frame["acreage"] = pop.acreage[person]
    frame["age"] = 40.0
    frame["gender"], frame["age_band"], frame["risk_grade"] = "female", "age_36_45", "A"
    frame = popularity_features(frame)
    features = ["occupation", "agri_coop_member", "has_wallet", "is_shopper", "acreage",
                *CUSTOMER_PRODUCT_FEATURES, *POPULARITY_FEATURES, "product_code",
                "product_kind"]
    return RankingSet(AS_OF, frame, features, ["occupation", "product_code", "product_kind"],
                      AS_OF)


@pytest.mark.slow  # 13 windows of the generator's offers for 2,500 people, two models
def test_the_rural_agri_switch_is_learned() -> None:
    """The same population with and without the switch: the model's rural top-1 agri share
    rises above its share without it, up to nearly every rural customer who may be offered
    agri at all (where the popularity baselines sit: they put agri first for all of them)."""
    models, _ = _configs()
    spec = models.product_recommender
    plain = fit_and_evaluate(_offers_set(0.0), spec)
    boosted = fit_and_evaluate(_offers_set(3.0), spec)
    share = "rural_agri_top1_share"
    before, after = plain.evaluation.metrics[share], boosted.evaluation.metrics[share]
    rural = boosted.oot[boosted.oot["region_type"] == "rural"]
    possible = rural.groupby("group")["product_code"].agg(
        lambda c: c.isin(["agri_loan", "crop_insurance"]).any()).mean()
    assert after > before + 0.04  # measured: 0.506 -> 0.562
    assert after >= 0.97 * possible  # measured: 0.562 of a possible 0.570
    assert boosted.evaluation.metrics[f"{share}_popularity"] <= possible + 1e-9
