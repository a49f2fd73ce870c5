"""The synthetic landing zone: layout, determinism, identifiers, encodings, truth, faults.

Small runs (2,000 people) keep this fast. The clean run keeps 240 days of history because
labels arrive 180 days after disbursement: with less, no outcome would mature in the run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import FrozenInstanceError
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from puhui.errors import PuhuiError
from puhui.generate import GenerateSummary, generate_landing_zone
from puhui.generate import reference as ref
from puhui.generate.faults import FAULT_EXPECT, FAULT_KINDS, plan_faults
from puhui.generate.feeds import FEEDS
from puhui.generate.formatting import format_decimal2
from puhui.identifiers import is_valid_national_id, normalize_phone

CLEAN = {"users": 2000, "days": 10, "history_days": 240, "seed": 7}
FAULTY = {
    "users": 2000, "days": 12, "history_days": 60, "seed": 11, "faults": True,
    "end_date": date(2026, 10, 5),
}
NAME_RE = re.compile(
    r"^(?P<partner>[a-z_]+)_(?P<ymd>\d{8})(?:_h(?P<month>\d{6})|_(?P<re>redelivery))?"
    r"\.(?P<ext>csv|jsonl|parquet)$"
)
PRIMARY_KEY = {
    "customers": "customer_id", "credit_bureau": "national_id", "ecommerce_orders": "order_id",
    "mobile_payments": "txn_id", "agri_coop": "member_national_id",
    "loan_applications": "application_id", "loan_outcomes": "application_id",
    "product_events": "event_id",
}
# The column that says when a row happened, and how it is written.
TIME_COLUMN = {
    "customers": ("onboard_date", "date"), "credit_bureau": ("report_date", "date"),
    "ecommerce_orders": ("order_time", "iso"), "mobile_payments": ("txn_time", "iso"),
    "agri_coop": ("record_month", "month"), "loan_applications": ("application_time", "iso"),
    "loan_outcomes": ("observation_date", "date"), "product_events": ("event_time", "ts"),
}
NUMERIC = {
    "credit_bureau": {"accounts_open": (0, 100), "delinquencies_24m": (0, 24),
                      "max_dpd_24m": (0, 365), "inquiries_6m": (0, 100),
                      "total_debt_yuan": (0, 1e9), "bureau_score": (300, 850)},
    "ecommerce_orders": {"amount_yuan": (0.01, 1e7)},
    "agri_coop": {"acreage_mu": (0.5, 1e4), "harvest_sales_yuan": (0, 1e8),
                  "subsidy_yuan": (0, 1e7)},
    "loan_applications": {"amount_requested_yuan": (100, 1e7), "term_months": (1, 60)},
    "loan_outcomes": {"max_dpd": (0, 180), "default_flag": (0, 1)},
}
THOUSANDS_AMOUNT = re.compile(r"^\d{1,3}(,\d{3})*\.\d{2}$")
Zone = tuple[Path, GenerateSummary]
FaultList = list[dict[str, str]]


# ---------------------------------------------------------------------------------------
# fixtures: each landing zone is generated once per module


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateSummary]:
    out = tmp_path_factory.mktemp("clean")
    return out, generate_landing_zone(out, **CLEAN)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateSummary]:
    out = tmp_path_factory.mktemp("faulty")
    return out, generate_landing_zone(out, **FAULTY)


@pytest.fixture(scope="module")
def fault_list(faulty: tuple[Path, GenerateSummary]) -> list[dict[str, str]]:
    return json.loads((faulty[0] / "faults.json").read_text(encoding="utf-8"))


def fault_path(root: Path, faults: list[dict[str, str]], kind: str) -> Path:
    (entry,) = [f for f in faults if f["fault"] == kind]
    return root / entry["path"]


# ---------------------------------------------------------------------------------------
# helpers: read a landing-zone file and list what is wrong with it


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent != root)


def checksums(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def file_info(path: Path) -> tuple[str, date, int | None]:
    """(partner, folder date, history month yyyymm or None) from a file's path."""
    match = NAME_RE.match(path.name)
    assert match, path.name
    partner = match["partner"]
    assert path.parent.parent.name == partner
    folder = date.fromisoformat(path.parent.name)
    assert match["ymd"] == folder.strftime("%Y%m%d")
    return partner, folder, int(match["month"]) if match["month"] else None


