"""Writing and reading ``user_features``: one row per (person, as-of date), features as JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import Engine, bindparam, delete, select

from puhui.warehouse.bulk import bulk_insert
from puhui.warehouse.schema import user_features


def write_user_features(engine: Engine, features: pd.DataFrame, feature_set: str) -> int:
    """Replace the rows of ``features``' (person, as-of) pairs; returns rows written.

    Re-running is safe: the pairs are deleted and written again in one transaction, so a
    reader sees either the old or the new values, never both or neither.
    """
    names = [c for c in features.columns if c not in ("person_key", "as_of_date")]
    # pandas' JSON writer: C speed, NaN/None as null, 15 significant digits round-trip floats.
    documents = features[names].to_json(
        orient="records", lines=True, force_ascii=False, double_precision=15
    ).splitlines()
    as_of = pd.to_datetime(features["as_of_date"]).dt.date.to_numpy()
    frame = pd.DataFrame({
        "person_key": features["person_key"].to_numpy(),
        "as_of_date": as_of,
        "feature_set": feature_set,
        "features": documents,
        "computed_at": datetime.now(UTC),
    })
    pairs = [{"p": p, "d": d} for p, d in zip(frame["person_key"], as_of, strict=True)]
    with engine.begin() as conn:
        if pairs:
            conn.execute(
                delete(user_features).where(
                    (user_features.c.person_key == bindparam("p"))
                    & (user_features.c.as_of_date == bindparam("d"))
                ),
                pairs,
            )
        return bulk_insert(conn, user_features, frame)


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
