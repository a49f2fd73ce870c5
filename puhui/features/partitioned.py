"""Point-in-time features computed one customer partition at a time.

Every feature is a function of one person's rows (``windows`` accumulates per person), so the
features of a partition's people need only that partition's rows: each partition reads its own
rows from the warehouse (a key-range predicate in SQL) and runs the same builder on them. Peak
memory follows the partition's size, not the population's. Two facts are global and computed
once, before the partitions: the customer register with the owner of each shared phone, and
each source's first event day (:mod:`puhui.features.sources`). The result equals
:func:`~puhui.features.builder.build_features` on the whole tables, value for value.

Staging: :func:`stage_register` writes each partition's slice of the register (and the first
days) under a directory, so a partition's work can run anywhere given only its key; each
partition's output is one Parquet file written atomically, so a re-run skips finished ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text

from puhui import console
from puhui.config import FeaturesConfig
from puhui.errors import PuhuiError
from puhui.features.builder import build_features
from puhui.features.sources import (
    Register,
    count_register,
    first_event_days,
    load_partition_frames,
    load_register,
    scatter_phone_feeds,
    source_columns,
)
from puhui.partitioning import Partition, all_partitions, bucket_of, partition_count
from puhui.scratch import scratch_dir
from puhui.warehouse.engine import held_lock

# Customers per partition: at 180 days of history (~31 raw rows a customer) a 50k partition
# peaked near 1 GiB in the client, 25k about half; populations up to this size (the 20k
# demo) run as one partition, as before. Measured: README, Performance.
CUSTOMERS_PER_PARTITION = 25_000


# --- raw-table layout: what lets a partition read only its own rows -------------------------

def read_index(table: str, keys: list[str], columns: list[str] | None = None) -> dict[str, str]:
    """One partition-read index: its name -> ``CREATE INDEX IF NOT EXISTS`` statement, a
    B-tree on ``keys`` that INCLUDEs the other ``columns`` a partition's read needs."""
    name = f"ix_{table}_partition_read"
    include = [c for c in columns or [] if c not in keys]
    return {name: f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" ({_quoted(keys)})'
                  + (f" INCLUDE ({_quoted(include)})" if include else "")}


def partition_read_indexes(spec: FeaturesConfig) -> dict[str, str]:
    """Index name -> ``CREATE INDEX IF NOT EXISTS`` statement, one per raw table read.

    Rows arrive in time order, so one partition's rows are spread over nearly every page of a
    table: without an index each partition scans the whole table (N scans of everything: the
    cost grew with N x population). A B-tree on (key, event time) that INCLUDEs every column
    the features read serves a partition with an index-only scan of its own key range: the
    read is proportional to the partition. The register gets (person_key) INCLUDE
    (phone_key) for the phone-keyed feeds' sub-select. Other packages that read partitions
    of their own tables pass their entries to :func:`ensure_partition_indexes`.
    """
    statements: dict[str, str] = {}
    for source in spec.sources:
        statements |= read_index(source.table, [source.key, source.time],
                                 source_columns(source))
    statements |= read_index(spec.customer.table, ["person_key"], ["phone_key"])
    return statements


def _quoted(columns: list[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def ensure_partition_indexes(engine: Engine, spec: FeaturesConfig,
                             more: dict[str, str] | None = None) -> list[str]:
    """Create the partition-read indexes that are missing (PostgreSQL); returns their names.

    ``more``: other tables' entries (:func:`read_index`), e.g. the profiles' product events.

    Built after the bulk load, on first partitioned use, not at table creation: a bulk COPY
    into an indexed table pays for every index entry (README, Performance: the trade-off
    measured). Later loads keep the index up to date. Tables just indexed are vacuumed, so
    that their pages are all-visible and the scans are index-only at once. An advisory lock
    keeps two partitioned runs from building the same index.
    """
    if engine.dialect.name != "postgresql":
        return []  # SQLite: the demo's size runs as one partition, a whole-table read
    statements = partition_read_indexes(spec) | (more or {})
    created: list[str] = []
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("SELECT pg_advisory_lock(hashtext('puhui.partition_read_indexes'))"))
        try:
            existing = set(conn.execute(text(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
            )).scalars())
            tables = {str(t) for t in conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )).scalars()}
            for name, statement in statements.items():
                table = name.removeprefix("ix_").removesuffix("_partition_read")
                if name in existing or table not in tables:
                    continue
                conn.execute(text(statement))
                conn.execute(text(f'VACUUM (ANALYZE) "{table}"'))
                created.append(name)
        finally:
            conn.execute(text(
                "SELECT pg_advisory_unlock(hashtext('puhui.partition_read_indexes'))"))
    return created


