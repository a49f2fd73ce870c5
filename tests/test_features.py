"""Point-in-time features: window arithmetic, and no leakage from after the as-of date."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import MetaData, Table, func, insert, select, update

from puhui.config import FeaturesConfig, load_config
from puhui.features.builder import build_features, feature_catalog
from puhui.features.sources import load_source_frames
from puhui.features.store import read_user_features, write_user_features
from puhui.features.windows import RunningTotals, latest_rows
from puhui.settings import load_settings
from puhui.warehouse.engine import get_engine
from tests.conftest import RiskTemplates, risk_env

AS_OF = date(2026, 3, 15)


def test_window_sums_equal_a_brute_force_sum() -> None:
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 50, 5000)
    days = rng.integers(0, 400, 5000)
    values = rng.normal(100, 30, 5000).round(2)
    totals = RunningTotals.from_events(codes, days, pd.DataFrame({"v": values}))
    req_codes = rng.integers(0, 60, 500)  # some people with no events at all
    req_days = rng.integers(0, 420, 500)
    for window in (1, 30, 180):
        got = totals.window(req_codes, req_days, window)[:, 0]
        want = [
            values[(codes == c) & (days <= d) & (days > d - window)].sum()
            for c, d in zip(req_codes, req_days, strict=True)
        ]
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_latest_row_respects_the_day_and_the_maximum_age() -> None:
    codes = np.array([1, 1, 1, 2])
    days = np.array([10, 40, 70, 10])
    rows = latest_rows(codes, days, np.array([1, 1, 1, 2, 3]), np.array([9, 45, 200, 50, 50]),
                       max_age_days=62)
    assert rows.tolist() == [-1, 1, -1, 3, -1]


@pytest.fixture
def features_env(risk_templates: RiskTemplates, dialect: str, puhui_env: Path,
                 monkeypatch: pytest.MonkeyPatch) -> str:
    return risk_env(risk_templates, "clean", dialect, puhui_env, monkeypatch)


def _spec() -> FeaturesConfig:
    return load_config(load_settings().config_dir, FeaturesConfig)


def _requests(engine, spec: FeaturesConfig) -> pd.DataFrame:  # noqa: ANN001
    """Every customer known on AS_OF, as of AS_OF and as of 40 days earlier."""
    customers = load_source_frames(engine, spec, AS_OF).customers["person_key"]
    return pd.concat([
        pd.DataFrame({"person_key": customers, "as_of_date": AS_OF}),
        pd.DataFrame({"person_key": customers, "as_of_date": AS_OF - timedelta(days=40)}),
    ], ignore_index=True)


def _mutate_after(engine, day: date) -> dict[str, int]:  # noqa: ANN001
    """Change data with event time after ``day``: edit rows, add rows, per source."""
    meta = MetaData()
    tables = {n: Table(n, meta, autoload_with=engine) for n in (
        "raw_mobile_payments", "raw_ecommerce_orders", "raw_credit_bureau", "raw_agri_coop")}
    # End of the as-of day in the lender's timezone (UTC+8), as stored timestamps are UTC.
    cutoff = datetime(day.year, day.month, day.day, 16, 0, 0)
    changed = {}
    with engine.begin() as conn:
        pay, shop = tables["raw_mobile_payments"], tables["raw_ecommerce_orders"]
        bureau, agri = tables["raw_credit_bureau"], tables["raw_agri_coop"]
        changed["payments"] = conn.execute(
            update(pay).where(pay.c.txn_time >= cutoff)
            .values(amount=pay.c.amount * 7 + 1, days_past_due=30, txn_type="BILL_PAY")
        ).rowcount
        changed["orders"] = conn.execute(
            update(shop).where(shop.c.order_time >= cutoff)
            .values(category_code="ELECTRONICS", amount_yuan=99999.0)
        ).rowcount
        changed["bureau"] = conn.execute(
            update(bureau).where(bureau.c.report_date > day)
            .values(bureau_score=300, delinquencies_24m=9)
        ).rowcount
        changed["agri"] = conn.execute(
            update(agri).where(agri.c.record_month > day.strftime("%Y-%m"))
            .values(harvest_sales_yuan=0.0, acreage_mu=1.0)
        ).rowcount
        # New rows, just after the cut-off, for people who have earlier rows.
        sample = conn.execute(
            select(pay).where(pay.c.txn_time < cutoff).limit(200)
        ).mappings().all()
        batch = sample[0]["batch_id"]
        conn.execute(insert(pay), [
            {**{k: v for k, v in r.items() if k not in ("row_number",)},
             "row_number": 10_000_000 + i, "batch_id": batch,
             "txn_id": f"LEAK{i:08d}", "txn_time": cutoff + timedelta(seconds=i),
             "amount": 50000.0}
            for i, r in enumerate(sample)
        ])
        changed["payments_added"] = len(sample)
    return changed


def test_changing_data_after_the_as_of_date_changes_no_feature(features_env: str) -> None:
    engine = get_engine(features_env)
    spec = _spec()
    requests = _requests(engine, spec)
    before = build_features(load_source_frames(engine, spec, AS_OF), requests, spec)
    # The training path: data loaded as of a later date, features requested as of earlier.
    later = build_features(load_source_frames(engine, spec, date(2026, 9, 30)), requests, spec)
    pd.testing.assert_frame_equal(before, later)

    changed = _mutate_after(engine, AS_OF)
    assert all(n > 0 for n in changed.values()), changed
    after = build_features(load_source_frames(engine, spec, AS_OF), requests, spec)
    pd.testing.assert_frame_equal(before, after)
    after_later = build_features(load_source_frames(engine, spec, date(2026, 9, 30)),
                                 requests, spec)
    pd.testing.assert_frame_equal(before, after_later)


def test_the_leakage_check_can_fail(features_env: str) -> None:
    """The same edit one day *before* the as-of date must change features."""
    engine = get_engine(features_env)
    spec = _spec()
    requests = _requests(engine, spec)
    before = build_features(load_source_frames(engine, spec, AS_OF), requests, spec)
    _mutate_after(engine, AS_OF - timedelta(days=20))
    after = build_features(load_source_frames(engine, spec, AS_OF), requests, spec)
    assert not before.equals(after)
    diff = [c for c in before.columns if not before[c].equals(after[c])]
    assert "pay_bill_late_share_30d" in diff and "bureau_score" in diff


def test_features_are_stored_once_per_customer_and_date(features_env: str) -> None:
    engine = get_engine(features_env)
    spec = _spec()
    requests = _requests(engine, spec)
    features = build_features(load_source_frames(engine, spec, AS_OF), requests, spec)
    assert list(features.columns[2:]) == [f.name for f in feature_catalog(spec)]
    protected = {"gender", "birth_date", "region_type", "province"}
    assert not protected & set(features.columns), "protected attributes are not features"
    assert write_user_features(engine, features, spec.feature_set) == len(features)
    assert write_user_features(engine, features, spec.feature_set) == len(features)  # re-run
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(
            Table("user_features", MetaData(), autoload_with=engine))).scalar_one()
    assert stored == len(features)
    back = read_user_features(engine, AS_OF).set_index("person_key").sort_index()
    mine = features[features["as_of_date"] == AS_OF].set_index("person_key").sort_index()
    np.testing.assert_allclose(back["bureau_score"].astype(float),
                               mine["bureau_score"].astype(float), equal_nan=True)
    # Thin files keep "no record" as information: a 0 flag and missing bureau facts.
    thin = mine[mine["bureau_has_record"] == 0]
    assert len(thin) > 0 and thin["bureau_score"].isna().all()