def read_rows(path: Path, partner: str) -> tuple[list[str], list[dict[str, object]]]:
    """Header and rows of a clean file (raises on a broken one)."""
    spec = FEEDS[partner]
    if spec.ext == "parquet":
        table = pq.read_table(path)
        return table.column_names, table.to_pylist()
    text = path.read_bytes().decode(spec.encoding)
    if spec.ext == "jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
        return list(rows[0]) if rows else list(spec.columns), rows
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    rows = []
    for fields in reader:
        if len(fields) != len(header):
            raise ValueError(f"{len(fields)} fields, expected {len(header)}")
        rows.append(dict(zip(header, fields, strict=True)))
    return header, rows


def event_day(value: object, how: str) -> date:
    if how == "ts":
        assert isinstance(value, datetime) and value.utcoffset() == timedelta(hours=8)
        return value.date()
    assert isinstance(value, str)
    if how == "iso":
        assert value.endswith("+08:00"), value
        return datetime.fromisoformat(value).date()
    if how == "month":
        return date.fromisoformat(value + "-01")
    return date.fromisoformat(value)


def problems(root: Path, path: Path, first_delivery: date) -> list[str]:
    """What is wrong with a landing-zone file; [] for a clean one."""
    partner, folder, history_month = file_info(path)
    spec = FEEDS[partner]
    data = path.read_bytes()
    if not data:
        return ["empty"]
    found: list[str] = []
    if spec.ext != "parquet":
        if data.startswith(b"\xef\xbb\xbf"):
            found.append("bom")
            data = data[3:]
        try:
            data.decode(spec.encoding)
        except UnicodeDecodeError:
            return [*found, "encoding"]
        if not data.endswith(b"\n"):
            found.append("no final newline")
    try:
        header, rows = read_rows(path, partner) if "bom" not in found else (
            list(spec.columns), []
        )
    except (ValueError, json.JSONDecodeError) as exc:
        return [*found, f"unreadable: {exc}"]
    if header != list(spec.columns):
        return [*found, f"header {header}"]
    for name in spec.required:
        empty = [i for i, r in enumerate(rows) if r[name] in ("", None)]
        if empty:
            found.append(f"empty {name} in {len(empty)} rows")
    keys = [r[PRIMARY_KEY[partner]] for r in rows]
    if len(set(keys)) != len(keys):
        found.append("duplicate keys")
    for name, (low, high) in NUMERIC.get(partner, {}).items():
        for r in rows:
            value = r[name]
            try:
                number = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                found.append(f"{name} not a plain number: {value!r}")
                break
            if not low <= number <= high:
                found.append(f"{name} out of range: {value!r}")
                break
    if partner == "mobile_payments":
        bad = [r["amount"] for r in rows if not THOUSANDS_AMOUNT.match(str(r["amount"]))]
        if bad:
            found.append(f"amount format {bad[:3]}")
    column, how = TIME_COLUMN[partner]
    days = {event_day(r[column], how) for r in rows if r[column] not in ("", None)}
    if history_month is None:
        expected = folder
        if partner == "agri_coop":
            expected = (folder - timedelta(days=1)).replace(day=1)
        if days - {expected}:
            found.append(f"{column} not on the delivery date: {sorted(days - {expected})[:3]}")
    else:
        assert folder == first_delivery
        if any(d >= first_delivery for d in days):
            found.append("history row on or after the first delivery date")
    return found


# ---------------------------------------------------------------------------------------
# layout, determinism, summary


