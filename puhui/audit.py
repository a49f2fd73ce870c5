"""Append-only audit trail in the warehouse's ``audit_log`` table, chained with a keyed MAC.

Each row's ``row_hash`` is HMAC-SHA256, keyed with ``PUHUI_AUDIT_KEY``, over the previous
row's hash and the row's own canonical content, and ``seq`` is assigned as previous + 1 under
a cross-process lock. So an edited row breaks its own MAC, a deleted row leaves a gap in
``seq`` and a broken ``prev_hash`` link, and a reordered chain fails both; and since the MAC
needs the key, someone with write access to the warehouse but not the key can neither
re-chain a rewritten row nor append a forged event.

What the chain cannot show by itself is rows removed from the end. An anchor, ``SEQ:HASH``,
is kept outside the database; verifying with it checks the trail up to that row as a prefix
(rows after it are allowed: the trail grows).

Rows written before the key existed carry ``chain_version`` 1 (unkeyed SHA-256). Migration
0003 seals them: it appends an ``audit.rekey`` event whose MAC covers the last unkeyed hash,
so the unkeyed prefix can no longer be rewritten either. Unkeyed rows anywhere else (after a
keyed row, or never sealed) are reported: that is what a chain rewritten without the key
looks like.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, Engine, insert, or_, select

from puhui import __version__
from puhui.dates import parse_day
from puhui.errors import PuhuiError, UsageError
from puhui.privacy import find_raw_identifiers, printable
from puhui.settings import repo_root
from puhui.warehouse.engine import lock_for
from puhui.warehouse.schema import audit_log

GENESIS_HASH = "0" * 64
CHAIN_LEGACY, CHAIN_KEYED = 1, 2
REKEY = "audit.rekey"
_HASHED_FIELDS = (
    "seq",
    "event_id",
    "occurred_at",
    "actor",
    "action",
    "subject",
    "details",
    "flow_run_id",
    "mlflow_run_id",
    "code_version",
    "config_hash",
)


@cache
def code_version() -> str:
    """The git commit of the running code (``+dirty`` if modified), else the package version."""
    root = repo_root()
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"puhui-{__version__}"
    return f"{sha}+dirty" if dirty else sha


def current_flow_run_id() -> str | None:
    """The Prefect flow run we are inside, if any (without importing Prefect needlessly)."""
    if "prefect" not in sys.modules:
        return None
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


def current_task_run_id() -> str | None:
    """The Prefect task run we are inside, if any: its retries keep it."""
    if "prefect" not in sys.modules:
        return None
    from prefect.runtime import task_run

    run_id = task_run.get_id()
    return str(run_id) if run_id else None


def canonical_json(value: Any) -> str:
    """Stable JSON text: sorted keys, no whitespace, dates as ISO strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def legacy_row_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """The unkeyed SHA-256 of chain version 1 (rows written before the audit key existed)."""
    payload = canonical_json([prev_hash, *(row[name] for name in _HASHED_FIELDS)])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def keyed_row_hash(key: bytes, prev_hash: str, row: Mapping[str, Any]) -> str:
    """HMAC-SHA256 of chain version 2: the version, the previous hash and the row's content."""
    payload = canonical_json([CHAIN_KEYED, prev_hash, *(row[name] for name in _HASHED_FIELDS)])
    return hmac.new(key, payload.encode("utf-8"), hashlib.sha256).hexdigest()


def environment_audit_key() -> bytes:
    """The key from the settings (PUHUI_AUDIT_KEY, or the local profile's key file)."""
    from puhui.settings import ensure_local_audit_key, load_settings

    return audit_key_bytes(ensure_local_audit_key(load_settings())[0].audit_key)


def audit_key_bytes(key: str | None) -> bytes:
    if not key:
        raise PuhuiError("no audit key: set PUHUI_AUDIT_KEY (the local profile makes one in "
                         "$PUHUI_HOME/audit.key on first use)")
    return key.encode("utf-8")


