"""Append-only, hash-chained audit trail in the warehouse's ``audit_log`` table.

Each row's ``row_hash`` is SHA-256 over the previous row's hash and the row's own canonical
content, and ``seq`` is assigned as previous + 1 under a cross-process lock. So an edited row
breaks its own hash, a deleted row leaves a gap in ``seq`` and a broken ``prev_hash`` link,
and a reordered chain fails both. Deleting rows at the very end leaves a shorter but valid
chain: ``verify_audit_chain`` returns the head (seq, hash) so it can be anchored outside the
database, and ``expect_head`` checks against such an anchor.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from puhui import __version__
from puhui.privacy import find_raw_identifiers
from puhui.settings import repo_root
from puhui.warehouse.engine import lock_for
from puhui.warehouse.schema import audit_log

GENESIS_HASH = "0" * 64
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


def canonical_json(value: Any) -> str:
    """Stable JSON text: sorted keys, no whitespace, dates as ISO strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def compute_row_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    payload = canonical_json([prev_hash, *(row[name] for name in _HASHED_FIELDS)])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditWriter:
    """Who is acting and with which code and configuration; stamps every event."""

    actor: str
    config_hash: str
    code_version: str = field(default_factory=code_version)

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
        details_text = canonical_json(dict(details or {}))
        leaks = find_raw_identifiers(details_text) + find_raw_identifiers(subject)
        if leaks:
            raise ValueError(f"audit event {action!r} would record a raw {leaks[0]}")
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
        row["row_hash"] = compute_row_hash(prev_hash, row)
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


def _iter_rows(engine: Engine) -> Iterator[Mapping[str, Any]]:
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=5000).execute(
            select(audit_log).order_by(audit_log.c.seq)
        )
        for row in result:
            yield row._mapping


def verify_audit_chain(
    engine: Engine, expect_head: str | None = None, max_problems: int = 20
) -> ChainVerification:
    """Recompute the chain; report every edited, deleted or reordered row found."""
    problems: list[str] = []
    prev_hash, expected_seq, rows = GENESIS_HASH, 1, 0
    for row in _iter_rows(engine):
        rows += 1
        if row["seq"] != expected_seq:
            problems.append(f"seq {expected_seq}..{row['seq'] - 1} missing (rows deleted)")
        if row["prev_hash"] != prev_hash:
            problems.append(f"seq {row['seq']}: link to the previous row is broken")
        if compute_row_hash(row["prev_hash"], row) != row["row_hash"]:
            problems.append(f"seq {row['seq']}: content does not match its hash (row edited)")
        prev_hash, expected_seq = row["row_hash"], row["seq"] + 1
    head_seq = expected_seq - 1
    if expect_head and expect_head != prev_hash:
        problems.append(
            f"head hash {prev_hash[:12]} differs from the anchor {expect_head[:12]}"
            " (rows removed from the end or chain rewritten)"
        )
    return ChainVerification(not problems, rows, head_seq, prev_hash, problems[:max_problems])


def read_audit_events(
    engine: Engine, since: date | None = None, action: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Events in order, optionally from ``since`` (UTC date) and of one ``action``."""
    query = select(audit_log).order_by(audit_log.c.seq)
    if since is not None:
        query = query.where(audit_log.c.occurred_at >= since.isoformat())
    if action is not None:
        query = query.where(audit_log.c.action == action)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    if limit is not None:
        rows = rows[-limit:]
    for row in rows:
        row["details"] = json.loads(row["details"])
    return rows
