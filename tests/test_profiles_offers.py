"""Profile offers from a real product_recommender champion (and the risk champion's grades)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, text

from puhui.cli import main
from puhui.config import ModelsConfig, load_config
from puhui.registry import mlflow_client, promote
from puhui.runtime import open_runtime
from puhui.settings import load_settings
from puhui.warehouse.engine import get_engine
from puhui.warehouse.schema import user_profiles
from tests.conftest import RISK_AS_OF, RiskTemplates, risk_env
from tests.test_profiles import champion_env
from tests.test_recommender import AS_OF as EVENTS_AS_OF
from tests.test_recommender import (
    _configs,
    _events,
    _synthetic_set,
    assert_credit_follows_grades,
)

AS_OF = date.fromisoformat(RISK_AS_OF)
GRADES = "ABCDEFGHIJ"


def _j(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value


def _count_reads(monkeypatch: pytest.MonkeyPatch,
                 queries: list[tuple[object, bool]] | None = None) -> list[int]:
    """The rows of each warehouse read of the product events, as they happen (a spy, not a
    mock: the real read runs); ``queries`` receives each read's query and key-range flag."""
    from puhui.features import sources
    from puhui.recommender.train import EVENTS_TABLE

    sizes: list[int] = []
    real_read = sources.read_frame

    def counting_read(engine, query, key_range=False):  # noqa: ANN001, ANN202
        frame = real_read(engine, query, key_range)
        if any(getattr(t, "name", None) == EVENTS_TABLE for t in query.get_final_froms()):
            sizes.append(len(frame))
            if queries is not None:
                queries.append((query, key_range))
        return frame

    monkeypatch.setattr(sources, "read_frame", counting_read)
    return sizes


@pytest.mark.slow
def test_recommender_champion_fills_eligible_offers_and_honours_opt_outs(
    risk_templates: RiskTemplates, puhui_env: Path, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, prefect_harness: None, capsys: pytest.CaptureFixture,
) -> None:
    from flows.profiles import profiles_flow
    from flows.recommender import train_recommender_flow

    url = champion_env(risk_templates, puhui_env, monkeypatch, tmp_path)
    trained = train_recommender_flow(as_of=AS_OF)
    version = trained["version"]
    # Credit eligibility follows the champion's grades (test_recommender.py's check, whose
    # SQLite case trained this same recommender).
    assert_credit_follows_grades(trained, "1")
    runtime = open_runtime()
    promote(mlflow_client(runtime.settings.mlflow_tracking_uri), runtime.engine,
            runtime.audit, "product_recommender", version, "tests: offers", force=True)

    reads = _count_reads(monkeypatch)
    result = profiles_flow(as_of=AS_OF)
    assert result["models"] == {"credit_risk": "1", "product_recommender": version}
    # Product events are read from the warehouse once per partition (the event-sums pass
    # stages them for scoring, and the swap clears them with the staged profiles).
    assert len(reads) == result["partitions"] > 1
    assert not list((load_settings().home / "profiles" / "staging").rglob("events-*"))
    with get_engine(url).connect() as conn:
        rows = pd.read_sql(select(user_profiles), conn)
    spec = load_config(load_settings().config_dir, ModelsConfig).product_recommender
    offers = rows["recommended_products"].map(_j)
    fallback = rows["non_personalised_products"].map(_j)
    filled = offers.map(lambda o: len(o["products"]) > 0)
    assert filled.mean() > 0.9
    assert offers.map(lambda o: len(o["products"]) <= spec.k and o["version"] == version).all()
    limits = spec.eligibility.credit_max_grade
    for offer, grade, reasons in zip(offers, rows["risk_grade"], rows["reasons"], strict=True):
        offered = [p["product"] for p in offer["products"]]
        scores = [p["score"] for p in offer["products"]]
        assert scores == sorted(scores, reverse=True)
        assert not set(offered) & set(offer["not_eligible"])
        # The grade this refresh assigned limits the credit products offered.
        for product, worst in limits.items():
            if GRADES.find(grade) > GRADES.find(worst):
                assert product not in offered
                assert "risk grade" in offer["not_eligible"][product] or \
                    _j(reasons)["decision"] == "decline"
        if _j(reasons)["decision"] == "decline":
            assert not set(offered) & {"microloan", "agri_loan", "business_loan"}
    opted = rows["personalisation_opt_out"].astype(bool)
    assert 0 < opted.sum() < len(rows)
    for offer, alt in zip(offers[opted], fallback[opted], strict=True):
        assert offer["ranking"] == "non_personalised" and offer["products"] == alt
    assert (offers[~opted].map(lambda o: o["ranking"]) == "personalised").all()
    # Personalised rankings differ between customers; the non-personalised one far less.
    assert offers[~opted & filled].map(lambda o: o["products"][0]["product"]).nunique() > 1

    person = rows[~opted & filled]["person_key"].iloc[0]
    capsys.readouterr()
    assert main(["profiles", "explain", person]) == 0
    out = capsys.readouterr().out
    assert "products offered: " in out and f"product_recommender v{version}" in out