def build_partition(
    engine: Engine, spec: FeaturesConfig, as_of: date, customers: pd.DataFrame,
    partition: Partition, first_day: dict[str, int] | None,
    requests: pd.DataFrame | None = None, lineage: set[str] | None = None,
    scattered: dict[str, Path] | None = None,
) -> pd.DataFrame:
    """Features of one partition's requests (default: each of its customers as of ``as_of``).

    ``lineage``, if given, receives the batch ids of the rows read; ``scattered``: sources
    already split by partition (:func:`scatter_phone_feeds`).
    """
    frames = load_partition_frames(engine, spec, as_of, customers, partition, first_day,
                                   scattered)
    if lineage is not None:
        lineage.update(frames.batch_ids)
    if requests is None:
        requests = pd.DataFrame({"person_key": customers["person_key"], "as_of_date": as_of})
    return build_features(frames, requests, spec)


def default_partitions(engine: Engine, spec: FeaturesConfig, as_of: date) -> int:
    """Partitions for the register's size on ``as_of`` (:data:`CUSTOMERS_PER_PARTITION`)."""
    return partition_count(count_register(engine, spec, as_of), CUSTOMERS_PER_PARTITION)


def build_features_partitioned(
    engine: Engine, spec: FeaturesConfig, as_of: date, requests: pd.DataFrame | None = None,
    partitions: int | None = None, register: Register | None = None,
    lineage: set[str] | None = None,
) -> pd.DataFrame:
    """:func:`build_features` over the warehouse, one partition at a time, in this process.

    ``requests`` default: every customer known on ``as_of``, as of that day. ``partitions``
    default: from the register's size (:func:`default_partitions`). Rows come back in the
    requests' order, as from ``build_features``. ``register``: one the caller loaded (it
    needs the register too, e.g. the training set's protected attributes); its partition
    count is used. ``lineage`` receives the batch ids of the rows read: the register's and
    those of the partitions that have requests (a partition without any is not read).
    """
    if register is not None:
        partitions = register.partitions
    elif partitions is None:
        partitions = default_partitions(engine, spec, as_of)
    # One partition reads whole tables: no index is needed, and the rows read give the first
    # days (a MIN per table would be one more scan of each on SQLite, where the demo runs).
    first_day = None
    if partitions > 1:
        ensure_partition_indexes(engine, spec)
        first_day = first_event_days(engine, spec, as_of)
    if register is None:
        register = load_register(engine, spec, as_of, partitions)
    if lineage is not None:
        lineage.update(register.customers["batch_id"])
    if requests is None:
        requests = pd.DataFrame({"person_key": register.customers["person_key"],
                                 "as_of_date": as_of})
    requests = requests[["person_key", "as_of_date"]].drop_duplicates().reset_index(drop=True)
    buckets = bucket_of(requests["person_key"], partitions) if len(requests) else np.zeros(0)
    pieces: list[pd.DataFrame] = []
    split = decide_phone_feeds_split(engine, spec, partitions)
    if partitions > 1:
        console.detail(f"features as of {as_of}, {partitions} partitions: {split.line}")
    with scratch_dir("scatter") as scratch:
        scattered = (scatter_phone_feeds(engine, spec, register, Path(scratch))
                     if split.split else None)
        for part in all_partitions(partitions):
            positions = np.flatnonzero(buckets == part.bucket)
            if len(positions) == 0:
                continue
            piece = build_partition(engine, spec, as_of, register.part(part.bucket), part,
                                    first_day, requests.iloc[positions], lineage, scattered)
            piece.index = positions
            pieces.append(piece)
    if not pieces:  # no requests: the builder's empty frame, columns and dtypes
        first = Partition(0, partitions)
        return build_partition(engine, spec, as_of, register.part(0), first, first_day,
                               requests)
    return pd.concat(pieces).sort_index().reset_index(drop=True)


MIB = 2**20


