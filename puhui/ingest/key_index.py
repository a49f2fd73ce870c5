"""One load per primary key per feed, across files: the ``ingest_keys`` index.

Within a file the first row of a key is kept (``batches.SeenKeys``). Across files of one
feed (an overlapping or corrected redelivery under a new name, yesterday's rows resent with
today's) the index decides: every loaded row's key is claimed in ``ingest_keys`` (a 126-bit
key hash keyed by the feed, so no partner column; the batch) in the same transaction that
loads the row, and a row whose key another batch claimed first is not loaded. It counts in
``rows_duplicate``, and the batch's warning says how many rows repeat earlier batches' keys
(same values, or changed: a correction) and names those batches, never a key or a value.

A chunk's key hashes are COPYed (binary on PostgreSQL) straight into ``ingest_keys``, in
key order, under a savepoint: the primary key checks them as they go in. When one repeats a
key, that COPY fails and is undone, and the chunk goes through a temporary stage joined with
the index to find which rows repeat. The unique primary key is what makes two concurrent
loads safe; a per-feed transaction lock makes the second one wait for the first instead of
deadlocking on each other's keys.

The key hash is two SipHash-2-4 halves (pandas' ``hash_array``), keyed by the feed, of the
key's text: 126 bits (one bit of each half keeps it from printing as 18 digits),
so a collision that would drop a distinct row is ~1e-18 likely at 10^10 keys, and hard to
craft. The value hash (64 bits, vectorized) only tells a repeat from a correction in the
warning; nothing is decided by it.

Warehouses from before migration 0008 get their index built from the raw tables on a feed's
first load (:func:`ensure_key_index`): first batch per key wins, and rows that were already
loaded twice are counted and reported in one line, not taken as fine.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    MetaData,
    Table,
    Text,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError

from puhui.config import PartnerFeed
from puhui.crashpoints import crash_point
from puhui.hashing import column_words, mix_word, splitmix64_finish
from puhui.ingest.contract import ARROW_TYPES
from puhui.ingest.key_digest import (
    KEYS_BY_BATCH,
    KEYS_DIGEST,
    KEYS_MAC,
    KEYS_MAC_BY_BATCH,
    KeyDigest,
    KeyedDigest,
    by_batch_hex,
    digest_subkey,
    keyed_digests,
    keys_digests,
)
from puhui.ingest.raw_tables import raw_table, stored_columns
from puhui.warehouse.bulk import bulk_insert
from puhui.warehouse.copy_out import query_arrow
from puhui.warehouse.engine import lock_for
from puhui.warehouse.schema import ingest_batches, ingest_key_backfills, ingest_keys

if TYPE_CHECKING:
    from puhui.ingest.batches import PreparedChunk
    from puhui.runtime import Runtime

_log = logging.getLogger("puhui.ingest")

_BACKFILL_ROWS = 100_000
_PROBE_INDEX_RATIO = 2  # index keys per staged key from which the join probes the index
_LOADED = ("accepted", "released")

try:  # psycopg's own error: the COPY path talks to the driver, not through SQLAlchemy
    from psycopg import IntegrityError as _PsycopgIntegrityError
except ImportError:  # pragma: no cover - psycopg is a dependency
    _PsycopgIntegrityError = IntegrityError
_UNIQUE_VIOLATIONS = (IntegrityError, sqlite3.IntegrityError, _PsycopgIntegrityError)

_stage_metadata = MetaData()
_STAGE = Table(
    "puhui_key_stage", _stage_metadata,
    *(Column(name, BigInteger) for name in ("key_hi", "key_lo", "value_hash", "row_number")),
)
_BACKFILL_STAGE = Table(
    "puhui_key_backfill_stage", _stage_metadata,
    *(Column(name, BigInteger) for name in ("key_hi", "key_lo", "value_hash")),
    Column("batch_id", Text),
)
_BACKFILL_COUNTS = Table(
    "puhui_key_backfill_counts", _stage_metadata,
    *(Column(name, BigInteger) for name in ("key_hi", "key_lo")),
    Column("batch_id", Text), Column("n", BigInteger),
)
_BATCH_ORDER = Table(
    "puhui_batch_order", _stage_metadata, Column("batch_id", Text), Column("ord", BigInteger)
)


# --------------------------------------------------------------------------- hashing
def key_strings(stored: pa.Table, feed: PartnerFeed) -> pa.Array:
    """Each row's primary key as one string that no other key gives.

    Of several columns, each part is its byte length and ":" before its text, after a flag
    byte ("\\x01"); a NULL part is the flag "\\x00" alone. A separator between parts would
    let a value containing it move text from one part to the next (('a\\x1fb', 'c') and
    ('a', 'b\\x1fc')), and a NULL written as some text collides with that text. A key of
    one column is its text, NULL "\\x00", and a text starting with either flag byte gets
    "\\x01" in front: the usual key is then used as it is (measured per 1M keys, key text and
    SipHash: 0.18 s against 0.22 s length-prefixed).
    """
    names = {c.name: s for s, c in stored_columns(feed)}
    if len(feed.primary_key) == 1:
        values = stored[names[feed.primary_key[0]]].combine_chunks().cast(pa.string())
        flagged = pc.or_(pc.starts_with(values, "\x00"), pc.starts_with(values, "\x01"))
        if pc.any(flagged).as_py():
            values = pc.if_else(flagged, pc.binary_join_element_wise("\x01", values, ""),
                                values)
        return pc.fill_null(values, "\x00") if values.null_count else values
    parts = []
    for key in feed.primary_key:
        values = stored[names[key]].combine_chunks().cast(pa.string())
        length = pc.binary_length(values).cast(pa.string())
        part = pc.binary_join_element_wise("\x01", length, ":", values, "")
        parts.append(pc.fill_null(part, "\x00") if values.null_count else part)
    return pc.binary_join_element_wise(*parts, "")


@dataclass
class RowHashes:
    """Per row: the key's hash (two int64 halves, 63 bits each) and a hash of its values."""

    key_hi: np.ndarray
    key_lo: np.ndarray
    value: np.ndarray

    sorted_by_key: np.ndarray | None = None  # the rows in key order (made on demand)
    digest: KeyDigest | None = None  # of every row's key (made on demand)
    keyed: KeyedDigest | None = None  # the same, keyed (made on demand)

    def take(self, mask: np.ndarray) -> RowHashes:
        return RowHashes(self.key_hi[mask], self.key_lo[mask], self.value[mask])

    def all_keys(self) -> KeyDigest:
        if self.digest is None:
            self.digest = KeyDigest.of(self.key_hi, self.key_lo)
        return self.digest

    def all_keys_keyed(self, subkey: bytes) -> KeyedDigest:
        if self.keyed is None:
            self.keyed = KeyedDigest.of(subkey, self.key_hi, self.key_lo)
        return self.keyed

    def order(self) -> np.ndarray:
        if self.sorted_by_key is None:
            # By the high half alone: equal high halves are too rare to matter for order.
            self.sorted_by_key = np.argsort(self.key_hi)
        return self.sorted_by_key


