"""Declarative configuration in ``configs/*.yaml``, validated on load.

Each file has a pydantic model that forbids unknown keys, so a typo is one clear line naming
the file and the key instead of a silently ignored setting. ``config_hash`` fingerprints the
whole directory for the audit trail and MLflow tags.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import string
from datetime import time
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from puhui.dates import LENDER_TIMEZONE
from puhui.errors import PuhuiError
from puhui.lightgbm_params import alias_clash as lightgbm_alias_clash
from puhui.lightgbm_params import canonical as lightgbm_canonical
from puhui.lightgbm_params import type_problem as lightgbm_type_problem
from puhui.lightgbm_params import unsupported as lightgbm_unsupported


class StrictModel(BaseModel):
    # strict: a YAML `true` or "180" where a number of days belongs is an error, not 1 or 180.
    # Finite: a `.nan` gate threshold failed every model, an `.inf` one passed every model.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _at_most_63_bytes(name: str) -> str:
    if len(name.encode()) > 63:
        raise ValueError("longer than 63 bytes in UTF-8 (PostgreSQL's limit for a name)")
    return name


# A lower-case name: a letter, then letters, digits and underscores.
LOWER_NAME = r"[a-z][a-z0-9_]*"
# Plain names (tables, pseudonym key columns, lookups): a quote or a semicolon in
# one would end the identifier early in the statements built from them.
Identifier = Annotated[str, Field(pattern=rf"^{LOWER_NAME}$")]
# A partner's column name as its header spells it (`CustomerID`, `客户编号`): it is always
# quoted, by SQLAlchemy or by hand (COPY, INSERT, ALTER TABLE), so only what would break the
# quoting is refused: a double quote, a colon (a bind parameter in SQLAlchemy's text()),
# control and format characters, and spaces at either end (headers are matched stripped).
# At most 63 UTF-8 bytes: PostgreSQL cuts longer identifiers, so two could become one.
ColumnName = Annotated[str, Field(pattern=r'^[^\s":\p{C}](?:[^":\p{C}]*[^\s":\p{C}])?$'),
                       AfterValidator(_at_most_63_bytes)]
# A feed's batch ids are <feed>-<YYYYMMDD>-<12 hex> in VARCHAR(40) columns: PostgreSQL
# refused every file of a longer-named feed (SQLite, which ignores the length, loaded them).
MAX_FEED_NAME = 40 - len("-YYYYMMDD-") - 12
# Stored names the raw table and the quarantine copies use themselves (checked case-folded).
_RAW_TABLE_COLUMNS = frozenset({"batch_id", "row_number"})
_CHECK_PREFIXES = ("_valid_", "_after_delivery")
# A number of days: bounded, so that a slip of the keyboard (1e20) is refused on load and
# not an OverflowError in date arithmetic in the middle of a run.
MAX_DAYS = 3660
Days = Annotated[int, Field(gt=0, le=MAX_DAYS)]
# Other counts a slip of the keyboard makes absurd, bounded for the same reason: a seed
# outside [0, 2^32) passed the load and failed training after its booster (scikit-learn's
# range), 100,000 months failed the split (year -6308), 10^12 bootstrap resamples or boosting
# rounds ran for ever.
Months = Annotated[int, Field(ge=1, le=MAX_DAYS // 30)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
MAX_BOOST_ROUNDS = 100_000
Rounds = Annotated[int, Field(ge=1, le=MAX_BOOST_ROUNDS)]


class Product(StrictModel):
    code: str = Field(pattern=r"^[a-z][a-z_]*$")
    name: str
    name_zh: str
    kind: Literal["loan", "insurance", "savings", "payment"]
    scenarios: list[Literal["ECOMMERCE", "WALLET", "COOP", "BRANCH"]]


class ProductsConfig(StrictModel):
    products: list[Product]

    @field_validator("products")
    @classmethod
    def _unique_codes(cls, products: list[Product]) -> list[Product]:
        codes = [p.code for p in products]
        if len(codes) != len(set(codes)):
            raise ValueError("product codes must be unique")
        return products

    @property
    def codes(self) -> list[str]:
        return [p.code for p in self.products]


ColumnType = Literal["string", "int", "float", "bool", "date", "timestamp"]


class ColumnContract(StrictModel):
    """One column of a feed as the partner promises to send it."""

    name: ColumnName
    type: ColumnType
    nullable: bool = False
    unit: str | None = None
    # "thousands": the partner writes numbers as "1,234.50"; parsed only where declared.
    number_format: Literal["plain", "thousands"] = "plain"
    pii: Literal["national_id", "phone"] | None = None
    # What happens to a personal identifier at the door: a keyed hash, or nothing at all.
    treatment: Literal["pseudonymize", "drop"] | None = None
    key_column: Identifier | None = None  # the pseudonym column (default by pii kind)

    @model_validator(mode="after")
    def _pii_needs_treatment(self) -> ColumnContract:
        if self.pii and not self.treatment:
            raise ValueError(f"column {self.name!r} is personal ({self.pii}): set treatment")
        if self.treatment and not self.pii:
            raise ValueError(f"column {self.name!r} has a treatment but no pii kind")
        if self.pii and self.type != "string":
            raise ValueError(f"column {self.name!r}: identifiers must be read as strings")
        return self

    @property
    def stored_name(self) -> str | None:
        """The warehouse column this becomes (None when dropped)."""
        if self.treatment == "drop":
            return None
        if self.treatment == "pseudonymize":
            default = "person_key" if self.pii == "national_id" else "phone_key"
            return self.key_column or default
        return self.name


def _fits_a_batch_id(name: str) -> str:
    if len(name) > MAX_FEED_NAME:
        raise ValueError(
            f"longer than {MAX_FEED_NAME} characters (a batch id, <feed>-<YYYYMMDD>-<12 hex>, "
            "must fit the ledger's 40-character batch_id)")
    return name


class PartnerFeed(StrictModel):
    """A partner feed: where files land, how to read them, and the data contract."""

    name: Annotated[str, Field(pattern=rf"^{LOWER_NAME}$"), AfterValidator(_fits_a_batch_id)]
    description: str
    owner: Literal["partner", "lender"]
    location: str | None = None  # fsspec URL; default: $PUHUI_LANDING/<name>
    pattern: str  # glob under the location; {date} is the delivery date (YYYY-MM-DD)
    format: Literal["csv", "jsonl", "parquet"]
    encoding: Literal["utf-8", "gbk"] = "utf-8"
    delivery: Literal["daily", "monthly"]
    expected_by: time = time(6, 0)  # local time by which the delivery date's file is due
    suite: str  # expectations/<suite>.json
    primary_key: list[str]
    event_time: str | None = None  # column compared with the delivery date
    extra_columns: Literal["warn", "hold"] = "warn"
    # Days back from the as-of date in which a file the ledger has not seen is still found
    # (a late file in an old delivery folder); default: the config's ``late_lookback_days``.
    late_lookback_days: int | None = Field(default=None, ge=0, le=MAX_DAYS)
    columns: list[ColumnContract]

    @field_validator("expected_by", mode="before")
    @classmethod
    def _quoted_time(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted 10:30 as the number 630, which pydantic took as seconds:
        # a feed due at 00:10:30 UTC. Only "HH:MM" text is a time of day here.
        if not isinstance(value, str):
            raise ValueError('write the time quoted, as "HH:MM" (YAML reads 10:30 as a number)')
        try:
            return time.fromisoformat(value)
        except ValueError:
            raise ValueError('not a time of day "HH:MM"') from None

    @field_validator("pattern")
    @classmethod
    def _known_placeholders(cls, pattern: str) -> str:
        try:
            fields = [
                "{" + f + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                for _, f, spec, conv in string.Formatter().parse(pattern)
                if f is not None
            ]
        except ValueError as exc:
            raise ValueError(f"pattern {pattern!r} is not a valid template: {exc}") from None
        unknown = sorted({f for f in fields if f != "{date}"})
        if unknown:
            raise ValueError(
                f"pattern {pattern!r}: unknown placeholder(s) "
                + ", ".join(unknown)
                + " (only {date} is filled in)"
            )
        return pattern

    @model_validator(mode="after")
    def _keys_are_columns(self) -> PartnerFeed:
        names = [c.name for c in self.columns]
        if len(names) != len(set(names)):
            raise ValueError("column names must be unique")
        if not self.primary_key:
            # Both the within-file and the cross-file check keep one row per key: with no
            # key column, every row's key was one empty value and each file failed.
            raise ValueError(f"feed {self.name!r}: primary_key names no column: every feed "
                             "needs a key (one or more columns)")
        named = [("primary_key", k) for k in self.primary_key]
        named += [("event_time", self.event_time)] if self.event_time else []
        for field_name, key in named:
            if key not in names:  # the index in the error's path does not say which feed
                raise ValueError(
                    f"feed {self.name!r}: {field_name} {key!r} is not a declared column")
        # Case-folded: SQLite's names ignore case (CustomerID and customerid are one column).
        stored = [c.stored_name.casefold() for c in self.columns if c.stored_name]
        if len(stored) != len(set(stored)):
            raise ValueError("two columns would be stored under the same name")
        # The raw table's own columns, and the check columns a quarantine copy keeps beside
        # the data: a partner column under one of these names broke every file of the feed.
        taken = [c.stored_name for c in self.columns
                 if c.stored_name and (c.stored_name.casefold() in _RAW_TABLE_COLUMNS
                                       or c.stored_name.casefold().startswith(_CHECK_PREFIXES))]
        if taken:
            raise ValueError(
                f"feed {self.name!r}: a column is stored as {taken[0]!r}, a name the raw table "
                "keeps for itself (batch_id, row_number, _valid_*, _after_delivery)")
        return self

    @property
    def raw_table(self) -> str:
        return f"raw_{self.name}"

    def column(self, name: str) -> ColumnContract:
        return next(c for c in self.columns if c.name == name)


class PartnersConfig(StrictModel):
    # How far back (days before the as-of date) discovery looks for files the ledger has
    # not seen; a feed's own ``late_lookback_days`` overrides it.
    late_lookback_days: int = Field(default=35, ge=0, le=MAX_DAYS)
    partners: list[PartnerFeed]

    def lookback_days(self, feed: PartnerFeed) -> int:
        """The late-file look-back of ``feed``."""
        own = feed.late_lookback_days
        return self.late_lookback_days if own is None else own

    def get(self, name: str) -> PartnerFeed:
        for feed in self.partners:
            if feed.name == name:
                return feed
        known = ", ".join(f.name for f in self.partners)
        raise PuhuiError(f"unknown partner {name!r} (configured: {known})")


# ---------------------------------------------------------------------------------------
# configs/features.yaml: point-in-time features (see the file's header for the vocabulary)

ReasonCode = str
Comparison = dict[Literal["gt", "ge", "lt", "le", "ne"], float | str]
# A partner column a feature reads, spelled as partners.yaml stores it (`CustomerID` too):
# the builders reach it through SQLAlchemy's quoted columns, frames and Parquet, which keep
# its case (tests/test_partitioned_features.py builds the same features from mixed-case
# columns on both dialects).
RawColumn = ColumnName
RowFilter = dict[RawColumn, str | float | list[str] | Comparison]


class FeatureName(StrictModel):
    name: str = Field(pattern=rf"^{LOWER_NAME}$")
    reason: ReasonCode


class LatestColumn(FeatureName):
    column: RawColumn
    categorical: bool = False


class LatestSpec(StrictModel):
    max_age_days: Days
    present_as: FeatureName
    columns: list[LatestColumn]


class Aggregate(FeatureName):
    agg: Literal["count", "sum", "mean", "share"]
    column: RawColumn | None = None
    where: RowFilter = {}
    share_where: RowFilter = {}
    per_30_days: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Aggregate:
        if self.agg in ("sum", "mean") and not self.column:
            raise ValueError(f"{self.agg} needs a column")
        if self.agg == "share" and not self.share_where:
            raise ValueError("share needs share_where")
        if self.per_30_days and self.agg not in ("count", "sum"):
            raise ValueError("per_30_days applies to count and sum only")
        return self


class FeatureSource(StrictModel):
    name: str
    table: Identifier
    key: Literal["person_key", "phone_key"]
    time: RawColumn
    windows: list[Days] = []
    aggregates: list[Aggregate] = []
    latest: LatestSpec | None = None

    @model_validator(mode="after")
    def _windows_for_aggregates(self) -> FeatureSource:
        if self.aggregates and not self.windows:
            raise ValueError("aggregates need windows")
        if any(w <= 0 for w in self.windows):
            raise ValueError("windows are positive numbers of days")
        return self


class Lookup(StrictModel):
    by: Identifier
    values: dict[str, float]
    scale: float = 1.0


class DerivedFeature(FeatureName):
    numerator: str
    denominator: str | None = None
    lookup: Lookup | None = None

    @model_validator(mode="after")
    def _one_divisor(self) -> DerivedFeature:
        if (self.denominator is None) == (self.lookup is None):
            raise ValueError("give exactly one of denominator or lookup")
        return self


class CustomerSpec(StrictModel):
    table: Identifier
    since: RawColumn
    categorical: list[FeatureName]
    tenure: FeatureName


class ApplicationSpec(StrictModel):
    table: Identifier
    time: RawColumn
    numeric: list[FeatureName]
    categorical: list[FeatureName]
    derived: list[DerivedFeature] = []


class PartitioningSpec(StrictModel):
    """How a build of several partitions reads the warehouse (not what it computes)."""

    # On PostgreSQL, the phone-keyed feeds are split by partition in one scan first when
    # their on-disk size (tables and indexes) is at least this; below it each partition
    # probes their phone_key index (puhui.features.partitioned.decide_phone_feeds_split).
    split_phone_feeds_min_mib: int = Field(ge=0)


class FeaturesConfig(StrictModel):
    feature_set: str = Field(pattern=rf"^{LOWER_NAME}$")
    timezone: str
    reasons: dict[ReasonCode, str]
    customer: CustomerSpec
    sources: list[FeatureSource]
    derived: list[DerivedFeature] = []
    application: ApplicationSpec
    partitioning: PartitioningSpec

    @field_validator("timezone")
    @classmethod
    def _the_lenders_timezone(cls, timezone: str) -> str:
        # Ingest reads a time without a zone, and dates deliveries, in the lender's timezone
        # (a constant): features cutting days in another would disagree with every feed.
        if timezone != LENDER_TIMEZONE.key:
            raise ValueError(f"must be {LENDER_TIMEZONE.key}, the timezone ingest reads "
                             "local times and delivery dates in (not configurable)")
        return timezone

    @model_validator(mode="after")
    def _reasons_known(self) -> FeaturesConfig:
        named: list[FeatureName] = [*self.customer.categorical, self.customer.tenure]
        for source in self.sources:
            named += source.aggregates
            if source.latest:
                named += [source.latest.present_as, *source.latest.columns]
        named += [*self.derived, *self.application.numeric, *self.application.categorical,
                  *self.application.derived]
        for item in named:
            if item.reason not in self.reasons:
                raise ValueError(f"feature {item.name!r}: unknown reason code {item.reason!r}")
        return self


# ---------------------------------------------------------------------------------------
# configs/models.yaml: training, evaluation, fairness and the gates of each model


GRADE_ORDER = "ABCDEFGHIJ"  # risk grades are letters, A the best


class RiskGrade(StrictModel):
    grade: str
    max_pd: float = Field(gt=0, le=1)


class SizeAware(StrictModel):
    """A parameter that only makes sense relative to the data: ``fraction`` of the training
    window's rows or defaults, kept within [``min``, ``max``] (a range)."""

    of: Literal["rows", "defaults"]
    fraction: float = Field(gt=0)
    min: float = Field(ge=0)
    max: float = Field(gt=0)

    @model_validator(mode="after")
    def _range(self) -> SizeAware:
        if self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


