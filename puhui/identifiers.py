"""Identifier helpers shared by the generator and ingestion: national IDs and phone numbers.

National ID (居民身份证号码, GB 11643-1999): 18 characters — a 6-digit administrative area
code, the 8-digit birth date (YYYYMMDD), a 3-digit sequence whose last digit is odd for men
and even for women, and a check digit (0-9 or X) over the first 17 digits.

Phones: partners send mainland mobile numbers in several shapes ("13812345678",
"+86 138 1234 5678", "138-1234-5678", "0086 13812345678"); ``normalize_phone`` reduces them
to the bare 11 digits so that records can be matched (and pseudonymized) consistently.

Scalar functions are for single values; the ``*_mask`` / plural variants work on whole
columns (numpy, pyarrow or pandas) without a Python loop per value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# GB 11643-1999 weights are 2^(17-i) mod 11 for positions i = 0..16.
NATIONAL_ID_WEIGHTS: tuple[int, ...] = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
NATIONAL_ID_CHECK_CHARS = "10X98765432"
_WEIGHTS = np.array(NATIONAL_ID_WEIGHTS, dtype=np.int64)
_CHECK_CODES = np.frombuffer(NATIONAL_ID_CHECK_CHARS.encode("ascii"), dtype=np.uint8)

_NATIONAL_ID_SHAPE = re.compile(r"^\d{17}[\dX]$")
# Separators people and partner systems put inside phone numbers.
_PHONE_SEPARATORS = re.compile(r"[\s\-().]")
_PHONE_SEPARATORS_PATTERN = r"[\s\-().]"
# Country-code prefixes "+86", "0086" or a bare "86" in front of the 11 mobile digits
# (written without look-ahead because pyarrow's RE2 engine has none).
_PHONE_COUNTRY_PREFIX_PATTERN = r"^(?:\+86|0086|86)(1\d{10})$"
_MOBILE_PATTERN = r"^1[3-9]\d{9}$"
_MOBILE = re.compile(_MOBILE_PATTERN)

ArrayLike = Iterable[str | None] | pa.Array | pa.ChunkedArray | np.ndarray


def national_id_check_digit(first17: str) -> str:
    """The GB 11643-1999 check character ("0"-"9" or "X") for the first 17 digits."""
    if len(first17) != 17 or not first17.isdigit() or not first17.isascii():
        raise ValueError(f"expected 17 ASCII digits, got {first17!r}")
    total = sum(int(ch) * w for ch, w in zip(first17, NATIONAL_ID_WEIGHTS, strict=True))
    return NATIONAL_ID_CHECK_CHARS[total % 11]


def national_id_birth_date(value: str) -> date | None:
    """The birth date encoded in an 18-character national ID, or None if not a real date."""
    try:
        return date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return None


def is_valid_national_id(value: str, as_of: date | None = None) -> bool:
    """True for an 18-character national ID with a real birth date and a correct check digit.

    The last character must be a digit or an upper-case "X" (the standard's form; normalize
    with ``.strip().upper()`` first if a partner sends "x"). Birth years before 1800 are
    rejected, and so are birth dates after ``as_of`` when it is given.
    """
    if not isinstance(value, str) or not _NATIONAL_ID_SHAPE.match(value) or not value.isascii():
        return False
    born = national_id_birth_date(value)
    if born is None or born.year < 1800 or (as_of is not None and born > as_of):
        return False
    return national_id_check_digit(value[:17]) == value[17]


def normalize_phone(value: str | None) -> str | None:
    """The bare 11-digit mainland mobile number, or None if ``value`` is not one."""
    if value is None:
        return None
    digits = _PHONE_SEPARATORS.sub("", str(value))
    digits = re.sub(_PHONE_COUNTRY_PREFIX_PATTERN, r"\1", digits)
    return digits if _MOBILE.match(digits) and digits.isascii() else None


# ---------------------------------------------------------------------------------------
# Vectorized variants


def _as_string_array(values: ArrayLike) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        arr = values
    elif isinstance(values, np.ndarray) and values.dtype.kind in "US":
        arr = pa.array(values.astype(str), type=pa.string())
    else:
        # pandas Series (str or object dtype), lists and other iterables of str/None.
        arr = pa.array(list(values) if not hasattr(values, "__array__") else values,
                       type=pa.string(), from_pandas=True)
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    if not pa.types.is_string(arr.type):
        raise TypeError(f"expected strings, got {arr.type}")
    return arr


def national_id_check_codes(digits17: np.ndarray) -> np.ndarray:
    """Check characters (as ASCII codes, uint8) for an (n, 17) array of digit values 0-9."""
    sums = digits17.astype(np.int64) @ _WEIGHTS
    return _CHECK_CODES[sums % 11]


def _days_in_month(years: np.ndarray, months: np.ndarray) -> np.ndarray:
    base = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)
    safe_months = np.clip(months, 1, 12)
    leap = ((years % 4 == 0) & (years % 100 != 0)) | (years % 400 == 0)
    return base[safe_months - 1] + ((safe_months == 2) & leap)


def valid_national_id_mask(values: ArrayLike, as_of: date | None = None) -> np.ndarray:
    """Boolean mask: which values are valid national IDs (same rules as the scalar check)."""
    arr = _as_string_array(values)
    n = len(arr)
    shape_ok = pc.fill_null(pc.match_substring_regex(arr, r"^[0-9]{17}[0-9X]$"), False)
    mask = np.asarray(shape_ok.to_numpy(zero_copy_only=False), dtype=bool)
    if not mask.any():
        return np.zeros(n, dtype=bool)
    candidates = arr.filter(pa.array(mask))
    # Every candidate is exactly 18 ASCII bytes, so the data buffer reshapes to (k, 18).
    candidates = pa.concat_arrays([candidates])  # fresh, unsliced buffers
    offsets = np.frombuffer(candidates.buffers()[1], dtype=np.int32)[: len(candidates) + 1]
    data = np.frombuffer(candidates.buffers()[2], dtype=np.uint8)
    raw = data[offsets[0] : offsets[-1]].reshape(-1, 18)
    digits = raw[:, :17].astype(np.int64) - 48
    check_ok = national_id_check_codes(digits) == raw[:, 17]
    year = digits[:, 6] * 1000 + digits[:, 7] * 100 + digits[:, 8] * 10 + digits[:, 9]
    month = digits[:, 10] * 10 + digits[:, 11]
    day = digits[:, 12] * 10 + digits[:, 13]
    date_ok = (
        (year >= 1800) & (month >= 1) & (month <= 12) & (day >= 1)
        & (day <= _days_in_month(year, month))
    )
    if as_of is not None:
        limit = as_of.year * 10000 + as_of.month * 100 + as_of.day
        date_ok &= year * 10000 + month * 100 + day <= limit
    mask[np.flatnonzero(mask)] = check_ok & date_ok
    return mask


def normalize_phones(values: ArrayLike) -> pa.Array:
    """Vectorized ``normalize_phone``: a pyarrow string array, null where not a mobile."""
    arr = _as_string_array(values)
    stripped = pc.replace_substring_regex(arr, _PHONE_SEPARATORS_PATTERN, "")
    stripped = pc.replace_substring_regex(stripped, _PHONE_COUNTRY_PREFIX_PATTERN, r"\1")
    ok = pc.fill_null(pc.match_substring_regex(stripped, _MOBILE_PATTERN), False)
    return pc.if_else(ok, stripped, pa.scalar(None, pa.string()))