_BIT_62 = np.uint64(1 << 62)


def _nineteen_digits(words: np.ndarray) -> np.ndarray:
    """``words`` as int64 whose bit 62 is the opposite of the sign bit: every value is at
    least 2^62 from zero, so it prints as 19 digits. An 18-digit integer is a national ID's
    shape to any scan of the warehouse (auditors', the privacy tests'), and one in ten
    64-bit values has 18 digits. Costs one bit of each 64."""
    negative = words >> np.uint64(63)
    return ((words & ~_BIT_62) | ((np.uint64(1) - negative) << np.uint64(62))).view(np.int64)


def key_definition(feed: PartnerFeed) -> str:
    """A fingerprint of what makes a row's key text: the key encoding's version and each key
    column in order, with its type and treatment. The same rows give another key text when
    any of these changes, so the index built under the old one is rebuilt
    (:func:`ensure_key_index`)."""
    columns = {c.name: c for c in feed.columns}
    parts = [f"{c.name}:{c.type}:{c.pii}:{c.treatment}:{c.stored_name}"
             for c in (columns[name] for name in feed.primary_key)]
    return hashlib.sha256("|".join(["puhui.keys.v2", *parts]).encode()).hexdigest()[:32]


def _half_keys(feed: PartnerFeed) -> tuple[str, str]:
    """The SipHash keys (16 characters) of the two halves, per feed and key definition: the
    feed is in the hash, so one index on (key_hi, key_lo) serves every feed and its entries
    stay narrow. Fixed, not secret: the index must outlive a rotation of the pseudonym key."""
    definition = key_definition(feed)
    return tuple(  # type: ignore[return-value]
        hashlib.sha256(f"puhui.keys.{half}.{feed.name}.{definition}".encode()).hexdigest()[:16]
        for half in ("hi", "lo"))


