"""Attack round 13 (see README, "Round 13"): line ends, look-alike and internal column names,
identifiers pasted with typographic separators, non-finite numbers in config. Each test
failed before its fix unless its docstring says what was found sound.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from puhui.config import ModelsConfig, PartnerFeed, PartnersConfig, load_config, load_config_file
from puhui.errors import PuhuiError
from puhui.generate.hostile import HostileContext
from puhui.identifiers import national_id_check_digit
from puhui.ingest.feeds import ingest_all_feeds
from puhui.ingest.reading import UnreadableFile, open_landed_file, read_csv_header
from puhui.runtime import open_runtime
from puhui.settings import load_settings, repo_root
from tests import test_attack_round7
from tests.test_attack_round7 import DAY, MP_HEADER, _ingest_payments, _payments
from tests.test_attack_round8 import _edited

landing = test_attack_round7.landing  # the fixture: a landing zone with the payments folder


def _with_column(data: bytes, name: str, value: str) -> bytes:
    header, *rows = data.decode().splitlines()
    return ("\n".join([f"{header},{name}", *(f"{row},{value}" for row in rows)]) + "\n").encode()


def test_csv_line_ends_and_odd_header_names_each_end_as_one_ledger_row(landing: Path) -> None:
    """Before: a CSV whose lines end in a bare CR ("CSV (Macintosh)", which Arrow reads as
    line ends) raised csv.Error from the header reader, in the hold path too, so the feed
    stopped at that file (the later files unread) on every run.

    Pinned since the review: CRLF, LF/CR/CRLF mixed, and a CR inside a quoted cell and a
    quoted header name (kept in the name) each read as their 5 rows.

    Found sound (kept): a header repeated mid-file is held by the typed column it breaks; a
    case variant of a personal column (`Payer_Phone` holding raw phones) and columns named
    like internal ones (`batch_id`, `phone_key`) are extra columns, ignored and not stored.
    """
    folder = landing / "mobile_payments" / DAY.isoformat()
    (folder / "mobile_payments_1_cr.csv").write_bytes(_payments(1).replace(b"\n", b"\r"))
    (folder / "mobile_payments_2_cr_header.csv").write_bytes(",".join(MP_HEADER).encode() + b"\r")
    lines = _payments(3).splitlines(keepends=True)
    (folder / "mobile_payments_3_mid_header.csv").write_bytes(b"".join(
        lines[:3] + lines[:1] + lines[3:]))
    (folder / "mobile_payments_4_case.csv").write_bytes(
        _with_column(_payments(4), "Payer_Phone", "13987654321"))
    (folder / "mobile_payments_5_internal.csv").write_bytes(
        _with_column(_with_column(_payments(5), "batch_id", "forged"), "phone_key", "forged"))
    (folder / "mobile_payments_6_crlf.csv").write_bytes(_payments(6).replace(b"\n", b"\r\n"))
    (folder / "mobile_payments_7_quoted_cr.csv").write_bytes(
        _with_column(_payments(7), '"note\rx"', '"x\ry"'))
    ends = [b"\n", b"\r", b"\r\n"]
    (folder / "mobile_payments_8_mixed.csv").write_bytes(b"".join(
        line + ends[i % 3] for i, line in enumerate(_payments(8).splitlines())))
    (folder / "mobile_payments_9_clean.csv").write_bytes(_payments(9))

    outcomes = _ingest_payments()

    def result(name: str) -> tuple:
        o = outcomes[name]
        return o.status, o.rows, o.rows_loaded

    assert result("mobile_payments_1_cr.csv") == ("accepted", 5, 5)
    assert result("mobile_payments_2_cr_header.csv") == ("accepted", 0, 0)
    for name in ("6_crlf", "7_quoted_cr", "8_mixed", "9_clean"):
        assert result(f"mobile_payments_{name}.csv") == ("accepted", 5, 5), name
    assert outcomes["mobile_payments_7_quoted_cr.csv"].warnings == [
        "extra column(s) ignored: 'aaaa\\\\ra'"]  # the quoted CR kept, shown inert
    mid = outcomes["mobile_payments_3_mid_header.csv"]
    assert (mid.status, mid.rows) == ("quarantined", 6)
    assert mid.reason.startswith("type drift in txn_time")
    assert outcomes["mobile_payments_4_case.csv"].warnings == [
        "extra column(s) ignored: Payer_Phone"]
    assert outcomes["mobile_payments_5_internal.csv"].warnings == [
        "extra column(s) ignored: batch_id, phone_key"]
    with open_runtime().engine.connect() as conn:
        stored = conn.execute(text("SELECT * FROM raw_mobile_payments")).mappings().all()
    assert len(stored) == 35
    dump = "\n".join(str(dict(row)) for row in stored)
    assert "13987654321" not in dump and "forged" not in dump
    assert all(o.skipped for o in _ingest_payments().values()), "a re-run is a no-op"


_PHONE = "13987654321"
# As a word processor, a web page or a Chinese input method pastes a number.
_PASTED = ["139\u00a08765\u00a04321", "139\u200b8765\u200b4321", "139 - 8765 - 4321",
           "139\u20148765\u20144321", "139\t8765\t4321", "+86\u202f139\u20118765\u20114321"]
_GBK_PASTED = ["139\u20148765\u20144321", "139  8765  4321", "139\t8765\t4321",
               "139 - 8765 - 4321"]


def _holds_phone(value: object) -> bool:
    return _PHONE in re.sub(r"\D", "", str(value))


def test_identifiers_pasted_with_typographic_separators_are_masked(
    landing: Path, puhui_env: Path
) -> None:
    """Before: the shapes knew one ASCII space, dot or dash (or its full-width form) between
    a number's groups, so a phone pasted with no-break or zero-width spaces, an em dash, a
    tab or ' - ' in a free-text column was loaded raw (a co-operative's name, GBK) or copied
    raw into a held batch's quarantine copy."""
    coop = landing / "agri_coop" / DAY.isoformat()
    coop.mkdir(parents=True)
    header = "member_national_id,coop_name,crop,acreage_mu,harvest_sales_yuan,subsidy_yuan,"
    ids = [f"11010519800101{i:03d}" for i in range(len(_GBK_PASTED))]
    rows = [f"{body}{national_id_check_digit(body)},联系{pasted}合作社,玉米,12.5,1000,50,2026-09"
            for body, pasted in zip(ids, _GBK_PASTED, strict=True)]
    (coop / "agri_coop_1.csv").write_bytes(
        "\n".join([header + "record_month", *rows, ""]).encode("gbk"))
    payments = _payments(1).decode().splitlines()
    category = MP_HEADER.index("merchant_category")
    for i, pasted in enumerate(_PASTED[:len(payments) - 1]):
        fields = payments[i + 1].split(",")
        fields[category] = f"call {pasted}"
        payments[i + 1] = ",".join(fields)
    (landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv").write_text(
        "\n".join(payments) + "\n", encoding="utf-8")

    runtime = open_runtime()
    outcomes = {f.path.rsplit("/", 1)[-1]: f for r in ingest_all_feeds(runtime, DAY)
                for f in r.files}

    loaded = outcomes["agri_coop_1.csv"]
    assert (loaded.status, loaded.rows_loaded) == ("accepted", 4)
    assert loaded.warnings == ["identifier-shaped text masked in coop_name: 4 value(s)"]
    with runtime.engine.connect() as conn:
        names = conn.execute(text("SELECT coop_name FROM raw_agri_coop")).scalars().all()
    assert names and not [n for n in names if _holds_phone(n)], names
    held = outcomes["mobile_payments_1.csv"]
    assert held.status == "quarantined"  # merchant_category's value set
    copies = list((puhui_env / "quarantine").rglob("*.parquet"))
    assert copies
    for copy in copies:
        values = pq.read_table(copy).column("merchant_category").to_pylist()
        assert not [v for v in values if _holds_phone(v)], values


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1.0e+400"])
def test_a_non_finite_number_in_a_config_is_one_line_naming_it(
    tmp_path: Path, value: str
) -> None:
    """Before: `min_auc_oot: .nan` (or any gate threshold) passed `config check`; a NaN
    threshold fails every comparison, so every model failed its gates, and an infinite
    one passed them all, with nothing said."""
    path = _edited(tmp_path, "models.yaml", "min_auc_oot: 0.75", f"min_auc_oot: {value}")
    with pytest.raises(PuhuiError, match="min_auc_oot") as caught:
        load_config_file(path, ModelsConfig)
    message = str(caught.value)
    assert message.startswith(f"{path}:") and "\n" not in message


def test_a_python_tag_in_a_config_is_one_line_and_never_runs(tmp_path: Path) -> None:
    """Found sound (kept): configs are read by a safe loader; a `!!python/object/apply` tag
    is one line naming the file, and nothing runs."""
    marker = tmp_path / "ran"
    path = _edited(tmp_path, "models.yaml", "min_auc_oot: 0.75",
                   f'min_auc_oot: !!python/object/apply:os.system ["touch {marker}"]')
    with pytest.raises(PuhuiError) as caught:
        load_config_file(path, ModelsConfig)
    assert str(caught.value).startswith(f"{path}:") and "\n" not in str(caught.value)
    assert not marker.exists()


def test_phones_typed_as_numbers_or_dictionaries_and_duplicate_keys_are_held(
    landing: Path, puhui_env: Path
) -> None:
    """Found sound (kept): a Parquet `customer_id` of int64 phone numbers or dictionary
    encoded phones is masked on the way in and held by its pattern (the copy masked); the
    same column twice is held as a duplicate name; a JSON line giving `amount_yuan` twice
    (a phone the second time) is refused by Arrow, held as malformed."""
    events = landing / "product_events" / DAY.isoformat()
    orders = landing / "ecommerce_orders" / DAY.isoformat()
    events.mkdir(parents=True)
    orders.mkdir(parents=True)
    table = HostileContext(DAY, 1, Path("."), set()).events_table(5)
    at = table.schema.get_field_index("customer_id")
    phones = [int(_PHONE) + i for i in range(5)]
    pq.write_table(table.set_column(at, "customer_id", pa.array(phones, pa.int64())),
                   events / "product_events_1_numbers.parquet")
    coded = pa.array([str(p) for p in phones]).dictionary_encode()
    pq.write_table(table.set_column(at, "customer_id", coded),
                   events / "product_events_2_dictionary.parquet")
    pq.write_table(table.append_column("customer_id", table.column("customer_id")),
                   events / "product_events_3_twice.parquet")
    order = {"order_id": "O1", "buyer_phone": "13812345678", "order_time": "2026-09-30T10:00:00",
             "amount_yuan": 1.0, "category_code": "A", "province": "P"}
    (orders / "ecommerce_orders_1.jsonl").write_text(
        json.dumps(order)[:-1] + f', "amount_yuan": {_PHONE}}}\n', encoding="utf-8")

    runtime = open_runtime()
    outcomes = {f.path.rsplit("/", 1)[-1]: f for r in ingest_all_feeds(runtime, DAY)
                for f in r.files}

    for name in ("product_events_1_numbers.parquet", "product_events_2_dictionary.parquet"):
        assert outcomes[name].status == "quarantined"
        assert outcomes[name].reason.startswith("critical: customer_id: 5 values"), name
    twice = outcomes["product_events_3_twice.parquet"]
    assert twice.reason == "duplicate column name(s) in the header: customer_id"
    malformed = outcomes["ecommerce_orders_1.jsonl"]
    assert (malformed.status, malformed.reason) == (
        "quarantined", "truncated or malformed: a line is not valid JSON")
    copies = list((puhui_env / "quarantine").rglob("*.parquet"))
    assert len(copies) == 2, copies  # the two held by a suite
    for copy in copies:
        values = pq.read_table(copy).to_pylist()
        assert not [v for v in values if str(int(_PHONE) // 10) in str(v)], values


@pytest.mark.parametrize("actor", ["13812345678", "+86 138 1234 5678", "110105198001010018",
                                   "ops\n2026-12-01 promoted", "ops\x1b[2J", "o" * 129])
def test_an_actor_the_trail_must_not_record_is_one_line_naming_it(
    puhui_env: Path, monkeypatch: pytest.MonkeyPatch, actor: str
) -> None:
    """Before: PUHUI_ACTOR (or the OS login) was recorded as it was in every audit event: a
    login that is the operator's mobile number went raw into audit_log (read by auditors and
    BI), and a line break or escape into `audit log`'s lines."""
    monkeypatch.setenv("PUHUI_ACTOR", actor)
    with pytest.raises(PuhuiError, match=r"^PUHUI_ACTOR (looks like|holds|is longer)") as caught:
        load_settings()
    assert "\n" not in str(caught.value) and actor not in str(caught.value)


def test_ordinary_actors_are_recorded_as_they_are(
    puhui_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for actor in ("ops.lee@corp.example", "李雷", "svc-puhui-01", "Lee Lei"):
        monkeypatch.setenv("PUHUI_ACTOR", actor)
        assert load_settings().actor == actor


def test_a_reason_or_event_with_controls_is_refused_or_shown_inert(
    puhui_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: `--reason $'ok\\e[2J\\n2026-12-01 ops promoted v9'` was recorded and `audit log`
    printed it as it was (Rich passes escapes and breaks the cell into a second line): a
    cleared screen and a forged event line. Now refused in one line, and `audit log` shows an
    event recorded so earlier (or by hand) escaped."""
    from puhui.cli import main

    forged = "ok\x1b[2J\n2026-12-01 ops promoted v9"
    for argv in (["quarantine", "reject", "mobile_payments-2026", "--reason", forged],
                 ["models", "rollback", "credit_risk", "--reason", "ok\u202eevil"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("puhui: error: --reason holds control or invisible"), err
        assert len(err.strip().splitlines()) == 1
    runtime = open_runtime()
    runtime.audit.record(runtime.engine, "quarantine.reject", f"batch-1{forged}",
                         {"reason": forged})
    assert main(["audit", "log"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "batch-1ok\\x1b[2J\\x0a2026-12-01" in out
    assert not [line for line in out.splitlines() if line.lstrip().startswith("2026-12-01")]


@pytest.mark.parametrize(("option", "message"), [
    ("--users", "must be at most 10,000,000"),
    ("--days", "goes back before 2020-01-01"),
    ("--history-days", "puts the history's start"),
])
def test_a_huge_generator_number_is_a_usage_error_naming_its_option(
    option: str, message: str, tmp_path: Path, puhui_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: `--users 99999999999999999999` was numpy's `OverflowError: Python int too large
    to convert to C long`, `--days 99999999999` the timeline's, naming no option."""
    from puhui.cli import main

    assert main(["generate", "--out", str(tmp_path / "zone"), option,
                 "99999999999999999999"]) == 2
    err = capsys.readouterr().err
    assert f"Invalid value for '{option}': {message}" in err and "Overflow" not in err
    assert len(err.strip().splitlines()) == 1


def _mobile_payments_feed() -> PartnerFeed:
    return load_config(repo_root() / "configs", PartnersConfig).get("mobile_payments")


def test_a_quoted_cr_in_a_header_name_is_kept_and_a_huge_name_is_named(tmp_path: Path) -> None:
    """Before (this round's first mend): the header was cut at its first CR, inside quotes
    too, so `"amount\\ryuan",id` read as the one column `amount` (held as missing columns,
    the reason not saying why), and a name over csv's field limit said "a line break
    inside a quoted name"."""
    feed = _mobile_payments_feed()
    path = tmp_path / "quoted.csv"
    path.write_bytes(b'"amount\ryuan","a ""b""\r",id\r1,2,3\r')
    assert read_csv_header(open_landed_file(str(path)), feed) == ["amount\ryuan", 'a "b"\r', "id"]
    path.write_bytes(b'"' + b"x" * 200_000 + b'",id\n1,2\n')
    with pytest.raises(UnreadableFile, match=r"^malformed header: a name over 131,072 "):
        read_csv_header(open_landed_file(str(path)), feed)


@pytest.mark.parametrize("block", [2, 3, 8 << 20])
def test_a_held_csv_counts_cr_and_crlf_line_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """Before: the byte count behind a held, unparseable file's `rows` saw only LF, so a
    CR-only file with a ragged row counted 0 rows (4 with LF)."""
    from puhui.ingest import reading

    monkeypatch.setattr(reading, "_HASH_BLOCK", block)
    feed = _mobile_payments_feed()
    path = tmp_path / "held.csv"
    for data, rows in [(b"a,b\r1,2\r3\r4,5\r6,7\r", 4), (b"a,b\r\n1,2\r\n3\r\n4,5", 3),
                       (b"a,b\n1,2\r3\r\n4\n5,6\r\n", 4)]:
        path.write_bytes(data)
        handle = open_landed_file(str(path))
        assert (reading.count_data_rows(handle, feed),
                reading.count_parsed_rows(handle, feed)) == (rows, rows), data


def test_a_reason_or_actor_holding_a_password_is_refused_as_that(
    puhui_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the control-character check compared with `printable`, which masks passwords
    too, so `--reason 'reset pwd=default per OPS-12'` (or such an actor) was refused as
    holding "control or invisible characters", which it does not."""
    from puhui.cli import main
    from puhui.privacy import has_control_characters

    assert main(["quarantine", "reject", "mobile_payments-2026", "--reason",
                 "reset pwd=default per OPS-12"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("puhui: error: --reason holds what looks like a password"), err
    monkeypatch.setenv("PUHUI_ACTOR", "ops pwd=default")
    with pytest.raises(PuhuiError, match="^PUHUI_ACTOR holds what looks like a password"):
        load_settings()
    assert not has_control_characters("李雷\u00a0pwd=x 13812345678")
    assert has_control_characters("ok\u200dx") and has_control_characters("a\rb")


@pytest.mark.parametrize(("old", "new", "key"), [
    ("learning_rate: 0.02", "learning_rate: .nan", "credit_risk.lightgbm.params"),
    ("eval_at: [3]", "eval_at: [3, .inf]", "product_recommender.lightgbm"),
])
def test_a_non_finite_lightgbm_parameter_is_one_line_naming_it(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    """Before: refused as pydantic's union noise under internal names
    (`...learning_rate.bool: Input should be a valid boolean (+4 more)`)."""
    path = _edited(tmp_path, "models.yaml", old, new)
    with pytest.raises(PuhuiError) as caught:
        load_config_file(path, ModelsConfig)
    message = str(caught.value)
    name = new.split(":", 1)[0]
    assert message.endswith(f"{key}: Value error, {name}: must be a finite number"), message
    assert ".bool" not in message and "\n" not in message


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--seed", "-1", "must not be negative"),
    ("--rural-agri-boost", "inf", "must be a finite number"),
])
def test_a_non_finite_boost_or_negative_seed_is_a_usage_error_naming_it(
    option: str, value: str, message: str, tmp_path: Path, puhui_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: `--rural-agri-boost inf` passed the option's minimum and wrote `Infinity`
    (not JSON) into truth.json; `--seed -1` was numpy's bare ValueError (exit 1)."""
    from puhui.cli import main

    assert main(["generate", "--out", str(tmp_path / "zone"), option, value]) == 2
    err = capsys.readouterr().err
    assert f"Invalid value for '{option}': {message}" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "zone").exists()


@pytest.mark.parametrize(("start", "message"), [
    ("0001-01-01", "gives 739,889 dates, over 366, each a full pipeline run: add --yes"),
    ("2024-01-01", "gives 1,004 dates, over 366, each a full pipeline run: add --yes"),
])
def test_a_backfill_from_long_ago_is_a_usage_error_naming_start(
    start: str, message: str, puhui_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: `backfill --start 0001-01-01` was accepted: ~740,000 full pipeline runs, each
    date then marked completed for good ("resumable" undoes none of it)."""
    from puhui.cli import main

    assert main(["backfill", "--start", start, "--end", "2026-09-30"]) == 2
    err = capsys.readouterr().err
    assert f"Invalid value for '--start': {message}" in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("number", ["𝟏𝟑𝟗𝟖𝟕𝟔𝟓𝟒𝟑𝟐𝟏", "١٣٩٨٧٦٥٤٣٢١", "۱۳۹ ۸۷۶۵ ۴۳۲۱", "१३९८७६५४३२१"])
def test_digits_outside_ascii_and_full_width_are_identifier_digits(number: str) -> None:
    """Before: the shapes knew ASCII and full-width digits only, so a phone pasted as
    mathematical bold ("styled text") or in Arabic-Indic, Persian or Devanagari digits was
    found neither in reasons and actors (Python) nor in ingested free text (RE2)."""
    from puhui.privacy import (
        count_identifiers_in_column,
        find_raw_identifiers,
        mask_identifiers_in_column,
        scrub_text,
    )

    assert find_raw_identifiers(f"call {number}") == ["phone number"]
    assert number not in scrub_text(f"call {number}")
    column = pa.array([f"call {number} now", "GROCERY 12"])
    assert count_identifiers_in_column(column) == 1
    assert mask_identifiers_in_column(column).to_pylist() == [
        "call [identifier masked] now", "GROCERY 12"]
    assert not find_raw_identifiers("price ١٢٣ yuan, 2026-09-30T10:00:00+08:00")
