"""Decisions on held batches: release (load exactly once) or reject, each audited.

A release loads the batch's pseudonymized quarantine copy (written when it was held) in the
same transaction that flips its status, under a per-batch lock, so two people releasing at
once load it once. Batches that could not be read at all have no copy: they can only be
rejected (the partner redelivers a fixed file, which is a new batch).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from puhui.config import PartnersConfig, load_config
from puhui.errors import PuhuiError
from puhui.ingest import ledger
from puhui.ingest.batches import (
    PreparedChunk,
    SeenKeys,
    drop_duplicate_keys,
    quarantine_copy_path,
)
from puhui.ingest.raw_tables import ensure_raw_table
from puhui.runtime import Runtime
from puhui.warehouse.bulk import bulk_insert
from puhui.warehouse.engine import lock_for


def list_quarantined(runtime: Runtime) -> list[ledger.BatchRecord]:
    """Batches waiting for a decision."""
    return ledger.list_batches(runtime.engine, statuses=("quarantined",))


def _held_batch(conn, batch_id: str) -> ledger.BatchRecord:  # noqa: ANN001
    lock_for(conn, f"puhui.batch.{batch_id}")
    record = ledger.get_batch(conn, batch_id)
    if record is None:
        raise PuhuiError(f"no batch {batch_id!r} in the ledger")
    if record.status != "quarantined":
        raise PuhuiError(f"batch {batch_id} is {record.status}, not quarantined: nothing to do")
    return record


def _require_reason(reason: str) -> str:
    if len(reason.strip()) < 5:
        raise PuhuiError("a decision needs a reason of at least 5 characters")
    return reason.strip()


def release_batch(runtime: Runtime, batch_id: str, reason: str) -> ledger.BatchRecord:
    """Load a quarantined batch into ``raw_<partner>``; refused for any other status."""
    reason = _require_reason(reason)
    engine = runtime.engine
    record = ledger.get_batch(engine, batch_id)
    if record is None:
        raise PuhuiError(f"no batch {batch_id!r} in the ledger")
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get(record.partner)
    table = ensure_raw_table(engine, feed)
    copy = quarantine_copy_path(runtime.settings.home, record.partner, batch_id)
    with engine.begin() as conn:
        record = _held_batch(conn, batch_id)
        if not copy.exists():
            raise PuhuiError(
                f"batch {batch_id} could not be read when it landed "
                f"({record.reason}); it can only be rejected"
            )
        records = pq.read_table(copy)
        chunk = PreparedChunk(
            records.drop_columns(["row_number"]), {}, records["row_number"].to_numpy()
        )
        chunk, dropped = drop_duplicate_keys(chunk, feed, SeenKeys())
        data = chunk.stored.add_column(0, "row_number", pa.array(chunk.row_numbers, pa.int64()))
        loaded = bulk_insert(conn, table, data, {"batch_id": batch_id})
        ledger.update_batch(
            conn,
            batch_id,
            status="released",
            rows_loaded=loaded,
            rows_held=0,
            rows_duplicate=dropped,
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
                "reason": reason,
                "held_for": record.reason,
            },
        )
    return ledger.get_batch(engine, batch_id)  # type: ignore[return-value]


def reject_batch(runtime: Runtime, batch_id: str, reason: str) -> ledger.BatchRecord:
    """Reject a quarantined batch for good (its rows stay counted as held)."""
    reason = _require_reason(reason)
    with runtime.engine.begin() as conn:
        record = _held_batch(conn, batch_id)
        ledger.update_batch(
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
            },
        )
    return ledger.get_batch(runtime.engine, batch_id)  # type: ignore[return-value]