def _siphash_input(keys: pa.Array) -> np.ndarray:
    """The key texts as ``hash_array`` takes them: bytes objects, not str. SipHash hashes a
    str's UTF-8 encoding, made again in each half's pass, and Arrow's text is that encoding
    already: the same hashes, the two halves 0.10 s per 1M keys against 0.35 s (objects
    included, load 1.5: bench_key_index_parts), GIL-held time taken from the reader
    thread; end to end the saving was below the noise (README "Performance", round 14)."""
    return keys.cast(pa.binary()).to_numpy(zero_copy_only=False)


def row_hashes(stored: pa.Table, feed: PartnerFeed, *,
               digest_key: bytes | None = None) -> RowHashes:
    """The hashes :class:`KeyIndex` claims, for a table of stored columns. ``digest_key``
    (:func:`digest_subkey`): make the keys' digests now, as a load's reader thread does for
    the claim (the index build has no use for them; elsewhere they are made on demand)."""
    keys = _siphash_input(key_strings(stored, feed))
    halves = [_nineteen_digits(pd.util.hash_array(keys, hash_key=k, categorize=False))
              for k in _half_keys(feed)]
    state = np.full(stored.num_rows, 0x243F6A8885A308D3, dtype=np.uint64)
    keyed = {s for s, c in stored_columns(feed) if c.name in feed.primary_key}
    for name in stored.column_names:
        if name in keyed:
            continue  # equal for the rows compared: their keys are
        state = mix_word(state, column_words(stored[name].combine_chunks()))
    hashes = RowHashes(halves[0], halves[1], _nineteen_digits(splitmix64_finish(state)))
    hashes.order()  # here, in the reader thread, rather than in the loading one
    if digest_key is not None:
        hashes.all_keys()
        hashes.all_keys_keyed(digest_key)
    return hashes


# --------------------------------------------------------------------------- claiming
@dataclass
class Repeats:
    """Rows not loaded because an earlier batch of the feed loaded their key."""

    rows: int = 0
    same: int = 0  # with the same values as the loaded row (the rest are corrections)
    batches: set[str] = field(default_factory=set)

    def warning(self, feed: PartnerFeed) -> str | None:
        if not self.rows:
            return None
        named = sorted(self.batches)
        shown = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
        return (
            f"keys of earlier batches: {self.rows:,} row(s) repeat a primary key "
            f"({', '.join(feed.primary_key)}) loaded by batch(es) {shown}: "
            f"{self.same:,} with the same values, {self.rows - self.same:,} with changed "
            "values; not loaded (the first load of a key is kept)"
        )


