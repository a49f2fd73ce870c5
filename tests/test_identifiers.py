"""National ID check digits and validity, phone normalization: scalar and vectorized."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from puhui.identifiers import (
    is_valid_national_id,
    national_id_birth_date,
    national_id_check_digit,
    normalize_phone,
    normalize_phones,
    valid_national_id_mask,
)

# Examples from GB 11643-1999 and widely published test IDs.
KNOWN_VALID = ["11010519491231002X", "440524188001010014", "110101199003074477"]


@pytest.mark.parametrize("national_id", KNOWN_VALID)
def test_check_digit_of_known_valid_ids(national_id: str) -> None:
    assert national_id_check_digit(national_id[:17]) == national_id[17]
    assert is_valid_national_id(national_id)


def test_check_digit_x_and_rejects_bad_input() -> None:
    assert national_id_check_digit("11010519491231002") == "X"
    with pytest.raises(ValueError):
        national_id_check_digit("1101051949123100")
    with pytest.raises(ValueError):
        national_id_check_digit("1101051949123100A")


@pytest.mark.parametrize(
    "value",
    [
        "110105194912310021",  # wrong check digit
        "11010519491231002",  # 17 characters
        "11010519491231002XX",  # 19 characters
        "11010519490230002X",  # 30 February
        "110105194913310021",  # month 13
        "11010519491231002x",  # lower-case x is not the standard form
        "1101051949123100 X",
        "",
    ],
)
def test_invalid_national_ids(value: str) -> None:
    assert not is_valid_national_id(value)
    assert not valid_national_id_mask([value])[0]


def test_birth_date_and_as_of() -> None:
    assert national_id_birth_date("11010519491231002X") == date(1949, 12, 31)
    assert not is_valid_national_id("110101199003074477", as_of=date(1980, 1, 1))
    assert is_valid_national_id("110101199003074477", as_of=date(2026, 1, 1))


def test_leap_day_birth_dates() -> None:
    body = "11010520000229001"  # 2000 is a leap year
    assert is_valid_national_id(body + national_id_check_digit(body))
    body = "11010519000229001"  # 1900 is not
    assert not is_valid_national_id(body + national_id_check_digit(body))
    assert not valid_national_id_mask([body + national_id_check_digit(body)])[0]


def test_vectorized_mask_agrees_with_scalar() -> None:
    rng = np.random.default_rng(0)
    values: list[str | None] = []
    for _ in range(500):
        area = "".join(str(d) for d in rng.integers(0, 10, 6))
        body = area + "19" + f"{rng.integers(0, 100):02d}"
        body += f"{rng.integers(1, 14):02d}{rng.integers(1, 32):02d}{rng.integers(0, 1000):03d}"
        check = national_id_check_digit(body)
        values.append(body + (check if rng.random() < 0.7 else str(rng.integers(0, 10))))
    values += [None, "abc", *KNOWN_VALID]
    expected = [v is not None and is_valid_national_id(v) for v in values]
    assert valid_national_id_mask(values).tolist() == expected
    assert valid_national_id_mask(pd.Series(values, dtype="str")).tolist() == expected
    sliced = pa.array(values)[3:]
    assert valid_national_id_mask(sliced).tolist() == expected[3:]
    assert valid_national_id_mask(pa.chunked_array([values[:10], values[10:]])).tolist() == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("13812345678", "13812345678"),
        ("+86 138 1234 5678", "13812345678"),
        ("138-1234-5678", "13812345678"),
        ("0086 13812345678", "13812345678"),
        ("8613812345678", "13812345678"),
        ("+86-138-1234-5678", "13812345678"),
        (" 138 1234 5678 ", "13812345678"),
        ("(138) 1234-5678", "13812345678"),
        ("12812345678", None),  # second digit must be 3-9
        ("1381234567", None),  # 10 digits
        ("138123456789", None),  # 12 digits
        ("86138123456", None),  # "86" + 9 digits is not a mobile
        ("010-12345678", None),  # landline
        ("abc", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_phone(raw: str | None, expected: str | None) -> None:
    assert normalize_phone(raw) == expected
    assert normalize_phones([raw]).to_pylist() == [expected]


def test_normalize_phones_accepts_pandas_strings() -> None:
    series = pd.Series(["+86 138 1234 5678", None, "138-1234-5678"], dtype="str")
    assert normalize_phones(series).to_pylist() == ["13812345678", None, "13812345678"]
