"""Keyed pseudonyms for personal identifiers, computed at the door.

A national ID becomes ``person_key`` and a phone number ``phone_key``: HMAC-SHA256 with
``PUHUI_PSEUDONYM_KEY`` over the normalized value, with the identifier kind as a prefix so an
ID and a phone can never collide. The same person gets the same key in every feed, so feeds
join on it; without the key nobody can go back from a pseudonym to the person. Hashing runs
once per distinct value (dictionary encoding), which is what keeps 1M-row files fast.
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


def pseudonymize_ids(
    values: pa.Array, kind: IdentifierKind, key: bytes
) -> tuple[pa.Array, pa.Array]:
    """Keys for ``values`` and whether each raw value was a valid identifier.

    Returns ``(keys, valid)``: ``keys`` is 64-char hex or null (empty or invalid input);
    ``valid`` is null where the input was empty, else whether it was a valid identifier.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    # Work on distinct raw values only: a partner file repeats the same people many times.
    encoded = values.cast(pa.string()).dictionary_encode()
    normalized, valid_mask = _normalize(encoded.dictionary, kind)
    prefix = f"{kind}:".encode()
    digests = pa.array(
        [
            None if v is None else hmac.digest(key, prefix + v.encode(), "sha256").hex()
            for v in normalized.to_pylist()
        ],
        pa.string(),
    )
    keys = pc.take(digests, encoded.indices)
    valid = pc.take(pa.array(valid_mask, pa.bool_()), encoded.indices)
    return keys, valid
