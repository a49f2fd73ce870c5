"""A digest of a set of ``ingest_keys`` rows' keys that SQL can recompute (``audit verify``).

Kept apart from :mod:`puhui.ingest.key_index` so that ``audit verify`` does not import
pandas and pyarrow for it (~0.5 s of a read-only command); numpy is imported where loads,
which have it already, make a digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text

if TYPE_CHECKING:
    import numpy as np

KEYS_DIGEST = "keys_digest"  # the audit details' name for a KeyDigest's hex

_WORD = 1 << 32
# The same sums in SQL, portable to SQLite and PostgreSQL: both take % and / of integers
# truncated toward zero (the remainder has the dividend's sign), as numpy's fmod does. Each
# 63-bit half is split into two 32-bit parts so that SQLite's sum() (64-bit integers, an
# error on overflow) stays exact below 2^31 rows; PostgreSQL sums bigints as numeric.
DIGEST_SQL = ", ".join(
    f"sum({c} % {_WORD}), sum(({c} - {c} % {_WORD}) / {_WORD})" for c in ("key_hi", "key_lo"))


@dataclass
class KeyDigest:
    """Order-independent digest of a set of index rows' keys: their count and the sums of
    each key half's two 32-bit parts. Recorded in the audit event of the transaction that
    claims the keys (a load, a release, an index build) and recomputed by ``audit verify``
    with :data:`DIGEST_SQL`: a key rewritten in place, or a row replaced by a made-up one of
    the same batch, changes a sum while the count stays. Sums are linear: someone who knows
    this and edits two or more rows of one batch so that the changes cancel is not caught
    (a keyed digest would need a keyed hash per row in SQL, which SQLite lacks)."""

    count: int = 0
    sums: tuple[int, ...] = (0, 0, 0, 0)

    @classmethod
    def of(cls, key_hi: np.ndarray, key_lo: np.ndarray) -> KeyDigest:
        import numpy as np

        sums: list[int] = []
        for half in (key_hi, key_lo):
            low = np.fmod(half, _WORD)
            # |low| < 2^32 and |high| < 2^31: int64 sums are exact below 2^31 rows.
            sums += [int(low.sum()), int(((half - low) // _WORD).sum())]
        return cls(len(key_hi), tuple(sums))

    @classmethod
    def from_row(cls, row: Any) -> KeyDigest:
        """From ``SELECT count(*), <DIGEST_SQL>`` (NULL sums: no rows)."""
        return cls(int(row[0]), tuple(int(v or 0) for v in row[1:5]))

    def __add__(self, other: KeyDigest) -> KeyDigest:
        return KeyDigest(self.count + other.count,
                         tuple(a + b for a, b in zip(self.sums, other.sums, strict=True)))

    def hex(self) -> str:
        """What the audit event records: a SHA-256 of the figures (the sums themselves are
        15-16 digit integers, shaped like phone numbers or IDs to the trail's scrubber)."""
        figures = ",".join(str(v) for v in (self.count, *self.sums))
        return hashlib.sha256(f"puhui.keys.digest.v1:{figures}".encode()).hexdigest()


def keys_digest(conn: Connection, where: str, params: dict[str, Any]) -> KeyDigest:
    """:class:`KeyDigest` of the ``ingest_keys`` rows matching ``where`` (SQL)."""
    return KeyDigest.from_row(conn.execute(
        text(f"SELECT count(*), {DIGEST_SQL} FROM ingest_keys WHERE {where}"), params).one())
