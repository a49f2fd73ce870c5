"""The ``ingest_batches`` ledger: every landed file ends as exactly one row with a status.

A batch id is derived from the feed, the delivery date, the path and the content, so re-running
an ingest finds the same id and skips the file. ``content_key`` (the checksum, unique) is set
for the batch that owns a content; a later delivery of the same bytes is recorded as a
``duplicate`` pointing to it. The database's unique constraints, not checks in Python, are
what make two concurrent runs safe.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Engine,
    LargeBinary,
    Select,
    Text,
    and_,
    cast,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)

from puhui.config import LOWER_NAME
from puhui.crashpoints import crash_point
from puhui.dates import parse_day
from puhui.privacy import find_raw_identifiers, safe_name
from puhui.warehouse.engine import in_list_chunks, lock_for, snapshot
from puhui.warehouse.schema import ingest_batches, ingest_watermarks, validation_results

if TYPE_CHECKING:
    from puhui.audit import AuditWriter

HELD_STATUSES: tuple[str, ...] = ("quarantined", "rejected")


def make_batch_id(partner: str, delivery_date: date, source_path: str, checksum: str) -> str:
    """A stable id: the same file at the same path always gets the same batch id."""
    digest = hashlib.sha256(f"{source_path}\0{checksum}".encode()).hexdigest()[:12]
    # Not %Y: strftime writes year 1 as "1", and the id would not name its date's 8 digits.
    day = f"{delivery_date.year:04d}{delivery_date.month:02d}{delivery_date.day:02d}"
    return f"{partner}-{day}-{digest}"


@dataclass(frozen=True)
class BatchRecord:
    batch_id: str
    partner: str
    source_path: str
    delivery_date: date | None
    checksum: str
    status: str
    rows: int
    rows_loaded: int
    rows_held: int
    rows_duplicate: int
    reason: str | None
    warnings: list[dict[str, Any]]
    duplicate_of: str | None
    mtime_ns: int | None = None
    change_marker: str | None = None
    # Columns whose stored value is none of their type (SQLite keeps whatever a hand edit
    # wrote, a BLOB too): read as None (a count as 0, warnings as none), named here so a
    # listing can mark them.
    unreadable: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Any) -> BatchRecord:
        """A record from a row of :func:`record_query` (its fragile columns as stored)."""
        m = row._mapping
        parsed = {c: read(stored_text(m[c])) for c, read in _FRAGILE.items()}
        return cls(
            m["batch_id"],
            m["partner"],
            m["source_path"],
            parsed["delivery_date"],
            m["checksum"],
            m["status"],
            parsed["rows"] or 0,
            parsed["rows_loaded"] or 0,
            parsed["rows_held"] or 0,
            parsed["rows_duplicate"] or 0,
            stored_text(m["reason"]),
            parsed["warnings"] or [],
            m["duplicate_of"],
            m["mtime_ns"],
            m["change_marker"],
            tuple(c for c in _FRAGILE if m[c] is not None and parsed[c] is None),
        )


def as_stored(column: Any, dialect: str) -> Any:
    """``column`` selected so that no value a hand edit left in it stops the read: typed on
    PostgreSQL (which keeps only its type), its bytes on SQLite (which keeps any text, number
    or BLOB in any column), for :func:`stored_text`. SQLAlchemy's SQLite types parse in the
    fetch ('garbage' in a date raised): one edited cell stopped `quarantine list`, `show`, a
    release and verify. (Text that is no UTF-8, in any column, the warehouse engine's
    connections decode with U+FFFD themselves.)"""
    if dialect == "postgresql":
        return column
    return cast(column, LargeBinary).label(column.name)


def stored_text(value: Any) -> Any:
    """A value read through :func:`as_stored`: bytes decoded (what is no UTF-8 shown as
    U+FFFD, so it reads as no date, number or JSON and is marked), else as it came."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# The forms the ledger stores (SQLAlchemy's on SQLite; PostgreSQL's come typed): fromisoformat
# alone also took 20260101 and the week date 2026-W01-1 (2025-12-29), and a release went
# ahead with that day's end as the bound on event times (dates: parse_day).
_TIME_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([+-]\d{2}:\d{2})?")


def as_date(value: Any) -> date | None:
    """A stored date, or None when there is none or it is not one (a hand edit)."""
    if isinstance(value, datetime):
        return value.date()
    if value is None or isinstance(value, date):
        return value
    try:
        return parse_day(str(value))
    except ValueError:  # 20260101, 2026-13-45
        return None


def as_datetime(value: Any) -> datetime | None:
    """A stored time, or None when there is none or it is not one (a hand edit)."""
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value) if _TIME_TEXT.fullmatch(str(value)) else None
    except ValueError:
        return None


def _as_count(value: Any) -> int | None:
    """A stored count, or None when there is none or it is not one ('abc' kept as text)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else None


def as_json(value: Any, empty: Any) -> Any:
    """A stored JSON value (text on SQLite, parsed on PostgreSQL): ``empty`` for none (SQL
    NULL, or JSON null: the JSON type writes Python None so), None when it is no JSON (a
    hand edit)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return empty if value is None else value


def _as_warnings(value: Any) -> list[dict[str, Any]] | None:
    """Stored warnings, or None when they are no JSON list of objects."""
    value = as_json(value, [])
    if isinstance(value, list) and all(isinstance(w, dict) for w in value):
        return value
    return None


# The ledger columns read through as_stored, each with its parser: a hand edit of any of
# them is marked, not a crash of every read.
_FRAGILE: dict[str, Callable[[Any], Any]] = {
    "delivery_date": as_date, "landed_at": as_datetime, "decided_at": as_datetime,
    **dict.fromkeys(("rows", "rows_loaded", "rows_held", "rows_duplicate"), _as_count),
    "warnings": _as_warnings, "reason": lambda v: v,
}

def record_query(dialect: str) -> Select[Any]:
    """``SELECT`` of every ledger column :class:`BatchRecord` reads, the fragile ones through
    :func:`as_stored` (checked by ``from_row``, not parsed in the fetch)."""
    columns = [c for c in ingest_batches.c if c.name not in _FRAGILE]
    return select(*columns, *(as_stored(ingest_batches.c[c], dialect) for c in _FRAGILE))


def now_utc() -> datetime:
    return datetime.now(UTC)


