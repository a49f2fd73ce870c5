"""After the demo, no raw national ID or phone number is anywhere but the partner's landing zone.

The demo runs for real in a child process (generator, Prefect, GX, warehouse); then every file
under PUHUI_HOME (warehouse, Prefect's database, GX results, quarantine copies, MLflow store)
and the console output are searched for the generator's known identifiers.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from puhui.identifiers import normalize_phone
from tests.conftest import DemoRun

_ID_TOKEN = re.compile(rb"\d{17}[\dXx]")
_PHONE_TOKEN = re.compile(rb"(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}")


def _known_identifiers(landing: Path) -> tuple[set[str], set[str]]:
    ids, phones = set(), set()
    for path in landing.glob("customers/*/*.csv"):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            continue  # the planted wrong-encoding file
        for row in csv.DictReader(text.splitlines()):
            if row.get("national_id"):
                ids.add(row["national_id"].upper())
            if row.get("phone") and normalize_phone(row["phone"]):
                phones.add(normalize_phone(row["phone"]))
    return ids, phones


def _leaks(data: bytes, ids: set[str], phones: set[str]) -> list[str]:
    found = [t.decode().upper() for t in _ID_TOKEN.findall(data) if t.decode().upper() in ids]
    found += [
        t.decode() for t in _PHONE_TOKEN.findall(data) if normalize_phone(t.decode()) in phones
    ]
    return found


def _readable_bytes(path: Path) -> bytes:
    """File bytes; Parquet is decoded first (its pages are compressed)."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        return "\n".join(str(v) for col in table.columns for v in col.to_pylist()).encode()
    return path.read_bytes()


@pytest.mark.slow
def test_demo_leaves_no_raw_identifier_outside_the_landing_zone(piped_demo: DemoRun) -> None:
    # The demo run (landing zone outside its home) is shared with test_console.py (conftest).
    done, home, landing = piped_demo, piped_demo.home, piped_demo.landing
    assert done.returncode == 0, done.stderr[-3000:]
    assert "demo done" in done.stdout and "warehouse" in done.stdout

    ids, phones = _known_identifiers(landing)
    assert len(ids) > 1000 and len(phones) > 1000, "the scan needs the generator's values"
    scanned = 0
    leaks: dict[str, list[str]] = {}
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        found = _leaks(_readable_bytes(path), ids, phones)
        scanned += 1
        if found:
            leaks[str(path.relative_to(home))] = found[:3]
    console = (done.stdout + done.stderr).encode()
    if found := _leaks(console, ids, phones):
        leaks["<console output>"] = found[:3]
    assert scanned >= 5 and (home / "warehouse.db").exists()
    assert leaks == {}, f"raw identifiers found: {leaks}"

    # The check can fail: the landing zone itself is full of them.
    sample = next(landing.glob("customers/*/customers_*_h*.csv"))
    assert _leaks(sample.read_bytes(), ids, phones)


# ------------------------------------------------------------------------------ guard units
@pytest.mark.parametrize(
    "text_, kind",
    [
        ("13812345678", "phone number"),
        ("call 138-1234-5678 now", "phone number"),
        ("138.1234.5678", "phone number"),  # dots: missed before (issue 10)
        ("138 1234 5678", "phone number"),
        ("+86 138 1234 5678", "phone number"),
        ("+8613812345678", "phone number"),
        ("0086-138-1234-5678", "phone number"),
        ('{"reason": "13812345678"}', "phone number"),
        ("11010519491231002X", "national ID"),  # valid check digit
        ("110105194912310021", "national ID"),  # wrong check digit: missed before
        ("11010519491231002x", "national ID"),
        ("110105 19491231 002X", "national ID"),
    ],
)
def test_guard_fails_closed_on_anything_identifier_shaped(text_: str, kind: str) -> None:
    from puhui.privacy import find_raw_identifiers, scrub_text

    assert kind in find_raw_identifiers(text_)
    scrubbed = scrub_text(text_)
    assert find_raw_identifiers(scrubbed) == [], scrubbed
    assert not re.search(r"\d", scrubbed.replace("+", "")), "digits left after masking"


@pytest.mark.parametrize(
    "text_",
    [
        "0.012345678901234567",  # a float's fraction
        "0.13812345678",
        "T0013812345678901",  # a transaction id: letters touch the digits
        "a" * 64,
        "2026-09-30T10:00:00+08:00",
        "mobile_payments-20260930-1a2b3c4d5e6f",
        "rows 1,234,567 loaded",
        "5f0e1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100",
    ],
)
def test_guard_does_not_flag_floats_ids_and_hashes(text_: str) -> None:
    from puhui.privacy import find_raw_identifiers

    assert find_raw_identifiers(text_) == []


def test_mask_shape_keeps_the_shape_and_caps_the_length() -> None:
    from puhui.privacy import mask_shape, safe_name

    assert mask_shape("138-1234-5678") == "ddd-dddd-dddd"
    assert mask_shape("Ab 1") == "aa d"
    assert mask_shape("北京9") == "aad"
    assert mask_shape("a\nb\x00") == "a\\na?"
    big = mask_shape("A" * (10 << 20))
    assert big.startswith("a" * 24) and "(+10485736 chars)" in big and len(big) < 64
    assert safe_name("amount") == "amount"
    assert safe_name("13812345678") == "'ddddddddddd'"
    assert safe_name("名字 x") == "'aa a'"


def test_error_line_is_the_scrubbed_first_line_of_an_exception() -> None:
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    from puhui.privacy import error_line

    driver = ConnectionError("refused for 138-1234-5678\n" + "detail " * 100)
    assert error_line(OperationalError("SELECT 1", {}, driver)) == "refused for ddd-dddd-dddd"
    assert error_line(MlflowException("x" * 300 + "\nsecond")) == "x" * 200
    # A blank message raised IndexError (''.splitlines()[0]) instead of the one-line error.
    assert error_line(MlflowException(" \n ")) == error_line(RuntimeError()) == ""


def test_audit_guard_refuses_shapes_it_used_to_let_through(warehouse_url: str) -> None:
    """138.1234.5678 and an ID with a wrong check digit were written into the trail."""
    from puhui.audit import AuditWriter
    from puhui.warehouse.engine import get_engine, upgrade_schema

    engine = get_engine(warehouse_url)
    upgrade_schema(engine)
    writer = AuditWriter(actor="test", config_hash="x")
    for value in ("138.1234.5678", "110105194912310021"):
        with engine.begin() as conn, pytest.raises(ValueError, match="raw"):
            writer.append(conn, "ingest.quarantined", "b1", {"reason": f"bad {value}"})


def test_log_records_reaching_prefect_handlers_are_masked(prefect_harness: None) -> None:
    """A traceback quoting a phone number is masked in every handler's output."""
    import io

    from puhui.privacy import install_log_scrubbing

    install_log_scrubbing()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    try:
        install_log_scrubbing()  # a handler added later is covered by the next call
        try:
            raise KeyError("row 138-1234-5678 / 110105194912310021 is bad")
        except KeyError:
            logging.getLogger("puhui.ingest").error(
                "failed on %s", "+86 139 8765 4321", exc_info=True
            )
    finally:
        logging.getLogger().removeHandler(handler)
    output = stream.getvalue()
    assert "failed on" in output and "KeyError" in output
    assert "138-1234-5678" not in output and "8765 4321" not in output
    assert "110105194912310021" not in output and "ddd-dddd-dddd" in output
