"""The raw tables' rows digest is stored (``raw_rows`` events in the audit trail, checked by
``audit verify --deep``), so its values are pinned here as main computed them before the
hashing moved to ``puhui/hashing.py`` (round 17). The round-16 tests compare the writer's
digest with the reader's, and both call the same function: a change to the per-type words,
the NULL seeds, the BLAKE2b replacement of long text or the mix passes those and turns every
stored digest into a false alarm. This one fails instead."""

from __future__ import annotations

from datetime import date, datetime

import pyarrow as pa

from puhui.hashing import column_words
from puhui.raw_rows_digest import columns_mac

_SUBKEY = bytes(range(32))  # a fixed subkey: the seeds are keyed by it

# Per type, with NULLs: the canonical forms the writer and verify build.
_COLUMNS = [
    pa.array([0, -1, None, 2**62, 7], pa.int64()),
    pa.array([1.5, -0.0, None, float("nan"), 1e300], pa.float64()),
    pa.array([True, False, None, True, False], pa.bool_()),
    pa.array(
        [date(2026, 9, 30), None, date(1970, 1, 1), date(2020, 2, 29), date(9999, 12, 31)],
        pa.date32(),
    ),
    pa.array(
        [
            datetime(2026, 9, 30, 8, 0, 1, 5),
            None,
            datetime(1970, 1, 1),
            datetime(2026, 1, 1),
            datetime(2000, 1, 1, 23, 59, 59),
        ],
        pa.timestamp("us"),
    ),
    pa.array(["P2P", None, "超市", "", "é😀"], pa.string()),
    pa.array(["a" * 64, "b" * 72, "c" * 73, None, "長" * 40], pa.string()),  # 64, 72, >72 bytes
]

# Computed by main's code (key_index._column_words, raw_rows_digest.columns_mac), 3b2e6b3^.
PINNED_WORDS = [
    [0, 18446744073709551615, 7640891576956012809, 4611686018427387904, 7],
    [
        4609434218613702656,
        9223372036854775808,
        7640891576956012809,
        9221120237041090560,
        9094988921128908188,
    ],
    [1, 0, 7640891576956012809, 1, 0],
    [20726, 7640891576956012809, 0, 18321, 2932896],
    [1790755201000005, 7640891576956012809, 0, 1767225600000000, 946771199000000],
    [2434393256002790563, 5173053835810921858, 8935850725621052592, 0, 106214445717392293],
    [
        3190250070314797196,
        7417619618926785211,
        17940164768846913056,
        5173053835810921858,
        3814545237909220098,
    ],
]
PINNED_MACS = (
    5,
    3472227714542627579,
    [
        5253566571372401997,
        8836078496780570093,
        6745863290737720765,
        9414469466273432731,
        16422279026337677153,
        289084068711957746,
        4667284848662955820,
    ],
    3,
    14592582963529869302,
)


def test_column_words_stay_what_main_computed() -> None:
    """Each type's words (numbers and times their stored bits, text its string hash; the
    NULL word is the caller's to replace, pinned as it comes)."""
    words = [column_words(c).tolist() for c in _COLUMNS[:6]]
    words.append(column_words(_COLUMNS[6].cast(pa.large_string())).tolist())
    assert words == PINNED_WORDS


def test_columns_mac_stays_what_main_computed() -> None:
    """The digest of the whole table, of each column alone and of a slice."""
    whole = columns_mac(_COLUMNS, _SUBKEY)
    alone = [columns_mac([c], _SUBKEY).total for c in _COLUMNS]
    sliced = columns_mac([c.slice(1, 3) for c in _COLUMNS], _SUBKEY)
    assert (whole.count, whole.total, alone, sliced.count, sliced.total) == PINNED_MACS