@dataclass(frozen=True)
class PhoneFeedsSplit:
    """Whether a build's partitions read the phone-keyed feeds split by partition, and why;
    ``made``: the staged split was written by this call (False: kept from an earlier try,
    or none is made)."""

    split: bool
    reason: str
    made: bool = False

    @property
    def line(self) -> str:
        return (f"phone-keyed feeds {'split once' if self.split else 'probed per partition'}"
                f" ({self.reason})")


def decide_phone_feeds_split(engine: Engine, spec: FeaturesConfig,
                             partitions: int) -> PhoneFeedsSplit:
    """Whether a build of ``partitions`` splits its phone-keyed feeds in one scan first: the
    one rule of the in-process build, the staged features flow and the profile refresh.

    On PostgreSQL with more than one partition, when the feeds' on-disk size (tables and
    indexes) is at least ``partitioning.split_phone_feeds_min_mib``. Each partition would
    otherwise probe the feeds' ``phone_key`` indexes at random (:func:`scatter_phone_feeds`
    says why): cheap while they sit in the page cache (at 200k and 400k customers the split
    cost more than it saved), random disk reads once they do not (1M: ~3 h for the payments
    feed). The threshold's default and its measurements: configs/features.yaml, README.
    """
    tables = [source.table for source in spec.sources if source.key == "phone_key"]
    if partitions <= 1:
        return PhoneFeedsSplit(False, "one partition reads whole tables")
    if engine.dialect.name != "postgresql":
        return PhoneFeedsSplit(False, f"{engine.dialect.name}: the split is PostgreSQL's COPY")
    if not tables:
        return PhoneFeedsSplit(False, "no phone-keyed feeds")
    size = phone_feeds_bytes(engine, tables)
    threshold = spec.partitioning.split_phone_feeds_min_mib
    split = size >= threshold * MIB
    return PhoneFeedsSplit(split, f"{size / MIB:,.0f} MiB on disk {'>=' if split else '<'} "
                                  f"the {threshold:,} MiB threshold")


def phone_feeds_bytes(engine: Engine, tables: list[str]) -> int:
    """The on-disk size of ``tables`` with their indexes (PostgreSQL; a missing one is 0)."""
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT coalesce(sum(pg_total_relation_size(to_regclass(quote_ident(t)))), 0) "
            "FROM unnest(CAST(:tables AS text[])) AS t"), {"tables": tables}).scalar() or 0)


# --- staging: what lets a partition's task run given only its key ---------------------------

def stage_register(engine: Engine, spec: FeaturesConfig, as_of: date, directory: Path,
                   partitions: int | None = None) -> list[Partition]:
    """Write each partition's register slice and the sources' first days under ``directory``."""
    if partitions is None:
        partitions = default_partitions(engine, spec, as_of)
    directory.mkdir(parents=True, exist_ok=True)
    if partitions > 1:
        ensure_partition_indexes(engine, spec)
    register = load_register(engine, spec, as_of, partitions)
    for part in all_partitions(partitions):
        write_atomic(register.part(part.bucket), register_path(directory, part))
    (directory / "first_day.json").write_text(
        json.dumps(first_event_days(engine, spec, as_of)), encoding="utf-8")
    return all_partitions(partitions)


def features_path(directory: Path, partition: Partition) -> Path:
    return directory / f"features-{partition.bucket:05d}.parquet"


def register_path(directory: Path, partition: Partition) -> Path:
    return directory / f"register-{partition.bucket:05d}.parquet"


def build_staged_partition(engine: Engine, spec: FeaturesConfig, as_of: date, directory: Path,
                           partition: Partition) -> int:
    """Features of every customer of a staged partition, to its Parquet file; returns rows.

    A partition whose file exists is done (files appear only complete): re-runs skip it.
    """
    target = features_path(directory, partition)
    if target.exists():
        return int(pd.read_parquet(target, columns=["person_key"]).shape[0])
    customers = pd.read_parquet(register_path(directory, partition))
    first_day = json.loads((directory / "first_day.json").read_text(encoding="utf-8"))
    features = build_partition(engine, spec, as_of, customers, partition, first_day,
                               scattered=staged_phone_feeds(spec, directory, partition, customers))
    write_atomic(features, target)
    return len(features)