# bool first: a YAML ``true`` must reach LightGBM as a bool (as 1.0 it is refused).
ParamValue = bool | float | int | str | SizeAware


class SearchSpace(StrictModel):
    trials: int = Field(ge=1, le=64)
    num_leaves: list[int | SizeAware]
    learning_rate: list[float]
    min_data_in_leaf: list[int | SizeAware]
    feature_fraction: list[float]
    lambda_l2: list[float]


class MonotoneSpec(StrictModel):
    """Features whose effect on the PD has a known direction (numeric features only)."""

    increasing: list[str] = []
    decreasing: list[str] = []

    @model_validator(mode="after")
    def _disjoint(self) -> MonotoneSpec:
        both = set(self.increasing) & set(self.decreasing)
        if both:
            raise ValueError(f"constrained both ways: {sorted(both)}")
        return self


class LightGBMSpec(StrictModel):
    params: dict[str, ParamValue]
    num_boost_round: Rounds | SizeAware
    early_stopping_rounds: Rounds | SizeAware
    search: SearchSpace | None = None
    monotone: MonotoneSpec = MonotoneSpec()
    # Below this many validation defaults, the booster's validation AUC is cross-fitted
    # (search and early stopping on one half, scored on the other) before it is compared
    # with the benchmark's: two more searches, worth it only where the window is small.
    cross_fit_below_defaults: int = Field(default=2000, ge=0)

    @field_validator("params", mode="before")
    @classmethod
    def _param_types(cls, params: Any) -> Any:
        return _check_lightgbm_params(params, lists=False, trainer_sets=RISK_TRAINER_PARAMS)

    @field_validator("num_boost_round", "early_stopping_rounds")
    @classmethod
    def _rounds_bounded(cls, rounds: int | SizeAware) -> int | SizeAware:
        # A size-aware count resolves within [min, max]: an unbounded max (10^12) passed.
        if isinstance(rounds, SizeAware) and rounds.max > MAX_BOOST_ROUNDS:
            raise ValueError(f"max must be at most {MAX_BOOST_ROUNDS:,}")
        return rounds

    @model_validator(mode="after")
    def _search_names_not_aliased(self) -> LightGBMSpec:
        # A trial is the params with the searched values laid over them by name: a param
        # under an alias of a searched one would reach LightGBM next to it.
        if self.search is not None:
            searched = [n for n in type(self.search).model_fields if n != "trials"]
            clash = lightgbm_alias_clash([k for k in self.params if k not in searched]
                                         + searched)
            if clash:
                raise ValueError(f"params and search: {clash}")
        return self