def test_offer_columns_drop_declined_loans_and_say_why_in_words() -> None:
    """The adapter over ``score_recommendations``: a product the credit decision rules out
    leaves both rankings and the next eligible one moves up; rule codes become words;
    an opt-out's offers are exactly the non-personalised ranking."""
    from puhui.profiles.models import ModelSlot
    from puhui.profiles.offers import OfferContext, offer_columns, summarise_events
    from puhui.recommender.train import fit_and_evaluate

    models, products = _configs()
    spec = models.product_recommender.model_copy(update={"min_segment_size": 10})
    ranker = fit_and_evaluate(_synthetic_set(), spec).ranker
    events = _events()
    summary = summarise_events(events, products, spec, EVENTS_AS_OF)
    offers = OfferContext(ranker=ranker, spec=spec, products=products,
                          prior=summary.prior(products), popularity=summary.popularity(products))
    frame = pd.DataFrame({"person_key": ["p0", "p1", "p2"],
                          "occupation": ["salaried", "salaried", "farmer"],
                          "agri_coop_member": [0, 0, 0], "age": [30.0, 30.0, 70.0],
                          "x": [0.0, 0.0, 0.0]})
    slot = ModelSlot("recommender", "product_recommender", "7")
    free = offer_columns(offers, slot, frame, ["A", "A", "E"], [{}, {}, {}],
                         [False, False, True], EVENTS_AS_OF, events)
    first = [p["product"] for p in free["recommended_products"][0]["products"]]
    loans = {"microloan", "agri_loan", "business_loan"}
    assert first and set(first) & loans  # the test needs a loan among p0's top-k
    declined = {c: "probability of default above the policy cut-off" for c in loans}
    out = offer_columns(offers, slot, frame, ["A", "A", "E"], [declined, {}, {}],
                        [False, False, True], EVENTS_AS_OF, events)
    p0, p1, p2 = out["recommended_products"]
    offered = [p["product"] for p in p0["products"]]
    assert len(offered) == spec.k and not set(offered) & loans
    assert [c for c in first if c not in loans] == offered[:len(set(first) - loans)]
    assert p0["not_eligible"]["microloan"] == declined["microloan"]
    assert p1["not_eligible"]["agri_loan"].startswith("needs agricultural activity")
    assert not {p["product"] for p in out["non_personalised_products"][0]} & loans
    # grade E is worse than every credit limit; 70 is past every loan's age limit
    assert p2["not_eligible"]["microloan"].startswith("risk grade E is worse than D")
    assert p2["ranking"] == "non_personalised"
    assert p2["products"] == out["non_personalised_products"][2]
    assert p0["model"] == "product_recommender" and p0["version"] == "7"


