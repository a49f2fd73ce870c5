"""What a monitoring run reads: recent applications with their point-in-time features,
newly matured outcomes, the customer register and the profile history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import Engine, MetaData, Table, select

from puhui.config import FeaturesConfig, MonitoringConfig, RiskModelSpec
from puhui.features.builder import apply_derived, build_features
from puhui.features.sources import SourceFrames, load_source_frames
from puhui.risk.training_set import age_band, feature_requests, load_labels
from puhui.warehouse.schema import user_profile_history


@dataclass
class MonitoringData:
    as_of: date
    frames: SourceFrames
    window: pd.DataFrame  # applications of the monitored window, features, segments
    matured: pd.DataFrame  # applications whose outcome was observed in the lookback, + label
    outcomes: pd.DataFrame  # every delivered outcome with its application (portfolio)
    customers: pd.DataFrame  # register with segment columns
    events: pd.DataFrame  # product offer events of the window


def segment_columns(frame: pd.DataFrame, customers: pd.DataFrame, on: pd.Series,
                    risk: RiskModelSpec) -> pd.DataFrame:
    """Protected and service segments of each row (by person_key), as of the dates ``on``."""
    c = customers.set_index("person_key")
    frame = frame.copy()
    for name in ("region_type", "province", "occupation"):
        frame[name] = frame["person_key"].map(c[name])
    frame["gender"] = frame["person_key"].map(c["gender"]).map({"M": "male", "F": "female"})
    frame["age_band"] = age_band(frame["person_key"].map(c["birth_date"]), on,
                                 risk.fairness.age_bands)
    return frame


def _events(engine: Engine, since: date, as_of: date) -> pd.DataFrame:
    try:
        table = Table("raw_product_events", MetaData(), autoload_with=engine)
    except Exception:  # noqa: BLE001 - feed not ingested yet: no uptake figures
        return pd.DataFrame(columns=["customer_id", "event_type", "product_code"])
    with engine.connect() as conn:
        frame = pd.read_sql_query(select(table.c.customer_id, table.c.event_type,
                                         table.c.product_code, table.c.event_time), conn)
    day = pd.to_datetime(frame["event_time"], utc=True).dt.tz_convert("Asia/Shanghai").dt.date
    return frame[(day > since) & (day <= as_of)]


def load_monitoring_data(engine: Engine, spec: FeaturesConfig, risk: RiskModelSpec,
                         mon: MonitoringConfig, as_of: date) -> MonitoringData:
    frames = load_source_frames(engine, spec, as_of)
    apps = feature_requests(engine, spec, as_of)
    labels = load_labels(engine, risk, as_of)
    outcomes_raw = Table("raw_loan_outcomes", MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        observed = pd.read_sql_query(select(outcomes_raw.c.application_id,
                                            outcomes_raw.c.observation_date,
                                            outcomes_raw.c.max_dpd), conn)
    observed = observed.drop_duplicates("application_id", keep="last")
    observed["observation_date"] = pd.to_datetime(observed["observation_date"]).dt.date
    observed = observed[observed["observation_date"] <= as_of]
    since_window = as_of - timedelta(days=mon.population.window_days)
    since_matured = as_of - timedelta(days=mon.matured.lookback_days)
    in_window = apps["application_date"] > since_window
    labelled = apps.merge(labels, on="application_id", how="inner").merge(
        observed, on="application_id", how="left")
    matured_rows = labelled[labelled["observation_date"] > since_matured]
    wanted = pd.concat([apps.loc[in_window, ["person_key", "as_of_date"]],
                        matured_rows[["person_key", "as_of_date"]]]).drop_duplicates()
    features = build_features(frames, wanted, spec)

    def with_features(part: pd.DataFrame) -> pd.DataFrame:
        out = part.merge(features, on=["person_key", "as_of_date"], how="left")
        apply_derived(out, spec.application.derived, {})
        return segment_columns(out, frames.customers, out["application_date"], risk)

    customers = frames.customers.copy()
    customers = segment_columns(customers[["person_key", "customer_id"]], frames.customers,
                                pd.Series(as_of, index=customers.index), risk)
    return MonitoringData(
        as_of=as_of, frames=frames,
        window=with_features(apps[in_window].reset_index(drop=True)),
        matured=with_features(matured_rows.reset_index(drop=True)),
        outcomes=segment_columns(labelled, frames.customers, labelled["application_date"],
                                 risk),
        customers=customers, events=_events(engine, since_window, as_of))


def profile_grades(engine: Engine, as_of: date) -> tuple[pd.DataFrame, date | None]:
    """Grades of ``as_of`` and of the as-of date before it in the profile history."""
    h = user_profile_history
    with engine.connect() as conn:
        previous = conn.execute(select(h.c.as_of_date).where(h.c.as_of_date < as_of)
                                .order_by(h.c.as_of_date.desc()).limit(1)).scalar()
        days = [as_of] + ([previous] if previous else [])
        frame = pd.read_sql_query(select(h.c.person_key, h.c.as_of_date, h.c.risk_grade,
                                         h.c.risk_score, h.c.segment_tags, h.c.customer_id,
                                         h.c.recommended_products)
                                  .where(h.c.as_of_date.in_(days)), conn)
    frame["as_of_date"] = pd.to_datetime(frame["as_of_date"]).dt.date
    return frame, previous


def thin_file(frame: pd.DataFrame) -> pd.Series:
    return np.where(frame["bureau_has_record"] > 0.5, "no", "yes")
