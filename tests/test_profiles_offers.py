"""Profile offers from a real product_recommender champion (and the risk champion's grades)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

from puhui.cli import main
from puhui.config import ModelsConfig, load_config
from puhui.registry import promote, registry_client
from puhui.runtime import open_runtime
from puhui.settings import load_settings
from puhui.warehouse.engine import get_engine
from puhui.warehouse.schema import user_profiles
from tests.conftest import RISK_AS_OF, RiskTemplates, no_search_config, risk_env
from tests.test_profiles import train_and_promote
from tests.test_recommender import AS_OF as EVENTS_AS_OF
from tests.test_recommender import _configs, _events, _synthetic_set

AS_OF = date.fromisoformat(RISK_AS_OF)
GRADES = "ABCDEFGHIJ"


def _j(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value


@pytest.mark.slow
def test_recommender_champion_fills_eligible_offers_and_honours_opt_outs(
    risk_templates: RiskTemplates, puhui_env: Path, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, prefect_harness: None, capsys: pytest.CaptureFixture,
) -> None:
    from flows.profiles import profiles_flow
    from flows.recommender import train_recommender_flow

    url = risk_env(risk_templates, "clean", "sqlite", puhui_env, monkeypatch)
    no_search_config(tmp_path, monkeypatch)
    train_and_promote()
    version = train_recommender_flow(as_of=AS_OF)["version"]
    runtime = open_runtime()
    promote(registry_client(runtime.settings.mlflow_tracking_uri), runtime.engine,
            runtime.audit, "product_recommender", version, "tests: offers", force=True)

    result = profiles_flow(as_of=AS_OF)
    assert result["models"] == {"credit_risk": "1", "product_recommender": version}
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
    from puhui.profiles.offers import OfferContext, offer_columns
    from puhui.recommender.train import fit_and_evaluate

    models, products = _configs()
    spec = models.product_recommender.model_copy(update={"min_segment_size": 10})
    ranker = fit_and_evaluate(_synthetic_set(), spec).ranker
    offers = OfferContext(ranker=ranker, spec=spec, products=products, events=_events())
    frame = pd.DataFrame({"person_key": ["p0", "p1", "p2"],
                          "occupation": ["salaried", "salaried", "farmer"],
                          "agri_coop_member": [0, 0, 0], "age": [30.0, 30.0, 70.0],
                          "x": [0.0, 0.0, 0.0]})
    slot = ModelSlot("recommender", "product_recommender", "7")
    free = offer_columns(offers, slot, frame, ["A", "A", "E"], [{}, {}, {}],
                         [False, False, True], EVENTS_AS_OF)
    first = [p["product"] for p in free["recommended_products"][0]["products"]]
    loans = {"microloan", "agri_loan", "business_loan"}
    assert first and set(first) & loans  # the test needs a loan among p0's top-k
    declined = {c: "probability of default above the policy cut-off" for c in loans}
    out = offer_columns(offers, slot, frame, ["A", "A", "E"], [declined, {}, {}],
                        [False, False, True], EVENTS_AS_OF)
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
