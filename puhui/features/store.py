"""Writing and reading ``user_features``: one row per (person, as-of date), features as JSON."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, Engine, bindparam, delete, func, select, text

from puhui.table_digests import (
    FEATURES,
    FEATURES_RECORDED,
    ROWS_DIGESTS,
    RowsMac,
    UnheldValues,
    add_macs,
    digested_columns,
    held_rows_mac,
    recorded_macs,
    rows_macs,
    scope_of,
    writer_subkey,
)
from puhui.warehouse.bulk import bulk_insert, json_columns_as_text
from puhui.warehouse.engine import lock_for
from puhui.warehouse.schema import user_features

if TYPE_CHECKING:
    from puhui.audit import AuditWriter

# Rows per chunk written: the JSON documents of a chunk exist three times over (pandas'
# string, the lines, Arrow), ~1.5 KB a row; the training flow at 1M customers writes ~2M.
WRITE_CHUNK_ROWS = 50_000


def write_user_features(
    engine: Engine, features: pd.DataFrame, feature_set: str, audit: AuditWriter | None = None
) -> int:
    """Replace the rows of ``features``' (person, as-of) pairs; returns rows written.

    Re-running is safe: the pairs are deleted and written again in one transaction, so a
    reader sees either the old or the new values, never both or neither. The transaction
    writes :data:`WRITE_CHUNK_ROWS` at a time, so memory does not grow with the rows.
    With ``audit`` (the trainings'; tests of other parts omit it), a ``features.recorded``
    event of the same transaction records each as-of date's rows (all of them, written now
    or before) by count and keyed digest (:func:`_record_dates`): ``audit verify --deep``
    compares them.
    """
    names = [c for c in features.columns if c not in ("person_key", "as_of_date")]
    computed_at = datetime.now(UTC)
    written = 0
    # Per as-of date, the digest of the rows written (None: values it cannot vouch for).
    held: dict[date, RowsMac | None] = {}
    subkey = None if audit is None else writer_subkey(audit)
    with engine.begin() as conn:
        # Two writers of one date on PostgreSQL: each digest must see the other's rows.
        lock_for(conn, "puhui.user_features")
        for start in range(0, len(features), WRITE_CHUNK_ROWS):
            chunk = features.iloc[start : start + WRITE_CHUNK_ROWS]
            # pandas' JSON writer: C speed, NaN/None as null, 15 significant digits
            # round-trip floats.
            documents = (
                chunk[names]
                .to_json(orient="records", lines=True, force_ascii=False, double_precision=15)
                .splitlines()
            )
            as_of = pd.to_datetime(chunk["as_of_date"]).dt.date.to_numpy()
            frame = pa.Table.from_pandas(
                pd.DataFrame(
                    {
                        "person_key": chunk["person_key"].to_numpy(),
                        "as_of_date": as_of,
                        "feature_set": feature_set,
                        "features": documents,
                        "computed_at": computed_at,
                    }
                ),
                preserve_index=False,
            )
            # The values bulk_insert writes (JSON as its text), made once for it and the digest.
            frame = json_columns_as_text(user_features, frame)
            _delete_pairs(conn, frame["person_key"].to_pylist(), as_of.tolist())
            written += bulk_insert(conn, user_features, frame)
            if subkey is not None:
                _hold(held, frame, subkey)
        if audit is not None and held:
            _record_dates(conn, audit, feature_set, held, written)
    return written


def _hold(held: dict[date, RowsMac | None], frame: pa.Table, subkey: bytes) -> None:
    """Add the digest of ``frame``'s rows of each as-of date to ``held`` (its values made
    canonical as the read-back would; None where :func:`held_rows_mac` cannot vouch)."""
    days = frame["as_of_date"]
    for day in pc.unique(days).to_pylist():
        mac = held.setdefault(day, RowsMac())
        if mac is None:
            continue
        try:
            part = frame.filter(pc.equal(days, pa.scalar(day, days.type)))
            add_macs(mac, held_rows_mac(user_features, part, subkey))
        except UnheldValues:
            held[day] = None


def _record_dates(
    conn: Connection,
    audit: AuditWriter,
    feature_set: str,
    held: dict[date, RowsMac | None],
    written: int,
) -> None:
    """Append the event recording every row of the as-of dates ``held`` has (those the
    write touched). A date now holding exactly as many rows as were written to it holds
    only those (the lock keeps other writers out): its digest is the one made from them.
    A date with other rows too (a partial rewrite) is read back, only its rows: the count
    and the read go through the index on ``as_of_date`` (migration 0011), not a scan."""
    days = sorted(held)
    day = user_features.c.as_of_date
    counts = dict(conn.execute(select(day, func.count()).where(day.in_(days)).group_by(day)).all())
    macs = {
        scope_of([d]): mac
        for d, mac in held.items()
        if mac is not None and mac.count == counts.get(d, 0)
    }
    others = [d for d in days if scope_of([d]) not in macs]
    if others:
        macs.update(rows_macs(conn, FEATURES, writer_subkey(audit), day.in_(others)))
    digest = recorded_macs(digested_columns(user_features), macs, [scope_of([d]) for d in days])
    audit.append(
        conn,
        FEATURES_RECORDED,
        feature_set,
        {"rows_written": written, "dates": len(days), ROWS_DIGESTS: {FEATURES.name: digest}},
    )


def _delete_pairs(conn: Connection, keys: list[str], days: list[object]) -> None:
    """Delete the stored rows of these (person, as-of) pairs."""
    if conn.dialect.name == "postgresql":
        # One statement joining two arrays: a DELETE per pair (executemany) cost ~0.3 ms of
        # server CPU each, minutes for the ~350k rows of a 200k-customer training set.
        conn.execute(
            text(
                f'DELETE FROM "{user_features.name}" AS u USING '
                "unnest(CAST(:keys AS text[]), CAST(:days AS date[])) AS t(person_key, as_of_date) "
                "WHERE u.person_key = t.person_key AND u.as_of_date = t.as_of_date"
            ),
            {"keys": keys, "days": days},
        )
        return
    conn.execute(  # SQLite: in-process, a DELETE per pair through the primary key is cheap
        delete(user_features).where(
            (user_features.c.person_key == bindparam("p"))
            & (user_features.c.as_of_date == bindparam("d"))
        ),
        [{"p": p, "d": d} for p, d in zip(keys, days, strict=True)],
    )


def read_user_features(engine: Engine, as_of: object | None = None) -> pd.DataFrame:
    """Stored features (optionally of one as-of date) as columns."""
    query = select(user_features)
    if as_of is not None:
        query = query.where(user_features.c.as_of_date == as_of)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    if not rows:
        return pd.DataFrame(columns=["person_key", "as_of_date"])
    values = [
        r["features"] if isinstance(r["features"], dict) else json.loads(r["features"])
        for r in rows
    ]
    frame = pd.DataFrame(values)
    frame.insert(0, "as_of_date", [r["as_of_date"] for r in rows])
    frame.insert(0, "person_key", [r["person_key"] for r in rows])
    return frame
