"""Looking up held batches cheaply: ids, unique prefixes, reject-only, one-line reasons,
and ``show_batch`` (``quarantine show``).

Kept apart from ``quarantine`` (which loads pandas and Arrow to read copies) so that
read-only commands such as ``quarantine list`` stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select

from puhui.errors import PuhuiError
from puhui.ingest import ledger
from puhui.privacy import mask_shape, scrub_text
from puhui.warehouse.schema import ingest_batches, validation_results

if TYPE_CHECKING:
    from puhui.runtime import Runtime

MIN_PREFIX = 8


def quarantine_copy_path(home: Path, partner: str, batch_id: str) -> Path:
    """Where a held batch's pseudonymized copy is kept (written on hold, read on release)."""
    return home / "quarantine" / partner / f"{batch_id}.parquet"


def list_quarantined(engine: Engine) -> list[ledger.BatchRecord]:
    """Batches waiting for a decision."""
    return ledger.list_batches(engine, statuses=("quarantined",))


def all_batch_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(ingest_batches.c.batch_id)).scalars())


def unique_prefixes(ids: list[str], minimum: int = MIN_PREFIX) -> dict[str, str]:
    """The shortest prefix of each id (at least ``minimum`` characters) no other id shares.

    Sorted, an id's longest common prefix with any other id is with a neighbour, so one
    pass over neighbours is enough.
    """
    ordered = sorted(set(ids))

    def common(a: str, b: str) -> int:
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return n

    prefixes = {}
    for i, batch_id in enumerate(ordered):
        shared = max(common(batch_id, ordered[i - 1]) if i else 0,
                     common(batch_id, ordered[i + 1]) if i + 1 < len(ordered) else 0)
        prefixes[batch_id] = batch_id[: max(minimum, shared + 1)]
    return prefixes


def resolve_batch_id(engine: Engine, given: str) -> str:
    """The batch id ``given`` names: itself, or the one id it is a prefix of."""
    given = given.strip()
    with engine.connect() as conn:
        if conn.execute(select(ingest_batches.c.batch_id)
                        .where(ingest_batches.c.batch_id == given)).first():
            return given
        matches = list(conn.execute(
            select(ingest_batches.c.batch_id)
            .where(ingest_batches.c.batch_id.startswith(given, autoescape=True))
            .order_by(ingest_batches.c.batch_id).limit(6)).scalars())
    if not matches:
        raise PuhuiError(f"no batch {given!r} in the ledger (puhui quarantine list --all)")
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise PuhuiError(f"batch prefix {given!r} is ambiguous: it matches {shown}; "
                         "give more characters")
    return matches[0]


def is_reject_only(home: Path, record: ledger.BatchRecord) -> bool:
    """A held batch with no readable copy (unreadable file, contract violation, empty)."""
    return record.status == "quarantined" and not quarantine_copy_path(
        home, record.partner, record.batch_id).exists()


def short_reason(reason: str | None, width: int) -> str:
    """A reason on one line of at most ``width`` characters (full text: ``show``)."""
    text = " ".join((reason or "").split())
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def _sample_shapes(copy: Path | None, column: str | None, rows: list[int]) -> list[str]:
    """Masked shapes of the failing rows' values in the held copy (never the values)."""
    if copy is None or not copy.exists() or not column or not rows:
        return []
    import pyarrow.parquet as pq  # only here: Arrow is most of the command's import time

    if column not in pq.read_schema(copy).names:
        return []
    table = pq.read_table(copy, columns=["row_number", column],
                          filters=[("row_number", "in", [int(r) for r in rows])])
    values = table[column].to_pylist()
    return ["null" if v is None else mask_shape(v) for v in values]


def show_batch(runtime: Runtime, batch_id: str) -> dict[str, Any]:
    """One batch in full: ledger row, reasons, failing expectations with masked samples,
    its validation (suite hash), Data Docs pages and the decisions recorded on it."""
    from puhui.audit import EventFilter, event_reason, read_audit_events
    from puhui.data_docs import pages_for_batch

    engine = runtime.engine
    record = ledger.get_batch(engine, batch_id)
    if record is None:
        raise PuhuiError(f"no batch {batch_id!r} in the ledger")
    home = runtime.settings.home
    copy = quarantine_copy_path(home, record.partner, batch_id)
    # validated_at and details as stored: a hand edit's garbage (or bytes) in them is marked,
    # not a crash of show (they were parsed in the fetch).
    fragile: dict[str, Callable[[Any], Any]] = {
        "validated_at": ledger.as_datetime,
        "details": lambda v: found if isinstance(found := ledger.as_json(v, {}), dict) else None}
    with engine.connect() as conn:
        validation = conn.execute(select(
            *(c for c in validation_results.c if c.name not in fragile),
            *(ledger.as_stored(validation_results.c[c], engine.dialect.name)
              for c in fragile)).where(validation_results.c.batch_id == batch_id)
            .order_by(validation_results.c.validated_at.desc())).first()
    stored = {c: ledger.stored_text(validation._mapping[c]) if validation else None
              for c in fragile}
    read = {c: parse(stored[c]) for c, parse in fragile.items()}
    unreadable = [*(f"ingest_batches.{c}" for c in record.unreadable),
                  *(f"validation_results.{c}" for c in fragile
                    if stored[c] is not None and read[c] is None)]
    details = read["details"] or {}
    failures = []
    for item in details.get("failures") or []:
        samples = _sample_shapes(copy, item.get("column"), item.get("sample_rows") or [])
        failures.append({**item, "message": scrub_text(str(item.get("message") or "")),
                         "sample_shapes": samples})
    events = read_audit_events(engine, where=EventFilter(subject=batch_id))
    return {
        **{k: v for k, v in record.__dict__.items() if k != "warnings"},
        # None (JSON null) when unreadable; `unreadable` names it.
        "delivery_date": None if record.delivery_date is None else str(record.delivery_date),
        "unreadable": unreadable,
        "reason": scrub_text(record.reason or ""),
        "reject_only": is_reject_only(home, record),
        "quarantine_copy": str(copy) if copy.exists() else None,
        "warnings": [scrub_text(w.get("message", "")) for w in record.warnings],
        "validation": None if validation is None else {
            "suite": validation.suite_name, "success": validation.success,
            "expectations_run": validation.expectations_run,
            "critical_failed": validation.critical_failed,
            "warning_failed": validation.warning_failed,
            "suite_hash": details.get("suite_hash"),
            "validated_at": None if read["validated_at"] is None
            else str(read["validated_at"])},
        "failures": failures,
        "data_docs": [str(p) for p in pages_for_batch(home / "gx", batch_id)],
        "decisions": [{"seq": e["seq"], "at": e["occurred_at"][:19], "actor": e["actor"],
                       "action": e["action"], "reason": event_reason(e)} for e in events],
    }
