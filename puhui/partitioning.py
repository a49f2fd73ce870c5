"""Customer partitions: a stable split of pseudonymous keys into N buckets.

``person_key`` is an HMAC-SHA256 in lowercase hex, so its leading hex digits are already
uniformly distributed: bucket b of N holds the keys whose first 8 hex digits ``x`` satisfy
``floor(x * N / 2**32) == b``. That is a contiguous key range, so a partition is selected in
SQL with two string comparisons (``lower <= key < upper``) that mean the same thing on SQLite
and PostgreSQL, use an index on the key if there is one, and need no SQL function. The same
key lands in the same bucket everywhere, every run, for a given N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import ColumnElement, and_, true
from sqlalchemy.sql.elements import ColumnClause

HEX_DIGITS = 8
SPACE = 1 << (4 * HEX_DIGITS)


@dataclass(frozen=True)
class Partition:
    """Bucket ``bucket`` of ``count``: small and hashable, what a task is given."""

    bucket: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.bucket < self.count:
            raise ValueError(f"bucket {self.bucket} is not in 0..{self.count - 1}")


def all_partitions(count: int) -> list[Partition]:
    return [Partition(b, count) for b in range(count)]


def partition_count(customers: int, per_partition: int, max_partitions: int = 4096) -> int:
    """How many partitions for a population: 1 for small ones (no cost to the small case)."""
    if customers <= per_partition:
        return 1
    return min(max_partitions, math.ceil(customers / per_partition))


def bucket_of(keys: pd.Series | np.ndarray, partitions: int) -> np.ndarray:
    """Bucket (0..partitions-1) of each hex key."""
    prefix = pd.Series(np.asarray(keys, dtype=object)).str.slice(0, HEX_DIGITS)
    values = np.array([int(p, 16) for p in prefix], dtype=np.int64)
    return (values * partitions) // SPACE


def bucket_bounds(partition: Partition) -> tuple[str | None, str | None]:
    """The key range of a bucket as (inclusive lower, exclusive upper); None is unbounded."""
    bucket, partitions = partition.bucket, partition.count

    def start(b: int) -> int:
        return -(-b * SPACE // partitions)  # ceil(b * 2**32 / N)

    lower = None if bucket == 0 else format(start(bucket), f"0{HEX_DIGITS}x")
    upper = None if bucket == partitions - 1 else format(start(bucket + 1), f"0{HEX_DIGITS}x")
    return lower, upper


def in_bucket(column: ColumnClause | ColumnElement, partition: Partition) -> ColumnElement[bool]:
    """SQL predicate: ``column`` (a lowercase hex key) falls in ``bucket``.

    The comparison is bytewise on SQLite (BINARY collation); on PostgreSQL a database created
    with a non-C collation still orders the digits 0-9 before a-f, which is all it needs.
    """
    lower, upper = bucket_bounds(partition)
    clauses = []
    if lower is not None:
        clauses.append(column >= lower)
    if upper is not None:
        clauses.append(column < upper)
    return and_(*clauses) if clauses else true()