def test_without_a_champion_the_non_personalised_ranking_comes_from_the_events() -> None:
    """No recommender champion: the personalised offers are empty with the reason, but the
    non-personalised ranking (segment-free popularity from the events) is filled for
    everyone after eligibility, and an opted-out customer is offered exactly it."""
    from puhui.profiles.models import ModelSlot
    from puhui.profiles.offers import OfferContext, popularity_columns, summarise_events
    from puhui.recommender.training_set import build_groups

    models, products = _configs()
    spec = models.product_recommender
    events = _events()
    summary = summarise_events(events, products, spec, EVENTS_AS_OF)
    popularity = summary.popularity(products)
    # The mean relevance of each product over every (window, customer) group, as the
    # recommender's ranking set grades them.
    groups = build_groups(events, products, spec, EVENTS_AS_OF)
    expected = groups.groupby("product_code")["relevance"].mean()
    assert popularity == pytest.approx(expected.reindex(products.codes).to_dict())
    assert popularity["crop_insurance"] == popularity["savings"] > popularity["bill_pay"] > 0

    offers = OfferContext(ranker=None, spec=spec, products=products,
                          prior=summary.prior(products), popularity=popularity)
    slot = ModelSlot("recommender", "product_recommender",
                     reason="no champion for product_recommender (not registered)")
    loans = ["microloan", "agri_loan", "business_loan"]
    declined = {c: "probability of default above the policy cut-off" for c in loans}
    no_grade = {c: "no risk decision" for c in loans}
    frame = pd.DataFrame({"person_key": ["p0", "p1", "p2"],
                          "occupation": ["salaried", "salaried", "farmer"],
                          "agri_coop_member": [0.0, 0.0, np.nan], "age": [30.0, 30.0, 70.0]})
    out = popularity_columns(offers, slot, frame, ["A", "E", None], [{}, declined, no_grade],
                             [False, True, False])
    ranked = [[p["product"] for p in r] for r in out["non_personalised_products"]]
    # p0: agri products need agricultural activity; grade A allows business_loan.
    assert ranked[0] == ["savings", "bill_pay", "business_loan"]
    # p1: declined, so no loan; opted out, so offered the non-personalised ranking.
    assert ranked[1] == ["savings", "bill_pay", "micro_insurance"]
    # p2: a farmer without a risk grade: crop insurance, no credit product.
    assert ranked[2] == ["crop_insurance", "savings", "bill_pay"]
    p0, p1, p2 = out["recommended_products"]
    assert p0["products"] == [] and p0["reason"] == slot.reason and p0["version"] is None
    assert p0["not_eligible"]["crop_insurance"].startswith("needs agricultural activity")
    assert p1["ranking"] == "non_personalised" and p1["reason"] is None
    assert p1["products"] == out["non_personalised_products"][1]
    assert p1["not_eligible"]["microloan"] == declined["microloan"]
    assert p2["products"] == [] and p2["not_eligible"]["agri_loan"] == "no risk decision"
    assert out["non_personalised_products"][0][0] == {
        "product": "savings", "score": round(popularity["savings"], 6)}


def test_event_sums_over_partitions_equal_the_whole() -> None:
    """The scenario mix and the popularity are sums over disjoint customers: summing
    partitions' summaries gives the whole table's prior and popularity exactly."""
    from puhui.profiles.offers import EventSummary, summarise_events
    from puhui.recommender.training_set import graded_events, scenario_prior

    models, products = _configs()
    spec = models.product_recommender
    events = _events()
    whole = summarise_events(events, products, spec, EVENTS_AS_OF)
    summed = EventSummary()
    for person in ("p1", "p2"):
        summed.add(summarise_events(events[events["person_key"] == person], products, spec,
                                    EVENTS_AS_OF))
    assert summed == whole
    pd.testing.assert_series_equal(
        summed.prior(products), scenario_prior(graded_events(events, products, spec), products),
        check_names=False)
    empty = EventSummary()
    assert set(empty.prior(products)) == {1.0 / len(empty.prior(products))}
    assert set(empty.popularity(products).values()) == {0.0}


def _event_setup(templates: RiskTemplates, dialect: str, home: Path,
                 monkeypatch: pytest.MonkeyPatch, partitions: int) -> tuple:
    """A private risk dataset's warehouse: (engine, features, products and recommender
    configs, the register split into ``partitions``)."""
    from puhui.config import FeaturesConfig, ProductsConfig
    from puhui.features.sources import load_register

    engine = get_engine(risk_env(templates, "clean", dialect, home, monkeypatch))
    settings = load_settings()
    features = load_config(settings.config_dir, FeaturesConfig)
    return (engine, features, load_config(settings.config_dir, ProductsConfig),
            load_config(settings.config_dir, ModelsConfig).product_recommender,
            load_register(engine, features, AS_OF, partitions).customers)


