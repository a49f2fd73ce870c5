"""Attack round 17 (see README, "Round 17"): hostile input not covered by rounds 7-16.
Each test failed before its fix unless its docstring says it was found sound.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from puhui.config import ModelsConfig, MonitoringConfig, load_config_file
from puhui.errors import PuhuiError
from puhui.generate.hostile import HostileContext
from puhui.ingest.feeds import ingest_all_feeds
from puhui.ingest.held_batches import quarantine_copy_path
from puhui.runtime import open_runtime
from puhui.settings import load_settings
from tests import test_attack_round7
from tests.test_attack_round7 import DAY
from tests.test_attack_round8 import _edited

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
    ],
)
def test_absurd_numbers_in_a_config_are_one_line_naming_file_and_key(
    tmp_path: Path, name: str, old: str, new: str, key: str
) -> None:
    """Before: each passed the load and `config check`. A seed outside [0, 2^32) failed
    training after its booster was trained (scikit-learn's InvalidParameterError on the
    benchmark, naming no file), 100,000 validation months failed the window split (`year
    -6308 is out of range`), and 10^12 boosting rounds or bootstrap resamples ran for ever."""
    path = _edited(tmp_path, name, old, new)
    with pytest.raises(PuhuiError, match=key) as caught:
        load_config_file(path, MonitoringConfig if name == "monitoring.yaml" else ModelsConfig)
    message = str(caught.value)
    assert message.startswith(f"{path}:") and "\n" not in message


@pytest.mark.parametrize("variable", ["PUHUI_PSEUDONYM_KEY", "PUHUI_AUDIT_KEY"])
@pytest.mark.parametrize("stray", ["\n", "\r\n", " ", "\t"])
def test_a_key_with_a_files_trailing_newline_is_refused_in_one_line(
    tmp_path: Path, variable: str, stray: str
) -> None:
    """Before: `PUHUI_PSEUDONYM_KEY` with a trailing newline (a secret mounted from a file)
    passed every check, including production's strength check, and keyed the HMAC with the
    newline: every customer got another person_key than under the same secret without it,
    and the histories split silently. Refused now, never stripped (stripping would change the
    pseudonyms of a deployment that ran with one), in both profiles; the key is not shown."""
    env = {
        "PUHUI_HOME": str(tmp_path / "home"),
        "PUHUI_PSEUDONYM_KEY": _KEY,
        "PUHUI_AUDIT_KEY": _KEY[::-1],
        variable: _KEY + stray,
    }
    for profile in ("local", "production"):
        env.update(PUHUI_PROFILE=profile, PUHUI_WAREHOUSE_URL="postgresql+psycopg://u@localhost/db")
        with pytest.raises(PuhuiError, match=variable) as caught:
            load_settings(env)
        assert "\n" not in str(caught.value) and _KEY not in str(caught.value)
    env[variable] = _KEY if variable == "PUHUI_PSEUDONYM_KEY" else _KEY[::-1]
    assert load_settings(env).pseudonym_key == _KEY  # the secret alone is fine


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("business_loan: C}", "business_loan: c}", "credit_max_grade.business_loan"),
        ("business_loan: C}", "business_loan: ''}", "credit_max_grade.business_loan"),
        ("business_loan: {min: 18, max: 65}", "business_loan: {min: 65, max: 18}", "age"),
    ],
)
def test_an_eligibility_grade_or_age_range_that_is_none_is_one_line(
    tmp_path: Path, old: str, new: str, named: str
) -> None:
    """Before: an eligibility grade the risk model has not was found by its position in
    the grade letters: `c` (-1) refused business_loan to everyone, `''` (0) allowed grade A
    only; an age range with min over max offered the product to no one. All loaded."""
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