class CalibrationSpec(StrictModel):
    # auto: the method with the lower cross-validated log-loss on the validation window.
    method: Literal["auto", "isotonic", "platt"] = "auto"
    folds: int = Field(default=5, ge=2, le=20)


class AgeBand(StrictModel):
    name: str
    min_age: int
    max_age: int


class FairnessSpec(StrictModel):
    dimensions: list[Literal["region_type", "age_band", "gender"]]
    age_bands: list[AgeBand]
    min_segment_size: int = Field(ge=1)


class CalibrationGate(StrictModel):
    alpha: float = Field(gt=0, lt=1)
    tolerance: float = Field(ge=0, le=1)
    # one_sided: only under-prediction fails (the ECB's Jeffreys back-test); two_sided: both.
    test: Literal["one_sided", "two_sided"] = "one_sided"


class GatesSpec(StrictModel):
    min_auc_oot: float
    max_auc_drop_vs_champion: float
    max_score_psi: float
    min_adverse_impact_ratio: float
    calibration: CalibrationGate


class RiskModelSpec(StrictModel):
    registered_name: str
    label: str
    outcome_window_days: Days
    # Three windows, by application date: train | validation (early stopping, search,
    # calibration, candidate choice) | test (untouched: final evaluation and gates only).
    validation_months: Months
    test_months: Months
    seed: Seed
    lightgbm: LightGBMSpec
    calibration: CalibrationSpec = CalibrationSpec()
    grades: list[RiskGrade]
    policy_cutoff_pd: float = Field(gt=0, lt=1)
    fairness: FairnessSpec
    gates: GatesSpec
    auto_promote: bool = False
    reasons_per_decline: int = Field(ge=1, le=10)

    @field_validator("grades")
    @classmethod
    def _grades_ascending(cls, grades: list[RiskGrade]) -> list[RiskGrade]:
        bounds = [g.max_pd for g in grades]
        if bounds != sorted(bounds) or bounds[-1] != 1.0:
            raise ValueError("grade max_pd must ascend and the last must be 1.0")
        # The recommender's eligibility ranks a grade by its letter: `A+` or `1` passed the
        # eligibility grade check and ranked -1 (no grade: credit refused to everyone).
        if [g.grade for g in grades] != list(GRADE_ORDER[: len(grades)]):
            raise ValueError(f"grades must be named {', '.join(GRADE_ORDER[:3])}, ... in order "
                             f"(at most {len(GRADE_ORDER)}, best first)")
        return grades


