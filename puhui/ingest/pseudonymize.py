"""Keyed pseudonyms for personal identifiers, computed at the door.

A national ID becomes ``person_key`` and a phone number ``phone_key``: HMAC-SHA256 with
``PUHUI_PSEUDONYM_KEY`` over the normalized value, with the identifier kind as a prefix so an
ID and a phone can never collide. The same person gets the same key in every feed, so feeds
join on it; without the key nobody can go back from a pseudonym to the person. Hashing runs
once per distinct identifier (after normalization, so "+86 138…" and "138…" share one HMAC),
and a :class:`PseudonymCache` carries the keys from one chunk of a file to the next: a
partner file repeats the same people in every chunk, and the HMAC calls are what costs.
"""

from __future__ import annotations

import hmac
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from puhui.errors import PuhuiError
from puhui.identifiers import normalize_phones, valid_national_id_mask

IdentifierKind = Literal["national_id", "phone"]


def pseudonym_key_bytes(key: str | None) -> bytes:
    """The HMAC key; ingestion refuses to run without one."""
    if not key:
        raise PuhuiError("PUHUI_PSEUDONYM_KEY is not set: refusing to ingest personal data")
    return key.encode("utf-8")


def _normalize(values: pa.Array, kind: IdentifierKind) -> tuple[pa.Array, np.ndarray]:
    """Normalized identifiers (null where invalid) and the validity mask."""
    if kind == "phone":
        normalized = normalize_phones(values)
        return normalized, np.asarray(pc.is_valid(normalized).to_numpy(zero_copy_only=False))
    upper = pc.utf8_upper(pc.utf8_trim_whitespace(values))
    valid = valid_national_id_mask(upper)
    return pc.if_else(pa.array(valid), upper, pa.scalar(None, pa.string())), valid


class PseudonymCache:
    """Keys already computed while ingesting one file (normalized identifier -> hex key).

    Bounded: at most ``limit`` entries in all (~220 bytes each); past that, identifiers not
    yet cached are hashed every time they appear. Entries are kept apart per HMAC key and
    identifier kind, so a cached key is always the one the HMAC would give.
    """

    def __init__(self, limit: int = 500_000) -> None:
        self.limit = limit
        self._size = 0
        self._keys: dict[tuple[bytes, str], dict[str, str]] = {}

    def keys_for(self, identifiers: list[str], key: bytes, kind: IdentifierKind) -> list[str]:
        """The hex keys of distinct, non-null normalized ``identifiers``."""
        prefix = f"{kind}:".encode()
        known = self._keys.setdefault((key, kind), {})
        room = self.limit - self._size
        out = []
        for value in identifiers:
            digest = known.get(value)
            if digest is None:
                digest = hmac.digest(key, prefix + value.encode(), "sha256").hex()
                if room > 0:
                    known[value] = digest
                    room -= 1
            out.append(digest)
        self._size = self.limit - room
        return out


def pseudonymize_ids(
    values: pa.Array, kind: IdentifierKind, key: bytes, cache: PseudonymCache | None = None
) -> tuple[pa.Array, pa.Array]:
    """Keys for ``values`` and whether each raw value was a valid identifier.

    Returns ``(keys, valid)``: ``keys`` is 64-char hex or null (empty or invalid input);
    ``valid`` is null where the input was empty, else whether it was a valid identifier.
    ``cache`` (one per file and kind) reuses keys computed for earlier chunks.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    # Work on distinct raw values only: a partner file repeats the same people many times.
    encoded = values.cast(pa.string()).dictionary_encode()
    normalized, valid_mask = _normalize(encoded.dictionary, kind)
    # Several spellings of one identifier normalize to the same value: one HMAC for them all.
    identifiers = normalized.dictionary_encode()
    distinct = identifiers.dictionary.to_pylist()
    digests = pa.array((cache or PseudonymCache(0)).keys_for(distinct, key, kind), pa.string())
    keys = pc.take(digests, pc.take(identifiers.indices, encoded.indices))
    valid = pc.take(pa.array(valid_mask, pa.bool_()), encoded.indices)
    return keys, valid