def get_batch(conn: Connection | Engine, batch_id: str) -> BatchRecord | None:
    query = record_query(conn.dialect.name).where(ingest_batches.c.batch_id == batch_id)
    if isinstance(conn, Engine):
        with conn.connect() as c:
            row = c.execute(query).first()
    else:
        row = conn.execute(query).first()
    return BatchRecord.from_row(row) if row else None


def get_content_owner(
    engine: Engine, key: str, partner: str | None = None, checksum: str | None = None
) -> BatchRecord | None:
    """The batch of the feed that owns this content (not a duplicate of another), if any.

    ``key`` is the per-feed content key; rows written before keys were per feed hold the
    bare ``checksum``, which counts for the same ``partner`` only.
    """
    condition = ingest_batches.c.content_key == key
    if partner and checksum:
        condition = or_(
            condition,
            and_(ingest_batches.c.content_key == checksum, ingest_batches.c.partner == partner),
        )
    with engine.connect() as conn:
        row = conn.execute(record_query(engine.dialect.name).where(condition)).first()
    return BatchRecord.from_row(row) if row else None


def loaded_batch_at_path(engine: Engine, partner: str, source_path: str) -> BatchRecord | None:
    """The feed's batch whose rows were loaded from ``source_path`` (accepted or released).

    A file rewritten at a loaded path (appended to, or replaced) must not load its rows a
    second time unseen: ingestion holds the new version for a decision.
    """
    query = (
        record_query(engine.dialect.name)
        .where(
            ingest_batches.c.partner == partner,
            ingest_batches.c.source_path == source_path,
            ingest_batches.c.status.in_(("accepted", "released")),
        )
        .order_by(ingest_batches.c.landed_at.desc())
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return BatchRecord.from_row(row) if row else None


@dataclass(frozen=True)
class SeenFile:
    """What the ledger's newest row for a path says was there: discovery compares it."""

    bytes: int
    mtime_ns: int | None  # None: a row from before 0005, or a remote file
    batch_id: str
    # None: a row from before 0007 (or, for a local file, before round 14), a store whose
    # listing gives none
    change_marker: str | None = None

    def matches(self, size: int, mtime_ns: int | None, marker: str | None = None) -> bool:
        """Whether a landed file of ``size``, ``mtime_ns`` (local) and change ``marker`` (a
        remote store's, or a local file's change time) is the version this row decided.

        A file rewritten in place at the same size differs by its time or marker; without
        one on either side only the size is compared.
        """
        if size != self.bytes:
            return False
        same_time = self.mtime_ns is None or mtime_ns is None or mtime_ns == self.mtime_ns
        return same_time and (
            self.change_marker is None or marker is None or marker == self.change_marker)


def seen_files(engine: Engine, partner: str, since: date | None) -> dict[str, SeenFile]:
    """``source_path -> SeenFile`` of the feed's ledger rows delivered after ``since``.

    Discovery skips a landed file whose path, size and time the ledger has seen without
    reading it; anything else in the look-back window (a late file in an old folder, a file
    rewritten in place) is ingested.
    """
    query = select(
        ingest_batches.c.source_path,
        ingest_batches.c.bytes,
        ingest_batches.c.mtime_ns,
        ingest_batches.c.batch_id,
        ingest_batches.c.change_marker,
    ).where(ingest_batches.c.partner == partner)
    if since is not None:
        query = query.where(ingest_batches.c.delivery_date > since)
    # A path rewritten in place has a row per version: the newest one says what is there now.
    query = query.order_by(ingest_batches.c.landed_at)
    with engine.connect() as conn:
        return {
            r.source_path: SeenFile(r.bytes or 0, r.mtime_ns, r.batch_id, r.change_marker)
            for r in conn.execute(query)
        }


# The identifier shapes a ledger path is settled at (``ingest_batches.path_settled``,
# migration 0010): 1, 18-digit national IDs and phones (0006's boolean TRUE); 2, also
# round 14's first-generation IDs (15 digits) and phones with a bracketed first group. Raise
# it when the finder learns a shape file names may hold: ingest settles every row below it
# once more, as it settled the rows from before names were pseudonymized (NULL).
PATH_SETTLED = 2
PATHS_SETTLED = "ingest.paths_pseudonymized"
RENAMED_FROM = "source_path_before"  # a rename's old path digest, in PATHS_SETTLED events
# Batches one PATHS_SETTLED or MARKS_RENEWED event lists (~110 bytes each): the first run
# after a new level renames every row holding a new shape, in one event 11 MB for 100k rows,
# which every verify parses.
EVENT_BATCHES = 10_000


def _below_level() -> Any:
    column = ingest_batches.c.path_settled
    return or_(column.is_(None), column < PATH_SETTLED)


def unsettled_partners(conn: Connection) -> list[str]:
    """The partners with ledger rows settled below ``PATH_SETTLED`` (or never)."""
    query = select(ingest_batches.c.partner).where(_below_level()).distinct()
    return sorted(conn.execute(query).scalars())


def settle_ledger_paths(
    conn: Connection, audit: AuditWriter, partner: str,
    settled_path: Callable[[str, int | None], str], flow_run_id: str | None = None,
) -> int:
    """Give the feed's ledger rows settled below ``PATH_SETTLED`` (or never) the
    ``source_path`` ingestion stores now, ``settled_path(source_path, path_settled)``;
    returns how many rows were renamed.

    ``settled_path`` takes a path stored at its level (``FileIngestor.settled_path``): one
    already pseudonymized or ``\\xNN``-escaped comes out unchanged, so a row is never escaped
    or pseudonymized twice, and a never-settled row's raw name is stored as discovery stores
    it. Each row is marked at the level as it is read, so it is read once per level: remote
    files and entries that are not regular files never get a modification time, and picking
    rows by that read them all on every run. The renames, the marks and ``PATHS_SETTLED``
    events with each renamed batch's new path digest (``audit verify`` compares
    ``source_path`` with the trail's digests), ``EVENT_BATCHES`` batches an event, are
    written in the caller's transaction: a run killed before its commit changed nothing. A
    row is updated only from the path it was read with and while below the level, so two
    runs at once rename it once (the other's update matches no row and its events do not
    list it); both lock rows in batch order, so neither waits on the other in a cycle. A
    data migration could not do this: it has no pseudonym key.
    """
    table = ingest_batches.c
    below = _below_level()
    query = (select(table.batch_id, table.source_path, table.path_settled)
             .where(table.partner == partner, below).order_by(table.batch_id))
    renamed: dict[str, tuple[str, str]] = {}
    kept: list[str] = []
    for row in conn.execute(query).all():
        path = settled_path(row.source_path, row.path_settled)
        if path == row.source_path:
            kept.append(row.batch_id)
        elif conn.execute(
            update(ingest_batches)
            .where(table.batch_id == row.batch_id, table.source_path == row.source_path, below)
            .values(source_path=path, path_settled=PATH_SETTLED)
        ).rowcount:
            renamed[row.batch_id] = (row.source_path, path)
    for chunk in in_list_chunks(kept):
        conn.execute(update(ingest_batches).where(table.batch_id.in_(chunk), below)
                     .values(path_settled=PATH_SETTLED))
    for chunk in in_list_chunks(sorted(renamed), EVENT_BATCHES):
        audit.append(conn, PATHS_SETTLED, partner, {
            "partner": partner, "rows": len(chunk), "settled_at": PATH_SETTLED,
            # The path renamed from too: verify sees a hand-edited path renamed, which the
            # new digest alone would have made the trail's.
            "batches": {b: {**discovery_facts({"source_path": renamed[b][1]})[DISCOVERY_DIGESTS],
                            RENAMED_FROM: _fact_digest(renamed[b][0])}
                        for b in chunk}}, flow_run_id=flow_run_id)
    crash_point("paths-settled-before-commit")
    return len(renamed)


def insert_batch(conn: Connection, **values: Any) -> dict[str, Any]:
    """Insert a ledger row; returns the values written (``landed_at`` now unless given, the
    other ``LEDGER_COLUMNS`` NULL unless given), for its event's ``ledger_facts``."""
    values.setdefault("landed_at", now_utc())
    for name in LEDGER_COLUMNS:
        values.setdefault(name, None)
    conn.execute(insert(ingest_batches), values)
    return values


def update_batch(conn: Connection, batch_id: str, **values: Any) -> dict[str, Any]:
    """Update ledger row ``batch_id``; returns the values written (for ``ledger_facts``)."""
    conn.execute(update(ingest_batches).where(ingest_batches.c.batch_id == batch_id), values)
    return values


# Ledger columns no event recorded before round 16: when a batch landed and was decided (what
# the key index orders loads by), the rows it holds back, and the content it owns (a
# content_key cleared by hand lets the same bytes load again as new; one set on another
# batch makes a new delivery a "duplicate"). Each event that writes them records a digest
# of each (``ledger_facts``), as ``discovery_facts`` does, so verify names the column and
# never prints a value.
LEDGER_COLUMNS = ("landed_at", "decided_at", "rows_held", "content_key")
LEDGER_DIGESTS = "ledger_sha256"
_INSTANTS = ("landed_at", "decided_at")


def _instant(value: Any) -> Any:
    """A timestamp as one text on both dialects: UTC, microseconds (PostgreSQL returns it in
    the session's time zone, SQLite the naive text SQLAlchemy stored, in UTC); anything that
    is no timestamp (SQLite keeps what a hand edit wrote) as it is."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if not isinstance(value, datetime):
        return value
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ledger_digest(name: str, value: Any) -> str:
    return _fact_digest(_instant(value) if name in _INSTANTS else value)


def ledger_facts(*written: Mapping[str, Any]) -> dict[str, Any]:
    """The audit details that record the ``LEDGER_COLUMNS`` among the values ``written`` to
    a ledger row (later mappings win: an insert's values, then the same transaction's update)."""
    values = {k: v for w in written for k, v in w.items()}
    return {LEDGER_DIGESTS: {name: _ledger_digest(name, values[name])
                             for name in LEDGER_COLUMNS if name in values}}


# The columns file discovery decides by (``seen_files``): what a ledger row says its file was.
# Each write of them has its audit event (``discovery_facts`` in the row's insert event, a
# feed run's ``MARKS_RENEWED`` event), so ``ledger_problems`` sees a hand edit: a changed
# size or mark makes a file read again, a changed path makes a new delivery look known. The
# events hold a digest per column, not the value: a size of 13,812,345,678 bytes or a
# modification time from before 2001 (18 digits of nanoseconds) is shaped like a phone
# number or a national ID, which audit details refuse, and a digest says as much for a
# comparison.
DISCOVERY_COLUMNS = ("source_path", "bytes", "mtime_ns", "change_marker")
DISCOVERY_DIGESTS = "discovery_sha256"
MARKS_RENEWED = "ingest.marks_renewed"


def _fact_digest(value: Any) -> str:
    # repr: a value JSON has no form for is one SQLite kept in the column by hand (a BLOB):
    # it digests to something no recorded fact does, where json.dumps would raise and stop verify.
    return hashlib.sha256(json.dumps(value, default=repr).encode()).hexdigest()[:32]


def discovery_facts(values: dict[str, Any]) -> dict[str, Any]:
    """The audit details that record ``values``' discovery columns (those it holds)."""
    return {DISCOVERY_DIGESTS: {name: _fact_digest(values[name])
                                for name in DISCOVERY_COLUMNS if name in values}}


class MarkRenewals:
    """The ledger rows one feed run saw with another (or no) modification time or change
    marker than their file's: written together at the end of the run, with a
    ``MARKS_RENEWED`` event per ``EVENT_BATCHES`` listing each batch's new values' digests,
    so discovery
    recognises the files by them next time (a file only touched or chmodded, a row from
    before 0005/0007). One event per file grew the trail by a file's worth on every
    metadata sweep of the landing zone. A run stopped before ``write`` renews nothing: the
    next one hashes those files again and renews them then."""

    def __init__(self) -> None:
        self.changed: dict[str, dict[str, Any]] = {}

    def add(self, row: Any, mtime_ns: int | None, change_marker: str | None) -> None:
        """Renew ledger ``row``'s (a ``SeenFile`` or a batch) marks where they differ."""
        changed = {name: value for name, value in (("mtime_ns", mtime_ns),
                                                   ("change_marker", change_marker))
                   if value is not None and getattr(row, name) != value}
        if changed:
            self.changed.setdefault(row.batch_id, {}).update(changed)

    def write(self, engine: Engine, audit: AuditWriter, partner: str,
              flow_run_id: str | None = None) -> int:
        """Update the rows and append one event per ``EVENT_BATCHES`` of them, in one
        transaction (nothing if nothing changed); returns how many rows were renewed."""
        if not self.changed:
            return 0
        renewed, self.changed = self.changed, {}
        with engine.begin() as conn:
            for batch_id, values in renewed.items():
                update_batch(conn, batch_id, **values)
            for chunk in in_list_chunks(sorted(renewed), EVENT_BATCHES):
                audit.append(conn, MARKS_RENEWED, partner, {
                    "partner": partner, "renewed": len(chunk),
                    "batches": {b: discovery_facts(renewed[b])[DISCOVERY_DIGESTS]
                                for b in chunk}}, flow_run_id=flow_run_id)
        return len(renewed)


def record_validation(
    conn: Connection,
    batch_id: str | None,
    suite: str,
    *,
    success: bool,
    expectations_run: int,
    critical_failed: int,
    warning_failed: int,
    details: dict[str, Any],
    flow_run_id: str | None,
    audit: AuditWriter,
    table_name: str | None = None,
) -> dict[str, Any]:
    """One row of ``validation_results`` (replacing the batch's earlier row for this suite);
    returns the audit details that record it (its count and keyed digest, as
    :mod:`puhui.table_digests` makes them), for the event of the same transaction."""
    from puhui.table_digests import ROWS_DIGESTS, VALIDATIONS, recorded, writer_subkey

    validation_id = f"{batch_id or table_name}:{suite}"[:40]
    conn.execute(
        validation_results.delete().where(validation_results.c.validation_id == validation_id)
    )
    conn.execute(
        insert(validation_results),
        {
            "validation_id": validation_id,
            "batch_id": batch_id,
            "table_name": table_name,
            "suite_name": suite,
            "success": success,
            "expectations_run": expectations_run,
            "expectations_failed": critical_failed + warning_failed,
            "critical_failed": critical_failed,
            "warning_failed": warning_failed,
            "details": details,
            "flow_run_id": flow_run_id,
            "validated_at": now_utc(),
        },
    )
    return {ROWS_DIGESTS: {VALIDATIONS.name: recorded(
        conn, VALIDATIONS, writer_subkey(audit),
        validation_results.c.validation_id == validation_id)}}


def get_watermark(engine: Engine, partner: str) -> date | None:
    with engine.connect() as conn:
        return conn.execute(
            select(ingest_watermarks.c.delivery_date).where(ingest_watermarks.c.partner == partner)
        ).scalar()


def advance_watermark(
    engine: Engine, partner: str, delivery_date: date, flow_run_id: str | None,
    audit: AuditWriter,
) -> None:
    """Move the feed's watermark forward (never back), its row's keyed digest recorded in
    an ``ingest.watermark.advanced`` event of the same transaction (verify compares it)."""
    from puhui.table_digests import (
        ROWS_DIGESTS,
        WATERMARK_ADVANCED,
        WATERMARKS,
        recorded,
        writer_subkey,
    )

    with engine.begin() as conn:
        lock_for(conn, f"puhui.watermark.{partner}")  # two runs may finish a feed at once
        current = conn.execute(
            select(ingest_watermarks.c.delivery_date).where(ingest_watermarks.c.partner == partner)
        ).scalar()
        values = {
            "delivery_date": delivery_date,
            "updated_at": now_utc(),
            "flow_run_id": flow_run_id,
        }
        if current is None:
            conn.execute(insert(ingest_watermarks), {"partner": partner, **values})
        elif delivery_date > current:
            conn.execute(
                update(ingest_watermarks).where(ingest_watermarks.c.partner == partner), values
            )
        else:
            return  # unchanged: its last event still records it
        digest = recorded(conn, WATERMARKS, writer_subkey(audit),
                          ingest_watermarks.c.partner == partner)
        audit.append(conn, WATERMARK_ADVANCED, partner,
                     {"delivery_date": delivery_date.isoformat(),
                      ROWS_DIGESTS: {WATERMARKS.name: digest}}, flow_run_id=flow_run_id)


def list_batches(
    engine: Engine, statuses: tuple[str, ...] | None = None, partner: str | None = None
) -> list[BatchRecord]:
    query = record_query(engine.dialect.name).order_by(
        ingest_batches.c.delivery_date, ingest_batches.c.batch_id
    )
    if statuses:
        query = query.where(ingest_batches.c.status.in_(statuses))
    if partner:
        query = query.where(ingest_batches.c.partner == partner)
    with engine.connect() as conn:
        return [BatchRecord.from_row(r) for r in conn.execute(query)]


def suite_hashes(engine: Engine, batch_ids: list[str]) -> dict[str, str | None]:
    """batch id -> the hash of the suite that validated it last (None: not recorded)."""
    found: dict[str, str | None] = {}
    with engine.connect() as conn:
        for chunk in in_list_chunks(batch_ids):
            rows = conn.execute(
                select(validation_results.c.batch_id, validation_results.c.details)
                .where(validation_results.c.batch_id.in_(chunk)))
            for row in rows:
                found[row.batch_id] = (row.details or {}).get("suite_hash")
    return found


# What each ledger-writing event says the row became (written in the row's transaction).
_EVENT_STATUS = {"ingest.accepted": "accepted", "ingest.quarantined": "quarantined",
                 "ingest.duplicate": "duplicate", "quarantine.released": "released",
                 "quarantine.rejected": "rejected"}
_REVALIDATED = {"accepted": "accepted", "still held": "quarantined"}
# Since round 15: who decided a held batch (the deciding event's actor: a release put on
# another person's name passed), a loaded batch's warnings (deleted, BI reads a clean load)
# and the delivery date (its batch id holds it; BI files late deliveries by it).
_DECISIONS = ("quarantine.released", "quarantine.rejected", "quarantine.revalidated")
_UNPARSEABLE = object()  # warnings SQLite kept as text that is no JSON (a hand edit)


def _warnings_found(stored: str | None) -> Any:
    """A row's ``warnings`` read as text (JSON that does not parse raised in the read)."""
    try:
        return None if stored is None else json.loads(stored)
    except (TypeError, ValueError):
        return _UNPARSEABLE


def _decision_facts(facts: dict[str, Any], event: dict[str, Any]) -> None:
    """Update ``facts`` with the ledger's ``decided_by`` and ``warnings`` after ``event``
    (as the code writing both sets them; a fact an event cannot say is not compared)."""
    action, d = event["action"], event["details"]
    accepted = action == "ingest.accepted" or (action == "quarantine.revalidated"
                                               and d.get("outcome") == "accepted")
    if accepted and "warnings" in d:
        facts["warnings"] = [{"message": w} for w in d["warnings"]] or None
    else:  # a hold's carry its failures' samples: not recorded (a held batch has none)
        facts.pop("warnings", None)
    if action in _DECISIONS and d.get("outcome") != "still held":
        if "held_for" in d:  # a writer from before it may not have set decided_by
            facts["decided_by"] = event["actor"]
        else:
            facts.pop("decided_by", None)
    elif action.startswith("ingest."):  # ingest decides no one: NULL, since round 14's events
        if DISCOVERY_DIGESTS in d:
            facts["decided_by"] = None
        else:
            facts.pop("decided_by", None)


_RECORDED = ("checksum", "rows", "rows_loaded", "rows_duplicate", "partner", "duplicate_of")


def _reason_recorded(action: str, details: dict[str, Any]) -> str | None:
    """The ledger's ``reason`` after the event ``action`` with ``details`` (None: the event
    does not say), as the code writing both composes it."""
    if action == "ingest.quarantined" or (action == "quarantine.revalidated"
                                          and details.get("outcome") == "still held"):
        return details.get("reason")
    if "held_for" not in details:  # events from before it was recorded
        return None
    held_for = details["held_for"]
    if action in ("quarantine.released", "quarantine.rejected"):
        return f"{held_for} | {action.split('.')[1]}: {details.get('reason')}"
    if action == "quarantine.revalidated" and details.get("outcome") == "accepted":
        return (f"{held_for} | revalidated: passed suite {details.get('suite')} "
                f"{details.get('suite_hash')}")
    return None


_PLAIN_VALUE = re.compile(r"[0-9a-z_]{1,64}")  # a status word or a hex checksum
_BATCH_ID = re.compile(r"[0-9a-z_]{1,64}-(\d{8})-[0-9a-f]{12}")  # as make_batch_id makes them


def _shown(value: object, plain: re.Pattern[str] = _PLAIN_VALUE) -> str:
    """A value found in a ledger row, as a problem line prints it. Whoever edited the row
    chose it: printed as its masked shape unless it is ``plain`` (a word, number, hash or
    batch id), so no identifier and no terminal escape reaches the auditor's terminal."""
    if isinstance(value, bytes):  # SQLite keeps a BLOB in any column: as text, masked
        value = repr(value)
    if not isinstance(value, str) or (plain.fullmatch(value)
                                      and not find_raw_identifiers(value)):
        return repr(value)
    return safe_name(value)


# The ledger columns compared with the trail, each with how a disagreement is shown: the
# shape of a found value printed as it is (others masked, see ``_shown``), and whether the
# trail's value is quoted.
_COMPARED: dict[str, tuple[re.Pattern[str], bool]] = {
    **dict.fromkeys(
        ("status", "checksum", "rows", "rows_loaded", "rows_duplicate"), (_PLAIN_VALUE, True)
    ),
    # Also recorded by the events, and unchecked before: a held batch's reason edited to read
    # harmless ("extra column ignored") invites its release; a batch moved to another partner
    # or a duplicate pointed at another owner passed verify. Long or chosen by a partner: the
    # trail's value is not quoted.
    **dict.fromkeys(("partner", "duplicate_of", "reason", "decided_by"), (_BATCH_ID, False)),
}


def ledger_problems(engine: Engine) -> tuple[list[str], int, str]:
    """Where ``ingest_batches`` and the audit trail disagree; also the batches compared and
    a note of those whose events record no ``LEDGER_COLUMNS`` (written before round 16).

    Every ledger write of a status comes with its audit event in the same transaction, so
    the trail (keyed, verified first) says what each row must hold: the ``_COMPARED``
    columns (status, checksum, rows, rows loaded and duplicate, partner, duplicate_of,
    reason, decided_by), its warnings, the discovery columns' digests (as renewed by
    ``MARKS_RENEWED`` and renamed by ``PATHS_SETTLED``, whose ``source_path_before`` digest
    must be the one the trail had recorded), the ``LEDGER_COLUMNS``' digests, and a delivery
    date equal to its batch id's. A row
    edited, added or deleted by hand is reported; left alone, a deleted row would have its
    file ingested again as new. Only fields an event records are compared (older events
    carry fewer). Read in one :func:`snapshot`.
    """
    from puhui.audit import events_of

    # One moment for both reads: a release or an ingest committing between them (a status
    # and its event written together) was reported as a hand edit.
    with snapshot(engine) as conn:
        events = events_of(conn, [*_EVENT_STATUS, "quarantine.revalidated", MARKS_RENEWED,
                                  PATHS_SETTLED])
        # As text where SQLite keeps whatever a hand edit wrote: a date or JSON that does not
        # parse raised in the read and stopped verify.
        stored = [as_stored(ingest_batches.c[c], engine.dialect.name)
                  for c in ("delivery_date", *_INSTANTS)]
        rows = {r.batch_id: r for r in conn.execute(select(
            ingest_batches.c.batch_id,
            *(ingest_batches.c[c] for c in (*_COMPARED, *DISCOVERY_COLUMNS)), *stored,
            *(ingest_batches.c[c] for c in LEDGER_COLUMNS if c not in _INSTANTS),
            cast(ingest_batches.c.warnings, Text).label("warnings")
            if engine.dialect.name == "postgresql" else as_stored(ingest_batches.c.warnings,
                                                                   "sqlite")))}
    expected: dict[str, dict[str, Any]] = {}
    digests: dict[str, dict[str, str]] = {}  # batch -> discovery column -> value's digest
    written: dict[str, dict[str, str]] = {}  # batch -> LEDGER_COLUMNS column -> digest
    renamed_edits: list[str] = []
    for event in events:
        d = event["details"]
        if event["action"] == PATHS_SETTLED or (event["action"] == MARKS_RENEWED
                                                and "batches" in d):
            # A feed run's renewals or renamed paths (rename events from before round 15
            # list no batches: the paths they renamed were not compared before either).
            for batch_id, renewed in d.get("batches", {}).items():
                renewed = dict(renewed)
                before = renewed.pop(RENAMED_FROM, None)
                recorded = digests.get(batch_id, {}).get("source_path")
                if before is not None and recorded is not None and before != recorded:
                    renamed_edits.append(
                        f"batch {batch_id}: ingest_batches.source_path was renamed by "
                        f"{event['action']} (seq {event['seq']}) from a path the audit trail "
                        "had not recorded (a hand edit before the rename)")
                digests.setdefault(batch_id, {}).update(renewed)
            continue
        facts = expected.setdefault(event["subject"], {})
        # Events from before discovery columns were recorded carry none: not compared.
        digests.setdefault(event["subject"], {}).update(d.get(DISCOVERY_DIGESTS) or {})
        written.setdefault(event["subject"], {}).update(d.get(LEDGER_DIGESTS) or {})
        if event["action"] == MARKS_RENEWED:  # one batch's, before round 14
            continue
        if event["action"] == "quarantine.revalidated":
            status = _REVALIDATED.get(str(d.get("outcome")))
        else:
            status = _EVENT_STATUS[event["action"]]
        facts.update({k: d[k] for k in _RECORDED if d.get(k) is not None})
        if (reason := _reason_recorded(event["action"], d)) is not None:
            facts["reason"] = reason
        else:  # a decision it cannot rebuild (no held_for: an older writer's): the earlier
            facts.pop("reason", None)  # event's reason is stale, so none is compared
        if status:
            facts["status"] = status
        _decision_facts(facts, event)
    problems = [f"batch {b} is in the audit trail ({facts.get('status')}) but missing from "
                "ingest_batches" for b, facts in expected.items() if b not in rows]
    problems += renamed_edits
    unrecorded = 0
    for batch_id, row in sorted(rows.items()):
        facts = expected.get(batch_id)
        if facts is None:
            problems.append(f"batch {_shown(batch_id, _BATCH_ID)} ({_shown(row.status)}) is "
                            "in ingest_batches with no event in the audit trail")
            continue
        for column, (pattern, quoted) in _COMPARED.items():
            found = getattr(row, column)
            if column in facts and found != facts[column]:
                trail = f"says {facts[column]!r}" if quoted else "recorded another value"
                problems.append(f"batch {batch_id}: ingest_batches.{column} is "
                                f"{_shown(found, pattern)} but the audit trail {trail}")
        if "warnings" in facts and (
                found := _warnings_found(stored_text(row.warnings))) != facts["warnings"]:
            # Counted, not quoted: the editor's text may hold anything.
            held = (f"{len(found or [])} warning(s)" if isinstance(found, list | None)
                    else "no JSON list")
            problems.append(f"batch {batch_id}: ingest_batches.warnings hold {held} but the "
                            f"audit trail recorded {len(facts['warnings'] or [])} (or others)")
        if (named := _BATCH_ID.fullmatch(batch_id)) and (
                day := f"{named[1][:4]}-{named[1][4:6]}-{named[1][6:]}") != str(
                    stored_text(row.delivery_date)):
            problems.append(f"batch {batch_id}: ingest_batches.delivery_date is "
                            f"{_shown(str(stored_text(row.delivery_date)))} but its batch "
                            f"id says {day}")
        # A value SQLite kept that is no time is named as such (in events before round 16
        # too), and not again as differing from the trail's digest.
        no_time = {c for c in _INSTANTS if (found := stored_text(getattr(row, c))) is not None
                   and as_datetime(found) is None}
        problems += [f"batch {batch_id}: ingest_batches.{c} is "
                     f"{_shown(stored_text(getattr(row, c)))}, no time (a hand edit)"
                     for c in sorted(no_time)]
        for column, digest in sorted(digests.get(batch_id, {}).items()):
            found = getattr(row, column)
            if _fact_digest(found) != digest:  # a number as text: masked if shaped as an ID
                problems.append(f"batch {batch_id}: ingest_batches.{column} is "
                                f"{_shown(found if found is None else str(found))} but the "
                                "audit trail recorded another value")
        recorded = written.get(batch_id, {})
        for column, digest in sorted(recorded.items()):
            found = stored_text(getattr(row, column))
            if column not in no_time and _ledger_digest(column, found) != digest:
                problems.append(f"batch {batch_id}: ingest_batches.{column} differs from the "
                                "value the audit trail recorded")
        unrecorded += len(recorded) < len(LEDGER_COLUMNS)
    note = (f"{unrecorded} batch(es) decided by events from before round 16 (no record of "
            f"{', '.join(LEDGER_COLUMNS)}): those columns not compared" if unrecorded else "")
    return problems, len(rows), note


_LOADS = {"ingest.accepted", "quarantine.released"}  # and a revalidation that accepted
KEYS_INDEXED = "ingest.keys.indexed"
_HOW_WRONG = {True: "index rows deleted by hand: a key missing from the index loads again",
              False: "index rows added by hand: a row whose key is there is not loaded"}
_REWRITTEN = ("keys_digest differs from the audit trail's: index rows rewritten or replaced "
              "by hand")
# Keys only: a batch id of another type is a group of its own (counted as a batch the
# ledger has not), and value_hash decides no load (it words a warning), typed or not.
_MISTYPED_SQL = "sum(typeof(key_hi) <> 'integer' OR typeof(key_lo) <> 'integer')"
_MISTYPED = ("hold a key not stored as integers (SQLite keeps any type: index rows "
             "rewritten by hand; such a key matches no lookup, so its row loads again)")
_MOVED = ("keys_by_batch differs from the audit trail's: index rows moved between batches "
          "by hand")
_FORGED = ("keys_mac, the keyed digest, differs from the audit trail's: index rows rewritten "
           "or replaced by hand")


_FEED = re.compile(LOWER_NAME)
_RAW_WRONG = {True: "rows deleted by hand, or moved to another batch",
              False: "rows added by hand, or moved from another batch"}


def raw_row_counts(conn: Connection, partners: Collection[str]) -> dict[str, dict[str, int] | None]:
    """``partner -> {batch id -> rows}`` of each feed's ``raw_<partner>`` (None: no such
    table), read on ``conn`` (in its snapshot): one ``GROUP BY batch_id`` per table, no index
    needed (raw tables have none: a scan of ~1M rows, see README, "Audit trail")."""
    inspector = inspect(conn)
    counts: dict[str, dict[str, int] | None] = {}
    for partner in sorted(p for p in partners if isinstance(p, str) and _FEED.fullmatch(p)):
        name = f"raw_{partner}"
        if not inspector.has_table(name):
            counts[partner] = None
            continue
        # A batch id of another type (SQLite keeps any) is a group of its own: shown masked.
        counts[partner] = {b if isinstance(b, str) else repr(b): int(n) for b, n in conn.execute(
            text(f'SELECT batch_id, count(*) FROM "{name}" GROUP BY batch_id'))}
    return counts


def raw_row_problems(batches: Iterable[tuple[str, str, str, int | None]],
                     counts: Mapping[str, dict[str, int] | None]) -> tuple[list[str], int]:
    """Where the rows of ``raw_<partner>`` tables disagree with the ledger, one line per batch
    and table (counts, never a value); also the raw rows counted.

    A load inserts its raw rows, sets ``rows_loaded`` and appends its audit event in one
    transaction (an ingest, a release, a revalidation that accepts), and nothing deletes or
    moves raw rows: a batch that loaded (accepted, released) holds exactly ``rows_loaded``
    rows of its feed's table, any other none. ``batches`` are the ledger's (batch id,
    partner, status, rows_loaded), checked against the trail first; ``counts`` as
    :func:`raw_row_counts` reads them.
    """
    problems: list[str] = []
    left = {partner: dict(found or {}) for partner, found in counts.items()}
    total = sum(sum(found.values()) for found in left.values())
    for batch_id, partner, status, rows_loaded in sorted(batches):
        loaded = status in ("accepted", "released")
        expected = (rows_loaded or 0) if loaded else 0
        if partner not in counts:  # not a feed name: the ledger check reports the row
            continue
        if counts[partner] is None:
            if expected:
                problems.append(f"raw_{partner}: missing, but batch {batch_id} loaded "
                                f"{expected:,} row(s) into it (table dropped by hand)")
            continue
        found = left[partner].pop(batch_id, 0)
        if found != expected:
            problems.append(
                f"raw_{partner}: batch {batch_id} holds {found:,} row(s) but loaded "
                f"{expected:,}" + (f" ({_RAW_WRONG[found < expected]})" if loaded
                                   else f" ({status}: rows added by hand)"))
    for partner, found in sorted(left.items()):
        if found:
            problems.append(f"raw_{partner}: {sum(found.values()):,} row(s) of {len(found)} "
                            "batch(es) that loaded nothing into it (not in ingest_batches, or "
                            f"of another feed: rows added by hand), e.g. "
                            f"{_shown(min(found), _BATCH_ID)}")
    return problems, total


@dataclass(frozen=True)
class KeyIndexCheck:
    """What :func:`key_index_problems` found: problems (one line each), the keys counted,
    and a note on the batches and builds recorded before key digests (counted only)."""

    problems: list[str]
    keys: int
    undigested: str | None
    unkeyed: str | None = None  # the same for the keyed digest (``digest_key`` given)
    # ``raw_<partner>`` counted per batch in the same snapshot (:func:`raw_row_problems`)
    raw_problems: list[str] = field(default_factory=list)
    raw_rows: int = 0


def key_index_problems(engine: Engine, digest_key: bytes | None = None) -> KeyIndexCheck:
    """Where ``ingest_keys`` and the ledger disagree.

    Every loaded row claims its key in the transaction that loads it and records the batch's
    ``rows_loaded`` (checked against the trail by :func:`ledger_problems`), and nothing but
    a rebuild removes a key. So a batch loaded once its feed's index existed holds exactly
    ``rows_loaded`` keys, a batch that loaded nothing (held, rejected, a duplicate file) none.
    A batch loaded before its feed's index was last built (a first use after 0008, a key
    definition change) holds the keys of its rows no earlier batch had, so at most
    ``rows_loaded``; the build's event records how many keys the feed's batches held then,
    and their sum must still be that. A row deleted by hand (its key would load again) or
    added (a key of a row never loaded, which would drop it) is reported per batch, by count.
    The same transactions record a digest of the keys they claimed (:class:`KeyDigest`: a
    load's event per batch, a build's for the feed's batches together), recomputed here in
    the same grouped scan: a key rewritten in place, or a row swapped for a made-up one of
    the same batch, is reported too. Events from before the digest: counted only, said once.

    That digest is linear and unkeyed: rows edited so that their changes cancel keep it.
    With ``digest_key`` (:func:`digest_subkey`; ``audit verify --deep``) the keys are also
    streamed through the keyed digest (:class:`KeyedDigest`) in the same snapshot and
    compared with the ``keys_mac`` the same events record, which no edit keeps without the
    key. Events from before it: said once.

    On SQLite, whose columns keep any type, rows whose key is not stored as integers are
    counted in the same scan (a BLOB of a key's digits keeps both digests but matches no
    lookup) and the keys are then not streamed.
    """
    from puhui.audit import events_of
    from puhui.ingest.key_digest import (
        DIGEST_SQL,
        KEYS_BY_BATCH,
        KEYS_DIGEST,
        KEYS_MAC,
        KEYS_MAC_BY_BATCH,
        KeyDigest,
        KeyedDigest,
        by_batch_hex,
        keyed_digests,
    )
    from puhui.warehouse.schema import ingest_key_backfills

    # One moment, read only (writers do not wait): a load writes keys, row and event together.
    with snapshot(engine) as conn:
        events = events_of(conn, [*_LOADS, "quarantine.revalidated", KEYS_INDEXED])
        batches = conn.execute(select(ingest_batches.c.batch_id, ingest_batches.c.partner,
                                      ingest_batches.c.status,
                                      ingest_batches.c.rows_loaded)).all()
        indexed_feeds = set(conn.execute(select(ingest_key_backfills.c.partner)).scalars())
        # SQLite stores any type in a column: a key half as a BLOB of its digits keeps the
        # sums (% and / read its text) but matches no lookup. Counted in the scan made
        # anyway; typeof of batch_id and value_hash too cost ~0.4 s more per 1M keys.
        mistyped = _MISTYPED_SQL if conn.dialect.name == "sqlite" else "0"
        held: dict[str, KeyDigest] = {}
        wrong_type = 0
        for row in conn.execute(text(f"SELECT batch_id, count(*), {DIGEST_SQL}, {mistyped} "
                                     "FROM ingest_keys GROUP BY batch_id")):
            # A batch id of another type (SQLite) is a group of its own: shown masked.
            held[row[0] if isinstance(row[0], str) else repr(row[0])] = KeyDigest.from_row(
                row[1:])
            wrong_type += row[6]
        keyed = (None if digest_key is None or wrong_type  # the stream would refuse them
                 else keyed_digests(conn, digest_key))
        raw_counts = raw_row_counts(conn, {partner for _, partner, *_ in batches})
    # batch -> (seq, digest, keyed digest) of its load
    loaded_at: dict[str, tuple[int, str | None, str | None]] = {}
    # feed -> its last build's (seq, keys indexed, digest, keyed digest, and the digests
    # of each batch's: an older build has none)
    built: dict[str, tuple[int, int | None, str | None, str | None, str | None, str | None]] = {}
    for event in events:
        d = event["details"]
        if event["action"] == KEYS_INDEXED:
            built[event["subject"]] = (event["seq"], d.get("keys_indexed"), d.get(KEYS_DIGEST),
                                       d.get(KEYS_MAC), d.get(KEYS_BY_BATCH),
                                       d.get(KEYS_MAC_BY_BATCH))
        elif event["action"] in _LOADS or d.get("outcome") == "accepted":
            loaded_at[event["subject"]] = (event["seq"], d.get(KEYS_DIGEST), d.get(KEYS_MAC))
    keys = sum(found.count for found in held.values())
    problems: list[str] = []
    if wrong_type:
        problems.append(f"ingest_keys: {wrong_type:,} row(s) {_MISTYPED}")
    undigested = {"batch(es)": 0, "index build(s)": 0}
    unkeyed = dict.fromkeys(undigested, 0)
    # feed -> batch -> digest, of the batches loaded before the feed's last build
    before_build: dict[str, dict[str, KeyDigest]] = {
        feed: {} for feed, (_, recorded, *_) in built.items() if recorded is not None}
    keyed_before_build: dict[str, dict[str, KeyedDigest]] = {feed: {} for feed in before_build}
    apart = 0  # builds recorded before their batches' digests: compared together only

    def compare_keyed(found: str | None, recorded: str | None, what: str, line: str) -> None:
        if found is None:  # no --deep
            return
        if recorded is None:
            unkeyed[what] += 1
        elif found != recorded:
            problems.append(f"{line} ({_FORGED})")

    # Batch ids, statuses and feeds as the trail has them: this runs once the ledger agrees.
    for batch_id, partner, status, rows_loaded in sorted(batches):
        found = held.pop(batch_id, KeyDigest())
        if status not in ("accepted", "released") or partner not in indexed_feeds:
            # Loads build the feed's index first: no record of it, no loads since 0008.
            if found.count:
                problems.append(f"ingest_keys: batch {batch_id} ({status}) holds "
                                f"{found.count:,} key(s) but loaded no row since its feed's "
                                "key index (index rows added by hand)")
            continue
        expected = rows_loaded or 0
        seq, digest, mac = loaded_at.get(batch_id, (0, None, None))
        found_keyed = None if keyed is None else keyed.pop(batch_id, KeyedDigest())
        if partner in built and seq < built[partner][0]:
            if partner in before_build:
                before_build[partner][batch_id] = found
                if found_keyed is not None:
                    keyed_before_build[partner][batch_id] = found_keyed
            if found.count > expected:
                problems.append(f"ingest_keys: batch {batch_id} holds {found.count:,} key(s) "
                                f"but loaded {expected:,} row(s) (index rows added by hand)")
        elif found.count != expected:
            problems.append(f"ingest_keys: batch {batch_id} holds {found.count:,} key(s) but "
                            f"loaded {expected:,} row(s) ({_HOW_WRONG[found.count < expected]})")
        elif digest is not None and found.hex() != digest:
            problems.append(f"ingest_keys: batch {batch_id} holds {found.count:,} key(s), "
                            f"not those it loaded ({_REWRITTEN})")
        else:  # the keyed digest catches what the unkeyed one misses (a cancelling edit)
            undigested["batch(es)"] += digest is None
            compare_keyed(None if found_keyed is None else found_keyed.hex(), mac, "batch(es)",
                          f"ingest_keys: batch {batch_id} holds {found.count:,} key(s), "
                          "not those it loaded")
    for feed, found_by_batch in sorted(before_build.items()):
        _, recorded, digest, mac, by_batch, mac_by_batch = built[feed]
        found = sum(found_by_batch.values(), KeyDigest())
        if found.count != recorded:
            problems.append(f"ingest_keys: feed {feed}'s batches loaded before its key index "
                            f"was built hold {found.count:,} key(s) but the build indexed "
                            f"{recorded:,} ({_HOW_WRONG[found.count < (recorded or 0)]})")
        elif digest is not None and found.hex() != digest:
            problems.append(f"ingest_keys: feed {feed}'s batches loaded before its key index "
                            f"was built hold {found.count:,} key(s), not those the build "
                            f"indexed ({_REWRITTEN})")
        elif by_batch is not None and by_batch_hex(found_by_batch) != by_batch:
            problems.append(f"ingest_keys: feed {feed}'s batches loaded before its key index "
                            f"was built hold the {found.count:,} key(s) the build indexed, "
                            f"not each in the batch it was indexed in ({_MOVED})")
        else:
            undigested["index build(s)"] += digest is None
            apart += digest is not None and by_batch is None
            # The batches' keyed digests if the build recorded them (a key moved between
            # two of them with a cancelling edit keeps the unkeyed ones), else their sum.
            keyed_found = None if keyed is None else (
                by_batch_hex(keyed_before_build[feed]) if mac_by_batch is not None
                else sum(keyed_before_build[feed].values(), KeyedDigest()).hex())
            compare_keyed(keyed_found, mac_by_batch or mac, "index build(s)",
                          f"ingest_keys: feed {feed}'s batches loaded before its key index "
                          f"was built hold {found.count:,} key(s), not those the build indexed")
    if held:
        problems.append(f"ingest_keys: {sum(f.count for f in held.values()):,} key(s) of "
                        f"{len(held)} batch(es) not in ingest_batches (index rows added by "
                        f"hand, or their batch's row deleted), e.g. {_shown(min(held), _BATCH_ID)}")
    said = " and ".join(f"{n} {what}" for what, n in undigested.items() if n)
    note = (f"ingest_keys: {said} recorded before key digests (keys counted, not compared)"
            if said else None)
    if apart:
        note = "; ".join(filter(None, [note, (
            f"ingest_keys: {apart} index build(s) recorded before per-batch digests (their "
            "batches' keys compared together)")]))
    said = " and ".join(f"{n} {what}" for what, n in unkeyed.items() if n)
    keyed_note = (f"ingest_keys: {said} recorded before the keyed digest (checked by the "
                  "unkeyed digest or counted only)" if said else None)
    raw_problems, raw_rows = raw_row_problems(batches, raw_counts)
    return KeyIndexCheck(problems, keys, note, keyed_note, raw_problems, raw_rows)
