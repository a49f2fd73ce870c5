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
subkey of ``PUHUI_AUDIT_KEY`` over the row's canonical text (:func:`row_text`: each value's
text by its column's type, the same from SQLite and PostgreSQL; JSON columns as stored
text), summed mod 2^128 with the count, then hashed. Order-independent, so the rows are
streamed in no order, memory bounded by a chunk and one digest per scope. The event records
the columns digested (all the table had then): verify digests those, so a migration that
adds a column changes no recorded scope's digest. The writers digest the rows by reading
them back in their transaction, through the same code verify runs; the profile swap from
the Arrow tables it inserts (:func:`held_rows_mac`: the same texts, no read-back).
``user_features`` (per as-of date), ``ingest_watermarks`` (per feed) and the trainings' rows
of ``model_evaluations`` (per model version) are recorded too; the last two are few rows,
so plain verify compares their digests (:attr:`Scoped.small`); ``user_features`` grows with
every training, so only ``--deep`` counts and digests it (:attr:`Scoped.deep`).

A partner's raw table (``raw_<partner>``, scoped by batch) is digested by each load from the
Arrow data it writes (no read-back: no index on ``batch_id``), vectorized in
:mod:`puhui.raw_rows_digest` (Arrow and NumPy, imported only by the loaders and ``--deep``):
per column its canonical values (the same texts; floats as float64) hashed to 64-bit words,
combined per row by a keyed nonlinear mix, the rows' words summed mod 2^64. Verify turns the
rows it reads back into the same Arrow columns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    cast,
    func,
    inspect,
    select,
)