class MetricThreshold(StrictModel):
    """A gate as data: ``value`` must reach ``threshold`` from the right side."""

    threshold: float
    higher_is_better: bool = True


class AgeLimit(StrictModel):
    min: int = Field(ge=0)
    max: int = Field(ge=0)

    @model_validator(mode="after")
    def _range(self) -> AgeLimit:
        if self.min > self.max:  # nobody's age is in it: the product was offered to no one
            raise ValueError("min must not exceed max")
        return self


class EligibilitySpec(StrictModel):
    """Applied before ranking: a product a customer may not be offered is never ranked."""

    credit_max_grade: dict[str, str] = {}  # credit product -> worst champion grade allowed
    agricultural: list[str] = []  # products that need agricultural activity
    age: dict[str, AgeLimit] = {}


class RecommenderGates(StrictModel):
    ndcg_lift_vs_segment_popularity: MetricThreshold  # NDCG@k minus the baseline's
    # every gated segment's NDCG@k over its customers with a response, as a share of the way
    # from a random order's on the same rows to a perfect order's (a ranking's quality for
    # those who showed what they want, whatever the segment's response rate and shelf size)
    segment_ndcg_over_chance: MetricThreshold
    rural_agri_top1_vs_truth: MetricThreshold  # model share minus the truth ranking's


class RecommenderSpec(StrictModel):
    registered_name: str
    k: int = Field(default=3, ge=1, le=100)
    window_days: Days = 28  # one group per customer and window
    train_windows: int = Field(default=12, ge=1, le=MAX_DAYS)
    grading: dict[str, int]  # event type -> relevance
    segments: list[str]
    segment_pair: list[str]  # the segment-popularity baseline's segment
    min_segment_size: int = Field(ge=1)  # customers, for a segment to be gated
    min_segment_responders: int = Field(default=1, ge=1)  # ... and customers with a response
    seed: Seed = 42
    # LightGBM parameters; a size-aware value resolves against the training rows (there
    # are no defaults here: a ranker's rarer outcome is not one label)
    lightgbm: dict[str, ParamValue | list[int] | list[float] | list[str]]
    num_boost_round: Rounds
    eligibility: EligibilitySpec
    gates: RecommenderGates
    auto_promote: bool = False

    @field_validator("lightgbm", mode="before")
    @classmethod
    def _param_types(cls, params: Any) -> Any:
        return _check_lightgbm_params(params, trainer_sets=RANKER_TRAINER_PARAMS)

    @field_validator("lightgbm")
    @classmethod
    def _of_rows(cls, params: dict[str, Any]) -> dict[str, Any]:
        wrong = sorted(k for k, v in params.items() if isinstance(v, SizeAware) and v.of != "rows")
        if wrong:
            raise ValueError(f"size-aware values must be of rows here: {wrong}")
        return params


