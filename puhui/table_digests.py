"""Digests of the warehouse tables that are not audit events themselves, recorded by their
writers' events and recomputed by ``audit verify``.

``user_profiles``, ``user_profile_history``, ``drift_reports``, monitoring's rows of
``model_evaluations`` (``monitor.*``) and ``service_metrics`` are written in scopes (an as-of
date, a model version's as-of date, the whole current table), each scope replaced whole by
the run that writes it. The writer appends, in the transaction that writes the rows, an event
recording each scope it wrote (:data:`ROWS_DIGESTS`): the rows' count and a keyed digest of
their content. ``audit verify`` counts every scope (one ``GROUP BY`` per table) and, with
``--deep``, streams the rows and recomputes the keyed digest: a row deleted, added or edited
by hand is reported per table and scope, never with a value.

The keyed digest is the ``keys_mac`` scheme for rows: per row, BLAKE2b-128 keyed with a
subkey of ``PUHUI_AUDIT_KEY`` over the row's canonical text (every column; JSON columns as
stored text), summed mod 2^128 with the count, then hashed. Order-independent, so the rows
are streamed in no order, memory bounded by a chunk and one digest per scope. The writer
digests the rows by reading them back in its transaction, through the same code verify
runs, so both see the same values (a float, a date, a JSON text as the database returns it).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    DateTime,
    Engine,
    Select,
    Table,
    Text,
    cast,
    func,
    select,
)

from puhui.warehouse.schema import (
    drift_reports,
    model_evaluations,
    service_metrics,
    user_profile_history,
    user_profiles,
    validation_results,
)

if TYPE_CHECKING:
    from puhui.audit import AuditWriter

ROWS_DIGESTS = "rows_digests"  # audit details: {table: {scope: {"rows": n, "mac": hex}}}
_LABEL = b"puhui table rows digest v1"
_MOD = 1 << 128


def rows_subkey(audit_key: bytes) -> bytes:
    """The rows' digest key, derived from ``PUHUI_AUDIT_KEY`` and never stored."""
    return hmac.new(audit_key, _LABEL, hashlib.sha256).digest()[:32]


@dataclass
class RowsMac:
    """Count and keyed, order-independent digest of a set of rows."""

    count: int = 0
    total: int = 0

    def hex(self) -> str:
        return hashlib.sha256(f"puhui.rows.v1:{self.count},{self.total}".encode()).hexdigest()


@dataclass(frozen=True)
class Scoped:
    """A table whose rows are written in scopes: ``scope`` names the columns that say which
    (none: the whole table is one), ``where`` restricts it to the writer's rows."""

    table: Table
    scope: tuple[str, ...] = ()
    where: Any = None

    @property
    def name(self) -> str:
        return self.table.name


def scope_of(values: Iterable[Any]) -> str:
    """A scope's name as events record it: its values joined by ``/`` (dates as ISO)."""
    return "/".join(str(v) for v in values)


def _ordered(table: Table) -> list[Column]:
    # In name order: tables that share columns digest alike.
    return sorted(table.columns, key=lambda c: c.name)


def _canonical(value: Any) -> Any:
    # A time as its UTC instant: how a driver labels the zone (PostgreSQL's session
    # TimeZone, psycopg's tzinfo class) is no part of the row.
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).isoformat()
    return value


def _driver_rows(conn: Connection, query: Select, chunk_rows: int) -> Iterator[tuple]:
    # The driver's own cursor and plain tuples: SQLAlchemy's rows parse SQLite's dates and
    # times from text on every row, which the digest does not need. Writer and verify both
    # read this way, so a value is the same to both (a date as SQLite's text, psycopg's date).
    compiled = query.compile(dialect=conn.dialect)
    driver = conn.connection.dbapi_connection
    assert driver is not None
    if conn.dialect.name == "postgresql":  # a named cursor, stepped by the server
        cursor, params = driver.cursor(name="puhui_rows_macs"), compiled.params
    else:
        cursor = driver.cursor()
        params = tuple(compiled.params[name] for name in compiled.positiontup or ())
    try:
        cursor.execute(str(compiled), params)
        while part := cursor.fetchmany(chunk_rows):
            yield from part
    finally:
        cursor.close()


def rows_macs(conn: Connection, spec: Scoped, subkey: bytes, where: Any = None,
              chunk_rows: int = 20_000) -> dict[str, RowsMac]:
    """:class:`RowsMac` per scope of ``spec``'s rows (and ``where``), streamed in chunks."""
    ordered = _ordered(spec.table)
    # JSON as its stored text: parsing every row's JSON costs more than hashing it, and the
    # text is what was written.
    columns = [cast(c, Text) if isinstance(c.type, JSON) else c for c in ordered]
    at = [[c.name for c in ordered].index(s) for s in spec.scope]
    times = [i for i, c in enumerate(ordered) if isinstance(c.type, DateTime)]
    query = select(*columns)
    for condition in (spec.where, where):
        if condition is not None:
            query = query.where(condition)
    macs: dict[str, RowsMac] = {}
    blake2b = hashlib.blake2b
    for row in _driver_rows(conn, query, chunk_rows):
        if times:
            row = list(row)
            for i in times:
                row[i] = _canonical(row[i])
        digest = blake2b(repr(row).encode(), digest_size=16, key=subkey).digest()
        name = scope_of(row[i] for i in at)
        mac = macs.get(name) or macs.setdefault(name, RowsMac())
        mac.count += 1
        mac.total += int.from_bytes(digest, "little")
    for mac in macs.values():
        mac.total %= _MOD
    return macs