# The staged split of the phone-keyed feeds: one directory under the run's staging directory
# (shared by every worker, as the register slices are), complete if it holds the marker.
PHONE_FEEDS = "phone-feeds"
SPLIT_DONE = "split-done.json"


def stage_phone_feeds(engine: Engine, spec: FeaturesConfig, as_of: date, directory: Path,
                      partitions: int) -> PhoneFeedsSplit:
    """Split the phone-keyed feeds by partition once for the staged run in ``directory``
    (after :func:`stage_register`), for every partition task to read its own file of, if
    :func:`decide_phone_feeds_split` says so; returns that decision, ``made`` if it split
    now (not: a complete split is there).

    Resumable: the split is written under a temporary name with its marker last, then
    renamed, so ``phone-feeds/`` exists only complete; a killed split leaves a temporary
    directory, removed and redone by the next call. The marker records the partition count
    and a fingerprint of the phone owners of each partition it split by: a re-staged
    register that differs (other data, other N) is split again, and a partition whose
    owners differ refuses to read it (:func:`staged_phone_feeds`). Every file and directory
    is fsynced before the rename, so the protocol holds after a power loss too. Memory: one
    block of a feed, and the owners.
    """
    decision = decide_phone_feeds_split(engine, spec, partitions)
    if not decision.split:
        drop_earlier_split(engine, directory)
        return decision
    return split_phone_feeds_once(engine, spec, _staged_owners(directory, as_of, partitions),
                                  directory, decision)


def split_phone_feeds_once(engine: Engine, spec: FeaturesConfig, register: Register,
                           directory: Path,
                           decision: PhoneFeedsSplit | None = None) -> PhoneFeedsSplit:
    """:func:`stage_phone_feeds` given the register (a run that holds it: the profile
    refresh) and, if made already, the decision."""
    decision = decision or decide_phone_feeds_split(engine, spec, register.partitions)
    if not decision.split:
        drop_earlier_split(engine, directory)
        return decision
    marker = {"partitions": register.partitions, "owners": _owners_fingerprints(register)}
    done = directory / PHONE_FEEDS / SPLIT_DONE
    with _split_lock(engine, directory):
        if done.exists() and json.loads(done.read_text(encoding="utf-8")) == marker:
            return decision
        _remove_split(directory)
        partial = directory / f"{PHONE_FEEDS}.{os.getpid()}.partial"
        scatter_phone_feeds(engine, spec, register, partial)
        (partial / SPLIT_DONE).write_text(json.dumps(marker), encoding="utf-8")
        # Durable before it is visible: a power loss then leaves either the partial
        # directory (redone) or the complete split, never a marker beside missing rows.
        fsync_tree(partial)
        partial.rename(directory / PHONE_FEEDS)
        fsync_tree(directory, recursive=False)  # the rename itself
    return replace(decision, made=True)


def _split_lock(engine: Engine, directory: Path) -> AbstractContextManager[Callable[[], None]]:
    """Two runs on one staging directory (a retried task beside its first try, two refreshes
    of one key) must not delete each other's partial split: one splits, the other then
    finds it complete. The lock dies with its holder, so a killed split never blocks."""
    name = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return held_lock(engine, f"phone-feeds-{name}")


def _remove_split(directory: Path) -> None:
    for stale in [*directory.glob(f"{PHONE_FEEDS}.*.partial"), directory / PHONE_FEEDS]:
        shutil.rmtree(stale, ignore_errors=True)


def drop_earlier_split(engine: Engine, directory: Path) -> None:
    """Remove a split (or a partial one) that an earlier try in ``directory`` left when this
    run decided not to split (the feeds shrank under the threshold, the threshold was
    raised, older code always split): the partitions read any split they find, and would
    read that one instead of the warehouse."""
    if (directory / PHONE_FEEDS).exists() or any(directory.glob(f"{PHONE_FEEDS}.*.partial")):
        with _split_lock(engine, directory):
            _remove_split(directory)


