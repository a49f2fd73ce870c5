"""GX validation layer: suites load strictly, clean partner files pass, planted faults fail
with the right severity and row numbers, and warehouse tables validate on both dialects."""

from __future__ import annotations

import hmac
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from puhui.config import PartnerFeed, PartnersConfig, ProductsConfig, load_config
from puhui.identifiers import normalize_phones, valid_national_id_mask
from puhui.settings import default_expectations_dir, repo_root
from puhui.validation import (
    BatchValidator,
    FailedExpectation,
    SuiteLoadError,
    ValidationOutcome,
    gx_frame,
    load_suite,
    suite_names,
)

CONFIG_DIR = repo_root() / "configs"
PARTNERS = load_config(CONFIG_DIR, PartnersConfig)
SHANGHAI = ZoneInfo("Asia/Shanghai")
TEST_KEY = b"validation-test-key"


# ---------------------------------------------------------------------------------------
# A minimal stand-in for ingestion: a landed file -> the batch frame validate_frame expects


def _read_landed(path: Path, feed: PartnerFeed) -> pd.DataFrame:
    if feed.format == "parquet":
        return pd.read_parquet(path)
    if feed.format == "jsonl":
        return pd.read_json(path, lines=True, dtype=False, encoding=feed.encoding)
    encoding = "utf-8-sig" if feed.encoding == "utf-8" else feed.encoding
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding=encoding)


def _pseudonymize(raw: pd.Series, kind: str) -> tuple[pd.Series, pd.Series]:
    """(key, valid): HMAC hex of the normalized identifier (null if empty or invalid), and
    whether the raw value was valid (null if empty)."""
    text = raw.astype("str")
    if kind == "phone":
        normalized = pd.Series(normalize_phones(text).to_pylist(), index=raw.index, dtype="str")
    else:
        upper = text.str.strip().str.upper()
        normalized = upper.where(valid_national_id_mask(upper))
    prefix = f"{kind}:".encode()
    digests = {
        v: hmac.digest(TEST_KEY, prefix + v.encode(), "sha256").hex()
        for v in normalized.dropna().unique()
    }
    valid = pd.array(normalized.notna().to_numpy(), dtype="boolean")
    valid[raw.isna().to_numpy()] = pd.NA
    return normalized.map(digests).astype("str"), pd.Series(valid, index=raw.index)


def batch_frame(path: Path, feed: PartnerFeed, delivery: date) -> pd.DataFrame:
    """The batch frame ingestion hands to validate_frame (see puhui.validation)."""
    raw = _read_landed(path, feed)
    raw.index = pd.RangeIndex(1, len(raw) + 1)  # 1-based data row numbers
    columns: dict[str, pd.Series] = {}
    checks: dict[str, pd.Series] = {}
    for contract in feed.columns:
        values = raw[contract.name]
        if contract.treatment == "drop":
            continue
        if contract.treatment == "pseudonymize":
            key, valid = _pseudonymize(values, contract.pii or "")
            columns[contract.stored_name or ""] = key
            checks[f"_valid_{contract.stored_name}"] = valid
        elif contract.type == "string":
            columns[contract.name] = values.astype("str")
        elif contract.type in ("int", "float"):
            if contract.number_format == "thousands":
                values = values.astype("str").str.replace(",", "")
            number = pd.to_numeric(values)
            columns[contract.name] = number.astype("Int64" if contract.type == "int" else float)
        elif contract.type == "date":
            columns[contract.name] = pd.to_datetime(values, format="%Y-%m-%d").astype("M8[ns]")
        elif contract.type == "timestamp":
            columns[contract.name] = pd.to_datetime(values, utc=True, format="ISO8601").astype(
                "datetime64[us, UTC]"
            )
        else:
            columns[contract.name] = values.astype("boolean")
    frame = pd.DataFrame({**columns, **checks}, index=raw.index)
    if feed.event_time:
        event = frame[feed.column(feed.event_time).stored_name]
        end = datetime.combine(delivery + timedelta(days=1), time(0), tzinfo=SHANGHAI)
        naive = getattr(event.dtype, "tz", None) is None
        after = event >= (pd.Timestamp(delivery + timedelta(days=1)) if naive else end)
        frame["_after_delivery"] = after.astype("boolean").where(event.notna(), pd.NA)
    return frame


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchValidator]:
    v = BatchValidator(results_dir=tmp_path_factory.mktemp("gx"),
                       expectations_dir=default_expectations_dir())
    yield v
    v.close()