def _stage(conn: Connection, table: Table, columns: str) -> None:
    """Create the session's temporary stage ``table`` if needed, and empty it."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"CREATE TEMP TABLE IF NOT EXISTS {table.name} ({columns}) "
                          "ON COMMIT DELETE ROWS"))
        conn.execute(text(f"TRUNCATE {table.name}"))
    else:
        conn.execute(text(f"CREATE TEMP TABLE IF NOT EXISTS {table.name} ({columns})"))
        conn.execute(text(f"DELETE FROM {table.name}"))


def _lock_keys(conn: Connection, feed: PartnerFeed) -> None:
    # Until commit: a second load of the feed waits here rather than deadlocking with the
    # first over keys both inserted (each would wait for the other's uncommitted key).
    lock_for(conn, f"puhui.keys.{feed.name}")


class KeyIndex:
    """Claims one batch's keys on the load's connection, chunk by chunk."""

    def __init__(self, conn: Connection, feed: PartnerFeed, batch_id: str,
                 digest_key: bytes) -> None:
        self.conn, self.feed, self.batch_id = conn, feed, batch_id
        self.repeats = Repeats()
        # Of the keys claimed so far, for the batch's audit event: the unkeyed digest that
        # every `audit verify` checks, the keyed one `audit verify --deep` checks.
        self.digest, self.keyed = KeyDigest(), KeyedDigest()
        self.digest_key = digest_key
        self._locked = False

    def details(self) -> dict[str, str]:
        """The claimed keys' digests, as the batch's audit event records them."""
        return {KEYS_DIGEST: self.digest.hex(), KEYS_MAC: self.keyed.hex()}

    def claim(self, chunk: PreparedChunk) -> tuple[PreparedChunk, int]:
        """``chunk`` without rows whose key an earlier batch loaded; returns rows dropped.

        The kept rows' keys are claimed for this batch: the caller loads them on the same
        connection before it commits.
        """
        count = len(chunk.row_numbers)
        if not count:
            return chunk, 0
        hashes = chunk.hashes or row_hashes(chunk.stored, self.feed)
        conn = self.conn
        if not self._locked:
            _lock_keys(conn, self.feed)
            self._locked = True
        # In key order, so the index's leaf pages are walked in order.
        order = hashes.order()
        claims = pa.table({"key_hi": hashes.key_hi[order], "key_lo": hashes.key_lo[order],
                           "value_hash": hashes.value[order]})
        # The usual case, no key loaded before: the keys are COPYed straight into the index
        # table, whose primary key checks them as it inserts. A repeat fails that COPY: the
        # savepoint undoes it and the repeats are found through a stage. Measured (README
        # "Performance"): a stage and INSERT ... ON CONFLICT DO NOTHING cost 2-4x this.
        # A file that repeated keys once (a superset redelivery) likely does so in every
        # chunk: its later chunks go to the stage at once, not through a failing COPY.
        if not self.repeats.rows:
            try:
                with conn.begin_nested():
                    bulk_insert(conn, ingest_keys, claims, {"batch_id": self.batch_id})
                self.digest += hashes.all_keys()
                self.keyed += hashes.all_keys_keyed(self.digest_key)
                return chunk, 0
            except _UNIQUE_VIOLATIONS:
                pass
        _stage(conn, _STAGE, "key_hi bigint, key_lo bigint, value_hash bigint, row_number bigint")
        rows_in_order = np.asarray(chunk.row_numbers, dtype=np.int64)[order]
        bulk_insert(conn, _STAGE, claims.append_column("row_number", pa.array(rows_in_order)))
        # One join finds the repeats; the other rows' keys are then COPYed straight in as
        # above: no key of theirs is in the index, and none can arrive before this commits
        # (the feed's key lock). Measured (README "Performance"): the join's rows fetched as
        # Python tuples and an INSERT ... WHERE NOT EXISTS (a second join) cost 2-3x this.
        for attempt in range(2):
            repeated = self._repeated(conn, len(rows_in_order))
            row_numbers = repeated["row_number"].to_numpy()
            fresh = ~np.isin(rows_in_order, row_numbers)
            if not fresh.any():
                break
            try:
                with conn.begin_nested():
                    bulk_insert(conn, ingest_keys, claims.filter(pa.array(fresh)),
                                {"batch_id": self.batch_id})
                claimed = hashes.key_hi[order][fresh], hashes.key_lo[order][fresh]
                self.digest += KeyDigest.of(*claimed)
                self.keyed += KeyedDigest.of(self.digest_key, *claimed)
                break
            except _UNIQUE_VIOLATIONS:
                # The feed's key lock keeps other loads' keys out between the join and this
                # COPY, so a key claimed outside that lock did it: committed now, the join
                # finds it once more. Twice, it is two keys in one chunk (SeenKeys' job).
                if attempt:
                    raise RuntimeError(
                        f"{self.feed.name}: key index: a key claimed outside the feed's lock, "
                        "or two keys in one chunk") from None
        self.repeats.rows += len(row_numbers)
        self.repeats.same += int(pc.sum(repeated["same"]).as_py() or 0)
        self.repeats.batches.update(pc.unique(repeated["batch_id"]).to_pylist())
        keep = ~np.isin(chunk.row_numbers, row_numbers)
        return chunk.take(keep), len(row_numbers)

    def _repeated(self, conn: Connection, staged: int) -> pa.Table:
        """The staged rows whose key the index has: row number, its batch, same values."""
        # An index of twice the chunk or more is probed once per staged key: the planner's
        # hash join reads all of it for every chunk, and the index grows with every feed's
        # history. A smaller one is left to the planner, whose hash join is then as fast or
        # faster (bench/bench_key_index_join.py: 337k staged keys, at 3M indexed 0.74 s
        # probing against 1.37 s, at 674k even, at 100k 0.32 s against 0.21 s).
        probes = conn.dialect.name == "postgresql" and conn.execute(text(
            "SELECT reltuples FROM pg_class WHERE oid = 'ingest_keys'::regclass")
        ).scalar_one() >= _PROBE_INDEX_RATIO * staged
        if probes:
            # Put back as they were once the join is done, for the rest of the transaction
            # (SET LOCAL ends with it anyway): RESET would put the server's default over a
            # value the caller's session chose.
            before = conn.execute(text(
                "SELECT current_setting('enable_hashjoin'), current_setting('enable_mergejoin'), "
                "current_setting('jit')")).one()
            # JIT off, as for the feature build's reads: its compiling would be paid per chunk.
            for setting in ("enable_hashjoin = off", "enable_mergejoin = off", "jit = off"):
                conn.execute(text(f"SET LOCAL {setting}"))
        # Its rows as Arrow (COPY CSV on PostgreSQL): a Python tuple per row (the driver's
        # way) cost more than the join for 500,000 repeats.
        repeated = query_arrow(conn, (
            "SELECT s.row_number, k.batch_id, "
            "CASE WHEN k.value_hash = s.value_hash THEN 1 ELSE 0 END AS same "
            "FROM puhui_key_stage s JOIN ingest_keys k "
            "ON k.key_hi = s.key_hi AND k.key_lo = s.key_lo"),
            {"row_number": pa.int64(), "batch_id": pa.string(), "same": pa.int64()})
        if probes:
            for name, value in zip(("enable_hashjoin", "enable_mergejoin", "jit"), before,
                                   strict=True):
                conn.execute(text("SELECT set_config(:name, :value, true)"),
                             {"name": name, "value": value})
        return repeated


# --------------------------------------------------------------------------- backfill
@dataclass(frozen=True)
class Backfill:
    rows_indexed: int
    rows_repeated: int


def ensure_key_index(
    runtime: Runtime, feed: PartnerFeed, conn: Connection | None = None
) -> Backfill | None:
    """Index the feed's existing raw rows (warehouses from before 0008), or index them again
    when the feed's key definition changed since they were indexed; None when the index is
    current.

    Without ``conn``: in a transaction of its own, logged once committed. Callers that load
    rows call it so before their load's transaction, then again with the load's ``conn``:
    that check holds the feed's key lock until the load commits (another process with
    another definition may rebuild the index at any time before: a check in a transaction of
    its own, or remembered by the process, let this load claim keys hashed one way into an
    index hashed the other). When current it only reads (one indexed read). A rebuild left
    to the load's transaction (another process changed the definition between the two calls)
    appends its audit event there, holding the audit chain's lock until the load commits:
    hence the first call, which does the usual rebuild without it.

    Under the feed's key lock, in one transaction: a kill -9 midway leaves nothing, and the
    next load does it again from the start. Rows are read in chunks of ``_BACKFILL_ROWS`` (a
    server-side cursor on PostgreSQL), so memory stays bounded.
    """
    definition = key_definition(feed)
    if conn is not None:
        made = _make_current(runtime, conn, feed, definition)
    else:
        with runtime.engine.connect() as peek:  # no lock: the usual case is current
            if _recorded(peek, feed) == definition:
                return None
        with runtime.engine.begin() as own:
            made = _make_current(runtime, own, feed, definition)
    if made is None:
        return None
    done, rebuilt = made
    _log_rebuild(feed, done, rebuilt, committed=conn is None)
    return done


def _recorded(conn: Connection, feed: PartnerFeed) -> str | None:
    return conn.execute(select(ingest_key_backfills.c.key_definition)
                        .where(ingest_key_backfills.c.partner == feed.name)).scalars().first()


def _make_current(runtime: Runtime, conn: Connection, feed: PartnerFeed,
                  definition: str) -> tuple[Backfill, bool] | None:
    _lock_keys(conn, feed)
    recorded = _recorded(conn, feed)
    if recorded == definition:
        return None
    rebuilt = recorded is not None
    if rebuilt:
        # Entries hashed under the old definition match no key hashed now: every resent
        # row would load again. The raw table has every loaded row, so the index is built
        # from it again, as a first use builds it.
        conn.execute(delete(ingest_keys).where(ingest_keys.c.batch_id.in_(
            select(ingest_batches.c.batch_id).where(ingest_batches.c.partner == feed.name))))
        conn.execute(delete(ingest_key_backfills)
                     .where(ingest_key_backfills.c.partner == feed.name))
    done = _backfill(conn, feed)
    conn.execute(insert(ingest_key_backfills).values(
        partner=feed.name, key_definition=definition, rows_indexed=done.rows_indexed,
        rows_repeated=done.rows_repeated, built_at=pd.Timestamp.now(tz="UTC")))
    if done.rows_indexed or rebuilt:
        # The keys the feed's batches hold now: `audit verify` checks their sum stays this
        # (which batch holds how many of a backfill's keys no ledger figure says).
        feed_batches = "batch_id IN (SELECT batch_id FROM ingest_batches WHERE partner = :feed)"
        by_batch = keys_digests(conn, feed_batches, {"feed": feed.name})
        keyed_by_batch = keyed_digests(conn, digest_subkey(runtime.audit.key), feed_batches,
                                       {"feed": feed.name})
        keys = sum(by_batch.values(), KeyDigest())
        keyed = sum(keyed_by_batch.values(), KeyedDigest())
        runtime.audit.append(conn, "ingest.keys.indexed", feed.name, {
            "partner": feed.name, "rows_indexed": done.rows_indexed,
            "rows_repeated": done.rows_repeated, "key_definition": definition,
            "rebuilt": rebuilt, "keys_indexed": keys.count, KEYS_DIGEST: keys.hex(),
            KEYS_MAC: keyed.hex(), KEYS_BY_BATCH: by_batch_hex(by_batch),
            KEYS_MAC_BY_BATCH: by_batch_hex(keyed_by_batch)})
    return done, rebuilt


def _log_rebuild(feed: PartnerFeed, done: Backfill, rebuilt: bool, *, committed: bool) -> None:
    """Once committed; in a load's transaction, said as under way (a rollback undoes it)."""
    if rebuilt:
        _log.warning(
            "%s: key definition changed (primary key %s, its types or treatment): key index "
            "%s from %s, %s row(s)", feed.name, ", ".join(feed.primary_key),
            "rebuilt" if committed else "rebuilding, with this load,", feed.raw_table,
            f"{done.rows_indexed:,}")
    if done.rows_repeated:
        _log.warning(
            "%s: %s row(s) of %s repeat a primary key (%s) of an earlier batch: loaded "
            "twice before the key index; the index %s the first batch's", feed.name,
            f"{done.rows_repeated:,}", feed.raw_table, ", ".join(feed.primary_key),
            "keeps" if committed else "being built with this load keeps")