_LIGHTGBM_SHAPES = ("a number, a string, true/false, a list of numbers or of strings, or "
                    "a size-aware {of: rows, fraction, min, max}")


_NO_LISTS = ("a list is taken only in the recommender's lightgbm block (the risk model's "
              "monotone constraints: lightgbm.monotone)")


# LightGBM parameters a trainer sets itself, and from what: a config value for one, under
# its own name or any alias (``random_state`` is ``seed``), would be overridden by the
# trainer's (LightGBM keeps one name's value and warns under ``verbosity: -1``, unseen).
# The risk model's: puhui/risk/model.py's FIXED_PARAMS, its seed and monotone constraints,
# and its Dataset's feature_pre_filter; the ranker's: puhui/recommender/model.py's
# ranker_params. tests/test_config_trainer_params.py holds these to the trainers' own.
_SEED = "the model's seed in configs/models.yaml"
RISK_TRAINER_PARAMS: dict[str, str] = {
    "seed": _SEED, "deterministic": "always true: same data and seed, same model",
    "force_row_wise": "always true", "verbosity": "the trainer's",
    "metric": "log-loss then AUC, early stopping on the first",
    "first_metric_only": "early stopping on log-loss", "monotone_constraints_method": "basic",
    "monotone_constraints": "from lightgbm.monotone",
    "feature_pre_filter": "off: one binned Dataset serves every search trial",
}
RANKER_TRAINER_PARAMS: dict[str, str] = {
    "seed": _SEED, "deterministic": "always true: same data and seed, same model",
    "force_row_wise": "always true", "label_gain": "from grading",
}


# Round counts the spec bounds itself (``Rounds``); under any LightGBM name in params they
# bypassed the bound.
_ROUND_PARAMS = {"num_iterations": "num_boost_round",
                 "early_stopping_round": "early_stopping_rounds"}


def _check_lightgbm_params(params: Any, lists: bool = True,
                           trainer_sets: dict[str, str] | None = None) -> Any:
    """No parameter under two of its names, none the trainer sets (``trainer_sets``), then
    each value's shape and its type as LightGBM declares the parameter (an unknown name
    refused): a mistyped value fails here, not inside LightGBM after the features are built.
    Checked before pydantic's union: its errors list every member's failure under internal
    names; this says which key is wrong and what it takes. ``lists=False``: the risk model's
    params, whose one list LightGBM parameter it uses (monotone constraints) comes from
    ``lightgbm.monotone``."""
    if isinstance(params, dict):
        clash = lightgbm_alias_clash(map(str, params))
        if clash:
            raise ValueError(clash)
        for key in map(str, params):
            real = lightgbm_canonical(key)
            if real in _ROUND_PARAMS:
                # Passed to lgb.train, it overrode the bounded round count (2*10^9 rounds).
                raise ValueError(f"{key}: LightGBM's {real}, which overrides the model's "
                                 f"{_ROUND_PARAMS[real]}: set that instead")
            if real in (trainer_sets or {}):
                called = "" if real == key else f" (LightGBM's {real})"
                raise ValueError(f"{key}: set by the trainer{called}: "
                                 f"{(trainer_sets or {})[real]}; not configurable here")
        for key, value in params.items():
            problem = (lightgbm_unsupported(str(key))
                       or (None if lists or not isinstance(value, list) else _NO_LISTS)
                       or _lightgbm_value_problem(value)
                       or lightgbm_type_problem(str(key), value,
                                                size_aware=isinstance(value, dict | SizeAware)))
            if problem:
                raise ValueError(f"{key}: {problem}")
    return params


def _lightgbm_value_problem(value: Any) -> str | None:
    """What is wrong with one LightGBM parameter value's shape, or None: LightGBM takes
    scalars and flat lists (``label_gain`` floats, ``monotone_constraints`` ints); the only
    mapping is the size-aware form (its own fields checked by ``SizeAware``)."""
    if _non_finite(value) or isinstance(value, list) and any(map(_non_finite, value)):
        # Else pydantic's union lists every member's failure under internal names.
        return "must be a finite number"
    if isinstance(value, bool | int | float | str):
        return None
    if isinstance(value, SizeAware):
        return None
    if isinstance(value, dict):
        if "of" not in value:
            return (f"a mapping ({sorted(map(str, value))}) is not a LightGBM value: "
                    f"{_LIGHTGBM_SHAPES}")
        try:
            SizeAware.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            return f"size-aware value: {where + ': ' if where else ''}{first['msg']}"
        return None
    if isinstance(value, list):
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        if numbers or all(isinstance(v, str) for v in value):
            return None
        return "a list must hold only numbers or only strings"
    return f"expected {_LIGHTGBM_SHAPES}"


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


class ModelsConfig(StrictModel):
    credit_risk: RiskModelSpec
    product_recommender: RecommenderSpec | None = None

    @model_validator(mode="after")
    def _eligibility_grades(self) -> ModelsConfig:
        # A grade the risk model has not (`d`, `F`, ``) was found by position in the grade
        # letters: -1 refused the product to everyone, '' allowed grade A only.
        grades = [g.grade for g in self.credit_risk.grades]
        rules = self.product_recommender.eligibility if self.product_recommender else None
        for code, grade in (rules.credit_max_grade if rules else {}).items():
            if grade not in grades:
                raise ValueError(f"product_recommender.eligibility.credit_max_grade.{code}: "
                                 f"{grade!r} is none of credit_risk's grades ({', '.join(grades)})")
        return self


