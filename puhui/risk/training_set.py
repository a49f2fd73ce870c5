"""The credit-risk training set: applications, their point-in-time features and labels.

Each application is joined to its applicant's features as of the day *before* the
application day, so nothing from the application day itself (which may come after the
application time) can leak in. A label is used only when the outcome window has matured by
the training as-of date and the outcome was delivered by then. The split is out of time,
never random, into three windows by application date: the most recent ``test_months`` of
matured applications are the untouched test window (only the final evaluation and the gates
see it), the ``validation_months`` before them validate (early stopping, the search,
calibration, the choice of candidate), all older ones train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import Engine, MetaData, Table, select

from puhui.config import FeaturesConfig, RiskModelSpec
from puhui.errors import PuhuiError
from puhui.features.builder import FeatureInfo, apply_derived, feature_catalog
from puhui.features.partitioned import build_features_partitioned, default_partitions
from puhui.features.sources import load_register, local_days, time_kind

# The register's columns the training set keeps (protected attributes: never features).
REGISTER_COLUMNS = ["person_key", "region_type", "gender", "birth_date"]
# ``OOT`` is the untouched out-of-time test window; metrics named ``*_oot`` are measured there.
TRAIN, VALID, OOT = "train", "valid", "oot"
WINDOW_NAMES = {TRAIN: "train", VALID: "validation", OOT: "test"}


@dataclass
class TrainingSet:
    """Applications with features, label, split and protected attributes (not features)."""

    as_of: date
    frame: pd.DataFrame
    catalog: list[FeatureInfo]
    oot_start: date
    oot_end: date
    batch_ids: set[str] = field(default_factory=set)
    valid_start: date | None = None  # None: no validation window (older callers, benches)

    @property
    def features(self) -> list[str]:
        return [f.name for f in self.catalog]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.catalog if f.categorical]

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name]

    def oot_applicants(self) -> pd.DataFrame:
        """Every application in the test window, labelled or not (through the door)."""
        day = self.frame["application_date"]
        return self.frame[(day >= self.oot_start) & (day <= self.oot_end)]

    def summary(self) -> dict[str, object]:
        train, valid, oot = self.split(TRAIN), self.split(VALID), self.split(OOT)

        def span(part: pd.DataFrame) -> list[str]:
            return [str(part["application_date"].min()), str(part["application_date"].max())]

        return {
            "as_of": self.as_of.isoformat(),
            "applications": len(self.frame),
            "train_rows": len(train),
            "train_defaults": int(train["label"].sum()),
            "valid_rows": len(valid),
            "valid_defaults": int(valid["label"].sum()),
            "oot_rows": len(oot),
            "oot_defaults": int(oot["label"].sum()),
            "train_range": span(train),
            "valid_range": span(valid) if len(valid) else [],
            "oot_range": [self.oot_start.isoformat(), self.oot_end.isoformat()],
            "features": len(self.catalog),
            "feature_as_of_range": [str(self.frame["as_of_date"].min()),
                                    str(self.frame["as_of_date"].max())],
        }


def application_catalog(spec: FeaturesConfig) -> list[FeatureInfo]:
    app = spec.application
    return [
        *(FeatureInfo(f.name, False, f.reason) for f in app.numeric),
        *(FeatureInfo(f.name, True, f.reason) for f in app.categorical),
        *(FeatureInfo(f.name, False, f.reason) for f in app.derived),
    ]


def _read(engine: Engine, name: str) -> tuple[pd.DataFrame, Table]:
    table = Table(name, MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return pd.read_sql_query(select(table), conn), table


def load_applications(engine: Engine, spec: FeaturesConfig, as_of: date) -> pd.DataFrame:
    """Applications made by the end of ``as_of`` (local), one row each, with their day."""
    frame, table = _read(engine, spec.application.table)
    frame["app_day"] = local_days(frame[spec.application.time],
                                  time_kind(table, spec.application.time), spec.timezone)
    frame["application_date"] = pd.to_datetime(frame["app_day"], unit="D").dt.date
    frame = frame[frame["application_date"] <= as_of]
    frame = frame.sort_values(["application_id", "batch_id"]).drop_duplicates(
        "application_id", keep="last"
    )
    return frame.dropna(subset=["person_key"]).reset_index(drop=True)


def load_labels(engine: Engine, model: RiskModelSpec, as_of: date) -> pd.DataFrame:
    """Outcomes delivered with an observation date on or before ``as_of``."""
    frame, _ = _read(engine, "raw_loan_outcomes")
    observed = pd.to_datetime(frame["observation_date"]).dt.date
    frame = frame[observed <= as_of]
    frame = frame.sort_values(["application_id", "batch_id"]).drop_duplicates(
        "application_id", keep="last"
    )
    return frame[["application_id", model.label, "batch_id"]].rename(
        columns={model.label: "label", "batch_id": "label_batch_id"}
    )


def age_band(birth: pd.Series, on: pd.Series, bands: list) -> pd.Series:
    """The named age band of each person on a date (None outside every band)."""
    birth = pd.to_datetime(birth)
    on = pd.to_datetime(on)
    age = on.dt.year - birth.dt.year - (
        (on.dt.month < birth.dt.month)
        | ((on.dt.month == birth.dt.month) & (on.dt.day < birth.dt.day))
    ).astype(int)
    out = pd.Series([None] * len(age), index=age.index, dtype=object)
    for band in bands:
        out[(age >= band.min_age) & (age <= band.max_age)] = band.name
    return out


def months_before(day: date, months: int) -> date:
    """The day ``months`` calendar months before ``day`` (clamped to the month's end)."""
    return (pd.Timestamp(day) - pd.DateOffset(months=months)).date()


def feature_requests(engine: Engine, spec: FeaturesConfig, as_of: date) -> pd.DataFrame:
    """Applications up to ``as_of``, each with the as-of date of its features (the day
    before it was made)."""
    apps = load_applications(engine, spec, as_of)
    apps["as_of_date"] = apps["application_date"] - timedelta(days=1)
    return apps


@dataclass
class ApplicantFeatures:
    """Every application up to ``as_of`` with its applicant's point-in-time features."""

    as_of: date
    applications: pd.DataFrame  # :func:`feature_requests`
    features: pd.DataFrame  # one row per distinct (person_key, as_of_date) request
    customers: pd.DataFrame  # the register on ``as_of``, :data:`REGISTER_COLUMNS`
    batch_ids: set[str]  # lineage: the batches of the register and feature rows read


def applicant_features(engine: Engine, spec: FeaturesConfig, as_of: date,
                       partitions: int | None = None) -> ApplicantFeatures:
    """The features of every application, built one customer partition at a time.

    Each partition reads only its own people's rows, so memory follows the partition and
    the result (applications x features), not the raw tables. ``partitions`` default: from
    the register's size; the demo's population is one partition.
    """
    apps = feature_requests(engine, spec, as_of)
    register = load_register(engine, spec, as_of,
                             partitions or default_partitions(engine, spec, as_of))
    lineage: set[str] = set()
    features = build_features_partitioned(engine, spec, as_of,
                                          apps[["person_key", "as_of_date"]],
                                          register=register, lineage=lineage)
    return ApplicantFeatures(as_of, apps, features, register.customers[REGISTER_COLUMNS],
                             lineage)


def build_training_set(
    engine: Engine, spec: FeaturesConfig, model: RiskModelSpec, applicants: ApplicantFeatures,
) -> TrainingSet:
    """Join the applications to their features, label the matured ones and split out of
    time."""
    as_of, apps = applicants.as_of, applicants.applications
    labels = load_labels(engine, model, as_of)
    frame = apps.merge(applicants.features, on=["person_key", "as_of_date"], how="left")
    app_catalog = application_catalog(spec)
    apply_derived(frame, spec.application.derived, {})

    matured = frame["application_date"] + timedelta(days=model.outcome_window_days) <= as_of
    frame = frame.merge(labels, on="application_id", how="left")
    frame.loc[~matured, "label"] = np.nan

    customers = applicants.customers.set_index("person_key")
    frame["region_type"] = frame["person_key"].map(customers["region_type"])
    frame["gender"] = frame["person_key"].map(customers["gender"]).map(
        {"M": "male", "F": "female"}
    )
    frame["age_band"] = age_band(frame["person_key"].map(customers["birth_date"]),
                                 frame["application_date"], model.fairness.age_bands)

    labelled = frame["label"].notna()
    if labelled.sum() == 0:
        raise PuhuiError(
            f"no matured loan outcomes by {as_of}: an outcome is usable "
            f"{model.outcome_window_days} days after the application; ingest "
            "loan_outcomes or train as of a later date"
        )
    oot_end = frame.loc[labelled, "application_date"].max()
    oot_start = months_before(oot_end, model.test_months) + timedelta(days=1)
    valid_start = months_before(oot_start - timedelta(days=1),
                                model.validation_months) + timedelta(days=1)
    day = frame["application_date"]
    frame["split"] = None
    frame.loc[labelled & (day < valid_start), "split"] = TRAIN
    frame.loc[labelled & (day >= valid_start) & (day < oot_start), "split"] = VALID
    frame.loc[labelled & (day >= oot_start), "split"] = OOT
    for name in (TRAIN, VALID, OOT):
        part = frame[frame["split"] == name]
        if len(part) == 0 or part["label"].nunique() < 2:
            raise PuhuiError(
                f"the {WINDOW_NAMES[name]} window has {len(part)} labelled applications and "
                "needs both defaults and repayments: more history is needed to train"
            )
    catalog = [*feature_catalog(spec), *app_catalog]
    batch_ids = set(applicants.batch_ids) | set(apps["batch_id"]) | set(
        frame["label_batch_id"].dropna()
    )
    return TrainingSet(as_of, frame.reset_index(drop=True), catalog, oot_start, oot_end,
                       batch_ids, valid_start)