def _backfill(conn: Connection, feed: PartnerFeed) -> Backfill:
    if not inspect(conn).has_table(feed.raw_table):
        return Backfill(0, 0)
    batches = conn.execute(
        select(ingest_batches.c.batch_id)
        .where(ingest_batches.c.partner == feed.name, ingest_batches.c.status.in_(_LOADED))
        # When each batch loaded its rows: decided_at, or for ledger rows from before it was
        # set on accepting, the landing (they were loaded as they landed). Never NULL, so the
        # order is the same on both dialects (PostgreSQL sorts NULLs last, SQLite first).
        .order_by(func.coalesce(ingest_batches.c.decided_at, ingest_batches.c.landed_at),
                  ingest_batches.c.landed_at, ingest_batches.c.batch_id)).scalars().all()
    order = {batch: position for position, batch in enumerate(batches)}
    _stage(conn, _BATCH_ORDER, "batch_id text, ord bigint")
    bulk_insert(conn, _BATCH_ORDER, pa.table({
        "batch_id": pa.array(list(order), pa.string()),
        "ord": pa.array(list(order.values()), pa.int64())}))
    table = raw_table(feed)
    names = [name for name, _ in stored_columns(feed)]
    types = {name: ARROW_TYPES[c.type] if c.treatment != "pseudonymize" else pa.string()
             for name, c in stored_columns(feed)}
    # Options on the statement, not the connection (that would stream every later one).
    result = conn.execute(select(table.c.batch_id, *(table.c[n] for n in names)),
                          execution_options={"stream_results": True,
                                             "yield_per": _BACKFILL_ROWS})
    indexed = 0
    _stage(conn, _BACKFILL_COUNTS, "key_hi bigint, key_lo bigint, batch_id text, n bigint")
    for part in result.partitions():
        columns = list(zip(*part, strict=True))
        stored = pa.table({n: pa.array(columns[i + 1], types[n]) for i, n in enumerate(names)})
        _index_part(conn, feed, stored, np.array(columns[0], dtype=object), order)
        indexed += len(part)
        crash_point("key-backfill")
    # Counted once every part is in: a key's owner may change with a later part, and the
    # rows of one (key, batch) may fall in different parts. A batch's own repeats of a key
    # (within one file) are not news.
    repeated = conn.execute(text(
        "SELECT coalesce(sum(c.n), 0) FROM puhui_key_backfill_counts c JOIN ingest_keys k "
        "ON k.key_hi = c.key_hi AND k.key_lo = c.key_lo WHERE k.batch_id <> c.batch_id")
    ).scalar_one()
    return Backfill(indexed, int(repeated))