def eligibility_problems(models: ModelsConfig, products: ProductsConfig) -> list[str]:
    """Products the recommender's eligibility rules name that products.yaml has not, one
    line each. A misspelt code is a rule on no product: `micro_loan: D` left microloan
    without its grade limit (offered to grade E and to customers with no grade), and
    `agri_laon` offered agri_loan to people with no agricultural activity."""
    if models.product_recommender is None:
        return []
    rules = models.product_recommender.eligibility
    named = [("credit_max_grade", c) for c in rules.credit_max_grade]
    named += [("agricultural", c) for c in rules.agricultural]
    named += [("age", c) for c in rules.age]
    return [f"models.yaml: product_recommender.eligibility.{rule}: {code!r} is no product "
            f"of products.yaml ({', '.join(products.codes)})"
            for rule, code in named if code not in products.codes]


def check_eligibility(models: ModelsConfig, products: ProductsConfig) -> None:
    """Raise the first of ``eligibility_problems`` (a run's configs step)."""
    if problems := eligibility_problems(models, products):
        raise PuhuiError(problems[0])


# ---------------------------------------------------------------------------------------
# configs/segments.yaml: segment tags and the profile refresh


class SegmentRule(StrictModel):
    tag: str = Field(pattern=rf"^{LOWER_NAME}$")
    label: str
    rule: RowFilter


class ProfileSpec(StrictModel):
    reference_application: dict[str, float | int | str]
    partitions: int = Field(ge=1, le=4096)
    # Slot ("risk", "recommender", ...) -> registered model name.
    models: dict[str, str]


class SegmentsConfig(StrictModel):
    segments: list[SegmentRule]
    profile: ProfileSpec

    @field_validator("segments")
    @classmethod
    def _unique_tags(cls, segments: list[SegmentRule]) -> list[SegmentRule]:
        tags = [s.tag for s in segments]
        if len(tags) != len(set(tags)):
            raise ValueError("segment tags must be unique")
        return segments


# ---------------------------------------------------------------------------------------
# configs/monitoring.yaml: model monitoring, service effect and early warning


class Threshold(StrictModel):
    watch: float
    act: float
    direction: Literal["above", "below"]
    # "watch": past `act` still only amber (diagnostic figures that must not page anyone).
    max_status: Literal["watch", "act"] = "act"

    def status(self, value: float | None) -> str:
        """ok / watch / act for ``value`` (a missing value is ok: nothing to judge)."""
        if value is None or value != value:
            return "ok"
        if self.direction == "above":
            light = "act" if value >= self.act else "watch" if value >= self.watch else "ok"
        else:
            light = "act" if value < self.act else "watch" if value < self.watch else "ok"
        return "watch" if light == "act" and self.max_status == "watch" else light


class PopulationSpec(StrictModel):
    window_days: Days
    bins: int = Field(ge=2, le=50)


class MaturedSpec(StrictModel):
    lookback_days: Days
    bootstrap: int = Field(ge=10, le=10_000)
    min_rows: int = Field(ge=1)


class MonitoringFairnessSpec(StrictModel):
    dimensions: list[str]
    reference: dict[str, str]
    small_segment: int = Field(ge=1)


class ServiceSpec(StrictModel):
    dimensions: list[str]
    npl_benchmark: float = Field(gt=0, lt=1)


class MonitoringConfig(StrictModel):
    population: PopulationSpec
    matured: MaturedSpec
    fairness: MonitoringFairnessSpec
    service: ServiceSpec
    thresholds: dict[str, Threshold]

    @model_validator(mode="after")
    def _known_thresholds(self) -> MonitoringConfig:
        needed = {"score_psi", "feature_csi", "auc_drop", "calibration_rejected_grades",
                  "adverse_impact_ratio", "missing_rate_increase", "approval_rate_drop",
                  "coverage_drop", "default_rate_rise"}
        missing = sorted(needed - set(self.thresholds))
        if missing:
            raise ValueError(f"thresholds missing: {', '.join(missing)}")
        return self


# One model per file: a file in configs/ without a model is an error, not ignored.
CONFIG_MODELS: dict[str, type[StrictModel]] = {
    "products.yaml": ProductsConfig,
    "partners.yaml": PartnersConfig,
    "features.yaml": FeaturesConfig,
    "models.yaml": ModelsConfig,
    "segments.yaml": SegmentsConfig,
    "monitoring.yaml": MonitoringConfig,
}

M = TypeVar("M", bound=StrictModel)


