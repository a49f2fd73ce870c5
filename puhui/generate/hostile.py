"""Hostile partner files: bytes that must never stop an ingest run or leak an identifier.

Each :class:`HostileCase` is one landed file with the outcome ingestion owes it (the
``expect`` vocabulary of ``faults.json``: held, duplicate, warned, tolerated; ``accepted``
for the clean files mixed in). The files are small (the 10 MB field aside) so a whole zone
ingests in seconds; tests ingest all of them in one run and check the ledger invariants,
and the identifiers planted in them (phones and national IDs in every shape, valid or not)
are returned so a test can search every store for them.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from puhui.identifiers import national_id_check_digit

MP_HEADER = [
    "txn_id", "payer_phone", "txn_time", "txn_type", "amount", "merchant_category",
    "days_past_due", "status",
]
CUSTOMER_HEADER = [
    "customer_id", "national_id", "phone", "gender", "birth_date", "region_type", "province",
    "occupation", "income_band", "onboard_date", "personalisation_opt_out",
]
BIG_FIELD_BYTES = 10 << 20

# Raw identifiers planted where they do not belong (all must stay out of every store).
PLANTED_PHONE_DASHES = "138-1234-5678"
PLANTED_PHONE_DOTS = "138.1234.5678"
PLANTED_PHONE_PLUS86 = "+86 139 8765 4321"
PLANTED_PHONE_HEADER = "13700001111"
_ID_BODY = "11010519491231002"
PLANTED_ID_VALID = _ID_BODY + national_id_check_digit(_ID_BODY)
PLANTED_ID_WRONG_CHECK = _ID_BODY + ("1" if national_id_check_digit(_ID_BODY) != "1" else "2")


@dataclass(frozen=True)
class HostileCase:
    """One landed file: which feed, its name, how its bytes are made, what ingest owes it."""

    fault: str
    partner: str
    filename: str
    expect: str  # held / duplicate / warned / tolerated / accepted
    make: Callable[[HostileContext], bytes | None]  # None: the case writes itself (symlink)


@dataclass
class HostileContext:
    day: date
    case_number: int
    folder: Path  # the feed's delivery folder for ``day``
    identifiers: set[str]  # every raw identifier written, for the leak scans

    # ----------------------------------------------------------------- clean rows
    def phone(self, i: int) -> str:
        value = f"139{self.case_number:04d}{i:04d}"
        self.identifiers.add(value)
        return value

    def national_id(self, i: int) -> str:
        d = i % 9 + 1
        body = f"110105198{d}0{d}1{d}{self.case_number % 10}{i % 10}{i % 7}"
        value = body + national_id_check_digit(body)
        self.identifiers.add(value)
        return value

    def payment_rows(self, n: int = 5) -> list[list[str]]:
        return [
            [
                f"T{self.case_number:04d}{i:012d}", self.phone(i),
                f"{self.day}T10:{i % 60:02d}:00+08:00", "BILL_PAY", f"{12.5 + i:.2f}",
                "GROCERY", "0", "SUCCESS",
            ]
            for i in range(n)
        ]

    def customer_rows(self, n: int = 5) -> list[list[str]]:
        return [
            [
                f"C{self.case_number:03d}{i:06d}", self.national_id(i), self.phone(i), "M",
                "1980-01-01", "rural", "北京", "farmer", "low", str(self.day), str(i % 2),
            ]
            for i in range(n)
        ]

    def order(self, i: int) -> dict[str, object]:
        return {
            "order_id": f"O{self.case_number:04d}{i:012d}",
            "buyer_phone": self.phone(i),
            "order_time": f"{self.day}T09:{i % 60:02d}:00+08:00",
            "amount_yuan": 10.5 + i,
            "category_code": "GROCERY",
            "province": "北京",
        }

    def events_table(self, n: int = 5) -> pa.Table:
        return pa.table(
            {
                "event_id": [f"E{self.case_number:04d}{i:012d}" for i in range(n)],
                "customer_id": [f"C{self.case_number:03d}{i:06d}" for i in range(n)],
                "event_time": pa.array(
                    [f"{self.day}T08:00:0{i % 10}+08:00" for i in range(n)]
                ),
                "product_code": ["microloan"] * n,
                "scenario": ["WALLET"] * n,
                "event_type": ["click"] * n,
            }
        )


def csv_bytes(header: list[str], rows: list[list[str]], newline: str = "\n") -> bytes:
    lines = [",".join(header)] + [",".join(row) for row in rows]
    return (newline.join(lines) + newline).encode("utf-8")


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _jsonl(rows: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _with(rows: list[list[str]], row: int, column: str, value: str) -> list[list[str]]:
    rows[row][MP_HEADER.index(column)] = value
    return rows


# ------------------------------------------------------------------------------ the cases
def _clean_payments(c: HostileContext) -> bytes:
    return csv_bytes(MP_HEADER, c.payment_rows())


def _duplicate_header(c: HostileContext) -> bytes:
    rows = [r + [r[3], r[4]] for r in c.payment_rows()]
    return csv_bytes([*MP_HEADER, "txn_type", "amount"], rows)


def _no_header(c: HostileContext) -> bytes:
    rows = c.payment_rows()
    rows[0][1] = PLANTED_PHONE_HEADER  # the first line's "names" are a person's data
    c.identifiers.add(PLANTED_PHONE_HEADER)
    return csv_bytes(rows[0], rows[1:])


def _phone_in_days_past_due(c: HostileContext) -> bytes:
    return csv_bytes(MP_HEADER, _with(c.payment_rows(), 2, "days_past_due", PLANTED_PHONE_DASHES))


def _phone_dots_in_amount(c: HostileContext) -> bytes:
    return csv_bytes(MP_HEADER, _with(c.payment_rows(), 1, "amount", PLANTED_PHONE_DOTS))


def _plus86_in_text(c: HostileContext) -> bytes:
    rows = _with(c.payment_rows(), 3, "merchant_category", f'"{PLANTED_PHONE_PLUS86}"')
    return csv_bytes(MP_HEADER, rows)


def _id_in_text(c: HostileContext) -> bytes:
    rows = _with(c.payment_rows(), 0, "merchant_category", PLANTED_ID_VALID)
    return csv_bytes(MP_HEADER, rows)


def _wrong_check_digit(c: HostileContext) -> bytes:
    rows = c.customer_rows()
    for row in rows:
        row[1] = PLANTED_ID_WRONG_CHECK
    return csv_bytes(CUSTOMER_HEADER, rows)


def _header_only(c: HostileContext) -> bytes:
    return csv_bytes(MP_HEADER, [])


def _truncated_gzip(c: HostileContext) -> bytes:
    packed = gzip.compress(_clean_payments(c) * 20)
    return packed[: len(packed) // 2]


def _wrong_delimiter(c: HostileContext) -> bytes:
    return _clean_payments(c).replace(b",", b";")


def _nul_bytes(c: HostileContext) -> bytes:
    return csv_bytes(MP_HEADER, _with(c.payment_rows(), 1, "merchant_category", "GRO\0CERY"))


def _big_field(c: HostileContext) -> bytes:
    return csv_bytes(MP_HEADER, _with(c.payment_rows(), 2, "txn_type", "A" * BIG_FIELD_BYTES))


def _mixed_line_endings(c: HostileContext) -> bytes:
    lines = [",".join(MP_HEADER)] + [",".join(r) for r in c.payment_rows(6)]
    ends = ["\r\n", "\n", "\r\n", "\n", "\r\n", "\n", "\r\n"]
    return "".join(line + end for line, end in zip(lines, ends, strict=True)).encode()


def _utf8_bom(c: HostileContext) -> bytes:
    return b"\xef\xbb\xbf" + _clean_payments(c)


def _utf16(c: HostileContext, big: bool) -> bytes:
    text = _clean_payments(c).decode()
    return (b"\xfe\xff" + text.encode("utf-16-be")) if big else (
        b"\xff\xfe" + text.encode("utf-16-le")
    )


def _huge_header(c: HostileContext) -> bytes:
    extra = [f"extra_{k:05d}" for k in range(3000)]
    rows = [r + [""] * len(extra) for r in c.payment_rows()]
    return csv_bytes(MP_HEADER + extra, rows)


def _formula_values(c: HostileContext) -> bytes:
    rows = _with(c.payment_rows(), 1, "merchant_category", "\"=cmd|' /C calc'!A0\"")
    return csv_bytes(MP_HEADER, _with(rows, 2, "txn_type", "@SUM(1+1)*cmd|' /C calc'!A0"))


def _binary_garbage(c: HostileContext) -> bytes:
    return random.Random(c.case_number).randbytes(4096)


def _wrong_encoding(c: HostileContext) -> bytes:
    text = csv_bytes(CUSTOMER_HEADER, c.customer_rows()).decode("utf-8")
    return text.encode("gbk")  # 北京 in GBK where the feed is UTF-8


def _quoted_newline(c: HostileContext) -> bytes:
    return csv_bytes(MP_HEADER, _with(c.payment_rows(), 2, "merchant_category", '"GRO\nCERY"'))


def _trailing_delimiter(c: HostileContext) -> bytes:
    return csv_bytes([*MP_HEADER, ""], [[*r, ""] for r in c.payment_rows()])


def _very_long_line(c: HostileContext) -> bytes:
    rows = c.payment_rows()
    rows[1] = rows[1] + ["x"] * 200_000
    return csv_bytes(MP_HEADER, rows)


def _invalid_utf8_mid_file(c: HostileContext) -> bytes:
    data = csv_bytes(MP_HEADER, c.payment_rows(200))
    middle = len(data) // 2
    return data[:middle] + b"\xc3\x28\xff" + data[middle:]


def _short_row(c: HostileContext) -> bytes:
    data = _clean_payments(c).rstrip(b"\n")
    return data[: data.rfind(b",")]  # the last row lost its last field


def _phone_shaped_column_name(c: HostileContext) -> bytes:
    c.identifiers.add("13600002222")
    return csv_bytes([*MP_HEADER, "13600002222"], [[*r, "x"] for r in c.payment_rows()])


def _quoted_header(c: HostileContext) -> bytes:
    header = [f'"{h}"' for h in MP_HEADER]
    return csv_bytes(header, c.payment_rows())


def _clean_customers(c: HostileContext) -> bytes:
    return csv_bytes(CUSTOMER_HEADER, c.customer_rows())


def _clean_orders(c: HostileContext) -> bytes:
    return _jsonl([c.order(i) for i in range(5)])


def _jsonl_broken_line(c: HostileContext) -> bytes:
    return _clean_orders(c) + b'{"order_id": "O000\n'


def _json_array(c: HostileContext) -> bytes:
    return json.dumps([c.order(i) for i in range(5)], ensure_ascii=False).encode()


def _jsonl_phone_in_amount(c: HostileContext) -> bytes:
    rows = [c.order(i) for i in range(5)]
    rows[2]["amount_yuan"] = PLANTED_PHONE_DASHES
    return _jsonl(rows)


def _clean_events(c: HostileContext) -> bytes:
    return _parquet(c.events_table())


def _corrupt_parquet(c: HostileContext) -> bytes:
    return b"PAR1" + random.Random(c.case_number).randbytes(2048) + b"PAR1"


def _truncated_parquet(c: HostileContext) -> bytes:
    data = _parquet(c.events_table(50))
    return data[: len(data) // 2]


def _parquet_missing_column(c: HostileContext) -> bytes:
    return _parquet(c.events_table().drop_columns(["scenario"]))


def _empty(c: HostileContext) -> bytes:
    return b""


def _only_whitespace(c: HostileContext) -> bytes:
    return b"   \n\t\n  \r\n"


def _duplicate_of_clean(c: HostileContext) -> bytes:
    return (c.folder / "mobile_payments_00_clean.csv").read_bytes()


def _symlink(c: HostileContext) -> None:
    link = c.folder / "mobile_payments_zz_symlink.csv"
    os.symlink(c.folder / "mobile_payments_00_clean.csv", link)


MP, CU, EC, PE = "mobile_payments", "customers", "ecommerce_orders", "product_events"

CASES: tuple[HostileCase, ...] = (
    # clean files first in each folder (names sort first): the duplicate copies one
    HostileCase("clean", MP, "mobile_payments_00_clean.csv", "accepted", _clean_payments),
    HostileCase("clean", CU, "customers_00_clean.csv", "accepted", _clean_customers),
    HostileCase("clean", EC, "ecommerce_orders_00_clean.jsonl", "accepted", _clean_orders),
    HostileCase("clean", PE, "product_events_00_clean.parquet", "accepted", _clean_events),
    HostileCase("duplicate_header", MP, "mobile_payments_dup_header.csv", "held",
                _duplicate_header),
    HostileCase("no_header", MP, "mobile_payments_no_header.csv", "held", _no_header),
    HostileCase("phone_in_numeric", MP, "mobile_payments_phone_dpd.csv", "held",
                _phone_in_days_past_due),
    HostileCase("phone_dots_in_numeric", MP, "mobile_payments_phone_dots.csv", "held",
                _phone_dots_in_amount),
    HostileCase("phone_plus86_in_text", MP, "mobile_payments_plus86.csv", "held",
                _plus86_in_text),
    HostileCase("national_id_in_text", MP, "mobile_payments_id_text.csv", "held", _id_in_text),
    HostileCase("id_wrong_check_digit", CU, "customers_wrong_check.csv", "held",
                _wrong_check_digit),
    HostileCase("empty_file", MP, "mobile_payments_empty.csv", "held", _empty),
    HostileCase("only_whitespace", MP, "mobile_payments_whitespace.csv", "held",
                _only_whitespace),
    HostileCase("header_only", MP, "mobile_payments_header_only.csv", "tolerated",
                _header_only),
    HostileCase("truncated_gzip", MP, "mobile_payments_gzip.csv", "held", _truncated_gzip),
    HostileCase("wrong_delimiter", MP, "mobile_payments_semicolon.csv", "held",
                _wrong_delimiter),
    HostileCase("nul_bytes", MP, "mobile_payments_nul.csv", "held", _nul_bytes),
    HostileCase("big_field", MP, "mobile_payments_big_field.csv", "held", _big_field),
    HostileCase("mixed_line_endings", MP, "mobile_payments_line_ends.csv", "tolerated",
                _mixed_line_endings),
    HostileCase("utf8_bom", MP, "mobile_payments_bom8.csv", "tolerated", _utf8_bom),
    HostileCase("utf16le_bom", MP, "mobile_payments_bom16le.csv", "held",
                lambda c: _utf16(c, big=False)),
    HostileCase("utf16be_bom", MP, "mobile_payments_bom16be.csv", "held",
                lambda c: _utf16(c, big=True)),
    HostileCase("huge_header", MP, "mobile_payments_huge_header.csv", "warned", _huge_header),
    HostileCase("formula_values", MP, "mobile_payments_formula.csv", "held", _formula_values),
    HostileCase("binary_garbage", MP, "mobile_payments_garbage.csv", "held", _binary_garbage),
    HostileCase("wrong_encoding", CU, "customers_gbk.csv", "held", _wrong_encoding),
    HostileCase("quoted_newline", MP, "mobile_payments_quoted_newline.csv", "held",
                _quoted_newline),
    HostileCase("trailing_delimiter", MP, "mobile_payments_trailing_comma.csv", "warned",
                _trailing_delimiter),
    HostileCase("very_long_line", MP, "mobile_payments_long_line.csv", "held",
                _very_long_line),
    HostileCase("invalid_utf8_mid_file", MP, "mobile_payments_bad_utf8.csv", "held",
                _invalid_utf8_mid_file),
    HostileCase("short_row", MP, "mobile_payments_short_row.csv", "held", _short_row),
    HostileCase("phone_shaped_column_name", MP, "mobile_payments_phone_column.csv", "warned",
                _phone_shaped_column_name),
    HostileCase("quoted_header", MP, "mobile_payments_quoted_header.csv", "tolerated",
                _quoted_header),
    HostileCase("jsonl_broken_line", EC, "ecommerce_orders_broken.jsonl", "held",
                _jsonl_broken_line),
    HostileCase("json_array", EC, "ecommerce_orders_array.jsonl", "held", _json_array),
    HostileCase("jsonl_phone_in_numeric", EC, "ecommerce_orders_phone_amount.jsonl", "held",
                _jsonl_phone_in_amount),
    HostileCase("empty_jsonl", EC, "ecommerce_orders_empty.jsonl", "held", _empty),
    HostileCase("zero_length_parquet", PE, "product_events_empty.parquet", "held", _empty),
    HostileCase("corrupt_parquet", PE, "product_events_corrupt.parquet", "held",
                _corrupt_parquet),
    HostileCase("truncated_parquet", PE, "product_events_truncated.parquet", "held",
                _truncated_parquet),
    HostileCase("parquet_missing_column", PE, "product_events_missing.parquet", "held",
                _parquet_missing_column),
    HostileCase("duplicate_delivery", MP, "mobile_payments_zy_duplicate.csv", "duplicate",
                _duplicate_of_clean),
    HostileCase("symlink", MP, "mobile_payments_zz_symlink.csv", "held", lambda c: None),
)


@dataclass(frozen=True)
class HostileZone:
    """What :func:`write_hostile_landing` wrote."""

    entries: list[dict[str, str]]  # {"path", "fault", "expect"} per file, clean ones too
    identifiers: set[str]  # every raw identifier in the files, as written


def write_hostile_landing(root: Path, day: date) -> HostileZone:
    """Write every case under ``root/<partner>/<day>/`` and ``root/faults.json``.

    ``faults.json`` lists the hostile files (the contract's format); the clean files are
    accepted. Returns every entry (clean ones with ``expect: accepted``) and the raw
    identifiers written, planted or clean, for leak scans.
    """
    identifiers: set[str] = {
        PLANTED_PHONE_DASHES, PLANTED_PHONE_DOTS, PLANTED_PHONE_PLUS86, PLANTED_ID_VALID,
        PLANTED_ID_WRONG_CHECK,
    }
    entries = []
    for number, case in enumerate(CASES, start=1):
        folder = root / case.partner / day.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        context = HostileContext(day, number, folder, identifiers)
        if case.fault == "symlink":
            _symlink(context)
        else:
            data = case.make(context)
            assert data is not None
            (folder / case.filename).write_bytes(data)
        path = (folder / case.filename).relative_to(root).as_posix()
        entries.append({"path": path, "fault": case.fault, "expect": case.expect})
    faults = [e for e in entries if e["expect"] != "accepted"]
    (root / "faults.json").write_text(json.dumps(faults, indent=1))
    return HostileZone(entries, identifiers)