def test_summary_and_layout(clean: tuple[Path, GenerateSummary]) -> None:
    root, summary = clean
    assert summary.users == 2000 and summary.days == 10 and summary.seed == 7
    files = data_files(root)
    assert summary.files == len(files)
    assert summary.bytes_written == sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert json.loads((root / "faults.json").read_text()) == [] and summary.faults == []
    with pytest.raises(FrozenInstanceError):
        summary.users = 1  # type: ignore[misc]
    delivery = [date(2026, 9, 21) + timedelta(days=i) for i in range(10)]
    for partner, spec in FEEDS.items():
        folders = sorted(p.name for p in (root / partner).iterdir())
        if spec.monthly:
            # No 1st of the month in this window: only the back history, in the first folder.
            assert folders == ["2026-09-21"]
        else:
            assert folders == [d.isoformat() for d in delivery]
        for path in (root / partner).rglob("*.*"):
            _, folder, month = file_info(path)
            assert path.suffix == "." + spec.ext
            assert month is None or folder == delivery[0]
        normal = [p for p in (root / partner).rglob("*.*") if "_h" not in p.name]
        assert len(normal) == (0 if spec.monthly else 10)
    history = sorted(p.name for p in (root / "mobile_payments" / "2026-09-21").glob("*_h*"))
    assert history == [f"mobile_payments_20260921_h2026{m:02d}.csv" for m in range(1, 10)]
    assert sum(summary.rows_by_partner.values()) > 50_000
    assert summary.rows_by_partner["customers"] == 2000


def test_same_arguments_give_identical_files(
    clean: tuple[Path, GenerateSummary], tmp_path: Path
) -> None:
    again = generate_landing_zone(tmp_path / "again", **CLEAN)
    assert checksums(tmp_path / "again") == checksums(clean[0])
    assert again.rows_by_partner == clean[1].rows_by_partner


def test_different_seed_gives_different_files(
    clean: tuple[Path, GenerateSummary], tmp_path: Path
) -> None:
    generate_landing_zone(tmp_path / "other", **{**CLEAN, "seed": 8})
    ours, theirs = checksums(clean[0]), checksums(tmp_path / "other")
    assert ours.keys() == theirs.keys()
    changed = [k for k in ours if ours[k] != theirs[k]]
    assert len(changed) > 0.9 * len(ours)


def test_rewrites_an_earlier_landing_zone_but_not_a_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "zone"
    small = {"users": 300, "days": 3, "history_days": 20}
    generate_landing_zone(out, **small, seed=1)
    generate_landing_zone(out, **small, seed=2)
    assert json.loads((out / "truth.json").read_text())["seed"] == 2
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(PuhuiError, match="not empty"):
        generate_landing_zone(foreign, **small)
    assert (foreign / "keep.txt").read_text() == "x"


