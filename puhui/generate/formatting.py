"""Vectorized text formatting: fixed-width strings from digit matrices, money, times, lines.

Nothing here loops over rows in Python. Fixed-width values (IDs, phone numbers, ISO times,
dates) are assembled as ``(n, width)`` uint8 matrices of ASCII codes and handed to pyarrow
as a string array without copying; variable-width values use pyarrow compute kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from puhui.generate.timeline import LOCAL_OFFSET_SECONDS, SECONDS_PER_DAY

_ZERO = ord("0")


def strings_from_matrix(chars: np.ndarray) -> pa.Array:
    """A pyarrow string array whose i-th value is the ASCII bytes of row i of ``chars``."""
    n, width = chars.shape
    data = np.ascontiguousarray(chars, dtype=np.uint8)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def digit_matrix(values: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded decimal digits of non-negative integers as an (n, width) ASCII matrix."""
    v = np.asarray(values, dtype=np.int64).copy()
    out = np.empty((len(v), width), dtype=np.uint8)
    for pos in range(width - 1, -1, -1):
        out[:, pos] = v % 10 + _ZERO
        v //= 10
    return out


def prefixed_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """IDs like "T2026091200000042": a fixed prefix and a zero-padded number."""
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    chars = np.empty((len(numbers), len(head) + width), dtype=np.uint8)
    chars[:, : len(head)] = head
    chars[:, len(head) :] = digit_matrix(numbers, width)
    return strings_from_matrix(chars)


@cache
def _clock_table() -> np.ndarray:
    """(86400, 8) ASCII matrix of "HH:MM:SS" for every second of a day."""
    s = np.arange(SECONDS_PER_DAY)
    out = np.empty((SECONDS_PER_DAY, 8), dtype=np.uint8)
    out[:, 0:2] = digit_matrix(s // 3600, 2)
    out[:, 2] = ord(":")
    out[:, 3:5] = digit_matrix(s // 60 % 60, 2)
    out[:, 5] = ord(":")
    out[:, 6:8] = digit_matrix(s % 60, 2)
    return out


def _date_matrix(days: np.ndarray) -> np.ndarray:
    """(n, 10) ASCII "YYYY-MM-DD" for epoch days, built from the distinct days only."""
    days = np.asarray(days, dtype=np.int64)
    if len(days) == 0:
        return np.empty((0, 10), dtype=np.uint8)
    lo, hi = int(days.min()), int(days.max())
    table = np.arange(lo, hi + 1).astype("datetime64[D]").astype("S10")
    table_chars = np.frombuffer(table.tobytes(), dtype=np.uint8).reshape(-1, 10)
    return table_chars[days - lo]


def format_dates(days: np.ndarray) -> pa.Array:
    """ "YYYY-MM-DD" strings for epoch days."""
    return strings_from_matrix(_date_matrix(days))


def format_months(days: np.ndarray) -> pa.Array:
    """ "YYYY-MM" strings for epoch days (the month the day is in)."""
    return strings_from_matrix(_date_matrix(days)[:, :7])


_LOCAL_SUFFIX = np.frombuffer(b"+08:00", dtype=np.uint8)


def format_local_times(epoch_seconds: np.ndarray) -> pa.Array:
    """ISO 8601 local times with offset, e.g. "2026-09-12T08:31:05+08:00"."""
    local = np.asarray(epoch_seconds, dtype=np.int64) + LOCAL_OFFSET_SECONDS
    day, second = np.divmod(local, SECONDS_PER_DAY)
    chars = np.empty((len(local), 25), dtype=np.uint8)
    chars[:, 0:10] = _date_matrix(day)
    chars[:, 10] = ord("T")
    chars[:, 11:19] = _clock_table()[second]
    chars[:, 19:25] = _LOCAL_SUFFIX
    return strings_from_matrix(chars)


def format_ints(values: np.ndarray) -> pa.Array:
    """Plain decimal integers ("-12", "0", "48000")."""
    return pc.cast(pa.array(np.asarray(values, dtype=np.int64)), pa.string())


def format_decimal2(values: np.ndarray, thousands: bool = False) -> pa.Array:
    """Two-decimal amounts: "1234.50", or "1,234.50" with ``thousands`` (negatives "-...").

    Digits are laid out right-aligned in a fixed-width ASCII matrix (with "," every three
    digits when asked), then each row's used tail is cut out with one boolean mask, which
    is several times faster than composing the groups with string kernels.
    """
    cents = np.rint(np.asarray(values, dtype=np.float64) * 100).astype(np.int64)
    n = len(cents)
    negative = cents < 0
    cents = np.abs(cents)
    whole_digits = len(str(int(cents.max()) // 100)) if n else 1
    n_digits = np.ones(n, dtype=np.int64)
    whole = cents // 100
    for k in range(1, whole_digits):
        n_digits += whole >= 10**k
    n_commas = (n_digits - 1) // 3 if thousands else np.zeros_like(n_digits)
    width = 1 + whole_digits + (whole_digits - 1) // 3 * thousands + 3  # sign, digits, .cc
    # Built transposed (one contiguous row per character position), then transposed once.
    chars_t = np.empty((width, n), dtype=np.uint8)
    # int32 division is much faster than int64; amounts below ~21 million yuan fit.
    rest = cents.astype(np.int32) if whole_digits <= 7 else cents
    positions = [width - 1, width - 2]
    col = width - 4
    for j in range(whole_digits):
        if thousands and j > 0 and j % 3 == 0:
            chars_t[col] = ord(",")
            col -= 1
        positions.append(col)
        col -= 1
    for pos in positions:
        quotient = rest // 10
        chars_t[pos] = rest - quotient * 10 + _ZERO
        rest = quotient
    chars_t[width - 3] = ord(".")
    chars = np.ascontiguousarray(chars_t.T)
    length = n_digits + n_commas + 3 + negative
    if negative.any():
        rows = np.flatnonzero(negative)
        chars[rows, width - length[rows]] = ord("-")
    used = np.arange(width)[None, :] >= (width - length)[:, None]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(length, out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars[used])]
    )


def quote(values: pa.Array) -> pa.Array:
    """Wrap every value in double quotes (values never contain quotes themselves)."""
    return pc.binary_join_element_wise('"', values, '"', "")


def join_lines(columns: Sequence[pa.Array], sep: str = ",") -> pa.Array:
    """One text line per row ("a,b,c\\n"); null fields become empty."""
    if len(columns) == 1:
        lines = pc.fill_null(columns[0], "")
    else:
        lines = pc.binary_join_element_wise(
            *columns, sep, null_handling="replace", null_replacement=""
        )
    return pc.binary_join_element_wise(lines, "", "\n")


def concatenated_bytes(lines: pa.Array) -> pa.Buffer:
    """The bytes of all values of a string array back to back (no copy)."""
    if len(lines) == 0:
        return pa.py_buffer(b"")
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    offsets = lines.buffers()[1]
    first, last = np.frombuffer(offsets, dtype=np.int32)[[lines.offset, lines.offset + len(lines)]]
    return lines.buffers()[2].slice(int(first), int(last - first))


def csv_line(fields: Sequence[str]) -> bytes:
    """A header line (names never need quoting)."""
    return (",".join(fields) + "\n").encode("utf-8")