from puhui.warehouse.digesting import derive_subkey, figures_hex, stream_driver_rows
from puhui.warehouse.schema import (
    drift_reports,
    ingest_watermarks,
    model_evaluations,
    service_metrics,
    user_features,
    user_profile_history,
    user_profiles,
    validation_results,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from puhui.audit import AuditWriter

# audit details: {table: {"columns": [name, ...], "scopes": {scope: {"rows": n, "mac": hex}}}}
ROWS_DIGESTS = "rows_digests"
_LABEL = b"puhui table rows digest v2"
_MOD = 1 << 128
RAW_PREFIX = "raw_"  # a partner's raw table: raw_<partner>


_RAW_TAG, _RAW_MOD = "puhui.raw_rows.v3", 1 << 64  # raw tables' rows: raw_rows_digest


@dataclass
class RowsMac:
    """Count and keyed, order-independent digest of a set of rows (``tag``: its scheme)."""

    count: int = 0
    total: int = 0
    tag: str = "puhui.rows.v2"

    def hex(self) -> str:
        # A raw digest's rows sum mod 2^64; add_macs sums mod 2^128, a multiple of it.
        total = self.total % _RAW_MOD if self.tag == _RAW_TAG else self.total
        return figures_hex(self.tag, self.count, total)


@dataclass(frozen=True)
class Scoped:
    """A table whose rows are written in scopes: ``scope`` names the columns that say which
    (none: the whole table is one), ``where`` restricts it to the writer's rows."""

    table: Table
    scope: tuple[str, ...] = ()
    where: Any = None
    # The name events record it under, where two writers digest one table (the table's).
    key: str | None = None
    # Few rows (one per feed, per model version): plain verify compares their digests too.
    small: bool = False
    # Grows with every run and has no index that counts it cheaply (``user_features``: a
    # training's ~2M rows of 1.25 KB JSON at 1M customers): only ``--deep`` counts and
    # digests it; plain verify, a read-only command of a second or two, leaves it out.
    deep: bool = False

    @property
    def name(self) -> str:
        return self.key or self.table.name


def scope_of(values: Iterable[Any]) -> str:
    """A scope's name as events record it: its values joined by ``/`` (dates as ISO)."""
    return "/".join(str(v) for v in values)


def digested_columns(table: Table) -> list[str]:
    """The columns a writer digests now, in name order (tables that share columns digest
    alike); its event records them, and verify digests those, whatever columns a later
    migration adds."""
    return sorted(c.name for c in table.columns)


# The canonical text of a value, by its column's type, whatever the dialect and driver
# return: NULL (and NaN, which SQLite stores as NULL) is None; a number its shortest text,
# an integral one as an integer (SQLite returns a REAL column's 1 as 1.0, a boolean as 0/1);
# a date ISO; a time its UTC instant to the microsecond (SQLite's text, PostgreSQL's aware
# or naive datetime: naive ones are UTC, as the writers store them); JSON its stored text.
_INF = float("inf")


def _number(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float | Decimal):
        if value != value:  # NaN
            return None
        if value in (_INF, -_INF):
            return "inf" if value > 0 else "-inf"
        if value == int(value):
            return str(int(value))
        return repr(float(value))
    return str(int(value))  # int, bool


def _date(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else value.isoformat()


def _time(value: Any) -> str | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds")


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.hex() if isinstance(value, bytes | memoryview) else str(value)


def _encoder(column: Column) -> Callable[[Any], str | None]:
    kind = column.type
    if isinstance(kind, Boolean | Integer | Float | Numeric):
        return _number
    if isinstance(kind, DateTime):
        return _time
    if isinstance(kind, Date):
        return _date
    return _text


def row_text(encoders: Iterable[Callable[[Any], str | None]], row: Iterable[Any]) -> bytes:
    """The canonical text a row's digest is made of: its values' texts as a JSON list."""
    return json.dumps(
        [encode(v) for encode, v in zip(encoders, row, strict=True)],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def rows_macs(
    conn: Connection,
    spec: Scoped,
    subkey: bytes,
    where: Any = None,
    columns: Iterable[str] | None = None,
    chunk_rows: int = 20_000,
    kinds: Sequence[str] | None = None,
) -> dict[str, RowsMac]:
    """:class:`RowsMac` per scope of ``spec``'s rows (and ``where``) over ``columns`` (by
    name, in their order; none: :func:`digested_columns`), streamed in chunks. ``kinds``
    (a raw table's): the columns' types as the load recorded them (:func:`column_kinds`),
    which the values read are canonicalized by instead of the table's own."""
    ordered = [spec.table.c[name] for name in (columns or digested_columns(spec.table))]
    encoders = [_encoder(c) for c in ordered]
    # JSON as its stored text: parsing every row's JSON costs more than hashing it, and the
    # text is what was written. The scope's columns follow the digested ones.
    selected = [cast(c, Text) if isinstance(c.type, JSON) else c for c in ordered]
    query = select(*selected, *(spec.table.c[s] for s in spec.scope))
    for condition in (spec.where, where):
        if condition is not None:
            query = query.where(condition)
    macs: dict[str, RowsMac] = {}
    width, scoped = len(ordered), bool(spec.scope)
    if is_raw(spec.table):
        # Arrow and NumPy only here (--deep) and in the loaders: plain verify reads counts.
        from puhui.raw_rows_digest import read_back_macs

        parts = stream_driver_rows(conn, query, chunk_rows, "puhui_rows_macs")
        return read_back_macs(parts, ordered, kinds, scoped, subkey)
    for part in stream_driver_rows(conn, query, chunk_rows, "puhui_rows_macs"):
        _add_rows(macs, part, encoders, width, scoped, subkey)
    for mac in macs.values():
        mac.total %= _MOD
    return macs


def _add_rows(
    macs: dict[str, RowsMac],
    rows: Iterable[Sequence[Any]],
    encoders: Sequence[Callable[[Any], str | None]],
    width: int,
    scoped: bool,
    subkey: bytes,
) -> None:
    # Each row's keyed BLAKE2b into its scope's sum (its first ``width`` values digested,
    # the rest its scope's); the caller reduces the sums mod 2^128.
    blake2b = hashlib.blake2b
    for row in rows:
        digest = blake2b(row_text(encoders, row[:width]), digest_size=16, key=subkey).digest()
        name = scope_of(row[width:]) if scoped else ""
        mac = macs.get(name) or macs.setdefault(name, RowsMac())
        mac.count += 1
        mac.total += int.from_bytes(digest, "little")


class UnheldValues(ValueError):
    """:func:`held_rows_mac` cannot vouch that its texts equal the read-back's for these
    values (a column's Arrow type outside the tested set): read the rows back instead."""


def held_rows_mac(table: Table, data: pa.Table, subkey: bytes) -> RowsMac:
    """:func:`rows_macs`' digest of the rows ``bulk_insert`` writes from ``data`` (an Arrow
    table) into ``table``, without reading them back: the same canonical text from the
    values the writer holds. Equal to the read-back only where the database returns each
    value as written, which the tests check on both dialects for the pairs of column type
    and Arrow type :func:`_held_kind` accepts; any other (a zoned time not in UTC, a time
    into a date, an integer into a float, text into a number, a column absent that has a
    default) raises :class:`UnheldValues`, naming the column: the writer reads back."""
    from puhui.warehouse.bulk import json_columns_as_text

    data = json_columns_as_text(table, data)  # the JSON texts bulk_insert writes
    columns = digested_columns(table)
    present = set(data.column_names)
    for name in columns:
        column = table.c[name]
        if name not in present and (column.default is not None or column.server_default):
            raise UnheldValues(f"{table.name}.{name}: absent, and it has a default")
        if name in present and not _held_kind(column, data.column(name).type):
            raise UnheldValues(
                f"{table.name}.{name}: Arrow type {data.column(name).type} is not one the "
                "held digest is tested with for this column's type"
            )
    texts = [
        _held_texts(table.c[name], data.column(name)) if name in present else [None] * data.num_rows
        for name in columns
    ]
    mac = RowsMac()
    blake2b = hashlib.blake2b
    for row in _held_row_texts(texts):
        mac.count += 1
        digest = blake2b(row, digest_size=16, key=subkey).digest()
        mac.total += int.from_bytes(digest, "little")
    mac.total %= _MOD
    return mac


_CONTROL = "[\\x00-\\x1f]"  # control characters, which json.dumps escapes one by one


def _held_row_texts(texts: list[list[str | None]]) -> list[bytes]:
    # :func:`row_text` of each row of canonical texts, by Arrow kernels: a JSON string is
    # its text with \\ and " escaped, quoted; NULL is null. A row with a control character
    # (json.dumps escapes those one by one) is made by row_text itself.
    import pyarrow as pa
    import pyarrow.compute as pc

    items, control = [], None
    for values in texts:
        column = pa.array(values, pa.string())
        escaped = pc.replace_substring(pc.replace_substring(column, "\\", "\\\\"), '"', '\\"')
        quoted = pc.binary_join_element_wise('"', escaped, '"', "")
        items.append(pc.if_else(pc.is_null(column), "null", quoted))
        found = pc.fill_null(pc.match_substring_regex(column, _CONTROL), False)
        control = found if control is None else pc.or_(control, found)
    parts: list[Any] = ["["]
    for i, item in enumerate(items):
        parts += [",", item] if i else [item]
    rows = pc.binary_join_element_wise(*parts, "]", "").cast(pa.binary()).to_pylist()
    if control is not None and pc.any(control).as_py():
        for i in pc.indices_nonzero(control).to_pylist():
            rows[i] = row_text([_same] * len(texts), [values[i] for values in texts])
    return rows


_UTC_ZONES = frozenset({"UTC", "Etc/UTC", "+00:00", "Z"})


def _held_kind(column: Column, arrow: pa.DataType) -> bool:
    # The (column type, Arrow type) pairs whose stored value reads back as the text the
    # encoder makes of the held one, on both dialects (tests/test_audit_tables17.py).
    import pyarrow as pa

    if pa.types.is_dictionary(arrow):
        arrow = arrow.value_type
    if pa.types.is_null(arrow):  # all NULL
        return True
    kind = column.type
    if isinstance(kind, Float):
        # float32 widens exactly; an integer above 2^53 would read back rounded.
        return pa.types.is_float32(arrow) or pa.types.is_float64(arrow)
    if isinstance(kind, Boolean | Integer):
        return pa.types.is_boolean(arrow) or pa.types.is_integer(arrow)
    if isinstance(kind, DateTime):
        # SQLite stores a zoned time's wall time, which is read back as UTC.
        return pa.types.is_timestamp(arrow) and (arrow.tz is None or arrow.tz in _UTC_ZONES)
    if isinstance(kind, Date):
        return pa.types.is_date(arrow)  # a time into a date is stored as its date
    if isinstance(kind, String | Text | JSON):
        return pa.types.is_string(arrow) or pa.types.is_large_string(arrow)
    return False


def _same(value: Any) -> Any:
    return value


def _held_texts(column: Column, values: Any) -> list[str | None]:
    # A column's canonical texts, the encoder run once per distinct value (a swap's time,
    # date and versions are one value for every row): text is its own, as read back.
    values = values.combine_chunks() if hasattr(values, "combine_chunks") else values
    if str(values.type) in ("string", "large_string"):
        return values.to_pylist()
    encode = _encoder(column)
    encoded = values.dictionary_encode()
    distinct = [encode(v) for v in encoded.dictionary.to_pylist()]
    return [None if i is None else distinct[i] for i in encoded.indices.to_pylist()]


def is_raw(table: Table) -> bool:
    """Whether ``table`` is a partner's raw table (``raw_<partner>``), digested per batch by
    :func:`puhui.raw_rows_digest.columns_mac`, not per row's text."""
    return table.name.startswith(RAW_PREFIX)


def column_kinds(table: Table, columns: Iterable[str]) -> list[str]:
    """The kind (a key of ``puhui.raw_rows_digest._KIND_TYPES``) of each of ``table``'s
    ``columns``, by its type as ``_read_canonical`` there treats it (a Boolean before an
    Integer: it is checked first there too)."""
    order = (
        (Float, "float"),
        (Boolean, "boolean"),
        (Integer, "integer"),
        (DateTime, "timestamp"),
        (Date, "date"),
    )
    return [
        next((kind for cls, kind in order if isinstance(table.c[name].type, cls)), "text")
        for name in columns
    ]


def add_macs(into: RowsMac, mac: RowsMac) -> None:
    """Add ``mac``'s rows to ``into`` (a digest of their union)."""
    into.count += mac.count
    into.total = (into.total + mac.total) % _MOD
    into.tag = mac.tag if mac.count else into.tag


def batch_rows_digest(table: Table, batch_id: str, mac: RowsMac) -> dict[str, Any]:
    """What a load's event records for the rows it wrote into ``raw_<partner>``: like a
    writer's :func:`recorded`, with the batch as the scope."""
    columns = digested_columns(table)
    return {
        table.name: {
            "columns": columns,
            "kinds": column_kinds(table, columns),
            "scopes": {batch_id: {"rows": mac.count, "mac": mac.hex()}},
        }
    }


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


def recorded(
    conn: Connection, spec: Scoped, subkey: bytes, where: Any = None, scopes: Collection[str] = ()
) -> dict[str, Any]:
    """What a writer's event records for the rows it just wrote (read back in its
    transaction): the columns digested, each scope's count and keyed digest; ``scopes`` it
    emptied record 0."""
    columns = digested_columns(spec.table)
    return recorded_macs(columns, rows_macs(conn, spec, subkey, where, columns), scopes)


def recorded_macs(
    columns: list[str], macs: Mapping[str, RowsMac], scopes: Collection[str] = ()
) -> dict[str, Any]:
    """What an event records for ``macs`` (scope -> digest over ``columns``, in
    :func:`digested_columns`' order); ``scopes`` not in ``macs`` record 0 rows."""
    return {
        "columns": columns,
        "scopes": {
            name: {"rows": mac.count, "mac": mac.hex()}
            for name, mac in {**{s: RowsMac() for s in scopes}, **macs}.items()
        },
    }


PROFILES_HISTORY = Scoped(user_profile_history, ("as_of_date",))
PROFILES_CURRENT = Scoped(user_profiles)
DRIFT = Scoped(drift_reports, ("model_name", "model_version", "as_of_date"))
# Registration rows (no status) are compared with MLflow's run metrics by registry_problems.
MONITOR_EVALUATIONS = Scoped(
    model_evaluations, ("as_of_date",), model_evaluations.c.metric.like("monitor.%")
)
SERVICE_METRICS = Scoped(service_metrics, ("as_of_date",))
# A batch's or a warehouse table's validation by a suite: replaced by its next validation.
VALIDATIONS = Scoped(validation_results, ("validation_id",))
# A training's rows of a model version (both models' trainings, through write_evaluations):
# recorded apart from monitoring's, which share the table.
TRAINING_EVALUATIONS = Scoped(
    model_evaluations,
    ("model_name", "model_version"),
    ~model_evaluations.c.metric.like("monitor.%"),
    key="model_evaluations.training",
    small=True,
)
# The rows of an as-of date, whichever (person, as-of) pairs each write replaced.
FEATURES = Scoped(user_features, ("as_of_date",), deep=True)
WATERMARKS = Scoped(ingest_watermarks, ("partner",), small=True)
SPECS = (
    PROFILES_CURRENT,
    PROFILES_HISTORY,
    DRIFT,
    MONITOR_EVALUATIONS,
    SERVICE_METRICS,
    VALIDATIONS,
    TRAINING_EVALUATIONS,
    FEATURES,
    WATERMARKS,
)
PROFILES_SWAPPED, MONITORING_RECORDED = "profiles.swapped", "monitoring.recorded"
VALIDATION_RECORDED = "validation.recorded"  # a warehouse table's (a batch's: its load event)
EVALUATIONS_RECORDED, FEATURES_RECORDED = "evaluations.recorded", "features.recorded"
WATERMARK_ADVANCED = "ingest.watermark.advanced"
WRITERS = (
    PROFILES_SWAPPED,
    MONITORING_RECORDED,
    VALIDATION_RECORDED,
    EVALUATIONS_RECORDED,
    FEATURES_RECORDED,
    WATERMARK_ADVANCED,
    "ingest.accepted",
    "ingest.quarantined",
    "quarantine.revalidated",
    "quarantine.released",
)


def writer_subkey(audit: AuditWriter) -> bytes:
    """The rows' digest key of ``audit`` (its key, or the settings'): writers and verify alike."""
    return derive_subkey(_LABEL, audit.key)


@dataclass
class RawCheck:
    """What :func:`raw_check` found in the raw tables: problems, the batches and rows whose
    keyed digests were compared (``--deep``), and notes on batches loaded before digests."""

    problems: list[str] = field(default_factory=list)
    batches: int = 0
    rows: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class TableCheck:
    """What :func:`table_problems` found: problems (one line each), rows counted, and notes
    on scopes written before their writers recorded digests (compared with nothing)."""

    problems: list[str] = field(default_factory=list)
    rows: int = 0
    notes: list[str] = field(default_factory=list)
    raw: RawCheck = field(default_factory=RawCheck)  # the raw tables'


def expected_digests(events: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict]]:
    """table -> scope -> what the last event writing it recorded (``rows``, ``mac``, and
    the ``columns`` it digested, as a tuple, and a raw table's ``kinds``, a tuple or None)."""
    expected: dict[str, dict[str, dict]] = {}
    for event in events:
        for table, recorded_here in (event["details"].get(ROWS_DIGESTS) or {}).items():
            columns = tuple(recorded_here["columns"])
            kinds = tuple(recorded_here["kinds"]) if "kinds" in recorded_here else None
            expected.setdefault(table, {}).update(
                (scope, {**figures, "columns": columns, "kinds": kinds})
                for scope, figures in recorded_here["scopes"].items()
            )
    return expected


def first_recorded(events: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """table -> the lender's local date (ISO) of the first event recording its digests."""
    from puhui.dates import LENDER_TIMEZONE

    first: dict[str, str] = {}
    for event in events:
        for table in event["details"].get(ROWS_DIGESTS) or {}:
            if table not in first:
                moment = datetime.fromisoformat(event["occurred_at"])
                first[table] = moment.astimezone(LENDER_TIMEZONE).date().isoformat()
    return first


def _date_of(spec: Scoped, scope: str) -> str | None:
    # The scope's as-of date (ISO text, last of the scope's values where it is one).
    if "as_of_date" not in spec.scope:
        return None
    return scope.split("/")[spec.scope.index("as_of_date") - len(spec.scope)]


def deep_macs(
    conn: Connection,
    spec: Scoped,
    expected: Mapping[str, dict],
    subkey: bytes,
    since: date | None = None,
) -> dict[str, RowsMac]:
    """The keyed digests ``--deep`` compares for ``spec``: of each recorded scope over the
    columns its event recorded (one stream per set of columns: one, unless a migration
    changed them between writes). Left out (counted only): scopes dated before ``since``,
    and those recorded with a column a migration has dropped since."""
    present = {c.name for c in spec.table.columns}
    by_columns: dict[tuple[str, ...], list[str]] = {}
    for scope, figures in expected.items():
        day = _date_of(spec, scope)
        if (since is None or day is None or day >= since.isoformat()) and set(
            figures["columns"]
        ) <= present:
            by_columns.setdefault(figures["columns"], []).append(scope)
    where = (
        spec.table.c.as_of_date >= since
        if since is not None and "as_of_date" in spec.scope
        else None
    )
    macs: dict[str, RowsMac] = {}
    for columns, scopes in by_columns.items():
        found = rows_macs(conn, spec, subkey, where, columns)
        macs.update((scope, found.get(scope, RowsMac())) for scope in scopes)
    return macs


def compare(
    spec: Scoped,
    expected: Mapping[str, dict],
    counts: Mapping[str, int],
    macs: Mapping[str, RowsMac] | None,
    check: TableCheck,
    first: str | None = None,
) -> None:
    """Add ``spec``'s problems and note to ``check`` (``macs`` None: counts only; a scope
    not in ``macs``: its count only). ``first``: the local date of the first event that
    recorded the table. A run's as-of date is never after its day (the CLI refuses future
    dates), so a scope no event records dated after ``first`` was not written by the code
    before the digests: added by hand."""
    what = f"{spec.name} " + ("/".join(spec.scope) + " " if spec.scope else "")
    check.rows += sum(counts.values())
    unrecorded = 0
    for name in sorted(set(counts) | {s for s, e in expected.items() if e["rows"]}):
        found, recorded_here = counts.get(name, 0), expected.get(name)
        label = f"{what}{name}".rstrip() if spec.scope else spec.name
        day = _date_of(spec, name)
        if recorded_here is None and first is not None and day is not None and day > first:
            check.problems.append(
                f"{label}: {found:,} row(s) no writer recorded, dated after its writers "
                f"began recording them ({first}): rows added by hand"
            )
        elif recorded_here is None:
            unrecorded += 1
        elif found != recorded_here["rows"]:
            how = "deleted" if found < recorded_here["rows"] else "added"
            check.problems.append(
                f"{label}: {found:,} row(s) but its writer recorded "
                f"{recorded_here['rows']:,} (rows {how} by hand)"
            )
        elif macs is not None and name in macs and macs[name].hex() != recorded_here["mac"]:
            check.problems.append(
                f"{label}: {found:,} row(s), not those its writer recorded "
                "(the keyed digest differs: rows edited or replaced by hand)"
            )
    if unrecorded:
        which = f"{unrecorded} {'/'.join(spec.scope)}(s) " if spec.scope else ""
        check.notes.append(
            f"{spec.name}: {which}written before row digests were recorded (not compared)"
        )


def table_problems(
    engine: Engine,
    specs: Iterable[Scoped],
    actions: Collection[str],
    subkey: bytes | None,
    since: date | None = None,
    small_subkey: bytes | None = None,
) -> TableCheck:
    """Compare each of ``specs`` with what the events ``actions`` recorded, in one snapshot;
    with ``subkey`` (``--deep``) also each scope's keyed digest (dated scopes: from
    ``since`` on) and the :attr:`Scoped.deep` specs (left out without it), and with
    ``small_subkey`` (plain verify) the small specs' digests. The
    raw tables the loads recorded digests for go to ``.raw`` (:func:`raw_check`: their
    columns; with ``subkey`` each batch's digest, batches delivered from ``since`` on).
    Read only: on SQLite a deferred read transaction, which writers do not wait for
    (:func:`snapshot`)."""
    from puhui.audit import events_of
    from puhui.warehouse.engine import snapshot

    check = TableCheck()
    with snapshot(engine) as conn:
        events = events_of(conn, actions)
        expected, first = expected_digests(events), first_recorded(events)
        for spec in specs:
            if spec.deep and subkey is None:
                continue
            recorded_here = expected.get(spec.name, {})
            counts = rows_counts(conn, spec)
            key = subkey or (small_subkey if spec.small else None)
            macs = None if key is None else deep_macs(conn, spec, recorded_here, key, since)
            compare(spec, recorded_here, counts, macs, check, first.get(spec.name))
        for spec in raw_specs(conn, expected):
            raw_check(conn, spec, expected[spec.name], subkey, check.raw, since)
    return check


def raw_check(
    conn: Connection,
    spec: Scoped,
    expected: Mapping[str, dict],
    subkey: bytes | None,
    check: RawCheck,
    since: date | None = None,
) -> None:
    """Add raw table ``spec``'s problems and note to ``check``: each column a load digested
    that the table no longer has (nothing drops or renames a raw column: a hand edit, which
    loses its values), and with ``subkey`` (``--deep``) each batch's keyed digest (with
    ``since``: of the batches delivered from that date on, by the date in their id). Counts
    are the ledger check's (``raw_row_problems``): a batch whose rows number other than its
    load recorded is left to it, so one deleted row is one problem."""
    present = {c.name for c in spec.table.columns}
    digested: dict[str, int] = {}
    for figures in expected.values():
        for name in figures["columns"]:
            digested[name] = digested.get(name, 0) + bool(figures["rows"])
    for name, loads in sorted(digested.items()):
        if name not in present and loads:
            check.problems.append(
                f"{spec.name}: column {name}, digested by {loads:,} batch(es), is gone "
                "(dropped or renamed by hand: its values are lost)"
            )
    if subkey is None:
        return
    # One stream per set of columns and kinds the loads recorded (one, unless a contract
    # changed them), each reading every row: the batches present come with them.
    # A batch id is <feed>-<YYYYMMDD delivery date>-<hash> (``make_batch_id``): from
    # ``since`` on is from that id on, which the stream's WHERE narrows to (still a scan:
    # no index on batch_id, but only those rows are turned into values and digested).
    first = None if since is None else f"{spec.name[len(RAW_PREFIX) :]}-{since:%Y%m%d}"
    groups: dict[tuple[tuple[str, ...], tuple[str, ...] | None], list[str]] = {}
    for scope, figures in expected.items():
        if set(figures["columns"]) <= present and (first is None or scope >= first):
            groups.setdefault((figures["columns"], figures["kinds"]), []).append(scope)
    where = None if first is None else spec.table.c.batch_id >= first
    seen: set[str] = set() if groups else set(rows_counts(conn, spec))
    seen = {name for name in seen if first is None or name >= first}
    macs: dict[str, RowsMac] = {}
    for (columns, kinds), scopes in groups.items():
        found = rows_macs(conn, spec, subkey, where, columns, kinds=kinds)
        seen |= set(found)
        macs.update((scope, found.get(scope, RowsMac())) for scope in scopes)  # as a 0-row load
    unrecorded = 0
    for name in sorted(seen | set(macs)):
        recorded_here = expected.get(name)
        if recorded_here is None:
            unrecorded += 1
            continue
        mac = macs.get(name)
        if mac is None or mac.count != recorded_here["rows"]:
            continue  # a column gone (above), or rows deleted or added (the ledger check)
        check.batches += 1
        check.rows += mac.count
        if mac.hex() != recorded_here["mac"]:
            check.problems.append(
                f"{spec.name} batch_id {name}: {mac.count:,} row(s), not those its load "
                "recorded (the keyed digest differs: rows edited or replaced by hand)"
            )
    if unrecorded:
        check.notes.append(
            f"{spec.name}: {unrecorded} batch_id(s) written before row digests were recorded "
            "(not compared)"
        )


def raw_specs(conn: Connection, expected: Collection[str]) -> list[Scoped]:
    """The ``raw_<partner>`` tables of ``expected`` (those a load recorded row digests for)
    that exist, reflected (verify digests the table as it is), scoped by batch. One a
    load recorded that is gone is the ledger check's problem (``raw_row_problems``)."""
    present = set(inspect(conn).get_table_names())
    return [
        Scoped(Table(name, MetaData(), autoload_with=conn), ("batch_id",))
        for name in sorted(expected)
        if name.startswith(RAW_PREFIX) and name in present
    ]