def _format_validation_error(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{path}: {key}: {first['msg']}{more}"


class ConfigYamlLoader(yaml.SafeLoader):
    """YAML as configs mean it: a key given twice is an error (PyYAML keeps the last one
    silently, so a setting could be overridden a screen further down), and aliases are
    refused (none are needed, and nested aliases expand to billions of nodes where a field
    takes any value)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} (aliases are not allowed in config files)",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *alias` (prefect.yaml): merged keys may be overridden
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class DeploymentYamlLoader(ConfigYamlLoader):
    """``prefect.yaml`` as Prefect means it: Prefect's docs share work pools, schedules and
    build steps through ``definitions:`` with ``&anchor`` / ``*alias`` (and ``<<:`` merges),
    so aliases are allowed, but the document they expand to is capped: nested aliases
    would expand to billions of nodes where a field takes any value."""

    MAX_NODES = 100_000

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._nodes = 0  # the document's nodes so far, every alias counted as its expansion
        self._sizes: dict[int, int] = {}  # id(node) -> its expanded size (anchored nodes)
        self._open: set[str] = set()  # anchors whose node is still being composed

    def _expanded(self, node: yaml.Node) -> int:
        if id(node) not in self._sizes:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            self._sizes[id(node)] = 1 + sum(self._expanded(child) for child in children)
        return self._sizes[id(node)]

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise yaml.composer.ComposerError(
                    None, None, f"alias *{event.anchor} refers to its own anchor (a cycle)",
                    event.start_mark)
            node = yaml.composer.Composer.compose_node(self, parent, index)
            self._nodes += self._expanded(node)
        else:
            self._nodes += 1
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                self._open.add(anchor)
            node = yaml.composer.Composer.compose_node(self, parent, index)
            self._open.discard(anchor)
        if self._nodes > self.MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} expands the document past "
                f"{self.MAX_NODES:,} nodes" if isinstance(event, yaml.AliasEvent)
                else f"the document has more than {self.MAX_NODES:,} nodes", event.start_mark)
        return node


# Config files are a few KB. PyYAML parses ~1 MiB in ~8 s (pure Python, loaded machine): a
# bigger file is a mistake, or a link to a device (/dev/zero grew the process to a MemoryError).
MAX_CONFIG_BYTES = 1 << 20


def read_config_bytes(path: Path) -> bytes:
    """A config file's bytes; one line naming it when it is missing, not a regular file (a
    FIFO blocked the read for good, a folder raised IsADirectoryError) or over
    ``MAX_CONFIG_BYTES``. Never waits on a FIFO, nor reads past the cap."""
    not_regular = PuhuiError(f"{path}: not a regular file (a folder, device or pipe); "
                             "a config file must be a plain file")
    try:
        # Checked before opening: opening some devices acts (a watchdog arms, a tape
        # rewinds), opening a FIFO wakes its waiting writer.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise not_regular
        # Non-blocking: a FIFO put there since would wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        what = "a link to nothing" if path.is_symlink() else "config file is missing"
        raise PuhuiError(f"{path}: {what}") from None
    except OSError as exc:
        raise PuhuiError(f"{path}: config file cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the two
        os.close(fd)
        raise not_regular
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise PuhuiError(f"{path}: over {MAX_CONFIG_BYTES >> 20} MiB; config files are a few KB")
    return data


def load_yaml(path: Path, aliases: bool = False) -> Any:
    """``path`` parsed by :class:`ConfigYamlLoader` (with ``aliases``: by
    :class:`DeploymentYamlLoader`); a problem is one line naming the file, the line and what
    is wrong (never the value)."""
    loader = DeploymentYamlLoader if aliases else ConfigYamlLoader
    try:
        text = read_config_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PuhuiError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or ""
        known = problem.startswith(("duplicate key", "alias *", "the document has"))
        raise PuhuiError(f"{path}:{where}: " + (problem if known else "not valid YAML")) from None


def load_config_file(path: Path, model: type[M]) -> M:
    """Parse one YAML file into its model; any problem is one line naming file and key."""
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise PuhuiError(f"{path}: <root>: expected a mapping of keys")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise PuhuiError(_format_validation_error(path, exc)) from None


@cache
def _load_cached(config_dir: Path, name: str) -> StrictModel:
    return load_config_file(config_dir / name, CONFIG_MODELS[name])


def load_config(config_dir: Path, model: type[M]) -> M:
    """The validated config of ``model``'s file in ``config_dir`` (cached per process)."""
    name = next(n for n, m in CONFIG_MODELS.items() if m is model)
    return _load_cached(config_dir.resolve(), name)  # type: ignore[return-value]


def check_config_dir(config_dir: Path) -> None:
    """Refuse, in one line, a config folder that is missing, empty or lacks one of
    ``CONFIG_MODELS``' files: every flow reads them, and would fail on the first one it
    needs only after Prefect started (~40 s on this machine), with Prefect's error lines."""
    if not config_dir.is_dir():
        state = "not a folder" if config_dir.exists() else "no such folder"
        raise PuhuiError(f"PUHUI_CONFIG_DIR {config_dir}: {state}; point it at a copy of the "
                         "repository's configs/ folder (or unset it for that one)")
    # Its files would all look missing: "holds none of the config files" misleads.
    if not os.access(config_dir, os.R_OK | os.X_OK):
        raise PuhuiError(f"PUHUI_CONFIG_DIR {config_dir}: not readable by this user; give it "
                         "read access (chmod) or point it at a readable copy")
    missing = [name for name in CONFIG_MODELS if not (config_dir / name).exists()]
    if missing:
        state = ("holds none of the config files" if len(missing) == len(CONFIG_MODELS)
                 else "lacks " + ", ".join(missing))
        raise PuhuiError(f"PUHUI_CONFIG_DIR {config_dir}: {state}; copy them from the "
                         "repository's configs/ folder")
    # Every one is hashed into each run's provenance (config_hash): a FIFO among them blocked
    # that read for good, a folder raised IsADirectoryError, both after Prefect started.
    for path in config_files(config_dir):
        read_config_bytes(path)


def config_files(config_dir: Path) -> list[Path]:
    """The folder's ``*.y*ml`` files in name order, not its dotfiles: an editor's lock link
    (Emacs' ``.#models.yaml``, a link to nothing) failed the check while a file was edited."""
    return sorted(p for p in config_dir.glob("*.y*ml") if not p.name.startswith("."))


def validate_config_dir(config_dir: Path) -> list[str]:
    """Load every file of ``config_dir``; raise on the first invalid or unknown one."""
    names = [p.name for p in config_files(config_dir)]
    unknown = [n for n in names if n not in CONFIG_MODELS]
    if unknown:
        raise PuhuiError(f"{config_dir / unknown[0]}: no schema for this config file")
    for name, model in CONFIG_MODELS.items():
        load_config_file(config_dir / name, model)
    return names