def rows_counts(conn: Connection, spec: Scoped) -> dict[str, int]:
    """Rows per scope of ``spec``: one ``GROUP BY`` (a scan; none of these tables needs an
    index for it)."""
    scope = [spec.table.c[s] for s in spec.scope]
    query = select(*scope, func.count()).select_from(spec.table)
    if spec.where is not None:
        query = query.where(spec.where)
    if scope:
        query = query.group_by(*scope)
    return {scope_of(row[:-1]): int(row[-1]) for row in conn.execute(query) if row[-1]}


def recorded(conn: Connection, spec: Scoped, subkey: bytes, where: Any = None,
             scopes: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """What a writer's event records for the rows it just wrote (read back in its
    transaction): each scope's count and keyed digest; ``scopes`` it emptied record 0."""
    macs = rows_macs(conn, spec, subkey, where)
    return {name: {"rows": mac.count, "mac": mac.hex()}
            for name, mac in {**{s: RowsMac() for s in scopes}, **macs}.items()}


PROFILES_HISTORY = Scoped(user_profile_history, ("as_of_date",))
PROFILES_CURRENT = Scoped(user_profiles)
DRIFT = Scoped(drift_reports, ("model_name", "model_version", "as_of_date"))
# Registration rows (no status) are compared with MLflow's run metrics by registry_problems.
MONITOR_EVALUATIONS = Scoped(model_evaluations, ("as_of_date",),
                             model_evaluations.c.metric.like("monitor.%"))
SERVICE_METRICS = Scoped(service_metrics, ("as_of_date",))
# A batch's or a warehouse table's validation by a suite: replaced by its next validation.
VALIDATIONS = Scoped(validation_results, ("validation_id",))
SPECS = (PROFILES_CURRENT, PROFILES_HISTORY, DRIFT, MONITOR_EVALUATIONS, SERVICE_METRICS,
         VALIDATIONS)
PROFILES_SWAPPED, MONITORING_RECORDED = "profiles.swapped", "monitoring.recorded"
VALIDATION_RECORDED = "validation.recorded"  # a warehouse table's (a batch's: its load event)
WRITERS = (PROFILES_SWAPPED, MONITORING_RECORDED, VALIDATION_RECORDED, "ingest.accepted",
           "ingest.quarantined", "quarantine.revalidated")


def writer_subkey(audit: AuditWriter) -> bytes:
    """The rows' digest key of the writer ``audit`` (its key, or the settings')."""
    from puhui.audit import environment_audit_key

    return rows_subkey(audit.key or environment_audit_key())


@dataclass
class TableCheck:
    """What :func:`table_problems` found: problems (one line each), rows counted, and notes
    on scopes written before their writers recorded digests (compared with nothing)."""

    problems: list[str] = field(default_factory=list)
    rows: int = 0
    notes: list[str] = field(default_factory=list)


def expected_digests(events: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict]]:
    """table -> scope -> what the last event writing it recorded."""
    expected: dict[str, dict[str, dict]] = {}
    for event in events:
        for table, scopes in (event["details"].get(ROWS_DIGESTS) or {}).items():
            expected.setdefault(table, {}).update(scopes)
    return expected


def compare(spec: Scoped, expected: Mapping[str, dict], counts: Mapping[str, int],
            macs: Mapping[str, RowsMac] | None, check: TableCheck) -> None:
    """Add ``spec``'s problems and note to ``check`` (``macs`` None: counts only)."""
    what = f"{spec.name} " + ("/".join(spec.scope) + " " if spec.scope else "")
    check.rows += sum(counts.values())
    unrecorded = 0
    for name in sorted(set(counts) | {s for s, e in expected.items() if e["rows"]}):
        found, recorded_here = counts.get(name, 0), expected.get(name)
        label = f"{what}{name}".rstrip() if spec.scope else spec.name
        if recorded_here is None:
            unrecorded += 1
        elif found != recorded_here["rows"]:
            how = "deleted" if found < recorded_here["rows"] else "added"
            check.problems.append(f"{label}: {found:,} row(s) but its writer recorded "
                                  f"{recorded_here['rows']:,} (rows {how} by hand)")
        elif macs is not None and macs.get(name, RowsMac()).hex() != recorded_here["mac"]:
            check.problems.append(f"{label}: {found:,} row(s), not those its writer recorded "
                                  "(the keyed digest differs: rows edited or replaced by hand)")
    if unrecorded:
        which = f"{unrecorded} {'/'.join(spec.scope)}(s) " if spec.scope else ""
        check.notes.append(f"{spec.name}: {which}written before row digests were recorded "
                           "(not compared)")


def table_problems(engine: Engine, specs: Iterable[Scoped], actions: Collection[str],
                   subkey: bytes | None) -> TableCheck:
    """Compare each of ``specs`` with what the events ``actions`` recorded, in one snapshot;
    with ``subkey`` (``--deep``) also each scope's keyed digest."""
    from puhui.audit import events_of
    from puhui.warehouse.engine import snapshot

    check = TableCheck()
    with snapshot(engine) as conn:
        expected = expected_digests(events_of(conn, actions))
        for spec in specs:
            counts = rows_counts(conn, spec)
            macs = None if subkey is None else rows_macs(conn, spec, subkey)
            compare(spec, expected.get(spec.name, {}), counts, macs, check)
    return check