@pytest.mark.slow
def test_partition_event_reads_equal_the_whole_table_read(
    risk_templates: RiskTemplates, dialect: str, puhui_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each partition reads only its customers' product events (the SQL selects them), and
    together the partitions give the whole-table read, row for row, and its prior."""
    from puhui.partitioning import Partition
    from puhui.profiles import offers as offers_module
    from puhui.recommender.train import EVENTS_TABLE
    from puhui.recommender.training_set import (
        graded_events,
        load_product_events,
        scenario_prior,
    )

    partitions = 4
    engine, features, products, spec, register = _event_setup(
        risk_templates, dialect, puhui_env, monkeypatch, partitions)
    whole = load_product_events(engine, EVENTS_TABLE, features.timezone, AS_OF,
                                register[["customer_id", "person_key"]])
    with engine.connect() as conn:
        table_rows = conn.execute(text(f"SELECT count(*) FROM {EVENTS_TABLE}")).scalar()

    queries: list[tuple[object, bool]] = []
    read_sizes = _count_reads(monkeypatch, queries)
    tables = offers_module.EventTables.reflect(engine, features)
    parts = [offers_module.read_partition_events(
        engine, tables, AS_OF, register[register["partition"] == b], Partition(b, partitions))
        for b in range(partitions)]
    assert len(read_sizes) == partitions and sum(read_sizes) == table_rows
    assert max(read_sizes) < 0.4 * table_rows  # each read is about a quarter of the table
    assert all(key_range for _, key_range in queries)  # a part: the key-range plan
    together = pd.concat(parts, ignore_index=True)
    columns = list(whole.columns)
    order = ["person_key", "event_time", "product_code", "event_type", "batch_id"]
    pd.testing.assert_frame_equal(
        together.sort_values(order).reset_index(drop=True)[columns],
        whole.sort_values(order).reset_index(drop=True), check_dtype=False)
    context = offers_module.load_offer_context(engine, "unused", None, spec, products,
                                               features, register, AS_OF, partitions,
                                               puhui_env / "events")
    assert context.ranker is None and len(read_sizes) == 2 * partitions
    assert context.events_dir is None and not (puhui_env / "events").exists()  # no champion
    # The profiles supply their index entry; the feature package's own name no events table.
    from puhui.features.partitioned import partition_read_indexes

    index = f"ix_{EVENTS_TABLE}_partition_read"
    assert f'ON "{EVENTS_TABLE}" ("customer_id")' in offers_module.event_read_indexes()[index]
    assert not [s for s in partition_read_indexes(features).values() if EVENTS_TABLE in s]
    if dialect == "postgres":
        _assert_index_reads(engine, features, [q for q, _ in queries[:partitions]])
    pd.testing.assert_series_equal(
        context.prior, scenario_prior(graded_events(whole, products, spec), products),
        check_names=False)
    assert max(context.popularity.values()) > 0


def _assert_index_reads(engine, features, queries: list) -> None:  # noqa: ANN001
    """Each partition's read of the product events, planned as the read runs it (the
    key-range plan), is an index read of the events' partition-read index: no scan of the
    feed. At the test's size the planner, left alone, may well scan."""
    from puhui.features.partitioned import ensure_partition_indexes
    from puhui.features.sources import KEY_RANGE_PLAN
    from puhui.profiles.offers import event_read_indexes
    from puhui.recommender.train import EVENTS_TABLE

    index = f"ix_{EVENTS_TABLE}_partition_read"
    assert index in ensure_partition_indexes(engine, features, event_read_indexes())

    def nodes(plan: dict) -> list[dict]:
        return [plan, *(n for child in plan.get("Plans", []) for n in nodes(child))]

    with engine.connect() as conn:
        for setting, value in KEY_RANGE_PLAN.items():
            conn.exec_driver_sql(f"SET LOCAL {setting} = {value}")
        for query in queries:
            sql = str(query.compile(dialect=engine.dialect,
                                    compile_kwargs={"literal_binds": True}))
            plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}").scalar()[0]["Plan"]
            reads = [n for n in nodes(plan) if n.get("Relation Name") == EVENTS_TABLE]
            assert reads and all(n["Node Type"] in ("Index Scan", "Index Only Scan")
                                 and n["Index Name"] == index for n in reads), reads


def test_resumed_refresh_keeps_the_staged_partition_events(
    risk_templates: RiskTemplates, puhui_env: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The event-sums pass stages each partition's events once: a resumed refresh (same run
    key, so the same directory) sums a staged partition from its file, neither reading the
    warehouse for it nor writing the file again, and gets the same sums."""
    from puhui.profiles.offers import EventTables, events_path, sum_partition_events

    partitions = 4
    engine, features, products, spec, register = _event_setup(
        risk_templates, "sqlite", puhui_env, monkeypatch, partitions)
    tables = EventTables.reflect(engine, features)
    directory = puhui_env / "staging" / "run"
    reads = _count_reads(monkeypatch)

    def run() -> object:
        return sum_partition_events(engine, tables, register, AS_OF, partitions, products,
                                    spec, directory)

    first = run()
    assert len(reads) == partitions
    files = [events_path(directory, b) for b in range(partitions)]
    # A refresh that failed during the pass: the last partition's events were not staged.
    files[-1].unlink()
    stamps = [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files[:-1]]
    resumed = run()
    assert len(reads) == partitions + 1  # only the missing partition read again
    assert [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files[:-1]] == stamps
    assert files[-1].exists() and resumed == first
