"""Digests of a set of ``ingest_keys`` rows' keys: one SQL can recompute (every ``audit
verify``), and a keyed one that a forger without ``PUHUI_AUDIT_KEY`` cannot satisfy, which
``audit verify --deep`` recomputes by streaming the keys.

Kept apart from :mod:`puhui.ingest.key_index` so that ``audit verify`` does not import
pandas and pyarrow for it (~0.5 s of a read-only command); numpy is imported where loads,
which have it already, make a digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text

from puhui.errors import PuhuiError
from puhui.warehouse.digesting import derive_subkey, figures_hex, stream_driver_rows

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
    by it (:class:`KeyedDigest` is)."""

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
        """What the audit event records (:func:`figures_hex`)."""
        return figures_hex("puhui.keys.digest.v1", self.count, *self.sums)


def keys_digests(conn: Connection, where: str, params: dict[str, Any]) -> dict[str, KeyDigest]:
    """:class:`KeyDigest` per batch of the ``ingest_keys`` rows matching ``where`` (SQL)."""
    return {row[0]: KeyDigest.from_row(row[1:]) for row in conn.execute(text(
        f"SELECT batch_id, count(*), {DIGEST_SQL} FROM ingest_keys WHERE {where} "
        "GROUP BY batch_id"), params)}


# An index build's event records, besides the digest of its batches' keys together, one of
# each batch's digest: a key moved from one batch loaded before the build to another keeps
# the total, not the batches'. One hash, not a digest per batch (a feed has thousands).
KEYS_BY_BATCH, KEYS_MAC_BY_BATCH = "keys_by_batch", "keys_mac_by_batch"


def by_batch_hex(digests: Mapping[str, KeyDigest | KeyedDigest]) -> str:
    """SHA-256 of each batch's id and digest, in batch order (batches holding no key left
    out: the build and ``audit verify`` see those alike whether grouped or not)."""
    lines = "".join(f"{batch}:{digest.hex()}\n" for batch, digest in sorted(digests.items())
                    if digest.count)
    return hashlib.sha256(f"puhui.keys.by_batch.v1\n{lines}".encode()).hexdigest()


KEYS_MAC = "keys_mac"  # the audit details' name for a KeyedDigest's hex
_SUBKEY_LABEL = b"puhui ingest_keys digest v2"
_LANE = 1 << 64


def digest_subkey(audit_key: bytes | None = None) -> bytes:
    """The keyed digest's AES-128 key, derived from ``PUHUI_AUDIT_KEY`` (none: the settings')
    and never stored: the trail's MACs and the digests are made under different keys."""
    return derive_subkey(_SUBKEY_LABEL, audit_key, 16)


@dataclass
class KeyedDigest:
    """Order-independent keyed digest of a set of index rows' keys: their count and two
    64-bit lanes, each the sum mod 2^64 of one half of AES-128(subkey, key_hi || key_lo)
    per row. AES is a pseudorandom permutation of the 128-bit key: without the subkey no
    one can tell which set of keys sums to a recorded digest, so no edit of rows (two that
    cancel, one replaced) keeps it, short of a 2^-128 chance. SQL cannot compute it (SQLite
    has no keyed hash), so ``audit verify`` streams the keys (:func:`keyed_digests`).

    Not ``pandas.util.hash_array(..., hash_key=...)``: it ignores the key for integers
    (pandas 3.1.1), and its key is 16 UTF-8 bytes, so a text subkey of 16 hex characters
    would hold 64 bits."""

    count: int = 0
    lanes: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, subkey: bytes, key_hi: np.ndarray, key_lo: np.ndarray) -> KeyedDigest:
        lanes = _prf(subkey, key_hi, key_lo).sum(axis=0, dtype="<u8")  # wraps: mod 2^64
        return cls(len(key_hi), (int(lanes[0]), int(lanes[1])))

    def __add__(self, other: KeyedDigest) -> KeyedDigest:
        return KeyedDigest(self.count + other.count,
                           tuple((a + b) % _LANE for a, b in zip(self.lanes, other.lanes,
                                                                 strict=True)))  # type: ignore[arg-type]

    def hex(self) -> str:
        """What the audit event records (:func:`figures_hex`)."""
        return figures_hex("puhui.keys.digest.v2", self.count, *self.lanes)


def _prf(subkey: bytes, key_hi: np.ndarray, key_lo: np.ndarray) -> np.ndarray:
    """AES-128(subkey, key_hi || key_lo) per row, as two uint64 lanes."""
    import numpy as np
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    blocks = np.empty((len(key_hi), 2), dtype="<i8")
    blocks[:, 0], blocks[:, 1] = key_hi, key_lo
    # ECB is right here: each block is one distinct key (the index's primary key).
    encrypt = Cipher(algorithms.AES(subkey), modes.ECB()).encryptor()
    return np.frombuffer(encrypt.update(blocks.tobytes()), dtype="<u8").reshape(-1, 2)


def keyed_digests(conn: Connection, subkey: bytes, where: str = "true",
                  params: dict[str, Any] | None = None,
                  chunk_rows: int = 100_000) -> dict[str, KeyedDigest]:
    """:class:`KeyedDigest` per batch of the ``ingest_keys`` rows matching ``where`` (SQL,
    as :func:`keys_digests` takes it), read in chunks of ``chunk_rows`` through a server-side cursor
    on PostgreSQL (SQLite steps its cursor): memory holds one chunk and one digest per
    batch. In no order: a digest is a sum, and ``ORDER BY batch_id`` would make SQLite sort
    (no index on ``batch_id``: one would cost every load its inserts)."""
    import numpy as np

    codes: dict[str, int] = {}  # batch id -> row of the sums
    counts = np.zeros(0, dtype=np.int64)
    sums = np.zeros((0, 2), dtype=np.uint64)
    # The driver's own cursor, for its plain tuples (SQLAlchemy's rows cost ~1.3 s more per
    # 1M keys; its result's cursor is not for this: it may have buffered rows already).
    query = text(f"SELECT batch_id, key_hi, key_lo FROM ingest_keys WHERE {where}")
    for part in stream_driver_rows(conn, query.bindparams(**(params or {})), chunk_rows,
                                   "puhui_keyed_digests"):
        batch_ids, key_hi, key_lo = zip(*part, strict=True)
        for batch_id in set(batch_ids):
            codes.setdefault(batch_id, len(codes))
        code = np.fromiter(map(codes.__getitem__, batch_ids), dtype=np.intp,
                           count=len(part))
        if len(codes) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(codes) - len(counts), np.int64)])
            sums = np.concatenate([sums, np.zeros((len(codes) - len(sums), 2), np.uint64)])
        counts += np.bincount(code, minlength=len(codes))
        halves = np.asarray(key_hi), np.asarray(key_lo)
        # Not dtype=int64: numpy would parse a key stored (SQLite) as a BLOB or TEXT of
        # digits to the integer it spells, which no lookup matches.
        if any(half.dtype != np.int64 for half in halves):
            raise PuhuiError("ingest_keys: a key half not stored as an integer (index "
                             "rows rewritten by hand)")
        np.add.at(sums, code, _prf(subkey, *halves))  # wraps: mod 2^64
    return {batch_id: KeyedDigest(int(counts[i]), (int(sums[i, 0]), int(sums[i, 1])))
            for batch_id, i in codes.items()}
