"""Whether ``PUHUI_PSEUDONYM_KEY`` is the key the warehouse's pseudonyms were made with.

A rotated or mistyped key gives every customer another person_key: the new rows join
nobody's history and nothing fails. The warehouse keeps a keyed check value of the key
(``pseudonym_key_checks``): HMAC-SHA256(key, :data:`CHECK_LABEL`), a message no pseudonym
is made of (those start ``national_id:``, ``phone:`` or ``text\\0``). It is neither the key
nor an unkeyed hash of it (a value any other system hashing the same secret would share):
testing a guessed key against it is no easier than against any pseudonym of a known
person, the key's strength protects both. The first run that pseudonymizes writes it, with
an audit event; every run that pseudonymizes compares, before it writes a row.

A warehouse with pseudonyms but no check value (made before the check existed) adopts the
key of its first run after the upgrade, and that run says so once. A deliberate rotation
needs every stored pseudonym made again under the new key, which puhui does not do (README,
"Settings"): the check refuses the new key until then.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, inspect, select
from sqlalchemy.exc import IntegrityError

from puhui.audit import AuditWriter
from puhui.crashpoints import crash_point
from puhui.errors import PuhuiError
from puhui.warehouse.schema import audit_log, ingest_batches, pseudonym_key_checks

# Fixed and documented: changing it makes every warehouse's check value another one.
CHECK_LABEL = "puhui pseudonym key check v1"
RECORDED = "ingest.pseudonym_key.recorded"  # the audit event that records it

MISMATCH = (
    "PUHUI_PSEUDONYM_KEY is not the key this warehouse's pseudonyms were made with; every "
    "customer would get another person_key and their histories would split, so nothing was "
    "written: set the key the warehouse was built with (a deliberate rotation needs every "
    "stored pseudonym made again under the new key, which puhui does not do)"
)


@dataclass(frozen=True)
class KeyCheck:
    """The warehouse's recorded check value."""

    check_value: str
    adopted: bool
    recorded_at: datetime


def key_check_value(key: bytes) -> str:
    """HMAC-SHA256 of :data:`CHECK_LABEL` and a NUL under the pseudonym key, as hex (the
    standard library's HMAC: `audit verify` imports neither Arrow nor NumPy)."""
    return hmac.new(key, CHECK_LABEL.encode() + b"\0", hashlib.sha256).hexdigest()


def read_key_check(engine: Engine) -> KeyCheck | None:
    """The recorded check value; None before the first run that pseudonymized (or before
    the migration that made its table: a read-only command does not migrate)."""
    if not inspect(engine).has_table(pseudonym_key_checks.name):
        return None
    table = pseudonym_key_checks
    with engine.connect() as conn:
        row = conn.execute(
            select(table.c.check_value, table.c.adopted, table.c.recorded_at).where(
                table.c.label == CHECK_LABEL
            )
        ).first()
    return None if row is None else KeyCheck(str(row[0]), bool(row[1]), row[2])


def key_matches(recorded: KeyCheck, key: bytes) -> bool:
    """Whether ``key`` made ``recorded`` (compared in constant time)."""
    return hmac.compare_digest(recorded.check_value, key_check_value(key))


def check_pseudonym_key(engine: Engine, key: bytes) -> None:
    """Refuse, in one line, a key that is not the recorded one; nothing recorded passes.

    For commands that hash with the key but write no pseudonyms (``profiles explain``)."""
    recorded = read_key_check(engine)
    if recorded is not None and not key_matches(recorded, key):
        raise PuhuiError(MISMATCH)


def trail_check_value(conn: Connection) -> str | None:
    """The check value the audit trail recorded last; None if it never recorded one."""
    details = conn.execute(
        select(audit_log.c.details)
        .where(audit_log.c.action == RECORDED)
        .order_by(audit_log.c.seq.desc())
        .limit(1)
    ).scalar()
    return None if details is None else json.loads(details).get("check_value")


def ensure_pseudonym_key(
    engine: Engine, key: bytes, audit: AuditWriter, flow_run_id: str | None = None
) -> str | None:
    """Compare ``key`` with the recorded check value, recording it on the first run.

    Call before the first row a run pseudonymizes is written. Raises :class:`PuhuiError`
    (:data:`MISMATCH`) on another key. The check value is recorded with an audit event in
    one transaction: a row deleted by hand is not taken over by whatever key comes next,
    the trail's value is compared instead (and `audit verify` reports the row's loss). Two
    first runs at once: the primary key lets one insert, the other's insert fails and it
    compares with the winner's. The check value is committed on its own, before any row: a
    run killed after it leaves a check value that the next run with the same key agrees
    with. Returns a line to show once when this call adopted the key of a warehouse that
    already held pseudonyms, else None.
    """
    recorded = read_key_check(engine)
    note = None
    if recorded is None:
        check_value = key_check_value(key)
        with engine.connect() as conn:
            # Every landed file leaves a ledger row with its path pseudonymized (and a held
            # file a pseudonymized copy): a ledger row means pseudonyms exist.
            adopted = conn.execute(select(ingest_batches.c.batch_id).limit(1)).first() is not None
            trailed = trail_check_value(conn)
        if trailed is not None and not hmac.compare_digest(trailed, check_value):
            raise PuhuiError(MISMATCH)
        try:
            with engine.begin() as conn:
                conn.execute(
                    pseudonym_key_checks.insert().values(
                        label=CHECK_LABEL,
                        check_value=check_value,
                        adopted=adopted,
                        recorded_at=datetime.now(UTC),
                    )
                )
                audit.append(
                    conn,
                    RECORDED,
                    CHECK_LABEL,
                    {"check_value": check_value, "adopted": adopted},
                    flow_run_id=flow_run_id,
                )
        except IntegrityError:  # another first run recorded its key first: compare with it
            pass
        else:
            crash_point("pseudonym-key-recorded")  # recorded, no row written yet
            if adopted and trailed is None:
                note = (
                    "this warehouse's pseudonyms had no record of their key: "
                    "PUHUI_PSEUDONYM_KEY's check value is recorded as theirs now, and "
                    "every later run that pseudonymizes must use this key"
                )
        recorded = read_key_check(engine)
    if recorded is None or not key_matches(recorded, key):
        raise PuhuiError(MISMATCH)
    return note


def check_value_problems(engine: Engine) -> tuple[KeyCheck | None, list[str]]:
    """The recorded check value, and where it and the audit trail's disagree (a hand edit):
    `audit verify`'s."""
    recorded = read_key_check(engine)
    with engine.connect() as conn:
        trailed = trail_check_value(conn)
    if recorded is None:
        return None, [] if trailed is None else [
            "pseudonym_key_checks has lost the check value the audit trail recorded (deleted "
            "by hand): ingest compares PUHUI_PSEUDONYM_KEY with the trail's"
        ]
    if trailed is None:
        return recorded, [
            "pseudonym_key_checks holds a check value the audit trail never recorded (a hand edit)"
        ]
    if not hmac.compare_digest(trailed, recorded.check_value):
        return recorded, [
            "pseudonym_key_checks' check value differs from the audit trail's (a hand edit)"
        ]
    return recorded, []