@pytest.mark.parametrize(
    "kwargs",
    [{"users": 0}, {"days": 0}, {"history_days": -1}, {"products": ("savings",)},
     {"products": ("nope",)}, {"penalize_segment": "left_handed"},
     {"faults": True, "days": 5}],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        generate_landing_zone(tmp_path / "x", **{"users": 100, "days": 3, **kwargs})


def test_progress_messages(tmp_path: Path) -> None:
    messages: list[str] = []
    generate_landing_zone(tmp_path / "p", users=200, days=3, history_days=10,
                          progress=messages.append)
    assert any(re.match(r"mobile_payments 2026-09-30: [\d,]+ rows$", m) for m in messages)
    assert any(m.startswith("customers history 2026-09") for m in messages)


# ---------------------------------------------------------------------------------------
# content of clean files


def test_every_file_of_a_clean_run_is_clean(clean: tuple[Path, GenerateSummary]) -> None:
    root, _ = clean
    for path in data_files(root):
        assert problems(root, path, date(2026, 9, 21)) == [], path


def _all_rows(root: Path, partner: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for path in sorted((root / partner).rglob("*.*")):
        rows += read_rows(path, partner)[1]
    return rows


def test_national_ids_valid_and_consistent_with_kyc(clean: tuple[Path, GenerateSummary]) -> None:
    root, _ = clean
    customers = _all_rows(root, "customers")
    assert len(customers) == 2000
    province_prefix = {p.name: str(p.districts[0][0])[:2] for p in ref.PROVINCES}
    for c in customers:
        nid = str(c["national_id"])
        assert is_valid_national_id(nid), nid
        assert nid[6:14] == str(c["birth_date"]).replace("-", "")
        assert (int(nid[16]) % 2 == 1) == (c["gender"] == "M")
        assert nid[:2] == province_prefix[str(c["province"])]
        assert c["onboard_date"] >= c["birth_date"]
        assert normalize_phone(str(c["phone"])) == c["phone"]
    assert len({c["national_id"] for c in customers}) == 2000
    assert len({c["phone"] for c in customers}) == 2000
    assert len({c["customer_id"] for c in customers}) == 2000
    assert all(re.fullmatch(r"C\d{9}", str(c["customer_id"])) for c in customers)
    known = {c["national_id"] for c in customers}
    for partner, column in (("credit_bureau", "national_id"), ("agri_coop", "member_national_id"),
                            ("loan_applications", "national_id")):
        ids = {r[column] for r in _all_rows(root, partner)}
        assert ids and ids <= known
        assert all(is_valid_national_id(str(i)) for i in ids)


def test_agri_coop_is_gbk_with_chinese(clean: tuple[Path, GenerateSummary]) -> None:
    root, _ = clean
    paths = sorted((root / "agri_coop").rglob("*.csv"))
    assert paths
    for path in paths:
        data = path.read_bytes()
        text = data.decode("gbk")
        assert "农民专业合作社" in text
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")
    crops = {r["crop"] for r in _all_rows(root, "agri_coop")}
    assert crops <= set(ref.CROPS) and len(crops) >= 4


def test_feed_formats(clean: tuple[Path, GenerateSummary]) -> None:
    root, _ = clean
    raw = (root / "mobile_payments" / "2026-09-25" / "mobile_payments_20260925.csv").read_text()
    lines = raw.splitlines()[1:]
    assert lines and all(re.search(r',"[\d,]+\.\d{2}",', line) for line in lines)
    assert any(re.search(r',"\d{1,3}(,\d{3})+\.\d{2}",', line) for line in lines)
    payments = _all_rows(root, "mobile_payments")
    for r in payments:
        merchant = r["txn_type"] == "MERCHANT"
        assert (r["merchant_category"] != "") == merchant
        assert (r["days_past_due"] != "") == (r["txn_type"] == "BILL_PAY")
    bill = [int(str(r["days_past_due"])) for r in payments if r["txn_type"] == "BILL_PAY"]
    assert 0.02 < np.mean([d > 0 for d in bill]) < 0.3
    orders = _all_rows(root, "ecommerce_orders")
    shapes = {re.sub(r"\d", "9", str(o["buyer_phone"])) for o in orders}
    assert shapes == {"99999999999", "+99 999 9999 9999", "999-9999-9999"}
    assert all(normalize_phone(str(o["buyer_phone"])) for o in orders)
    assert all(isinstance(o["amount_yuan"], (int, float)) for o in orders)
    assert {o["category_code"] for o in orders} == set(ref.ECOMMERCE_CATEGORIES)
    events = pq.read_table(
        root / "product_events" / "2026-09-25" / "product_events_20260925.parquet"
    )
    assert str(events.schema.field("event_time").type) == "timestamp[ms, tz=+08:00]"
    counts = {t: events.column("event_type").to_pylist().count(t) for t in ref.EVENT_TYPES}
    assert counts["impression"] > 3 * counts["click"] > 0
    assert counts["click"] > counts["application"] >= counts["uptake"] > 0


def test_history_and_label_timing(clean: tuple[Path, GenerateSummary]) -> None:
    root, _ = clean
    apps = {r["application_id"]: r for r in _all_rows(root, "loan_applications")}
    outcomes = _all_rows(root, "loan_outcomes")
    assert outcomes
    for o in outcomes:
        app = apps[o["application_id"]]
        assert app["legacy_decision"] == "approved"
        applied = datetime.fromisoformat(str(app["application_time"])).date()
        assert date.fromisoformat(str(o["observation_date"])) == applied + timedelta(days=180)
        assert (int(str(o["max_dpd"])) >= 90) == (o["default_flag"] == "1")
    approved = np.mean([a["legacy_decision"] == "approved" for a in apps.values()])
    assert 0.7 < approved < 0.9
    assert {a["product_code"] for a in apps.values()} == set(ref.LOAN_PRODUCTS)
    # Repeat borrowing: some customers apply more than once.
    per_customer = np.unique([a["customer_id"] for a in apps.values()], return_counts=True)[1]
    assert per_customer.max() > 1


def test_thin_files_and_truth(clean: tuple[Path, GenerateSummary]) -> None:
    root, _ = clean
    truth = json.loads((root / "truth.json").read_text(encoding="utf-8"))
    for key in ("risk_auc_ceiling", "seed", "users", "days", "end_date", "history_days",
                "performance_window_days", "labelled_applications", "default_rate",
                "thin_file_share", "penalize_segment", "process"):
        assert key in truth
    assert truth["seed"] == 7 and truth["users"] == 2000 and truth["days"] == 10
    assert truth["performance_window_days"] == 180
    assert 0.6 < truth["risk_auc_ceiling"] < 0.95
    assert 0.05 < truth["default_rate"] < 0.12
    assert "coefficients" in truth["process"] and "intercept" in truth["process"]
    # Labels in truth are exactly the delivered outcome rows.
    outcomes = _all_rows(root, "loan_outcomes")
    assert truth["labelled_applications"] == len(outcomes)
    assert truth["defaults"] == sum(o["default_flag"] == "1" for o in outcomes)
    # Thin file, seen from the files: customers with no bureau record, by region type.
    snapshot = sorted((root / "credit_bureau").rglob("*.csv"))[-1]
    with_record = {r["national_id"] for r in read_rows(snapshot, "credit_bureau")[1]}
    customers = _all_rows(root, "customers")
    share = {
        region: np.mean([c["national_id"] not in with_record for c in customers
                         if c["region_type"] == region])
        for region in ref.REGION_TYPES
    }
    assert share["rural"] > 0.35 and share["urban"] < 0.2
    assert truth["thin_file_share"]["rural"] > truth["thin_file_share"]["urban"]
    assert truth["thin_file_share_by_age_band"]["age_18_25"] > truth["thin_file_share"]["urban"]


def test_risk_truth_has_every_application_true_pd_outside_the_feeds(
    clean: tuple[Path, GenerateSummary],
) -> None:
    """Per-application true PDs (for the model's test-window ceiling) sit next to truth.json,
    never in a partner folder, keyed like the feed's application ids; over the delivered
    outcomes they give truth.json's ceiling."""
    import pandas as pd

    from puhui.generate.process import roc_auc
    from puhui.generate.truth import RISK_TRUTH_FILE

    root, _ = clean
    truth = json.loads((root / "truth.json").read_text(encoding="utf-8"))
    assert truth["risk_truth_file"] == RISK_TRUTH_FILE
    assert [p.name for p in root.rglob(RISK_TRUTH_FILE)] == [RISK_TRUTH_FILE]
    assert (root / RISK_TRUTH_FILE).is_file()
    risk = pd.read_csv(root / RISK_TRUTH_FILE, dtype={"application_id": str})
    assert list(risk.columns) == ["application_id", "true_pd"]
    applications = _all_rows(root, "loan_applications")
    assert set(risk["application_id"]) == {a["application_id"] for a in applications}
    assert all("true_pd" not in a for a in applications)
    outcomes = _all_rows(root, "loan_outcomes")
    by_id = risk.set_index("application_id")["true_pd"]
    pd_of = np.array([by_id[o["application_id"]] for o in outcomes])
    labels = np.array([o["default_flag"] == "1" for o in outcomes])
    assert roc_auc(pd_of, labels) == pytest.approx(truth["risk_auc_ceiling"], abs=1e-5)


def test_penalized_segment_defaults_more(
    clean: tuple[Path, GenerateSummary], tmp_path: Path
) -> None:
    generate_landing_zone(tmp_path / "pen", **CLEAN, penalize_segment="rural")
    base = json.loads((clean[0] / "truth.json").read_text(encoding="utf-8"))
    pen = json.loads((tmp_path / "pen" / "truth.json").read_text(encoding="utf-8"))
    assert pen["penalize_segment"] == "rural"
    assert pen["segments"]["rural"]["default_rate"] > base["segments"]["rural"]["default_rate"]
    rural_pd = base["segments"]["rural"]["mean_true_pd"]
    assert pen["segments"]["rural"]["mean_true_pd"] > 1.5 * rural_pd
    # Only the segment's labels change: the same uniform draws decide every default.
    assert pen["segments"]["urban"] == base["segments"]["urban"]
    # Only the outcome files can differ.
    ours, theirs = checksums(clean[0]), checksums(tmp_path / "pen")
    changed = {k.split("/")[0] for k in ours if ours[k] != theirs[k]}
    assert changed <= {"loan_outcomes", "truth.json", "risk_truth.csv.gz"}


def test_format_decimal2_thousands() -> None:
    values = np.array([0, 0.5, 999.99, 1000, 1234.5, 1234567.891, -1234.5])
    assert format_decimal2(values, thousands=True).to_pylist() == [
        "0.00", "0.50", "999.99", "1,000.00", "1,234.50", "1,234,567.89", "-1,234.50",
    ]
    assert format_decimal2(values).to_pylist()[4] == "1234.50"


# ---------------------------------------------------------------------------------------
# faults


def test_every_fault_kind_is_listed_once_in_a_distinct_delivered_file(
    faulty: tuple[Path, GenerateSummary], fault_list: list[dict[str, str]]
) -> None:
    root, summary = faulty
    assert sorted(f["fault"] for f in fault_list) == sorted(FAULT_KINDS)
    assert summary.faults == fault_list
    assert len({f["path"] for f in fault_list}) == len(fault_list)
    for entry in fault_list:
        assert entry.keys() == {"path", "fault", "expect"}
        assert entry["expect"] == FAULT_EXPECT[entry["fault"]]
        path = root / entry["path"]
        assert path.is_file()
        assert file_info(path)[2] is None  # never a history file
    partners = {Path(f["path"]).parts[0] for f in fault_list}
    assert len(partners) >= 6
    truth = json.loads((root / "truth.json").read_text(encoding="utf-8"))
    assert [d["fault"] for d in truth["fault_details"]] == [f["fault"] for f in fault_list]


def test_unlisted_files_are_clean_and_listed_ones_are_not(
    faulty: tuple[Path, GenerateSummary], fault_list: list[dict[str, str]]
) -> None:
    root, _ = faulty
    listed = {root / f["path"]: f["fault"] for f in fault_list}
    first = date(2026, 9, 24)
    for path in data_files(root):
        found = problems(root, path, first)
        if path not in listed:
            assert found == [], path
        elif listed[path] == "bom":
            assert found == ["bom"]
        elif listed[path] == "duplicate_delivery":
            # A byte copy of a clean earlier file: its rows are of the earlier date.
            assert all("not on the delivery date" in p for p in found)
        else:
            assert found, (path, listed[path])
    # One file per partner and delivery date, except the planted redelivery.
    for partner, spec in FEEDS.items():
        for folder in (root / partner).iterdir():
            normal = [p for p in folder.iterdir() if "_h" not in p.name]
            expected = 0 if spec.monthly and not folder.name.endswith("-01") else 1
            assert len([p for p in normal if "redelivery" not in p.name]) == expected


def test_fault_wrong_encoding(faulty: Zone, fault_list: FaultList) -> None:
    data = fault_path(faulty[0], fault_list, "wrong_encoding").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    text = data.decode("gbk")
    assert any(p.name in text for p in ref.PROVINCES)


def test_fault_bom(faulty: Zone, fault_list: FaultList) -> None:
    path = fault_path(faulty[0], fault_list, "bom")
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    header = data[3:].decode("utf-8").splitlines()[0]
    assert header.split(",") == list(FEEDS[file_info(path)[0]].columns)


def test_fault_missing_extra_and_renamed_columns(faulty: Zone, fault_list: FaultList) -> None:
    root = faulty[0]
    path = fault_path(root, fault_list, "missing_column")
    partner = file_info(path)[0]
    header = path.read_bytes().decode("utf-8").splitlines()[0].split(",")
    missing = set(FEEDS[partner].columns) - set(header)
    assert missing and missing <= set(FEEDS[partner].required)
    path = fault_path(root, fault_list, "extra_column")
    partner = file_info(path)[0]
    names = pq.read_schema(path).names if path.suffix == ".parquet" else []
    assert set(FEEDS[partner].columns) < set(names)
    path = fault_path(root, fault_list, "renamed_column")
    header = path.read_text().splitlines()[0].split(",")
    assert "payer_mobile" in header and "payer_phone" not in header
    assert len(header) == len(FEEDS["mobile_payments"].columns)


def test_fault_type_drift(faulty: Zone, fault_list: FaultList) -> None:
    path = fault_path(faulty[0], fault_list, "type_drift")
    _, rows = read_rows(path, "loan_applications")
    amounts = [str(r["amount_requested_yuan"]) for r in rows]
    assert amounts and all(re.fullmatch(r"[\d,]+\.\d{2}", a) for a in amounts)
    assert any("," in a for a in amounts)
    assert '"' in path.read_text().splitlines()[1]


def test_fault_duplicate_rows(faulty: Zone, fault_list: FaultList) -> None:
    path = fault_path(faulty[0], fault_list, "duplicate_rows")
    rows = read_rows(path, "ecommerce_orders")[1]
    ids = [r["order_id"] for r in rows]
    assert len(ids) - len(set(ids)) >= 3
    repeated = [r for r in rows if ids.count(r["order_id"]) > 1]
    first = {r["order_id"]: r for r in repeated}
    assert all(first[r["order_id"]] == r for r in repeated)  # whole rows repeated


def test_fault_duplicate_delivery(faulty: Zone, fault_list: FaultList) -> None:
    root = faulty[0]
    path = fault_path(root, fault_list, "duplicate_delivery")
    assert path.name.endswith("_redelivery" + path.suffix)
    partner, folder, _ = file_info(path)
    normal = path.with_name(f"{partner}_{folder:%Y%m%d}{path.suffix}")
    assert normal.is_file() and sorted(path.parent.iterdir())[0] == normal
    earlier = [
        p for p in (root / partner).rglob("*" + path.suffix)
        if p.read_bytes() == path.read_bytes() and p != path
    ]
    assert len(earlier) == 1 and file_info(earlier[0])[1] < folder
    assert str(earlier[0].relative_to(root)) not in {f["path"] for f in fault_list}


def test_fault_null_burst(faulty: Zone, fault_list: FaultList) -> None:
    path = fault_path(faulty[0], fault_list, "null_burst")
    rows = read_rows(path, "mobile_payments")[1]
    empty = [i for i, r in enumerate(rows) if r["payer_phone"] == ""]
    assert len(empty) >= 0.05 * len(rows)
    assert empty == list(range(empty[0], empty[0] + len(empty)))  # one contiguous block


def test_fault_out_of_range(faulty: Zone, fault_list: FaultList) -> None:
    path = fault_path(faulty[0], fault_list, "out_of_range")
    partner = file_info(path)[0]
    rows = read_rows(path, partner)[1]
    bad = [
        r for r in rows
        if any(not low <= float(r[c]) <= high for c, (low, high) in NUMERIC[partner].items())
    ]
    assert len(bad) >= 3


def test_fault_future_timestamp(faulty: Zone, fault_list: FaultList) -> None:
    path = fault_path(faulty[0], fault_list, "future_timestamp")
    delivered = file_info(path)[1]
    rows = read_rows(path, "mobile_payments")[1]
    end_of_day = datetime.combine(delivered + timedelta(days=1), datetime.min.time()).astimezone()
    times = [datetime.fromisoformat(str(r["txn_time"])) for r in rows]
    future = [t for t in times if t.astimezone(end_of_day.tzinfo) >= end_of_day]
    assert len(future) >= 3
    assert all(t.date() > delivered for t in future)


def test_fault_truncated_file(faulty: Zone, fault_list: FaultList) -> None:
    path = fault_path(faulty[0], fault_list, "truncated_file")
    data = path.read_bytes()
    assert not data.endswith(b"\n")
    lines = data.decode("utf-8").split("\n")
    header = next(csv.reader([lines[0]]))
    last = next(csv.reader([lines[-1]]))
    assert len(last) < len(header)
    assert all(len(next(csv.reader([line]))) == len(header) for line in lines[1:-1])


def test_fault_empty_file(faulty: Zone, fault_list: FaultList) -> None:
    assert fault_path(faulty[0], fault_list, "empty_file").stat().st_size == 0


def test_fault_planning_falls_back_without_monthly_deliveries() -> None:
    days = [date(2026, 9, 21) + timedelta(days=i) for i in range(10)]
    rows = {"customers": dict.fromkeys(days, 5), "loan_applications": dict.fromkeys(days, 5)}
    plan = plan_faults(days, rows)
    assert sorted(f.kind for f in plan) == sorted(FAULT_KINDS)
    assert not {f.partner for f in plan} & {"credit_bureau", "agri_coop"}
    assert len({(f.partner, f.day) for f in plan}) == len(plan)
    with pytest.raises(ValueError):
        plan_faults(days[:3], rows)


@pytest.mark.parametrize("target", ["full", "file", "under_file"])
def test_generate_refuses_an_unusable_out_in_one_plain_line(
        target: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from puhui.cli import main

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("")
    out = {"full": tmp_path / "full", "file": tmp_path / "file",
           "under_file": tmp_path / "file" / "zone"}[target]
    capsys.readouterr()
    code = main(["generate", "--out", str(out), "--users", "100", "--days", "1"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"--out {out}" in err and "Error" not in err  # no exception class name
    assert (tmp_path / "full" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("args, option, says", [
    (["--days", "3", "--faults"], "--days", "must be at least"),
    (["--days", "6", "--faults"], "--days", "leaves no delivered file with rows for the fault"),
    (["--penalize-segment", "left_handed"], "--penalize-segment", "'left_handed' is no segment"),
    (["--end-date", "2020-02-01"], "--history-days", "before 2020-01-01"),
    (["--history-days", "4000"], "--history-days", "before 2020-01-01"),
])
def test_generate_names_the_option_of_a_bad_argument_in_one_line(
        args: list[str], option: str, says: str, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    """These were printed as 'ValueError: ...' with a hint at a traceback, like a crash."""
    from puhui.cli import main

    capsys.readouterr()
    code = main(["generate", "--out", str(tmp_path / "zone"), "--users", "100", *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"Invalid value for '{option}': " in err and says in err
    assert "ValueError" not in err and not any((tmp_path / "zone").rglob("*"))


def test_a_refused_generate_leaves_an_earlier_zone_in_out(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The fault plan refuses --days after the population is built; it ran after the earlier
    zone in --out had been deleted, so a refused call lost it."""
    from puhui.cli import main

    zone = tmp_path / "zone"
    assert main(["generate", "--out", str(zone), "--users", "100", "--days", "2"]) == 0
    def files() -> dict[str, str]:  # digests: a failure does not print the synthetic rows
        return {str(p.relative_to(zone)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in zone.rglob("*") if p.is_file()}

    before = files()
    capsys.readouterr()
    code = main(["generate", "--out", str(zone), "--users", "100", "--days", "6", "--faults"])
    assert code == 2 and "leaves no delivered file" in capsys.readouterr().err
    assert len(before) > 10 and files() == before


def test_bad_generator_arguments_stay_value_errors_naming_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^penalize_segment 'x' is no segment"):
        generate_landing_zone(tmp_path / "x", users=100, days=3, penalize_segment="x")