def _index_part(conn: Connection, feed: PartnerFeed, stored: pa.Table, batch_ids: np.ndarray,
                order: dict[str, int]) -> None:
    """Index one part of a raw table (first batch per key wins), and stage its rows counted
    per (key, batch) for :func:`_backfill`'s count of repeats."""
    hashes = row_hashes(stored, feed)
    ords = np.array([order.get(b, len(order)) for b in batch_ids], dtype=np.int64)
    _, codes = np.unique(batch_ids.astype(str), return_inverse=True)
    at = np.lexsort((codes, ords, hashes.key_lo, hashes.key_hi))  # by key, then load order
    hi, lo, code = hashes.key_hi[at], hashes.key_lo[at], codes[at]
    first = np.ones(len(at), dtype=bool)
    first[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    group = first.copy()
    group[1:] |= code[1:] != code[:-1]
    starts = np.flatnonzero(group)
    bulk_insert(conn, _BACKFILL_COUNTS, pa.table({
        "key_hi": hi[starts], "key_lo": lo[starts],
        "batch_id": pa.array(batch_ids[at[starts]], pa.string()),
        "n": np.diff(np.append(starts, len(at)))}))
    keep = at[first]
    _stage(conn, _BACKFILL_STAGE, "key_hi bigint, key_lo bigint, value_hash bigint, batch_id text")
    bulk_insert(conn, _BACKFILL_STAGE, pa.table({
        "key_hi": hashes.key_hi[keep], "key_lo": hashes.key_lo[keep],
        "value_hash": hashes.value[keep], "batch_id": pa.array(batch_ids[keep], pa.string())}))
    order_of = "(SELECT ord FROM puhui_batch_order o WHERE o.batch_id = {})"
    conn.execute(text(
        "INSERT INTO ingest_keys (key_hi, key_lo, batch_id, value_hash) "
        "SELECT key_hi, key_lo, batch_id, value_hash FROM puhui_key_backfill_stage "
        "WHERE true ON CONFLICT (key_hi, key_lo) DO UPDATE "
        "SET batch_id = excluded.batch_id, value_hash = excluded.value_hash "
        f"WHERE {order_of.format('excluded.batch_id')} < "
        f"{order_of.format('ingest_keys.batch_id')}"))