@dataclass(frozen=True)
class AuditWriter:
    """Who is acting and with which code and configuration; stamps every event."""

    actor: str
    config_hash: str
    code_version: str = field(default_factory=code_version)
    key: bytes = field(default=b"", repr=False)  # empty: the settings' key
    # Called with the transaction and the action before an event is appended: a training's
    # fence (puhui.lifecycle.fencing) refuses the event, and so the transaction, there.
    guard: Callable[[Connection, str], None] | None = field(default=None, repr=False,
                                                            compare=False)

    def append(
        self,
        conn: Connection,
        action: str,
        subject: str,
        details: Mapping[str, Any] | None = None,
        *,
        flow_run_id: str | None = None,
        mlflow_run_id: str | None = None,
    ) -> dict[str, Any]:
        """Append one event inside ``conn``'s transaction (it commits with the caller's work).

        Refuses details that contain a raw national ID or phone number: the audit trail is
        read by many and must never become a copy of personal data.
        """
        key = self.key or environment_audit_key()
        details_text = canonical_json(dict(details or {}))
        leaks = find_raw_identifiers(details_text) + find_raw_identifiers(subject)
        if leaks:
            raise ValueError(f"audit event {action!r} would record a raw {leaks[0]}")
        if self.guard is not None:
            self.guard(conn, action)
        lock_for(conn, "puhui.audit_log")
        last = conn.execute(
            select(audit_log.c.seq, audit_log.c.row_hash).order_by(audit_log.c.seq.desc()).limit(1)
        ).first()
        prev_seq, prev_hash = (last.seq, last.row_hash) if last else (0, GENESIS_HASH)
        row: dict[str, Any] = {
            "seq": prev_seq + 1,
            "event_id": str(uuid.uuid4()),
            "occurred_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": self.actor,
            "action": action,
            "subject": subject,
            "details": details_text,
            "flow_run_id": flow_run_id or current_flow_run_id(),
            "mlflow_run_id": mlflow_run_id,
            "code_version": self.code_version,
            "config_hash": self.config_hash,
        }
        row["prev_hash"] = prev_hash
        row["row_hash"] = keyed_row_hash(key, prev_hash, row)
        row["chain_version"] = CHAIN_KEYED
        conn.execute(insert(audit_log), row)
        return row

    def record(
        self,
        engine: Engine,
        action: str,
        subject: str,
        details: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Append one event in its own transaction."""
        with engine.begin() as conn:
            return self.append(conn, action, subject, details, **kwargs)


@dataclass(frozen=True)
class ChainVerification:
    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    problems: list[str]
    legacy_rows: int = 0

    @property
    def anchor(self) -> str:
        return format_anchor(self.head_seq, self.head_hash)


def format_anchor(seq: int, row_hash: str) -> str:
    return f"{seq}:{row_hash}"


def parse_anchor(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` as printed by ``puhui audit anchor``."""
    seq, _, row_hash = text.strip().partition(":")
    if not (seq.isascii() and seq.isdigit()) or len(row_hash) != 64 \
            or set(row_hash) - set("0123456789abcdef"):
        raise UsageError("--anchor", "must be SEQ:HASH as printed by 'puhui audit anchor', "
                                     f"not '{printable(text[:80])}'")
    return int(seq), row_hash


def _iter_rows(conn: Connection) -> Iterator[Mapping[str, Any]]:
    # A statement option: set on the connection it would stay on for the caller's next
    # statements (an INSERT through a server-side cursor fails on PostgreSQL).
    result = conn.execute(select(audit_log).order_by(audit_log.c.seq)
                          .execution_options(yield_per=5000))
    for row in result:
        yield row._mapping


def verify_rows(rows: Iterable[Mapping[str, Any]], key: bytes,
                anchor: tuple[int, str] | None = None,
                max_problems: int = 20) -> ChainVerification:
    """Recompute the chain; report every edited, deleted, reordered or forged row found,
    and, with an anchor, whether the trail still holds that row unchanged."""
    problems: list[str] = []
    prev_hash, expected_seq, count, legacy, keyed_seen = GENESIS_HASH, 1, 0, 0, False
    anchor_seen = anchor is None or anchor[0] == 0
    for row in rows:
        count += 1
        seq = row["seq"]
        if seq != expected_seq:
            problems.append(f"seq {expected_seq}..{seq - 1} missing (rows deleted)")
        if row["prev_hash"] != prev_hash:
            problems.append(f"seq {seq}: link to the previous row is broken")
        version = row["chain_version"]
        if version == CHAIN_LEGACY:
            legacy += 1
            if keyed_seen:
                problems.append(f"seq {seq}: unkeyed row after keyed rows (written or "
                                "re-chained without the audit key)")
            elif legacy_row_hash(row["prev_hash"], row) != row["row_hash"]:
                problems.append(f"seq {seq}: content does not match its hash (row edited)")
        elif version == CHAIN_KEYED:
            if not keyed_seen and legacy and row["action"] != REKEY:
                problems.append(f"seq {seq}: unkeyed rows before it are not sealed by "
                                f"an {REKEY} event")
            keyed_seen = True
            if not hmac.compare_digest(keyed_row_hash(key, row["prev_hash"], row),
                                       row["row_hash"]):
                problems.append(f"seq {seq}: content does not match its keyed hash (row "
                                "edited, forged, or re-chained without the audit key)")
        else:
            problems.append(f"seq {seq}: unknown chain version {version!r}")
        if anchor is not None and seq == anchor[0]:
            anchor_seen = True
            if row["row_hash"] != anchor[1]:
                problems.append(f"seq {seq}: hash {row['row_hash'][:12]} differs from the "
                                f"anchor {anchor[1][:12]} (the trail up to it was rewritten)")
        prev_hash, expected_seq = row["row_hash"], seq + 1
    head_seq = expected_seq - 1
    if legacy and not keyed_seen:
        problems.append(f"{legacy} unkeyed row(s) and no {REKEY} seal: the chain was "
                        "re-chained without the audit key, or never migrated")
    if not anchor_seen:
        assert anchor is not None
        problems.append(
            f"the trail ends at seq {head_seq}, before the anchor's seq {anchor[0]} "
            "(rows removed from the end)" if head_seq < anchor[0]
            else f"the anchor's row seq {anchor[0]} is missing (rows deleted)")
    return ChainVerification(not problems, count, head_seq, prev_hash, problems[:max_problems],
                             legacy)


def verify_audit_chain(engine: Engine, key: bytes | None = None,
                       anchor: tuple[int, str] | None = None,
                       max_problems: int = 20) -> ChainVerification:
    """Verify the whole trail (see ``verify_rows``); the key defaults to the settings' key."""
    key = key or environment_audit_key()
    with engine.connect() as conn:
        return verify_rows(_iter_rows(conn), key, anchor, max_problems)


def seal_legacy_chain(conn: Connection, writer: AuditWriter) -> dict[str, Any] | None:
    """Seal unkeyed rows at the head with an ``audit.rekey`` event (migration 0003).

    The event's MAC covers the last unkeyed hash, so from now on rewriting any unkeyed row
    breaks a keyed link. It records whether the unkeyed prefix verified when it was sealed,
    and its head, which is what an anchor taken before the upgrade still matches.
    """
    last = conn.execute(select(audit_log.c.chain_version).order_by(audit_log.c.seq.desc())
                        .limit(1)).scalar()
    if last != CHAIN_LEGACY:
        return None
    legacy = verify_rows(_iter_rows(conn), writer.key)
    problems = [p for p in legacy.problems if "no audit.rekey seal" not in p]
    return writer.append(conn, REKEY, "audit_log", {
        "legacy_rows": legacy.legacy_rows, "legacy_head": legacy.anchor,
        "legacy_intact": not problems, "legacy_problems": problems[:5],
        "chain": "hmac-sha256",
    })


# Actions the code writes (the trail may hold others, e.g. from older versions); with the
# trail's own actions they are what ``--action`` may name.
KNOWN_ACTIONS: tuple[str, ...] = (
    REKEY, "ingest.accepted", "ingest.quarantined", "ingest.duplicate", "ingest.late",
    "ingest.paths_pseudonymized", "ingest.marks_renewed", "ingest.keys.indexed",
    "ingest.pseudonym_key.recorded",
    "quarantine.released", "quarantine.rejected", "quarantine.revalidated",
    "quarantine.release.refused", "model.register.intent", "model.registered",
    "model.register.aborted", "model.register.refused", "model.gates", "model.alias.intent",
    "model.alias", "model.alias.aborted", "model.alias.removed", "model.promote.refused",
    "model.alias.refused",
    "pipeline.daily",
    "profiles.refresh", "profiles.swapped", "profiles.explain", "report.published",
    "monitoring.recorded", "monitoring.alert", "validation.recorded",
    "evaluations.recorded", "features.recorded", "ingest.watermark.advanced",
)


@dataclass(frozen=True)
class EventFilter:
    """What ``audit log`` asks for; every part optional, all parts must hold.

    ``since``/``until`` are UTC: a date alone means the whole day (``until`` included).
    ``actions`` are prefixes (``quarantine`` matches ``quarantine.released``); ``subject``
    is a prefix too (a batch id prefix, ``credit_risk/``).
    """

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    actions: tuple[str, ...] = ()
    subject: str | None = None


def parse_time(value: str, option: str, *, end_of_day: bool = False) -> datetime:
    """A UTC date or datetime as ``--since``/``--until`` take it (``Z`` or an offset ok).

    A date alone is its first instant, or with ``end_of_day`` its last (so ``--until
    2026-09-30`` includes that day).
    """
    text = value.strip()
    try:
        # The date part strictly YYYY-MM-DD (fromisoformat took 20260101 and 2026-W01-1).
        day = parse_day(text[:10])
        if len(text) == 10:
            parsed = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return parsed.replace(hour=23, minute=59, second=59, microsecond=999999) \
                if end_of_day else parsed
        if text[10] not in "T ":
            raise ValueError(text)
        parsed = datetime.fromisoformat(text.replace(" ", "T"))
        # Inside the try: 0001-01-01T00:00+01:00 is before datetime's range in UTC.
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise UsageError(
            option, "must be a date YYYY-MM-DD or a time YYYY-MM-DDTHH:MM[:SS] (UTC unless it "
            f"has an offset), not '{printable(value)}'") from None


def _stamp(moment: datetime) -> str:
    # occurred_at is stored as this fixed-width text, so text comparison is time order.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def known_actions(engine: Engine) -> list[str]:
    """Every action the code writes or the trail holds, sorted."""
    with engine.connect() as conn:
        stored = set(conn.execute(select(audit_log.c.action).distinct()).scalars())
    return sorted(stored | set(KNOWN_ACTIONS))


def check_action_prefixes(engine: Engine, prefixes: Iterable[str]) -> None:
    """Refuse a ``--action`` that names no known action (a typo would list nothing)."""
    known = known_actions(engine)
    for prefix in prefixes:
        if not any(action.startswith(prefix) for action in known):
            raise PuhuiError(f"unknown action {prefix!r}: known actions (a prefix matches "
                             f"several) are {', '.join(known)}")


def read_audit_events(
    engine: Engine, since: date | None = None, action: str | None = None, limit: int | None = None,
    *, where: EventFilter | None = None,
) -> list[dict[str, Any]]:
    """Events in order, optionally from ``since`` (UTC date) and of exactly one ``action``,
    and matching ``where`` (see :class:`EventFilter`)."""
    query = select(audit_log).order_by(audit_log.c.seq)
    if since is not None:
        query = query.where(audit_log.c.occurred_at >= since.isoformat())
    if action is not None:
        query = query.where(audit_log.c.action == action)
    if where is not None:
        if where.since is not None:
            query = query.where(audit_log.c.occurred_at >= _stamp(where.since))
        if where.until is not None:
            query = query.where(audit_log.c.occurred_at <= _stamp(where.until))
        if where.actor is not None:
            query = query.where(audit_log.c.actor == where.actor)
        if where.actions:
            query = query.where(or_(*(audit_log.c.action.startswith(p, autoescape=True)
                                      for p in where.actions)))
        if where.subject is not None:
            query = query.where(audit_log.c.subject.startswith(where.subject, autoescape=True))
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    if limit is not None:
        rows = rows[-limit:]
    for row in rows:
        row["details"] = json.loads(row["details"])
    return rows


MAX_REASON = 500  # kept in the ledger and in every event: a sentence, not a file


def decision_reason(reason: str) -> str:
    """A decision's reason (a release, a reject, a promotion, a rollback) as the trail keeps
    it: trimmed, and at most ``MAX_REASON`` characters once trimmed, else one line. Checked
    here, where every caller passes, not only in the CLI: a 200,000-character reason was
    recorded whole, in the ledger and in every event."""
    reason = reason.strip()
    if len(reason) > MAX_REASON:
        raise PuhuiError(f"--reason is {len(reason):,} characters; at most {MAX_REASON:,}")
    return reason


def event_reason(event: Mapping[str, Any]) -> str:
    """The why of an event in one line: its reason, marked when it was forced, a rollback
    or a refusal (so a forced promotion and a rollback do not read the same)."""
    details = event.get("details") or {}
    if not isinstance(details, Mapping):
        return ""
    marks = [label for key, label in (("forced", "FORCED"), ("rollback", "ROLLBACK"))
             if details.get(key)]
    if event.get("action", "").endswith(".refused"):
        marks.append("REFUSED: " + str(details.get("refused_because") or ""))
    reason = str(details.get("reason") or "")
    if details.get("outcome"):  # a revalidation: what happened, then why
        reason = f"{details['outcome']}: {reason}" if reason else str(details["outcome"])
    text = " ".join(f"[{m}]" for m in marks) + (" " if marks and reason else "") + reason
    return " ".join(text.split())


def events_of(bind: Engine | Connection, actions: Collection[str]) -> list[dict[str, Any]]:
    """Events whose action is exactly one of ``actions``, in order, details parsed (read on
    ``bind``: a connection keeps the read in its transaction, see ``snapshot``)."""
    query = (select(audit_log).where(audit_log.c.action.in_(list(actions)))
             .order_by(audit_log.c.seq))
    if isinstance(bind, Connection):
        rows = [dict(r._mapping) for r in bind.execute(query)]
    else:
        with bind.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
    for row in rows:
        row["details"] = json.loads(row["details"])
    return rows
