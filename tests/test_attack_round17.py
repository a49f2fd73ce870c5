"""Attack round 17 (see README, "Round 17"): hostile input not covered by rounds 7-16.
Each test failed before its fix unless its docstring says it was found sound.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from puhui.cli import main
from puhui.config import (
    ColumnContract,
    FeaturesConfig,
    ModelsConfig,
    MonitoringConfig,
    load_config_file,
)
from puhui.errors import PuhuiError
from puhui.generate.hostile import MP_HEADER, HostileContext
from puhui.ingest import pseudonym_check
from puhui.ingest.contract import ContractViolation, coerce_column
from puhui.ingest.feeds import ingest_all_feeds
from puhui.ingest.held_batches import quarantine_copy_path
from puhui.ingest.pseudonym_check import MISMATCH, key_check_value
from puhui.pipeline import run_ingest_flow
from puhui.runtime import open_runtime
from puhui.settings import load_settings
from puhui.warehouse.engine import create_warehouse_engine
from tests import test_attack_round7
from tests.conftest import TEST_PSEUDONYM_KEY
from tests.test_attack_round7 import DAY, _payments
from tests.test_attack_round8 import _edited
from tests.test_ledger_migration import at_revision_with_a_batch

landing = test_attack_round7.landing  # the fixture: a landing zone with the payments folder

_KEY = "0123456789abcdef" * 4


def _outcomes() -> dict[str, object]:
    """Every feed of DAY ingested once (plain Python); outcomes by file name."""
    return {
        f.path.rsplit("/", 1)[-1]: f for r in ingest_all_feeds(open_runtime(), DAY) for f in r.files
    }


def _stored(sql: str) -> list[tuple]:
    with open_runtime().engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql))]


def _utc(value: object) -> datetime:
    """A stored timestamp as an aware UTC datetime (SQLite hands back text)."""
    moment = datetime.fromisoformat(str(value)) if not isinstance(value, datetime) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def test_json_times_are_read_as_text_like_a_csvs(landing: Path, puhui_env: Path) -> None:
    """Before: Arrow's JSON reader typed ISO text itself. `"order_time": "2026-03-02
    10:00:00"` (no offset: the lender's local time, as a CSV's cell is read) was stored as
    10:00 UTC, 8 hours late; a number there (epoch seconds) was read as microseconds and
    loaded clean as 1970-01-01 00:29; and "2026-03-02" in a text column was rewritten
    "2026-03-02 00:00:00". Columns the contract types from text are read as text now."""
    orders = landing / "ecommerce_orders" / DAY.isoformat()
    orders.mkdir(parents=True)
    context = HostileContext(DAY, 1, Path("."), set())
    times = {"naive": f"{DAY} 10:00:00", "offset": f"{DAY}T10:00:00+08:00", "number": 1790000000}
    for i, (name, value) in enumerate(times.items()):
        order = {**context.order(i), "order_time": value}
        (orders / f"ecommerce_orders_{name}.jsonl").write_text(json.dumps(order) + "\n")
    dated = {**context.order(9), "category_code": str(DAY)}  # held by the suite's value set
    (orders / "ecommerce_orders_dated.jsonl").write_text(json.dumps(dated) + "\n")
    outcomes = _outcomes()
    assert {n: outcomes[f"ecommerce_orders_{n}.jsonl"].status for n in times} == {
        "naive": "accepted",
        "offset": "accepted",
        "number": "quarantined",
    }
    assert outcomes["ecommerce_orders_number.jsonl"].reason == (
        "type drift in order_time: a JSON number where timestamp is declared"
    )
    stored = {_utc(t) for (t,) in _stored("SELECT order_time FROM raw_ecommerce_orders")}
    assert stored == {datetime.combine(DAY, time(2), UTC)}  # 10:00 in Beijing, both
    held = outcomes["ecommerce_orders_dated.jsonl"]
    copy = quarantine_copy_path(puhui_env, "ecommerce_orders", held.batch_id)
    assert pq.read_table(copy).column("category_code").to_pylist() == [str(DAY)]


def test_a_json_number_in_a_text_column_is_its_text(landing: Path) -> None:
    """Before (round 17's first pass): a JSON number in a declared text column held the
    whole file (`type drift in buyer_phone: a JSON number where string is declared`), where
    main loaded it as its text. A phone written as a number is its text again and is
    pseudonymized as the same phone in text is; a numeric order_id reaches the suite as
    text (held by its pattern rule, naming the column); a number in a time column is held."""
    orders = landing / "ecommerce_orders" / DAY.isoformat()
    orders.mkdir(parents=True)
    context = HostileContext(DAY, 1, Path("."), set())
    text, number = context.order(0), {**context.order(1), "buyer_phone": 13900010000}
    text["buyer_phone"] = "13900010000"
    (orders / "ecommerce_orders_text.jsonl").write_text(json.dumps(text) + "\n")
    (orders / "ecommerce_orders_number.jsonl").write_text(json.dumps(number) + "\n")
    numeric_id = {**context.order(2), "order_id": 12345678901234567890123}
    (orders / "ecommerce_orders_id.jsonl").write_text(json.dumps(numeric_id) + "\n")
    timed = {**context.order(3), "order_time": 1790000000}
    (orders / "ecommerce_orders_time.jsonl").write_text(json.dumps(timed) + "\n")
    outcomes = _outcomes()
    assert outcomes["ecommerce_orders_text.jsonl"].status == "accepted"
    assert outcomes["ecommerce_orders_number.jsonl"].status == "accepted"
    held = outcomes["ecommerce_orders_id.jsonl"]
    assert held.status == "quarantined" and "order_id" in held.reason
    assert "type drift" not in held.reason and "1234567890" not in held.reason
    assert (
        outcomes["ecommerce_orders_time.jsonl"].status,
        outcomes["ecommerce_orders_time.jsonl"].reason,
    ) == ("quarantined", "type drift in order_time: a JSON number where timestamp is declared")
    rows = _stored("SELECT * FROM raw_ecommerce_orders")
    assert len(rows) == 2 and "13900010000" not in repr(rows)
    assert len({k for (k,) in _stored("SELECT DISTINCT phone_key FROM raw_ecommerce_orders")}) == 1


def test_parquet_times_without_a_zone_are_local_and_numbers_are_held(
    landing: Path, puhui_env: Path
) -> None:
    """Before: a Parquet timestamp without a zone (pandas' default for naive datetimes;
    Parquet's own local time) was cast as UTC: events at 20:00 in Beijing were stored 8
    hours late and then warned as after their delivery day ("a timezone slip?"), where the
    same text in a CSV is local time. An int64 of epoch seconds was read as microseconds and
    loaded clean (1970-01-01 00:29)."""
    events = landing / "product_events" / DAY.isoformat()
    events.mkdir(parents=True)
    base = HostileContext(DAY, 1, Path("."), set()).events_table()
    naive = pa.array([datetime.combine(DAY, time(20, 0, i)) for i in range(5)], pa.timestamp("us"))
    pq.write_table(base.set_column(2, "event_time", naive), events / "product_events_1.parquet")
    numbers = HostileContext(DAY, 2, Path("."), set()).events_table()
    epoch = pa.array([1790000000 + i for i in range(5)], pa.int64())
    pq.write_table(numbers.set_column(2, "event_time", epoch), events / "product_events_2.parquet")
    outcomes = _outcomes()
    local, held = outcomes["product_events_1.parquet"], outcomes["product_events_2.parquet"]
    assert (local.status, local.warnings) == ("accepted", [])
    assert (held.status, held.reason) == (
        "quarantined",
        "type drift in event_time: int64 where timestamp is declared",
    )
    stored = sorted(_utc(t) for (t,) in _stored("SELECT event_time FROM raw_product_events"))
    assert stored == [datetime.combine(DAY, time(12, 0, i), UTC) for i in range(5)]


def test_parquet_int96_times_are_utc_instants(landing: Path) -> None:
    """Before: an INT96 timestamp (Spark's, Hive's and Impala's default, written as UTC;
    Arrow reads it without a zone) was taken as the lender's local time: 12:00Z was stored
    as 04:00Z, 8 hours early, and no "after its delivery day" warning fires for early."""
    events = landing / "product_events" / DAY.isoformat()
    events.mkdir(parents=True)
    base = HostileContext(DAY, 1, Path("."), set()).events_table()
    moments = [datetime.combine(DAY, time(12, 0, i), UTC) for i in range(5)]
    zoned = pa.array(moments, pa.timestamp("us", tz="UTC"))
    pq.write_table(
        base.set_column(2, "event_time", zoned),
        events / "product_events_1.parquet",
        use_deprecated_int96_timestamps=True,
    )
    assert pq.ParquetFile(events / "product_events_1.parquet").schema.column(2).physical_type == (
        "INT96"
    )
    assert _outcomes()["product_events_1.parquet"].status == "accepted"
    stored = sorted(_utc(t) for (t,) in _stored("SELECT event_time FROM raw_product_events"))
    assert stored == moments


@pytest.mark.parametrize(
    ("name", "old", "new", "key"),
    [
        ("models.yaml", "  seed: 42\n  lightgbm:", "  seed: -1\n  lightgbm:", "seed"),
        ("models.yaml", "  seed: 42\n  lightgbm:", "  seed: 99999999999\n  lightgbm:", "seed"),
        ("models.yaml", "validation_months: 2", "validation_months: 100000", "validation_months"),
        (
            "models.yaml",
            "num_boost_round: 400",
            "num_boost_round: 1000000000000",
            "num_boost_round",
        ),
        ("monitoring.yaml", "bootstrap: 200", "bootstrap: 1000000000000", "bootstrap"),
        ("features.yaml", "timezone: Asia/Shanghai", "timezone: Europe/Berlin", "timezone"),
        (
            "models.yaml",
            "num_boost_round: {of: rows, fraction: 0.2, min: 300, max: 3000}",
            "num_boost_round: {of: rows, fraction: 0.2, min: 300, max: 1000000000000}",
            "num_boost_round",
        ),
        (
            "models.yaml",
            "    params:\n      objective: binary\n",
            "    params:\n      objective: binary\n      n_estimators: 2000000000\n",
            "n_estimators",
        ),
        (
            "models.yaml",
            "    objective: lambdarank\n",
            "    objective: lambdarank\n    num_iterations: 2000000000\n",
            "num_iterations",
        ),
    ],
)
def test_absurd_numbers_in_a_config_are_one_line_naming_file_and_key(
    tmp_path: Path, name: str, old: str, new: str, key: str
) -> None:
    """Before: each passed the load and `config check`. A seed outside [0, 2^32) failed
    training after its booster was trained (scikit-learn's InvalidParameterError on the
    benchmark, naming no file), 100,000 validation months failed the window split (`year
    -6308 is out of range`), and 10^12 boosting rounds or bootstrap resamples ran for ever.
    After review: a size-aware round count's max, and a LightGBM alias of the round count in
    params (`n_estimators`, `num_iterations`, which override it in lgb.train), bypassed the
    bound; features.yaml's timezone could differ from the one ingest reads local times in."""
    path = _edited(tmp_path, name, old, new)
    with pytest.raises(PuhuiError, match=key) as caught:
        kind = {"monitoring.yaml": MonitoringConfig, "features.yaml": FeaturesConfig}
        load_config_file(path, kind.get(name, ModelsConfig))
    message = str(caught.value)
    assert message.startswith(f"{path}:") and "\n" not in message


@pytest.mark.parametrize("variable", ["PUHUI_PSEUDONYM_KEY", "PUHUI_AUDIT_KEY"])
@pytest.mark.parametrize("stray", ["\n", "\r\n", " ", "\t", "\x07"])
def test_a_key_with_a_files_trailing_newline_is_used_byte_for_byte_with_a_warning(
    tmp_path: Path, variable: str, stray: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key with a file's trailing newline (or spaces at its ends, a control character)
    keys the HMAC byte for byte: a deployment that ran with it keeps its pseudonyms and its
    audit chain. Round 17's first pass refused it in every profile, which left such a
    deployment no byte-exact way to run (stripping it changes every person_key; the
    warehouse's check value refuses a changed key). One line on stderr names the setting,
    never the value; production's strength check still applies."""
    env = {
        "PUHUI_HOME": str(tmp_path / "home"),
        "PUHUI_PSEUDONYM_KEY": _KEY,
        "PUHUI_AUDIT_KEY": _KEY[::-1],
        variable: _KEY + stray,
    }
    for profile in ("local", "production"):
        env.update(PUHUI_PROFILE=profile, PUHUI_WAREHOUSE_URL="postgresql+psycopg://u@localhost/db")
        settings = load_settings(env)
        used = settings.pseudonym_key if variable == "PUHUI_PSEUDONYM_KEY" else settings.audit_key
        assert used == _KEY + stray
        [line] = capsys.readouterr().err.splitlines()
        assert variable in line and _KEY not in line and _KEY[::-1] not in line
    env[variable] = "short" + stray
    with pytest.raises(PuhuiError, match="weak"):
        load_settings(env)


@pytest.mark.parametrize("blank", ["\n", "   ", "\r\n"])
def test_a_blank_key_is_unset_in_the_local_profile_and_blank_in_production(
    tmp_path: Path, blank: str
) -> None:
    """Before: a newline-only PUHUI_PSEUDONYM_KEY in the local profile keyed the HMAC as
    given (the strength check runs in production only); it is unset now, as empty is."""
    env = {"PUHUI_HOME": str(tmp_path / "home"), "PUHUI_PSEUDONYM_KEY": blank}
    assert load_settings({**env, "PUHUI_PROFILE": "local"}).pseudonym_key is None
    env.update(
        PUHUI_PROFILE="production",
        PUHUI_WAREHOUSE_URL="postgresql+psycopg://u@localhost/db",
        PUHUI_AUDIT_KEY=_KEY,
    )
    with pytest.raises(PuhuiError, match=r"weak \(blank\)"):
        load_settings(env)


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("business_loan: C}", "business_loan: c}", "credit_max_grade.business_loan"),
        ("business_loan: C}", "business_loan: ''}", "credit_max_grade.business_loan"),
        ("business_loan: {min: 18, max: 65}", "business_loan: {min: 65, max: 18}", "age"),
        ("{grade: A, max_pd: 0.02}", "{grade: A+, max_pd: 0.02}", "grades"),
        ("{grade: E, max_pd: 1.0}", "{grade: EE, max_pd: 1.0}", "grades"),
    ],
)
def test_an_eligibility_grade_or_age_range_that_is_none_is_one_line(
    tmp_path: Path, old: str, new: str, named: str
) -> None:
    """Before: an eligibility grade the risk model has not was found by its position in
    the grade letters: `c` (-1) refused business_loan to everyone, `''` (0) allowed grade A
    only; an age range with min over max offered the product to no one. All loaded. A risk
    grade named `A+` or `EE` passed the eligibility check and still ranked -1 by its
    letter: grades are the letters A, B, C ... in order."""
    path = _edited(tmp_path, "models.yaml", old, new)
    with pytest.raises(PuhuiError, match=named) as caught:
        load_config_file(path, ModelsConfig)
    assert str(caught.value).startswith(f"{path}:") and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("old", "new", "bad"),
    [
        ("{microloan: D,", "{micro_loan: D,", "micro_loan"),
        ("agricultural: [agri_loan,", "agricultural: [agri_laon,", "agri_laon"),
        ("      microloan: {min: 18, max: 60}", "      Microloan: {min: 18, max: 60}", "Microloan"),
    ],
)
def test_an_eligibility_rule_naming_no_product_stops_config_check_and_the_runs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    old: str,
    new: str,
    bad: str,
) -> None:
    """Before: a misspelt product code in the recommender's eligibility rules was a rule on
    no product, and `config check` passed: `micro_loan: D` left microloan without its grade
    limit (offered to grade E and to customers without a grade), `agri_laon` offered
    agri_loan to customers with no agricultural activity. `config check` lists it, and the
    recommender's and the profile refresh's configs steps refuse it, in one line."""
    from puhui.cli import main
    from tasks.profiles import ProfileConfigs

    configs = _edited(tmp_path, "models.yaml", old, new).parent
    monkeypatch.setenv("PUHUI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(configs))
    try:
        code = main(["config", "check"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 1 and f"{bad!r} is no product of products.yaml" in err, err
    with pytest.raises(PuhuiError, match=f"{bad!r} is no product") as caught:
        ProfileConfigs.read(configs)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- the pseudonym key's check
_OTHER_KEY = TEST_PSEUDONYM_KEY[::-1]  # a rotated or mistyped key: as strong, another HMAC


@pytest.fixture
def payments(landing: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The payments folder of DAY on a fresh warehouse of each dialect."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    return landing / "mobile_payments" / DAY.isoformat()


def _counts() -> tuple[int, int]:
    """Ledger rows and raw payment rows."""
    [(batches,)] = _stored("SELECT count(*) FROM ingest_batches")
    [(rows,)] = _stored("SELECT count(*) FROM raw_mobile_payments")
    return batches, rows


def test_a_pseudonym_key_other_than_the_warehouses_is_refused_before_any_row(
    payments: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a rotated or mistyped PUHUI_PSEUDONYM_KEY ingested as any other: every
    customer got another person_key and the histories split silently (here: 10 rows, 10
    person_keys for 5 people). The first run records a keyed check value; a run under
    another key is refused in one line before it writes anything, `profiles explain` too,
    and `audit verify` reports it (and the match under the right key)."""
    (payments / "mobile_payments_1.csv").write_bytes(_payments(1))
    assert {o.status for o in _outcomes().values()} == {"accepted"}
    (payments / "mobile_payments_2.csv").write_bytes(
        _payments(1, header=MP_HEADER).replace(b"T0001", b"T0009")
    )  # the same people, other transactions
    monkeypatch.setenv("PUHUI_PSEUDONYM_KEY", _OTHER_KEY)
    with pytest.raises(PuhuiError) as caught:
        _outcomes()
    assert str(caught.value) == MISMATCH
    assert _counts() == (1, 5)  # nothing written: no ledger row, no raw row
    person = HostileContext(DAY, 1, Path("."), set()).national_id(0)
    assert main(["profiles", "explain", person]) == 1
    assert capsys.readouterr().err.strip() == f"puhui: error: {MISMATCH}"
    assert main(["audit", "verify"]) == 1
    err = capsys.readouterr().err
    assert "PUHUI_PSEUDONYM_KEY is not the key this warehouse's pseudonyms were made with" in err
    assert _OTHER_KEY not in err and TEST_PSEUDONYM_KEY not in err
    monkeypatch.setenv("PUHUI_PSEUDONYM_KEY", TEST_PSEUDONYM_KEY)
    assert _outcomes()["mobile_payments_2.csv"].status == "accepted"
    [(rows, people)] = _stored(
        "SELECT count(*), count(DISTINCT phone_key) FROM raw_mobile_payments"
    )
    assert (rows, people) == (10, 5)
    assert main(["audit", "verify"]) == 0
    assert "pseudonym key: PUHUI_PSEUDONYM_KEY matches the check value recorded" in (
        capsys.readouterr().out
    )
    [(check,)] = _stored("SELECT check_value FROM pseudonym_key_checks")
    assert check == key_check_value(TEST_PSEUDONYM_KEY.encode())
    assert check not in {
        hashlib.sha256(TEST_PSEUDONYM_KEY.encode()).hexdigest(),
        TEST_PSEUDONYM_KEY,
    }
    # Deleted by hand: the next run does not take over whatever key it has (the trail's
    # value is compared), and verify reports the loss.
    with open_runtime().engine.begin() as conn:
        conn.execute(text("DELETE FROM pseudonym_key_checks"))
    monkeypatch.setenv("PUHUI_PSEUDONYM_KEY", _OTHER_KEY)
    with pytest.raises(PuhuiError, match="^PUHUI_PSEUDONYM_KEY is not the key"):
        _outcomes()
    assert _stored("SELECT count(*) FROM pseudonym_key_checks") == [(0,)]
    capsys.readouterr()
    assert main(["audit", "verify"]) == 1
    assert "pseudonym_key_checks has lost the check value" in capsys.readouterr().err


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_the_ingest_flow_under_another_key_fails_in_one_line(
    payments: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    """The Prefect flow (what `puhui run ingest` and the daily pipeline run): its feed task
    refuses another key before the feed writes anything; the error is the one line."""
    (payments / "mobile_payments_1.csv").write_bytes(_payments(1))
    assert run_ingest_flow(DAY)["statuses"] == {"accepted": 1}
    (payments / "mobile_payments_2.csv").write_bytes(_payments(2))
    monkeypatch.setenv("PUHUI_PSEUDONYM_KEY", _OTHER_KEY)
    with pytest.raises(PuhuiError) as caught:
        run_ingest_flow(DAY)
    assert str(caught.value) == MISMATCH
    assert _counts() == (1, 5)


def test_a_warehouse_with_pseudonyms_but_no_check_value_adopts_the_key_once(
    payments: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upgrade path: a warehouse with a ledger row from before migration 0012 adopts
    the key of its next run, which says so once (and marks the check value adopted); a
    later run under another key is refused."""
    engine = create_warehouse_engine(warehouse_url)
    at_revision_with_a_batch(engine, "0010")
    engine.dispose()
    (payments / "mobile_payments_1.csv").write_bytes(_payments(1))
    runtime = open_runtime()  # migrates to the head
    notes = [r.key_note for r in ingest_all_feeds(runtime, DAY) if r.key_note]
    assert len(notes) == 1 and "had no record of their key" in notes[0]
    assert _stored("SELECT adopted FROM pseudonym_key_checks") in ([(True,)], [(1,)])
    (payments / "mobile_payments_2.csv").write_bytes(_payments(2))
    assert not [r.key_note for r in ingest_all_feeds(runtime, DAY) if r.key_note]
    monkeypatch.setenv("PUHUI_PSEUDONYM_KEY", _OTHER_KEY)
    (payments / "mobile_payments_3.csv").write_bytes(_payments(3))
    with pytest.raises(PuhuiError, match="^PUHUI_PSEUDONYM_KEY is not the key"):
        _outcomes()


def test_two_first_runs_at_once_record_one_check_value(
    warehouse_url: str, puhui_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both runs find no check value (held at a barrier after their read), both insert:
    one wins, the other compares with the winner's and is refused under another key."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime = open_runtime()
    engine, audit = runtime.engine, runtime.audit
    barrier = threading.Barrier(2, timeout=30)
    read = pseudonym_check.read_key_check
    first = threading.local()

    def read_then_wait(engine: object) -> object:
        found = read(engine)
        if not getattr(first, "done", False):
            first.done = True
            barrier.wait()  # both have read "none" before either inserts
        return found

    monkeypatch.setattr(pseudonym_check, "read_key_check", read_then_wait)
    outcomes: dict[str, str] = {}

    def run(name: str, key: str) -> None:
        try:
            pseudonym_check.ensure_pseudonym_key(engine, key.encode(), audit)
            outcomes[name] = "ok"
        except PuhuiError as error:
            outcomes[name] = str(error)

    threads = [
        threading.Thread(target=run, args=(n, k))
        for n, k in (("a", TEST_PSEUDONYM_KEY), ("b", _OTHER_KEY))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()) == sorted(["ok", MISMATCH])
    [(check,)] = _stored("SELECT check_value FROM pseudonym_key_checks")
    winner = TEST_PSEUDONYM_KEY if outcomes["a"] == "ok" else _OTHER_KEY
    assert check == key_check_value(winner.encode())


def test_a_run_killed_after_recording_the_check_value_is_completed_by_the_next(
    payments: Path, monkeypatch: pytest.MonkeyPatch, warehouse_url: str
) -> None:
    """kill -9 between the check value's commit and the first row: the next run under the
    same key agrees with it and loads the file; under another key it is refused."""
    (payments / "mobile_payments_1.csv").write_bytes(_payments(1))
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from datetime import date; from puhui.runtime import "
            "open_runtime; from puhui.ingest.feeds import ingest_all_feeds; "
            f"ingest_all_feeds(open_runtime(), date.fromisoformat('{DAY}'))",
        ],
        env={**os.environ, "PUHUI_CRASH_AT": "pseudonym-key-recorded"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _stored("SELECT count(*) FROM ingest_batches") == [(0,)]
    assert _stored("SELECT count(*) FROM pseudonym_key_checks") == [(1,)]
    monkeypatch.setenv("PUHUI_PSEUDONYM_KEY", _OTHER_KEY)
    with pytest.raises(PuhuiError, match="^PUHUI_PSEUDONYM_KEY is not the key"):
        _outcomes()
    monkeypatch.setenv("PUHUI_PSEUDONYM_KEY", TEST_PSEUDONYM_KEY)
    assert _outcomes()["mobile_payments_1.csv"].status == "accepted"
    assert _counts() == (1, 5)


# ------------------------------------------------------- typed columns (Parquet, JSON)
def _contract(kind: str) -> ColumnContract:
    return ColumnContract(name="flag" if kind == "bool" else "report_date", type=kind)


@pytest.mark.parametrize(
    ("values", "kind", "expected"),
    [
        # 01:00 in Beijing on DAY is 17:00 UTC the day before: the local date is DAY.
        (
            pa.array(
                [datetime.combine(DAY, time(1), ZoneInfo("Asia/Shanghai"))],
                pa.timestamp("us", tz="Asia/Shanghai"),
            ),
            "date",
            [DAY],
        ),
        (
            pa.array(
                [datetime.combine(DAY, time(1), ZoneInfo("Asia/Shanghai")).astimezone(UTC)],
                pa.timestamp("us", tz="UTC"),
            ),
            "date",
            [DAY],
        ),
        (pa.array([datetime.combine(DAY, time(23))], pa.timestamp("ns")), "date", [DAY]),
        (pa.array([DAY], pa.date64()), "date", [DAY]),
        (pa.array([0, 1, None], pa.int8()), "bool", [False, True, None]),
        (pa.array([1.0, 0.0], pa.float64()), "bool", [True, False]),
        (pa.array([True, None]), "bool", [True, None]),
    ],
)
def test_a_typed_date_is_the_lenders_local_date_and_0_or_1_a_bool(
    values: pa.Array, kind: str, expected: list
) -> None:
    """Before: a UTC timestamp (Parquet's usual, adjusted to UTC) in a date column took its
    UTC date, the day before for a morning in Beijing, where the same moment as text is the
    lender's local day; 0 and 1 as numbers are read as the text "0" and "1" are."""
    assert coerce_column(values, _contract(kind)).to_pylist() == expected


@pytest.mark.parametrize(
    ("values", "kind", "reason"),
    [
        (
            pa.array([0.5, 1.0]),
            "bool",
            "type drift in flag: double value(s) other than 0 and 1 where bool is declared",
        ),
        (
            pa.array([2], pa.int64()),
            "bool",
            "type drift in flag: int64 value(s) other than 0 and 1 where bool is declared",
        ),
        (
            pa.array([DAY], pa.date32()),
            "bool",
            "type drift in flag: date32[day] where bool is declared",
        ),
        (
            pa.array([20260930], pa.int64()),
            "date",
            "type drift in report_date: int64 where date is declared",
        ),
        (pa.array([True]), "date", "type drift in report_date: bool where date is declared"),
    ],
)
def test_a_typed_value_of_another_meaning_is_held_naming_the_column(
    values: pa.Array, kind: str, reason: str
) -> None:
    """Before: Arrow's cast made 0.5 and 2 true, loaded clean. (A date where a bool is
    declared, and an int or a bool where a date is, Arrow refused already: kept as guards.)"""
    with pytest.raises(ContractViolation) as caught:
        coerce_column(values, _contract(kind))
    assert str(caught.value) == reason


def test_times_with_and_without_an_offset_in_one_block_are_each_read() -> None:
    """Before: a block mixing `2026-03-02 10:00:00` (local) and `...T10:00:00+08:00` failed
    the offset cast, then the local one, and was held as `value(s) not an ISO timestamp`,
    though the contract defines both; each part is cast once now."""
    texts = [f"{DAY} 10:00:00", f"{DAY}T10:00:00+08:00", None, f"{DAY}T02:00:00Z", str(DAY)]
    column = ColumnContract(name="order_time", type="timestamp")
    ten = datetime.combine(DAY, time(2), UTC)
    assert coerce_column(pa.array(texts), column).to_pylist() == [
        ten,
        ten,
        None,
        ten,
        datetime.combine(DAY, time(0), ZoneInfo("Asia/Shanghai")),
    ]
    with pytest.raises(ContractViolation, match="order_time: value"):
        coerce_column(pa.array([f"{DAY} 10:00:00", "noon+08:00"]), column)


def test_a_files_timezone_text_never_reaches_a_hold_reason() -> None:
    """Before: the reason printed the Arrow type, the file's timezone string with it
    (`timestamp[ns, tz=Zhang San Beijing]`); it is named by its kind now."""
    zoned = pa.array([1], pa.timestamp("ns", tz="Zhang San Beijing"))
    with pytest.raises(ContractViolation) as caught:
        coerce_column(zoned, _contract("timestamp"))
    assert "Zhang" not in str(caught.value)
    assert str(caught.value) == (
        "type drift in report_date: timestamp[ns] with a zone where timestamp is declared"
    )


def test_a_json_true_or_a_time_in_a_number_column_is_held(landing: Path) -> None:
    """Before: Arrow's cast read a JSON `true` in `amount_yuan` as 1.0, loaded clean; the
    shipped ecommerce feed now holds it as type drift naming the column."""
    orders = landing / "ecommerce_orders" / DAY.isoformat()
    orders.mkdir(parents=True)
    context = HostileContext(DAY, 1, Path("."), set())
    order = {**context.order(0), "amount_yuan": True}
    (orders / "ecommerce_orders_bool.jsonl").write_text(json.dumps(order) + "\n")
    held = _outcomes()["ecommerce_orders_bool.jsonl"]
    assert (held.status, held.reason) == (
        "quarantined",
        "type drift in amount_yuan: bool where float is declared",
    )
