"""Looking up held batches cheaply: ids, unique prefixes, reject-only, one-line reasons.

Kept apart from ``quarantine`` (which loads pandas and Arrow to read copies) so that
read-only commands such as ``quarantine list`` stay fast.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, select

from puhui.errors import PuhuiError
from puhui.ingest import ledger
from puhui.warehouse.schema import ingest_batches

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