def staged_phone_feeds(spec: FeaturesConfig, directory: Path, partition: Partition,
                       customers: pd.DataFrame) -> dict[str, Path] | None:
    """The complete split of :func:`stage_phone_feeds` (each phone-keyed source's directory)
    for ``partition``, whose register slice is ``customers``; None if there is none: the
    partition then reads the warehouse itself. A split made for other phone owners (its
    marker's partition count or this partition's owners fingerprint differ) is an error: its
    files would silently miss or mis-assign rows."""
    split = directory / PHONE_FEEDS
    done = split / SPLIT_DONE
    if not done.exists():
        return None
    marker = json.loads(done.read_text(encoding="utf-8"))
    owners = marker.get("owners")
    if (marker.get("partitions") != partition.count
            or not isinstance(owners, list) or len(owners) != partition.count
            or owners[partition.bucket] != _owners_fingerprint(customers)):
        raise PuhuiError(
            f"the phone-keyed feeds split in {split} was made for other phone owners than "
            f"partition {partition.bucket} of {partition.count} has (its register changed "
            "after the split): re-run the flow, whose split step redoes or removes it")
    return {source.name: split / source.name
            for source in spec.sources if source.key == "phone_key"}


def drop_phone_feeds(directory: Path) -> None:
    """Remove the staged split: once every partition's features are written nothing reads it
    (the staged features and scores stay; the split is the size of the feeds)."""
    shutil.rmtree(directory / PHONE_FEEDS, ignore_errors=True)


def _staged_owners(directory: Path, as_of: date, partitions: int) -> Register:
    """The staged register slices, only the columns that say who owns which phone."""
    columns = ["person_key", "phone_key", "partition", "owns_phone"]
    customers = pd.concat(
        [pd.read_parquet(register_path(directory, part), columns=columns)
         for part in all_partitions(partitions)], ignore_index=True)
    return Register(as_of, partitions, customers)


def _owner_hashes(customers: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(partition, a hash of (phone, partition)) of each phone owner among ``customers``,
    with the types fixed: a slice read back from Parquet hashes as the register did."""
    owners = customers.loc[customers["owns_phone"], ["phone_key", "partition"]]
    owners = pd.DataFrame({"phone_key": owners["phone_key"].astype("str"),
                           "partition": owners["partition"].astype("int64")})
    return (owners["partition"].to_numpy(),
            pd.util.hash_pandas_object(owners, index=False).to_numpy())


def _fingerprint(count: int, total: int) -> str:
    return f"{count}:{total:016x}"


def _owners_fingerprint(customers: pd.DataFrame) -> str:
    """Who owns each phone among ``customers`` (one partition's slice), and in which
    partition, as a short text (a sum: any order). Costs a hash of the slice's owners."""
    _, hashes = _owner_hashes(customers)
    return _fingerprint(len(hashes), int(hashes.sum(dtype=np.uint64)))


def _owners_fingerprints(register: Register) -> list[str]:
    """:func:`_owners_fingerprint` of each partition of ``register``, in one pass."""
    buckets, hashes = _owner_hashes(register.customers)
    sums = np.zeros(register.partitions, dtype=np.uint64)
    np.add.at(sums, buckets, hashes)  # wraps modulo 2**64, as the one-slice sum does
    counts = np.bincount(buckets, minlength=register.partitions)
    return [_fingerprint(int(c), int(t)) for c, t in zip(counts, sums, strict=True)]


def fsync_tree(path: Path, recursive: bool = True) -> None:
    """Flush ``path`` (a directory: its entries) to disk, and with ``recursive`` every file
    and directory under it, deepest first."""
    if recursive:
        for root, dirs, files in os.walk(path, topdown=False):
            for name in [*files, *dirs]:
                _fsync(Path(root) / name)
    _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_features_parquet(path: Path) -> pd.DataFrame:
    """A staged features file as the builder returned it: Parquet gives text columns back as
    ``str``, the builder's categorical features are objects with None for missing."""
    frame = pd.read_parquet(path)
    for column in frame.columns[2:]:
        if pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def read_staged_features(directory: Path, partitions: list[Partition]) -> pd.DataFrame:
    """All partitions' features (for tests and small populations: this is the whole lot)."""
    return pd.concat([read_features_parquet(features_path(directory, p)) for p in partitions],
                     ignore_index=True)


def write_atomic(frame: pd.DataFrame, target: Path) -> None:
    """Write then rename, so a file that exists is complete (a killed task leaves none)."""
    partial = target.with_suffix(f".{os.getpid()}.partial")
    frame.to_parquet(partial, index=False)
    partial.replace(target)