def config_hash(config_dir: Path, *, expectations_dir: Path) -> str:
    """SHA-256 over every config file's and every suite file's name and bytes, in name
    order (first 16 hex): a changed check changes what a run did as much as a changed
    setting. ``expectations_dir``: the settings' (``Settings.expectations_dir``), never a
    folder inside ``config_dir`` (a user's config folder may hold one that is not what the
    run validates with). Required: a default read from the environment would hash another
    folder than the one the caller's settings validate with."""
    digest = hashlib.sha256()
    suites = sorted(expectations_dir.glob("*.json"))
    # Named by kind, not by folder: a copy of the same files elsewhere hashes the same.
    named = [("configs", p) for p in config_files(config_dir)]
    for kind, path in named + [("expectations", p) for p in suites]:
        digest.update(f"{kind}/{path.name}".encode())
        digest.update(b"\0")
        digest.update(read_config_bytes(path) if kind == "configs" else path.read_bytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# `puhui config check`: what ingestion would trip on, found before a run


def _suite_columns(kwargs: dict) -> list[str]:
    names = [kwargs.get("column"), kwargs.get("column_A"), kwargs.get("column_B")]
    names += list(kwargs.get("column_list") or [])
    return [str(n) for n in names if n]


def check_feed_suites(config_dir: Path, expectations_dir: Path) -> list[str]:
    """Problems between partner feeds and their suites, one line each (empty: none).

    A suite must exist and be JSON, and its expectations may only name columns a batch
    frame has: the stored columns (a pseudonymized ``phone`` is stored as ``phone_key``)
    and the check columns ingestion adds (``_valid_<key>``, ``_after_delivery``).
    """
    partners_file = config_dir / "partners.yaml"
    partners = load_config_file(partners_file, PartnersConfig)
    problems: list[str] = []
    for index, feed in enumerate(partners.partners):
        where = f"{partners_file}: partners.{index}.suite ({feed.name})"
        problems += feed_suite_problems(feed, expectations_dir, where)
    return problems


def feed_suite_problems(feed: PartnerFeed, expectations_dir: Path,
                        where: str | None = None) -> list[str]:
    """``check_feed_suites`` for one feed: ingest asks before its first file, so that a
    suite broken by an edit stops the feed in one line instead of holding every partner
    file as if its data were at fault (an unreadable suite held them as reject-only)."""
    where = where or f"feed {feed.name!r} (suite {feed.suite})"
    path = expectations_dir / f"{feed.suite}.json"
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{where}: no suite file {path}"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{where}: {path} is not readable JSON ({type(exc).__name__})"]
    problems: list[str] = []
    stored = {c.stored_name: c for c in feed.columns if c.stored_name}
    renamed = {c.name: c.stored_name for c in feed.columns if c.stored_name != c.name}
    frame = set(stored)
    frame |= {f"_valid_{s}" for s, c in stored.items() if c.treatment == "pseudonymize"}
    frame |= {"_after_delivery"} if feed.event_time else set()
    entries = suite.get("expectations") if isinstance(suite, dict) else None
    for number, entry in enumerate(entries or []):
        kwargs = entry.get("kwargs") if isinstance(entry, dict) else None
        for column in _suite_columns(kwargs if isinstance(kwargs, dict) else {}):
            if column in frame:
                continue
            label = f"{path}: expectation #{number} ({entry.get('type')}) on {column!r}"
            if column in renamed:
                stored_as = renamed[column]
                problems.append(
                    f"{label}: the contract stores this column as "
                    + (f"{stored_as!r}" if stored_as else "nothing (dropped)")
                )
            else:
                problems.append(f"{label}: not a column of feed {feed.name!r}")
    return problems


def check_feature_sources(config_dir: Path) -> list[str]:
    """Tables and columns that features.yaml reads but no partner feed stores, one line each
    (at run time they surface only after ingest, as "table ... is not in the warehouse")."""
    partners = load_config_file(config_dir / "partners.yaml", PartnersConfig)
    features_file = config_dir / "features.yaml"
    spec = load_config_file(features_file, FeaturesConfig)
    stored = {f.raw_table: {c.stored_name for c in f.columns if c.stored_name}
              for f in partners.partners}
    reads: list[tuple[str, str, list[str]]] = [
        ("customer", spec.customer.table, [spec.customer.since]),
        ("application", spec.application.table, [spec.application.time]),
    ]
    for index, source in enumerate(spec.sources):
        columns = [source.key, source.time]
        for agg in source.aggregates:
            columns += [agg.column] if agg.column else []
            columns += [*agg.where, *agg.share_where]
        columns += [c.column for c in source.latest.columns] if source.latest else []
        reads.append((f"sources.{index} ({source.name})", source.table, columns))
    problems = []
    for where, table, columns in reads:
        if table not in stored:
            problems.append(f"{features_file}: {where}: table {table!r} is no feed's raw table "
                            f"(partners.yaml: {', '.join(sorted(stored))})")
            continue
        for column in dict.fromkeys(columns):
            if column not in stored[table]:
                problems.append(f"{features_file}: {where}: {table} stores no column {column!r}")
    return problems


def check_recommender_products(config_dir: Path) -> list[str]:
    """``eligibility_problems`` of the folder's models.yaml and products.yaml."""
    return eligibility_problems(load_config_file(config_dir / "models.yaml", ModelsConfig),
                                load_config_file(config_dir / "products.yaml", ProductsConfig))


def check_keys(environ: dict[str, str]) -> list[str]:
    """Secrets that are set but weak (blank, short, few distinct characters), one line each."""
    from puhui.settings import weak_key_reason

    problems = []
    for name in ("PUHUI_PSEUDONYM_KEY", "PUHUI_AUDIT_KEY"):
        value = environ.get(name)
        if value is not None and (weakness := weak_key_reason(value)):
            problems.append(f"{name} is weak ({weakness})")
    return problems
