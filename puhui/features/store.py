"""Writing and reading ``user_features``: one row per (person, as-of date), features as JSON."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

import pandas as pd
from sqlalchemy import Connection, Engine, bindparam, delete, select, text

from puhui.warehouse.bulk import bulk_insert
from puhui.warehouse.engine import lock_for
from puhui.warehouse.schema import user_features

if TYPE_CHECKING:
    from puhui.audit import AuditWriter

# Rows per chunk written: the JSON documents of a chunk exist three times over (pandas'
# string, the lines, Arrow), ~1.5 KB a row; the training flow at 1M customers writes ~2M.
WRITE_CHUNK_ROWS = 50_000


def write_user_features(engine: Engine, features: pd.DataFrame, feature_set: str,
                        audit: AuditWriter | None = None) -> int:
    """Replace the rows of ``features``' (person, as-of) pairs; returns rows written.

    Re-running is safe: the pairs are deleted and written again in one transaction, so a
    reader sees either the old or the new values, never both or neither. The transaction
    writes :data:`WRITE_CHUNK_ROWS` at a time, so memory does not grow with the rows.
    With ``audit`` (the trainings'; tests of other parts omit it), a ``features.recorded``
    event of the same transaction records each as-of date's rows (all of them, written now
    or before) by count and keyed digest, read back: ``audit verify`` compares them.
    """
    names = [c for c in features.columns if c not in ("person_key", "as_of_date")]
    computed_at = datetime.now(UTC)
    written, days = 0, set()
    with engine.begin() as conn:
        # Two writers of one date on PostgreSQL: each digest must see the other's rows.
        lock_for(conn, "puhui.user_features")
        for start in range(0, len(features), WRITE_CHUNK_ROWS):
            chunk = features.iloc[start:start + WRITE_CHUNK_ROWS]
            # pandas' JSON writer: C speed, NaN/None as null, 15 significant digits
            # round-trip floats.
            documents = chunk[names].to_json(
                orient="records", lines=True, force_ascii=False, double_precision=15
            ).splitlines()
            as_of = pd.to_datetime(chunk["as_of_date"]).dt.date.to_numpy()
            frame = pd.DataFrame({
                "person_key": chunk["person_key"].to_numpy(),
                "as_of_date": as_of,
                "feature_set": feature_set,
                "features": documents,
                "computed_at": computed_at,
            })
            _delete_pairs(conn, frame["person_key"].tolist(), as_of.tolist())
            written += bulk_insert(conn, user_features, frame)
            days.update(as_of.tolist())
        if audit is not None and days:
            _record_dates(conn, audit, feature_set, sorted(days), written)
    return written


def _record_dates(conn: Connection, audit: AuditWriter, feature_set: str, days: list[date],
                  written: int) -> None:
    """Append the event recording the rows of ``days`` (read back in ``conn``: a scan of
    the table, whose key leads with the person, digesting those dates' rows)."""
    from puhui.table_digests import (
        FEATURES,
        FEATURES_RECORDED,
        ROWS_DIGESTS,
        recorded,
        scope_of,
        writer_subkey,
    )

    digest = recorded(conn, FEATURES, writer_subkey(audit),
                      user_features.c.as_of_date.in_(days), [scope_of([d]) for d in days])
    audit.append(conn, FEATURES_RECORDED, feature_set,
                 {"rows_written": written, "dates": len(days),
                  ROWS_DIGESTS: {FEATURES.name: digest}})


def _delete_pairs(conn: Connection, keys: list[str], days: list[object]) -> None:
    """Delete the stored rows of these (person, as-of) pairs."""
    if conn.dialect.name == "postgresql":
        # One statement joining two arrays: a DELETE per pair (executemany) cost ~0.3 ms of
        # server CPU each, minutes for the ~350k rows of a 200k-customer training set.
        conn.execute(text(
            f'DELETE FROM "{user_features.name}" AS u USING '
            "unnest(CAST(:keys AS text[]), CAST(:days AS date[])) AS t(person_key, as_of_date) "
            "WHERE u.person_key = t.person_key AND u.as_of_date = t.as_of_date"),
            {"keys": keys, "days": days})
        return
    conn.execute(  # SQLite: in-process, a DELETE per pair through the primary key is cheap
        delete(user_features).where((user_features.c.person_key == bindparam("p"))
                                    & (user_features.c.as_of_date == bindparam("d"))),
        [{"p": p, "d": d} for p, d in zip(keys, days, strict=True)])


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