@pytest.fixture(scope="module")
def landing_zone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated landing zone with faults; the window holds a 1st of the month so the
    monthly feeds get deliveries (and the bureau its out-of-range scores)."""
    from puhui.generate import generate_landing_zone

    out = tmp_path_factory.mktemp("landing")
    generate_landing_zone(
        out, users=1500, days=8, history_days=200, faults=True, end_date=date(2026, 10, 4)
    )
    return out


def _faults(root: Path) -> dict[str, dict[str, str]]:
    return {f["path"]: f for f in json.loads((root / "faults.json").read_text())}


def _landed(root: Path, feed: PartnerFeed) -> list[tuple[Path, date]]:
    return [
        (p, date.fromisoformat(p.parent.name)) for p in sorted((root / feed.name).glob("*/*"))
    ]


def _fault_frame(root: Path, kind: str) -> tuple[PartnerFeed, pd.DataFrame, Path]:
    entry = next(f for f in _faults(root).values() if f["fault"] == kind)
    path = root / entry["path"]
    feed = PARTNERS.get(path.parts[-3])
    return feed, batch_frame(path, feed, date.fromisoformat(path.parent.name)), path


def _clean_frame(root: Path, feed_name: str) -> pd.DataFrame:
    feed = PARTNERS.get(feed_name)
    faulty = _faults(root)
    # The largest clean daily delivery (not a back-history file, "..._h202607").
    path, day = max(
        ((p, d) for p, d in _landed(root, feed)
         if str(p.relative_to(root)) not in faulty and not re.search(r"_h\d{6}$", p.stem)),
        key=lambda item: item[0].stat().st_size,
    )
    return batch_frame(path, feed, day)


def _expectation_columns(entry: dict) -> list[str]:
    kwargs = entry["kwargs"]
    names = [kwargs.get("column"), kwargs.get("column_A"), kwargs.get("column_B")]
    return [n for n in names if n] + list(kwargs.get("column_list") or [])


# ---------------------------------------------------------------------------------------
# Suites


def test_every_suite_loads_with_every_expectation() -> None:
    names = suite_names(expectations_dir=default_expectations_dir())
    assert {f.suite for f in PARTNERS.partners} <= set(names)
    assert "warehouse_ingest_batches" in names
    for name in names:
        raw = json.loads((default_expectations_dir() / f"{name}.json").read_text())
        suite = load_suite(name, expectations_dir=default_expectations_dir())
        assert suite.name == name
        assert len(suite.expectations) == len(raw["expectations"]) > 0
        for expectation in suite.expectations:
            assert expectation.meta.get("severity", "critical") in ("critical", "warning")


@pytest.mark.parametrize("feed", PARTNERS.partners, ids=lambda f: f.name)
def test_suite_matches_the_feed_contract(feed: PartnerFeed) -> None:
    """Suites name stored columns only; every required column, the primary key and the
    pseudonym/derived checks are covered; the future-timestamp check is a warning."""
    raw = json.loads((default_expectations_dir() / f"{feed.suite}.json").read_text())
    entries = raw["expectations"]
    stored = {c.stored_name for c in feed.columns if c.stored_name}
    keys = [c.stored_name for c in feed.columns if c.treatment == "pseudonymize"]
    derived = {f"_valid_{k}" for k in keys} | ({"_after_delivery"} if feed.event_time else set())
    used = {c for e in entries for c in _expectation_columns(e)}
    assert used <= stored | derived, f"unknown columns {used - stored - derived}"

    not_null = {e["kwargs"]["column"] for e in entries
                if e["type"] == "expect_column_values_to_not_be_null"}
    required = {c.stored_name for c in feed.columns if c.stored_name and not c.nullable}
    assert required <= not_null

    pk = [feed.column(c).stored_name for c in feed.primary_key]
    unique = [[e["kwargs"]["column"]] if "column" in e["kwargs"] else e["kwargs"]["column_list"]
              for e in entries if e["type"] in ("expect_column_values_to_be_unique",
                                                "expect_compound_columns_to_be_unique")]
    assert pk in unique
    for name in derived - {"_after_delivery"}:
        check = next(e for e in entries if e["kwargs"].get("column") == name)
        assert check["kwargs"]["value_set"] == [True] and check["meta"]["severity"] == "critical"
    if feed.event_time:
        future = next(e for e in entries if e["kwargs"].get("column") == "_after_delivery")
        assert future["meta"]["severity"] == "warning"
        assert future["kwargs"]["value_set"] == [False]
    severities = {e["meta"].get("severity") for e in entries} - {"critical", "warning"}
    assert not severities


def _value_set(suite: str, column: str) -> list:
    entries = json.loads((default_expectations_dir() / f"{suite}.json").read_text())
    return next(e["kwargs"]["value_set"] for e in entries["expectations"]
                if e["type"] == "expect_column_values_to_be_in_set"
                and e["kwargs"]["column"] == column)


def test_product_codes_follow_products_config() -> None:
    products = load_config(CONFIG_DIR, ProductsConfig)
    assert sorted(_value_set("product_events", "product_code")) == sorted(products.codes)
    loans = [p.code for p in products.products if p.kind == "loan"]
    assert sorted(_value_set("loan_applications", "product_code")) == sorted(loans)


def _write_suite(directory: Path, name: str, expectations: list[dict]) -> None:
    body = {"name": name, "expectations": expectations, "meta": {}}
    (directory / f"{name}.json").write_text(json.dumps(body))


_OK = {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"type": "expect_column_values_to_be_purple", "kwargs": {"column": "a"}},
         "expect_column_values_to_be_purple"),
        ({"type": "expect_column_values_to_not_be_null", "kwargs": {"colum": "a"}}, "colum"),
        ({"type": "expect_column_values_to_be_between", "kwargs": {"column": "a"}},
         "min_value and max_value cannot both be None"),
        ({**_OK, "meta": {"severity": "fatal"}}, "severity 'fatal'"),
        ({**_OK, "meta": {"severity": "warning"}, "severity": "critical"}, "contradicts"),
        ({**_OK, "kwargs": {"column": "a", "mostly": 2}}, "mostly"),
    ],
    ids=["unknown-type", "bad-kwarg", "invalid-kwargs", "bad-severity", "two-severities",
         "mostly-above-1"],
)
def test_bad_expectation_is_a_load_error_naming_file_and_expectation(
    tmp_path: Path, bad: dict, message: str
) -> None:
    _write_suite(tmp_path, "broken", [_OK, bad])
    with pytest.raises(SuiteLoadError) as error:
        load_suite("broken", expectations_dir=tmp_path)
    text = str(error.value)
    assert "broken.json" in text and "expectation #1" in text and message in text


def test_suite_file_problems_are_load_errors(tmp_path: Path) -> None:
    with pytest.raises(SuiteLoadError, match="no such suite file"):
        load_suite("missing", expectations_dir=tmp_path)
    (tmp_path / "garbled.json").write_text("{not json")
    with pytest.raises(SuiteLoadError, match="not valid JSON"):
        load_suite("garbled", expectations_dir=tmp_path)
    _write_suite(tmp_path, "renamed", [_OK])
    (tmp_path / "other.json").write_text((tmp_path / "renamed.json").read_text())
    with pytest.raises(SuiteLoadError, match="must equal 'other'"):
        load_suite("other", expectations_dir=tmp_path)
    _write_suite(tmp_path, "empty", [])
    with pytest.raises(SuiteLoadError, match="non-empty list"):
        load_suite("empty", expectations_dir=tmp_path)
    _write_suite(tmp_path, "fine", [_OK, {**_OK, "meta": {"severity": "warning"}}])
    suite = load_suite("fine", expectations_dir=tmp_path)
    assert [e.meta.get("severity") for e in suite.expectations] == [None, "warning"]


def test_import_is_lazy() -> None:
    """Importing puhui.validation must not import great_expectations (~3 s)."""
    code = "import sys, puhui.validation; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------
# Frames: clean files pass, planted faults fail


def test_clean_generated_files_pass_every_suite(
    validator: BatchValidator, landing_zone: Path
) -> None:
    """Every file the generator did not damage (or only damaged in a tolerated way) passes
    with no failure at all. Files are validated per feed in one frame (faster), which is
    stricter: keys must also be unique across the files."""
    faulty = {p for p, f in _faults(landing_zone).items() if f["expect"] != "tolerated"}
    for feed in PARTNERS.partners:
        frames = [batch_frame(p, feed, d) for p, d in _landed(landing_zone, feed)
                  if str(p.relative_to(landing_zone)) not in faulty]
        assert frames, feed.name
        frame = pd.concat(frames, ignore_index=True)
        frame.index += 1
        assert len(frame) > 0, feed.name
        outcome = validator.validate_frame(frame, feed.suite, f"clean-{feed.name}")
        assert outcome.failed == [], (feed.name, [f.description for f in outcome.failed])
        assert outcome.success and outcome.expectations_run > 5


def test_null_burst_holds_the_batch_with_the_planted_rows(
    validator: BatchValidator, landing_zone: Path
) -> None:
    feed, frame, path = _fault_frame(landing_zone, "null_burst")
    raw = _read_landed(path, feed)
    empty_rows = [i + 1 for i in np.flatnonzero(raw["payer_phone"].isna())]
    assert len(empty_rows) >= 0.05 * len(raw)

    outcome = validator.validate_frame(frame, feed.suite, path.stem)
    assert not outcome.success and outcome.warnings == []
    [failure] = outcome.critical
    assert failure.expectation == "expect_column_values_to_not_be_null"
    assert failure.column == "phone_key"
    assert failure.unexpected_count == len(empty_rows)
    assert failure.sample_rows == empty_rows[:20]
    assert all(type(r) is int for r in failure.sample_rows)
    assert "phone_key" in failure.description and "missing" in failure.description


def test_out_of_range_bureau_score_holds_the_batch(
    validator: BatchValidator, landing_zone: Path
) -> None:
    feed, frame, path = _fault_frame(landing_zone, "out_of_range")
    assert feed.name == "credit_bureau"
    planted = [int(i) for i in frame.index[frame["bureau_score"] == 9999]]
    assert len(planted) >= 3

    outcome = validator.validate_frame(frame, feed.suite, path.stem)
    [failure] = outcome.failed
    assert failure.severity == "critical" and failure.column == "bureau_score"
    assert failure.expectation == "expect_column_values_to_be_between"
    assert failure.unexpected_count == len(planted)
    assert failure.sample_rows == planted[:20]
    assert "bureau_score" in failure.description and "[300, 850]" in failure.description
    # The value is never quoted (a partner may put a phone number anywhere): its shape is.
    assert "9999" not in failure.description and "e.g. shape 'dddd'" in failure.description


def test_future_timestamps_only_warn(validator: BatchValidator, landing_zone: Path) -> None:
    feed, frame, path = _fault_frame(landing_zone, "future_timestamp")
    future = [int(i) for i in frame.index[frame["_after_delivery"].fillna(False)]]
    assert future

    outcome = validator.validate_frame(frame, feed.suite, path.stem)
    assert not outcome.success and outcome.critical == []
    [warning] = outcome.warnings
    assert warning.column == "_after_delivery"
    assert warning.sample_rows == future[:20]
    assert "future timestamp" in warning.description
    assert "txn_time" in warning.description


def test_exact_duplicate_rows_fail_the_key_until_dropped(
    validator: BatchValidator, landing_zone: Path
) -> None:
    """The duplicate_rows fault is "warned" for ingestion: it must drop exact duplicate
    records (and warn) before validating; a key shared by different records stays critical."""
    feed, frame, path = _fault_frame(landing_zone, "duplicate_rows")
    outcome = validator.validate_frame(frame, feed.suite, path.stem)
    [failure] = outcome.failed
    assert failure.severity == "critical" and failure.column == "order_id"
    assert "duplicated" in failure.description

    deduplicated = frame.drop_duplicates()
    assert len(deduplicated) < len(frame)
    assert validator.validate_frame(deduplicated, feed.suite, path.stem).success


def test_negative_amounts_and_bad_categories_are_critical(
    validator: BatchValidator, landing_zone: Path
) -> None:
    frame = _clean_frame(landing_zone, "mobile_payments").copy()
    frame.loc[[3, 7, 11], "amount"] = [-1.0, -250.5, -0.01]
    frame.loc[5, "txn_type"] = "REFUND"
    outcome = validator.validate_frame(frame, "mobile_payments", "synthetic")
    by_column = {f.column: f for f in outcome.failed}
    assert set(by_column) == {"amount", "txn_type"}
    assert by_column["amount"].sample_rows == [3, 7, 11]
    assert by_column["amount"].unexpected_count == 3
    assert "outside [0, 1000000]" in by_column["amount"].description
    assert "REFUND" not in by_column["txn_type"].description
    assert "e.g. shape 'aaaaaa'" in by_column["txn_type"].description
    assert all(f.severity == "critical" for f in outcome.failed)


def test_a_few_invalid_identifiers_pass_but_a_burst_holds(
    validator: BatchValidator, landing_zone: Path
) -> None:
    frame = _clean_frame(landing_zone, "mobile_payments").copy()
    n = len(frame)
    assert n > 100  # so that one bad identifier is under the 1% tolerance
    frame.loc[[2], ["phone_key", "_valid_phone_key"]] = [None, False]  # one typo: tolerated
    assert validator.validate_frame(frame, "mobile_payments", "one-typo").success

    burst = frame.index[10 : 10 + n // 20]
    frame.loc[burst, "phone_key"] = None
    frame.loc[burst, "_valid_phone_key"] = False
    outcome = validator.validate_frame(frame, "mobile_payments", "burst")
    assert {f.column for f in outcome.critical} == {"phone_key", "_valid_phone_key"}
    invalid = next(f for f in outcome.failed if f.column == "_valid_phone_key")
    assert invalid.sample_rows[:2] == [2, 11]
    assert "not a valid mainland mobile number" in invalid.description
    assert "tolerated" in invalid.description


def test_sample_rows_are_capped_and_plain(validator: BatchValidator) -> None:
    n = 500
    frame = pd.DataFrame(
        {
            "application_id": pd.array([f"A{i:010d}" for i in range(n)], dtype="str"),
            "observation_date": pd.to_datetime(["2026-09-01"] * n).astype("M8[ns]"),
            "max_dpd": pd.array([-5] * 100 + [0] * (n - 100), dtype="Int64"),
            "default_flag": pd.array([0, 1, None, 1, 0] * (n // 5), dtype="Int64"),
            "_after_delivery": pd.array([False] * n, dtype="boolean"),
        },
        index=pd.RangeIndex(1, n + 1, name="row_number"),  # a named index is fine too
    )
    outcome = validator.validate_frame(frame, "loan_outcomes", "capped")
    assert outcome.expectations_run == len(load_suite(
        "loan_outcomes", expectations_dir=default_expectations_dir()).expectations)
    dpd = next(f for f in outcome.failed if f.column == "max_dpd")
    assert dpd.sample_rows == list(range(1, 21)) and dpd.unexpected_count == 100
    assert dpd.unexpected_percent == pytest.approx(20.0)
    missing = next(f for f in outcome.failed if f.column == "default_flag")
    assert missing.expectation == "expect_column_values_to_not_be_null"
    assert missing.sample_rows[:3] == [3, 8, 13]


def test_empty_frame_passes_and_missing_column_is_a_critical_failure(
    validator: BatchValidator, landing_zone: Path
) -> None:
    frame = _clean_frame(landing_zone, "loan_applications")
    assert validator.validate_frame(frame.iloc[:0], "loan_applications", "empty").success

    outcome = validator.validate_frame(
        frame.drop(columns=["term_months"]), "loan_applications", "no-term"
    )
    assert outcome.failed and {f.severity for f in outcome.failed} == {"critical"}
    assert all(f.column == "term_months" for f in outcome.failed)
    assert all("could not be evaluated" in f.description for f in outcome.failed)


def test_summary_is_json_and_results_are_stored(
    validator: BatchValidator, landing_zone: Path
) -> None:
    feed, frame, path = _fault_frame(landing_zone, "future_timestamp")
    outcome = validator.validate_frame(frame, feed.suite, "2026-10-01/mobile payments")
    summary = outcome.summary()
    text = json.dumps(summary, allow_nan=False)  # PostgreSQL JSON refuses NaN
    assert json.loads(text) == summary
    assert summary["warning_failed"] == 1 and summary["critical_failed"] == 0
    assert summary["failed"][0]["sample_rows"] == outcome.failed[0].sample_rows

    stored = Path(outcome.result_path or "")
    assert stored.parent == validator.results_dir / "validations" / "mobile_payments"
    assert stored.name == "2026-10-01_mobile_payments.json"
    result = json.loads(stored.read_text())
    assert result["success"] is False and len(result["results"]) == outcome.expectations_run


def test_data_docs_render_each_stored_result_once_and_mark_failures(
    tmp_path: Path, landing_zone: Path
) -> None:
    from puhui.data_docs import build_data_docs

    gx_dir = tmp_path / "gx"
    validator = BatchValidator(results_dir=gx_dir, expectations_dir=default_expectations_dir())
    feed, frame, _path = _fault_frame(landing_zone, "out_of_range")
    assert not validator.validate_frame(frame, feed.suite, "bureau-bad").success
    clean = _clean_frame(landing_zone, "loan_applications")
    assert validator.validate_frame(clean, "loan_applications", "apps-ok").success

    build = build_data_docs(gx_dir)
    assert (build.rendered, build.pages, build.failed_results) == (2, 2, 1)
    page = (gx_dir / "data_docs" / "validations" / feed.suite / "bureau-bad.html").read_text()
    # GX's own page: the failing expectation, its column and the unexpected value.
    assert "bureau_score" in page and "9999" in page
    index = build.index.read_text()
    bad_row = next(r for r in index.split("<tr") if "bureau-bad" in r)
    ok_row = next(r for r in index.split("<tr") if "apps-ok" in r)
    assert 'class="bad"' in bad_row and "1 failed" in bad_row
    assert 'class="ok"' in ok_row and "passed" in ok_row
    assert 'href="validations/credit_bureau/bureau-bad.html"' in bad_row

    assert build_data_docs(gx_dir).rendered == 0  # incremental: nothing new
    validator.validate_frame(frame, feed.suite, "bureau-bad")  # the batch validated again
    assert build_data_docs(gx_dir).rendered == 1


def test_outcome_summary_casts_numpy_values() -> None:
    failure = FailedExpectation(
        expectation="expect_column_values_to_be_between", column="x", severity="critical",
        unexpected_count=np.int64(3), unexpected_percent=np.float64(float("nan")),  # type: ignore[arg-type]
        sample_rows=[np.int64(1)], description="x: 3 values",  # type: ignore[list-item]
    )
    summary = ValidationOutcome("s", False, 1, [failure]).summary()
    assert json.dumps(summary, allow_nan=False)
    assert summary["failed"][0]["unexpected_percent"] is None
    assert type(summary["failed"][0]["sample_rows"][0]) is int


def test_gx_frame_gives_gx_vectorizable_dtypes() -> None:
    frame = pd.DataFrame(
        {
            "full": pd.array([1, 2], dtype="Int64"),
            "gaps": pd.array([1, None], dtype="Int64"),
            "day": pd.to_datetime(["2026-01-01", "2026-01-02"]).astype("M8[us]"),
            "text": pd.array(["a", None], dtype="str"),
        },
        index=pd.RangeIndex(1, 3, name="row"),
    )
    out = gx_frame(frame)
    assert out["full"].dtype == np.int64 and out["gaps"].dtype == np.float64
    assert out["day"].dtype == "M8[ns]" and out["text"].dtype == frame["text"].dtype
    assert out.index.name is None and list(out.index) == [1, 2]
    assert frame["full"].dtype == "Int64"  # the caller's frame is untouched


def test_gx_runs_quietly(
    validator: BatchValidator, landing_zone: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """No analytics, no per-metric progress bars in the flow logs."""
    import os

    from puhui import validation

    validator.validate_frame(_clean_frame(landing_zone, "product_events"), "product_events", "q")
    captured = capfd.readouterr()
    assert "Calculating Metrics" not in captured.err + captured.out
    assert os.environ["GX_ANALYTICS_ENABLED"] == "false"
    context = validation._gx().context
    assert context.config.analytics_enabled is False
    bars = context.variables.progress_bars
    assert bars is not None and not bars.globally and not bars.metric_calculations


# ---------------------------------------------------------------------------------------
# Warehouse tables (SQL engine, both dialects)


def test_validate_table_on_ingest_batches(warehouse_url: str, validator: BatchValidator) -> None:
    from puhui.warehouse.bulk import bulk_insert
    from puhui.warehouse.engine import get_engine
    from puhui.warehouse.schema import ingest_batches

    engine = get_engine(warehouse_url)
    landed = datetime(2026, 9, 30, 6, 0, tzinfo=UTC)
    rows = pd.DataFrame(
        {
            "batch_id": ["b1", "b2", "b3", "b4"],
            "partner": ["mobile_payments"] * 4,
            "source_path": [f"/landing/{i}.csv" for i in range(4)],
            "checksum": [f"{i:064x}" for i in range(4)],
            "rows": [10, 20, 0, 5],
            "rows_loaded": [10, 0, 0, 5],
            "status": ["accepted", "quarantined", "duplicate", "accepted"],
            "landed_at": [landed] * 4,
        }
    )
    try:
        with engine.begin() as conn:
            bulk_insert(conn, ingest_batches, rows)
        clean = validator.validate_table(warehouse_url, "ingest_batches",
                                         "warehouse_ingest_batches")
        assert clean.success, [f.description for f in clean.failed]
        assert clean.expectations_run == len(load_suite(
            "warehouse_ingest_batches", expectations_dir=default_expectations_dir()).expectations)

        bad = rows.iloc[:1].assign(batch_id="b5", status="lost", checksum="not-a-sha",
                                   rows=-1, rows_loaded=-1)
        with engine.begin() as conn:
            bulk_insert(conn, ingest_batches, bad)
        outcome = validator.validate_table(warehouse_url, "ingest_batches",
                                           "warehouse_ingest_batches")
        by_column = {f.column: f for f in outcome.failed}
        assert set(by_column) == {"status", "checksum", "rows", "rows_loaded"}
        status = by_column["status"]
        assert status.severity == "critical" and status.unexpected_count == 1
        assert status.sample_keys == [{"batch_id": "b5"}]
        assert "lost" not in status.description and "shape 'aaaa'" in status.description
        assert json.dumps(outcome.summary(), allow_nan=False)
    finally:
        validator.close()  # GX's own engine: release it before the database is dropped


def test_validate_table_reports_raw_rows_by_batch_and_row_number(
    warehouse_url: str, validator: BatchValidator
) -> None:
    from puhui.ingest.raw_tables import ensure_raw_table
    from puhui.warehouse.bulk import bulk_insert
    from puhui.warehouse.engine import get_engine

    engine = get_engine(warehouse_url)
    table = ensure_raw_table(engine, PARTNERS.get("loan_outcomes"))
    records = pd.DataFrame(
        {
            "batch_id": ["b1"] * 3 + ["b2"] * 2,
            "row_number": [1, 2, 3, 1, 2],
            "application_id": ["A0000000001", "A0000000002", "A0000000003",
                               "A0000000004", "A0000000002"],
            "observation_date": [date(2026, 9, 30)] * 5,
            "max_dpd": [0, 95, 0, 30, 0],
            "default_flag": [0, 1, 0, 2, 0],
        }
    )
    try:
        with engine.begin() as conn:
            bulk_insert(conn, table, records)
        outcome = validator.validate_table(warehouse_url, table.name,
                                           "warehouse_raw_loan_outcomes")
        by_column = {f.column: f for f in outcome.failed}
        assert set(by_column) == {"default_flag", "application_id"}
        flag = by_column["default_flag"]
        assert flag.sample_rows == [1]
        assert flag.sample_keys == [{"batch_id": "b2", "row_number": 1}]
        assert "application_id: 2 values" in by_column["application_id"].description
        assert sorted(k["batch_id"] for k in by_column["application_id"].sample_keys) == [
            "b1", "b2"]
    finally:
        validator.close()


def test_the_lighter_expectation_kwargs_give_what_gx_gives() -> None:
    """The rewrites of GX's kwargs methods (``lighten_gx_expectation_kwargs``: the
    configuration built once per call, not once per key) return what GX's own methods
    return, for every expectation of every shipped suite and for contributed ones (suite
    parameters, row_condition, result_format), validate the same, are installed on the
    pinned GX (an upgrade must be checked against its new code before they apply to it),
    and are reported as not installed once GX's originals are back."""
    import great_expectations.expectations.expectation as gx_expectation

    from puhui import validation

    validation._gx()  # installs them, as the first validation of a process does
    gx = validation.import_gx()
    assert validation.lighten_gx_expectation_kwargs(gx)
    original = validation.GX_ORIGINAL_METHODS
    for method in validation._KWARGS_METHODS:
        assert getattr(gx_expectation.Expectation, method) is getattr(validation, method)
    assert hasattr(gx_expectation.camel_to_snake, "cache_info")  # the lru_cache
    checked = 0
    shipped = [expectation for name in suite_names(expectations_dir=default_expectations_dir())
               for expectation in load_suite(
                   name, expectations_dir=default_expectations_dir()).expectations]
    for expectation in [*shipped, *_contributed_expectations()]:
        assert (validation._get_domain_kwargs(expectation)
                == original["_get_domain_kwargs"](expectation))
        assert (validation._get_success_kwargs(expectation)
                == original["_get_success_kwargs"](expectation))
        keys = {*expectation.domain_keys, *expectation.success_keys,
                *expectation.runtime_keys, "not_a_field"}
        for key in keys:
            for default in (None, "fallback"):
                assert (validation._get_success_kwarg(expectation, key, default)
                        == original["_get_success_kwarg"](expectation, key, default))
        kind = type(expectation).__name__
        assert gx_expectation.camel_to_snake(kind) == original["camel_to_snake"](kind)
        # What validation reads through them: runtime kwargs with and without a
        # runtime result_format (GX's originals put back for the second reading).
        for runtime in (None, {"result_format": "BOOLEAN_ONLY", "catch_exceptions": True}):
            ours = expectation._get_runtime_kwargs(runtime)
            assert not validation.lighten_gx_expectation_kwargs(gx, lighter=False)
            try:
                assert ours == expectation._get_runtime_kwargs(runtime)
            finally:
                assert validation.lighten_gx_expectation_kwargs(gx)
        checked += 1
    assert checked > 55  # every suite's expectations and the contributed ones
    suite = gx.ExpectationSuite(name="contributed", expectations=[
        e.copy() for e in _contributed_expectations()[:4]])
    frame = pd.DataFrame({"a": [1, 2, 3, None, 5], "b": [1, 1, 3, 4, 5]})
    batch = (gx.get_context(mode="ephemeral").data_sources.add_pandas("c")
             .add_dataframe_asset("c").add_batch_definition_whole_dataframe("c"))

    def validated() -> dict:
        result = batch.get_batch(batch_parameters={"dataframe": frame}).validate(
            suite, result_format="COMPLETE",
            expectation_parameters={"p": [1, 2], "m": 0.5, "n": 1}).to_json_dict()
        for one in result["results"]:
            one["expectation_config"].pop("id", None)
        result.pop("meta", None)
        return result

    ours = validated()
    assert not validation.lighten_gx_expectation_kwargs(gx, lighter=False)
    try:
        assert ours == validated()
    finally:
        assert validation.lighten_gx_expectation_kwargs(gx)
    assert {one["success"] for one in ours["results"]} == {True, False}  # a real check


