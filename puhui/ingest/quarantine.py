"""Decisions on held batches: release, revalidate (load exactly once) or reject, audited.

A release loads the batch's pseudonymized quarantine copy (written when it was held) in the
same transaction that flips its status, under a per-batch lock, so two people releasing at
once load it once. A revalidation runs the current suite on that copy first and loads it
only if no critical expectation fails (the batch is then ``accepted``, audited with the
suite's hash); otherwise it stays held with the new reasons. Batches that could not be read
at all have no copy: they are *reject-only* (the partner redelivers a fixed file, which is a
new batch). A refused release is recorded in the trail too.

Every command taking a batch accepts a unique prefix of its id
(``held_batches.resolve_batch_id``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Connection

from puhui.audit import decision_reason
from puhui.config import PartnerFeed, PartnersConfig, load_config
from puhui.errors import PuhuiError
from puhui.ingest import ledger
from puhui.ingest.batches import (
    PreparedChunk,
    SeenKeys,
    batch_frame,
    drop_duplicate_keys,
)
from puhui.ingest.contract import end_of_delivery_day
from puhui.ingest.held_batches import quarantine_copy_path, short_reason
from puhui.ingest.key_digest import digest_subkey
from puhui.ingest.key_index import KeyIndex, ensure_key_index
from puhui.ingest.raw_tables import ensure_raw_table, stored_columns
from puhui.privacy import scrub_text
from puhui.raw_rows_digest import arrow_rows_mac
from puhui.runtime import Runtime
from puhui.table_digests import (
    ROWS_DIGESTS,
    RowsMac,
    add_macs,
    batch_rows_digest,
    writer_subkey,
)
from puhui.warehouse.bulk import bulk_insert
from puhui.warehouse.engine import lock_for

REVALIDATED, RELEASE_REFUSED = "quarantine.revalidated", "quarantine.release.refused"
_COPY_ROWS = 250_000  # rows per validated chunk of a copy (ingestion's chunks are similar)


def _held_batch(conn, batch_id: str) -> ledger.BatchRecord:  # noqa: ANN001
    lock_for(conn, f"puhui.batch.{batch_id}")
    record = ledger.get_batch(conn, batch_id)
    if record is None:
        raise PuhuiError(f"no batch {batch_id!r} in the ledger")
    if record.status != "quarantined":
        raise PuhuiError(f"batch {batch_id} is {record.status}, not quarantined: nothing to do")
    return record


def _require_reason(reason: str) -> str:
    if len(reason := decision_reason(reason)) < 5:
        raise PuhuiError("a decision needs a reason of at least 5 characters")
    return reason


# Read by a decision only as the time of an earlier one: a release goes on without them.
_NOT_DECIDING = {"landed_at", "decided_at"}


def _readable(record: ledger.BatchRecord) -> ledger.BatchRecord:
    """``record`` if the columns a decision reads are readable: a load checks event times
    against the delivery day's end (a date SQLite kept as garbage, a hand edit, read as none
    would skip it) and records the counts and warnings it read."""
    if bad := [c for c in record.unreadable if c not in _NOT_DECIDING]:
        raise PuhuiError(f"batch {record.batch_id}: ingest_batches.{', '.join(bad)} "
                         "unreadable (a hand edit; audit verify reports it): put it back first")
    return record


def _copy_checks(table: pa.Table, feed: PartnerFeed, delivery_date: Any) -> dict[str, pa.Array]:
    """Check columns for a copy written before copies kept them: ``_after_delivery`` exactly
    as ingestion computes it; ``_valid_<key>`` true where a pseudonym exists, else null (an
    invalid identifier then counts as missing, which the not-null checks on the key catch)."""
    checks: dict[str, pa.Array] = {}
    for stored, column in stored_columns(feed):
        if column.treatment == "pseudonymize" and stored in table.column_names:
            values = table[stored].combine_chunks()
            checks[f"_valid_{stored}"] = pc.if_else(pc.is_valid(values), True,
                                                    pa.scalar(None, pa.bool_()))
    event = next((s for s, c in stored_columns(feed) if c.name == feed.event_time), None)
    if event in table.column_names and delivery_date is not None:
        end = end_of_delivery_day(delivery_date)
        values = table[event].combine_chunks()
        bound = (pa.scalar(end.date(), pa.date32()) if pa.types.is_date(values.type)
                 else pa.scalar(end, pa.timestamp("us", tz="UTC")))
        checks["_after_delivery"] = pc.greater_equal(values, bound)
    return checks


def read_copy(copy: Path, feed: PartnerFeed, delivery_date: Any) -> Iterator[PreparedChunk]:
    """A held batch's copy as prepared chunks (stored columns, check columns, row numbers),
    as ingestion had them before validating."""
    parquet = pq.ParquetFile(copy)
    # A partner's column may itself start with "_" (`_note`): it is data, not a check column.
    data = {name for name, _ in stored_columns(feed)}
    for batch in parquet.iter_batches(batch_size=_COPY_ROWS):
        table = pa.Table.from_batches([batch])
        checks = {n: table[n].combine_chunks() for n in table.column_names
                  if n.startswith("_") and n not in data}
        if not checks:
            checks = _copy_checks(table, feed, delivery_date)
        stored = table.select([n for n in table.column_names
                               if n != "row_number" and n not in checks])
        yield PreparedChunk(stored, checks, table["row_number"].to_numpy())


def _load_copy(
    conn: Connection, table: Any, feed: PartnerFeed, record: ledger.BatchRecord, copy: Path,
    digest_key: bytes, rows_key: bytes,
) -> tuple[int, int, list[str], dict[str, Any]]:
    """Load the copy into ``raw_<partner>`` on ``conn``, as ingestion loads a file: the first
    row of a key within the copy, and none whose key an earlier batch of the feed loaded.
    Returns (rows loaded, rows not loaded as duplicates, warnings, the audit event's digests:
    the claimed keys' and, under ``ROWS_DIGESTS``, the rows' keyed with ``rows_key``)."""
    seen = SeenKeys()
    keys = KeyIndex(conn, feed, record.batch_id, digest_key)
    loaded = dropped = 0
    constants, raw_mac = {"batch_id": record.batch_id}, RowsMac()
    for chunk in read_copy(copy, feed, record.delivery_date):
        chunk, repeated = drop_duplicate_keys(chunk, feed, seen)
        dropped += repeated
        chunk, _ = keys.claim(chunk)
        data = chunk.stored.add_column(0, "row_number", pa.array(chunk.row_numbers, pa.int64()))
        loaded += bulk_insert(conn, table, data, constants)
        add_macs(raw_mac, arrow_rows_mac(conn.dialect, table, data, constants, rows_key))
    warnings = []
    if dropped:
        warnings.append(f"duplicate rows: {dropped:,} row(s) repeat a primary key "
                        f"({', '.join(feed.primary_key)}); first kept")
    if repeats := keys.repeats.warning(feed):
        warnings.append(repeats)
    return loaded, dropped + keys.repeats.rows, warnings, {
        **keys.details(), ROWS_DIGESTS: batch_rows_digest(table, record.batch_id, raw_mac)}


def release_batch(runtime: Runtime, batch_id: str, reason: str) -> ledger.BatchRecord:
    """Load a quarantined batch into ``raw_<partner>``; refused (and the refusal recorded)
    for any other status or a reject-only batch."""
    # Before the refusal's event, which keeps the reason: a reason too long is no decision.
    reason = decision_reason(reason)
    try:
        return _release(runtime, batch_id, reason)
    except PuhuiError as exc:
        record = ledger.get_batch(runtime.engine, batch_id)
        if record is not None:  # a refusal about a real batch is an event; a typo is not
            runtime.audit.record(runtime.engine, RELEASE_REFUSED, batch_id, {
                "partner": record.partner, "status": record.status,
                "reason": scrub_text(reason.strip()), "refused_because": scrub_text(str(exc))})
        raise


def _release(runtime: Runtime, batch_id: str, reason: str) -> ledger.BatchRecord:
    reason = _require_reason(reason)
    engine = runtime.engine
    record = ledger.get_batch(engine, batch_id)
    if record is None:
        raise PuhuiError(f"no batch {batch_id!r} in the ledger")
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get(record.partner)
    table = ensure_raw_table(engine, feed)
    copy = quarantine_copy_path(runtime.settings.home, record.partner, batch_id)
    ensure_key_index(runtime, feed)  # a backfill commits on its own; checked again below
    with engine.begin() as conn:
        record = _readable(_held_batch(conn, batch_id))
        if not copy.exists():
            raise PuhuiError(
                f"batch {batch_id} could not be read when it landed "
                f"({short_reason(record.reason, 120)}); it can only be rejected (reject-only)"
            )
        ensure_key_index(runtime, feed, conn)
        loaded, dropped, warnings, digest = _load_copy(conn, table, feed, record, copy,
                                                      digest_subkey(runtime.audit.key),
                                                      writer_subkey(runtime.audit))
        # The hold's failures stay on record; what the load left out is added to them.
        decided = ledger.update_batch(
            conn,
            batch_id,
            status="released",
            rows_loaded=loaded,
            rows_held=0,
            rows_duplicate=dropped,
            warnings=[*record.warnings, *({"message": scrub_text(w)} for w in warnings)] or None,
            decided_at=ledger.now_utc(),
            decided_by=runtime.settings.actor,
            reason=f"{record.reason} | released: {reason}",
        )
        runtime.audit.append(
            conn,
            "quarantine.released",
            batch_id,
            {
                "partner": record.partner,
                "rows_loaded": loaded,
                "rows_duplicate": dropped,
                **digest,
                "warnings": [scrub_text(w) for w in warnings],
                "reason": reason,
                "held_for": record.reason,
                **ledger.ledger_facts(decided),
            },
        )
    return ledger.get_batch(engine, batch_id)  # type: ignore[return-value]


@dataclass(frozen=True)
class Revalidation:
    """What ``revalidate`` did: accepted (loaded) or still held, with which suite."""

    record: ledger.BatchRecord
    accepted: bool
    changed: bool  # False: it was already loaded, nothing was done
    suite: str
    suite_hash: str | None
    critical: list[str]
    warnings: list[str]


def revalidate_batch(runtime: Runtime, batch_id: str, validator: Any = None) -> Revalidation:
    """Run the current suite on a held batch's copy; load it if no critical check fails.

    Idempotent: a batch already loaded (accepted or released) is left alone; one still
    failing stays held with the new reasons. Either outcome is audited with the suite hash.
    """
    from puhui.ingest.batches import failure_dicts
    from puhui.validation import BatchValidator

    engine = runtime.engine
    record = ledger.get_batch(engine, batch_id)
    if record is None:
        raise PuhuiError(f"no batch {batch_id!r} in the ledger")
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get(record.partner)
    if record.status in ("accepted", "released"):
        return Revalidation(record, True, False, feed.suite, None, [], [])
    if record.status != "quarantined":
        raise PuhuiError(f"batch {batch_id} is {record.status}: only a quarantined batch can "
                         "be revalidated")
    copy = quarantine_copy_path(runtime.settings.home, record.partner, batch_id)
    if not copy.exists():
        raise PuhuiError(f"batch {batch_id} has no readable copy "
                         f"({short_reason(record.reason, 120)}): it is reject-only")
    validator = validator or BatchValidator(results_dir=runtime.settings.home / "gx",
                                            expectations_dir=runtime.settings.expectations_dir)
    seen, run, failed = SeenKeys(), 0, []
    for chunk in read_copy(copy, feed, _readable(record).delivery_date):
        chunk, _ = drop_duplicate_keys(chunk, feed, seen)
        if len(chunk.row_numbers):
            outcome = validator.validate_frame(batch_frame(chunk), feed.suite, batch_id)
            run = max(run, outcome.expectations_run)
            failed += outcome.failed
    suite_hash = validator.suite_hash(feed.suite)
    critical = [f for f in failed if f.severity == "critical"]
    warnings = [scrub_text(f.description) for f in failed if f.severity == "warning"]
    # held_for is read inside each outcome's transaction, with the reason the ledger's is
    # built from: a "still held" revalidation committing since the read above rewrote it.
    facts: dict[str, Any] = {"partner": record.partner, "suite": feed.suite,
                             "suite_hash": suite_hash}
    if critical:
        reason = scrub_text("critical: " + "; ".join(f.description for f in critical))
        with engine.begin() as conn:
            facts["held_for"] = _held_batch(conn, batch_id).reason
            ledger.update_batch(conn, batch_id, reason=reason, warnings=[
                {"message": scrub_text(f.description), "severity": f.severity,
                 "sample_rows": f.sample_rows} for f in failed])
            validated = ledger.record_validation(
                conn, batch_id, feed.suite, success=False, expectations_run=run,
                critical_failed=len(critical), warning_failed=len(warnings), flow_run_id=None,
                details={"reason": reason, "failures": failure_dicts(failed),
                         "quarantine_copy": str(copy), "suite_hash": suite_hash,
                         "revalidated": True}, audit=runtime.audit)
            runtime.audit.append(conn, REVALIDATED, batch_id,
                                 {**facts, "outcome": "still held", "reason": reason,
                                  **validated})
        return Revalidation(ledger.get_batch(engine, batch_id), False, True,  # type: ignore[arg-type]
                            feed.suite, suite_hash, [f.description for f in critical], warnings)
    table = ensure_raw_table(engine, feed)
    ensure_key_index(runtime, feed)  # a backfill commits on its own; checked again below
    with engine.begin() as conn:
        record = _held_batch(conn, batch_id)
        ensure_key_index(runtime, feed, conn)
        loaded, dropped, load_warnings, digest = _load_copy(conn, table, feed, record, copy,
                                                      digest_subkey(runtime.audit.key),
                                                      writer_subkey(runtime.audit))
        warnings += [scrub_text(w) for w in load_warnings]
        decided = ledger.update_batch(
            conn, batch_id, status="accepted", rows_loaded=loaded, rows_held=0,
            rows_duplicate=dropped, decided_at=ledger.now_utc(),
            decided_by=runtime.settings.actor,
            warnings=[{"message": w} for w in warnings] or None,
            reason=f"{record.reason} | revalidated: passed suite {feed.suite} {suite_hash}")
        validated = ledger.record_validation(
            conn, batch_id, feed.suite, success=not warnings, expectations_run=run,
            critical_failed=0, warning_failed=len(warnings), flow_run_id=None,
            details={"failures": failure_dicts(failed), "warnings": warnings,
                     "suite_hash": suite_hash, "revalidated": True}, audit=runtime.audit)
        runtime.audit.append(conn, REVALIDATED, batch_id, {
            **facts, "held_for": record.reason, "outcome": "accepted", "rows_loaded": loaded,
            "rows_duplicate": dropped, **digest, "warnings": warnings, **validated,
            ROWS_DIGESTS: {**validated.get(ROWS_DIGESTS, {}), **digest[ROWS_DIGESTS]},
            **ledger.ledger_facts(decided)})
    return Revalidation(ledger.get_batch(engine, batch_id), True, True,  # type: ignore[arg-type]
                        feed.suite, suite_hash, [], warnings)


def reject_batch(runtime: Runtime, batch_id: str, reason: str) -> ledger.BatchRecord:
    """Reject a quarantined batch for good (its rows stay counted as held)."""
    reason = _require_reason(reason)
    with runtime.engine.begin() as conn:
        record = _held_batch(conn, batch_id)
        decided = ledger.update_batch(
            conn,
            batch_id,
            status="rejected",
            decided_at=ledger.now_utc(),
            decided_by=runtime.settings.actor,
            reason=f"{record.reason} | rejected: {reason}",
        )
        runtime.audit.append(
            conn,
            "quarantine.rejected",
            batch_id,
            {
                "partner": record.partner,
                "rows": record.rows,
                "reason": reason,
                "held_for": record.reason,
                **ledger.ledger_facts(decided),
            },
        )
    return ledger.get_batch(runtime.engine, batch_id)  # type: ignore[return-value]