def _contributed_expectations() -> list:
    """Expectations a partner suite may use and the shipped ones do not: suite parameters
    ($PARAMETER), row_condition with both parsers, result_format as a string and a dict,
    column pair, multicolumn and compound types."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeInSet(
            column="a", value_set={"$PARAMETER": "p"}, mostly=0.9, row_condition="a>1",
            condition_parser="pandas", result_format="COMPLETE"),
        gxe.ExpectTableRowCountToBeBetween(min_value={"$PARAMETER": "n"}, max_value=10),
        gxe.ExpectColumnMeanToBeBetween(
            column="a", min_value=0, strict_min=True,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 3}),
        gxe.ExpectColumnValuesToMatchRegex(column="b", regex="^1", mostly={"$PARAMETER": "m"}),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="a", column_B="b", ignore_row_if="either_value_is_missing"),
        gxe.ExpectMulticolumnSumToEqual(column_list=["a", "b"], sum_total=3),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["a", "b"], row_condition='col("a")>0',
            condition_parser="great_expectations"),
    ]


def test_the_lighter_success_kwargs_call_a_subclass_domain_kwargs() -> None:
    """A custom Expectation that overrides ``_get_domain_kwargs`` is honoured by the
    rewritten ``_get_success_kwargs``, as by GX's own (which calls it through the
    instance)."""
    import great_expectations.expectations as gxe

    from puhui import validation

    validation._gx()

    class ExpectPuhuiTestDomainOverride(gxe.ExpectColumnValuesToNotBeNull):
        def _get_domain_kwargs(self) -> dict:
            return {"column": "overridden"}

    expectation = ExpectPuhuiTestDomainOverride(column="a")
    assert validation._get_success_kwargs(expectation)["column"] == "overridden"
    assert validation.GX_ORIGINAL_METHODS["_get_success_kwargs"](expectation)["column"] == (
        "overridden")
