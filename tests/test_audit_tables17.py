"""``audit verify`` over the warehouse tables no event digested before round 17:
``user_features``, ``ingest_watermarks`` and the trainings' rows of ``model_evaluations``
(the recommender's and the risk model's evaluations; monitoring's ``monitor.*`` rows were
digested already). Before, a hand edit of any of them passed verify.

Real warehouses on both dialects; the real writers (``write_user_features``,
``advance_watermark``, ``write_evaluations``, monitoring's ``write_findings`` beside them),
re-run and idempotent re-runs included. Each column of each table is edited alone, by hand,
and restored: exactly one problem each time, and verify clean again after the restore.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from puhui.runtime import Runtime, open_runtime

DAY0, DAY1, DAY2 = date(2026, 9, 29), date(2026, 9, 30), date(2026, 10, 1)
MODEL = "product_recommender"
RULE = "(the keyed digest differs: rows edited or replaced by hand)"


def _verify(capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, str, str]:
    from puhui.cli import main

    capsys.readouterr()
    code = main(["audit", "verify", "--no-repair", *options])
    out, err = capsys.readouterr()
    return code, out, err


def _problems(err: str) -> int:
    found = re.search(r"DISAGREE: (\d+) problem", err)
    return int(found.group(1)) if found else 0


def _features(people: range, day: date, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "person_key": [f"pk{i:06d}" for i in people],
            "as_of_date": [day] * len(people),
            "income": [1000.5 + i + shift for i in people],
            "loans": [float(i % 3) if i % 5 else np.nan for i in people],
            "region": ["东部" if i % 2 else 'q"uote' for i in people],
        }
    )


def _write_all(runtime: Runtime) -> None:
    """Every writer, each re-run: features of two dates (the first re-written for fewer
    people, then the same again), two feeds' watermarks (one advanced twice, one call not
    moving it), a version's evaluations written twice, monitoring's rows of that version."""
    from puhui.features.store import write_user_features
    from puhui.ingest.ledger import advance_watermark
    from puhui.lifecycle.publish import write_evaluations
    from puhui.monitoring.findings import Finding
    from puhui.monitoring.store import write_findings

    engine, audit = runtime.engine, runtime.audit
    write_user_features(engine, _features(range(1, 41), DAY1), "fs1", audit)
    write_user_features(engine, _features(range(1, 31), DAY2), "fs1", audit)
    write_user_features(engine, _features(range(5, 21), DAY1, 0.25), "fs1", audit)
    write_user_features(engine, _features(range(5, 21), DAY1, 0.25), "fs1", audit)
    advance_watermark(engine, "mobile_payments", DAY1, "run-1", audit)
    advance_watermark(engine, "mobile_payments", DAY2, "run-2", audit)
    advance_watermark(engine, "mobile_payments", DAY1, "run-3", audit)  # never back
    advance_watermark(engine, "telco", DAY2, None, audit)
    rows = [
        {"metric": "ndcg_at_5", "segment": "all", "value": 0.61},
        {"metric": "ndcg_at_5", "segment": "rural", "value": 0.58},
        {"metric": "coverage", "segment": "all", "value": 0.9},
    ]
    write_evaluations(engine, MODEL, "2", DAY1, rows[:1], "run-a", audit)
    write_evaluations(engine, MODEL, "2", DAY1, rows, "run-b", audit)  # a resumed training
    write_evaluations(engine, MODEL, "3", DAY2, rows, "run-c", audit)
    write_findings(
        engine, DAY2, [Finding(DAY2, MODEL, "2", "ndcg", "all", 0.6, 0.5, "ok")], "run-m", audit
    )


# (table, primary key's WHERE, column, new value); a JSON column is read and written as
# its text. The key columns that scope a table move the row (below).
EDITS: list[tuple[str, str, str, Any]] = [
    (
        "user_features",
        "person_key = 'pk000007' AND as_of_date = '2026-09-30'",
        "features",
        '{"income":1.0,"loans":null,"region":"x"}',
    ),
    (
        "user_features",
        "person_key = 'pk000007' AND as_of_date = '2026-09-30'",
        "feature_set",
        "fs2",
    ),
    (
        "user_features",
        "person_key = 'pk000007' AND as_of_date = '2026-09-30'",
        "computed_at",
        datetime(2026, 1, 1, tzinfo=UTC),
    ),
    (
        "user_features",
        "person_key = 'pk000007' AND as_of_date = '2026-09-30'",
        "person_key",
        "pk999999",
    ),
    ("ingest_watermarks", "partner = 'mobile_payments'", "delivery_date", date(2027, 1, 1)),
    (
        "ingest_watermarks",
        "partner = 'mobile_payments'",
        "updated_at",
        datetime(2026, 1, 1, tzinfo=UTC),
    ),
    ("ingest_watermarks", "partner = 'mobile_payments'", "flow_run_id", "run-x"),
    ("ingest_watermarks", "partner = 'telco'", "flow_run_id", "run-x"),  # NULL before
    *(
        (
            (
                "model_evaluations",
                "model_version = '2' AND metric = 'ndcg_at_5' AND segment = 'rural'",
                column,
                value,
            )
        )
        for column, value in (
            ("value", 0.99),
            ("threshold", 0.5),
            ("status", "ok"),
            ("as_of_date", DAY2),
            ("metric", "ndcg_at_10"),
            ("segment", "urban"),
            ("mlflow_run_id", "run-z"),
            ("evaluated_at", datetime(2026, 1, 1, tzinfo=UTC)),
            ("evaluation_id", 99_999),
            ("model_version", "9"),
        )
    ),
]
DEEP_ONLY = {"user_features"}  # the others: few rows, plain verify digests them


def test_each_column_edited_by_hand_is_one_problem_and_reruns_are_clean(
    puhui_env: Path,
    warehouse_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime = open_runtime()
    _write_all(runtime)
    for options in ((), ("--deep",)):
        code, out, err = _verify(capsys, *options)
        assert code == 0, err
        assert "written before row digests" not in out, out
    for table, where, column, value in EDITS:
        read = f"CAST({column} AS TEXT)" if column == "features" else column
        with runtime.engine.begin() as conn:
            before = conn.execute(text(f"SELECT {read} FROM {table} WHERE {where}")).scalar_one()
            conn.execute(text(f"UPDATE {table} SET {column} = :v WHERE {where}"), {"v": value})
        what = f"{table}.{column}"
        code, out, err = _verify(capsys)
        if table in DEEP_ONLY:
            assert code == 0, (what, err)  # counts agree: --deep compares the digest
        else:
            assert code == 1, (what, out)
        if table == "model_evaluations" and column == "model_version":
            # Moved to a version no event records: its own scope emptied (one problem) and
            # a scope written by no writer (a note, as rows of the code before are).
            assert (
                "model_evaluations.training model_name/model_version "
                f"{MODEL}/2: 2 row(s) but its writer recorded 3 (rows deleted by hand)" in err
            )
        code, out, err = _verify(capsys, "--deep")
        assert code == 1 and _problems(err) == 1, (what, err)
        with runtime.engine.begin() as conn:
            new_where = (
                where.replace("'pk000007'", f"'{value}'")
                if column == "person_key"
                else where.replace("model_version = '2'", f"model_version = '{value}'")
                if column == "model_version"
                else where
            )
            for name, changed in (("metric", value), ("segment", value)):
                if column == name:
                    new_where = where.replace(
                        f"{name} = '{'ndcg_at_5' if name == 'metric' else 'rural'}'",
                        f"{name} = '{changed}'",
                    )
            conn.execute(text(f"UPDATE {table} SET {column} = :v WHERE {new_where}"), {"v": before})
        code, out, err = _verify(capsys, "--deep")
        assert code == 0, (what, err)
    lines = [
        f"user_features as_of_date {DAY1}: 40 row(s), not those its writer recorded {RULE}",
        f"ingest_watermarks partner telco: 1 row(s), not those its writer recorded {RULE}",
        "model_evaluations.training model_name/model_version "
        f"{MODEL}/3: 3 row(s), not those its writer recorded {RULE}",
    ]
    with runtime.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE user_features SET feature_set = 'x' "
                "WHERE as_of_date = '2026-09-30' AND person_key = 'pk000001'"
            )
        )
        conn.execute(
            text(
                "UPDATE ingest_watermarks SET delivery_date = '2027-01-01' WHERE partner = 'telco'"
            )
        )
        conn.execute(
            text(
                "UPDATE model_evaluations SET value = 0.1 "
                "WHERE model_version = '3' AND metric = 'coverage'"
            )
        )
    code, out, err = _verify(capsys, "--deep")
    assert code == 1
    assert {x.strip() for x in err.splitlines() if x.startswith("  ")} == set(lines), err
    code, out, err = _verify(capsys)  # plain: the small tables' digests, features left out
    assert code == 1 and _problems(err) == 2, err
    # Rows deleted: --deep counts them (plain verify reads nothing of user_features).
    with runtime.engine.begin() as conn:
        conn.execute(
            text(
                "DELETE FROM user_features WHERE as_of_date = '2026-10-01' "
                "AND person_key = 'pk000003'"
            )
        )
    code, out, err = _verify(capsys, "--deep")
    assert (
        f"user_features as_of_date {DAY2}: 29 row(s) but its writer recorded 30 (rows "
        "deleted by hand)" in err
    ), err


def test_plain_verify_reads_nothing_of_user_features(
    puhui_env: Path,
    warehouse_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """user_features grows with every training (~2M rows of 1.25 KB at 1M customers) and no
    index counts it cheaply: plain verify sends no statement naming it (every statement
    any engine of this process runs is seen); ``--deep`` counts and digests it."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    _write_all(open_runtime())
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        code, out, err = _verify(capsys)
        assert code == 0, err
        plain = [s for s in statements if "user_features" in s]
        statements.clear()
        code, out, err = _verify(capsys, "--deep")
        assert code == 0, err
        deep = [s for s in statements if "user_features" in s]
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    assert plain == [], plain
    assert deep, "--deep reads user_features"


def test_rows_written_before_digests_are_noted_once_and_compared_after_their_next_write(
    puhui_env: Path,
    warehouse_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A warehouse whose features, watermarks and evaluations came from the code before:
    no event records them. Verify notes each table once (exit 0), plain and ``--deep``;
    the next write of a scope records it, old rows of its date included."""
    from puhui.features.store import write_user_features
    from puhui.ingest.ledger import advance_watermark
    from puhui.lifecycle.publish import write_evaluations

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime = open_runtime()
    engine = runtime.engine
    # As the code before wrote them: the same writers without the audit writer (features,
    # evaluations) and a watermark row inserted as it did.
    write_user_features(engine, _features(range(1, 11), DAY0), "fs1")
    write_user_features(engine, _features(range(1, 11), DAY1), "fs1")
    write_evaluations(
        engine, MODEL, "1", DAY0, [{"metric": "m", "segment": "all", "value": 0.5}], "run-0"
    )
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ingest_watermarks (partner, delivery_date, updated_at) "
                "VALUES ('telco', '2026-09-29', '2026-09-29 01:00:00')"
            )
        )
    for options in ((), ("--deep",)):
        code, out, err = _verify(capsys, *options)
        assert code == 0, err
        for note in (
            "user_features: 2 as_of_date(s)",
            "ingest_watermarks: 1 partner(s)",
            "model_evaluations.training: 1 model_name/model_version(s)",
        ):
            expected = 0 if note.startswith("user_features") and not options else 1
            assert (
                out.count(f"{note} written before row digests were recorded (not compared)")
                == expected
            ), out
    # The next write of a date records all its rows, the old ones too; the other stays noted.
    write_user_features(engine, _features(range(5, 8), DAY1, 1.0), "fs1", runtime.audit)
    advance_watermark(engine, "telco", DAY1, None, runtime.audit)
    code, out, err = _verify(capsys, "--deep")
    assert code == 0, err
    assert "user_features: 1 as_of_date(s) written before" in out
    assert "ingest_watermarks:" not in out
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE user_features SET computed_at = '2026-01-01 00:00:00' "
                "WHERE as_of_date = '2026-09-30' AND person_key = 'pk000001'"
            )
        )
    code, out, err = _verify(capsys, "--deep")
    assert code == 1 and _problems(err) == 1, err
    assert f"user_features as_of_date {DAY1}: 10 row(s), not those its writer recorded" in err


def test_the_swap_s_digest_from_its_rows_equals_the_read_back_on_either_dialect(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``swap_profiles`` digests the Arrow tables it inserts, no longer reading them back:
    the digest must equal what verify reads for values each dialect stores its own way
    (NaN, which SQLite stores as NULL; -0.0; an integral float; 2^53+1; NULLs in every
    column that takes one; quotes, non-ASCII and a long text in JSON and text columns)."""
    import json

    from puhui.profiles.refresh import stage_partition, swap_profiles
    from puhui.table_digests import PROFILES_HISTORY, ROWS_DIGESTS, recorded, writer_subkey
    from puhui.warehouse.schema import user_profile_history

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime = open_runtime()
    scores = [float("nan"), -0.0, 1.0, 0.1 + 0.2, 2.0**53 + 1, None]
    texts = ['q"uote', "东部\\", "x" * 300, None, "", "tab\there"]
    frame = pd.DataFrame(
        {
            "person_key": [f"pk{i}" for i in range(6)],
            "as_of_date": [DAY1] * 6,
            "customer_id": [t if t is None or len(t) < 16 else t[:16] for t in texts],
            "risk_score": scores,
            "risk_grade": ["A", None, "B", "C", "D", "E"],
            "reasons": [json.dumps([t], ensure_ascii=False) for t in texts],
            "recommended_products": [None, "[]", "{}", "null", json.dumps({"k": "东"}), "[1]"],
            "non_personalised_products": [json.dumps(["savings"])] * 6,
            "segment_tags": [None] * 6,
            "model_versions": [json.dumps({"risk": "3"})] * 6,
            "personalisation_opt_out": [True, False, None, True, False, True],
            "risk_model_version": ["3", None, "3", "3", "3", "3"],
            "recommender_model_version": [None] * 6,
        }
    )
    for part in range(2):
        stage_partition(tmp_path / "staged", part, frame.iloc[part::2])
    swap_profiles(runtime.engine, DAY1, tmp_path / "staged", 2, "flow-1", runtime.audit)
    with runtime.engine.begin() as conn:
        event = json.loads(
            conn.execute(
                text("SELECT details FROM audit_log WHERE action = 'profiles.swapped'")
            ).scalar_one()
        )
        read_back = recorded(
            conn,
            PROFILES_HISTORY,
            writer_subkey(runtime.audit),
            user_profile_history.c.as_of_date == DAY1,
            [DAY1.isoformat()],
        )
    assert event[ROWS_DIGESTS]["user_profile_history"] == read_back
    assert (
        event[ROWS_DIGESTS]["user_profiles"]["scopes"][""] == read_back["scopes"][DAY1.isoformat()]
    )


_PROBE_UTC = pd.Timestamp("2026-09-30 13:45:12.123456", tz="UTC")
# (case, column, Arrow values): digested from the values held, equal to the read-back.
HELD_EQUAL = [
    ("floats", "f", "float64", [1.0, float("nan"), -0.0, 0.1 + 0.2, None, 5e-324]),
    ("float32", "f", "float32", [1.5, None, -0.0, 3.25, 7.0, 0.5]),
    ("integers", "i", "int64", [0, -1, 2**53 + 1, None, 7, 2**62]),
    ("booleans", "b", "bool", [True, False, None, True, True, False]),
    ("naive times", "t", "timestamp[us]", [_PROBE_UTC.tz_localize(None)] * 5 + [None]),
    ("UTC times", "t", "timestamp[us, tz=UTC]", [_PROBE_UTC] * 5 + [None]),
    ("dates", "d", "date32", [DAY1, DAY2, None, DAY0, DAY1, DAY1]),
    ("text", "s", "string", ['q"uote', "东部", "", None, "\r\n", "x" * 1000]),
    ("large text", "s", "large_string", ["a", "b", None, "", "东", "tab\t"]),
    ("dictionary text", "s", "dictionary", ["a", "b", "a", None, "b", "a"]),
    ("JSON text", "j", "string", ['{"a": 1}', "[]", None, '"s"', '{"k":"东"}', "null"]),
    # pandas 3's strings: bulk_insert writes a large_string's JSON texts as JSON strings.
    ("JSON large text", "j", "large_string", ['{"a": 1}', "[]", None, '"s"', "1", "null"]),
    ("all NULL", "f", "null", [None] * 6),
]
# The review's mismatches of the code before (a silent mismatch: every such write a verify
# problem): now refused, so the writer reads the rows back.
HELD_REFUSED = [
    ("zoned non-UTC time", "t", "timestamp[us, tz=Asia/Shanghai]", [_PROBE_UTC] * 6),
    ("time into a date", "d", "timestamp[us]", [datetime(2026, 9, 30)] * 6),
    ("huge integer into a float", "f", "int64", [2**53 + 1, 2**60 + 1, 3, 4, 5, 6]),
    ("text into a float", "f", "string", ["0.50", "1", "2.50", None, "3", "4"]),
]


def _probe_tables():  # noqa: ANN202
    from sqlalchemy import (
        JSON,
        BigInteger,
        Boolean,
        Column,
        Date,
        DateTime,
        Float,
        MetaData,
        String,
        Table,
        Text,
    )

    metadata = MetaData()
    probe = Table(
        "held_probe",
        metadata,
        Column("t", DateTime(timezone=True)),
        Column("d", Date),
        Column("f", Float),
        Column("i", BigInteger),
        Column("b", Boolean),
        Column("s", String(2000)),
        Column("j", JSON),
    )
    defaulted = Table(
        "held_probe_default",
        metadata,
        Column("s", String(20)),
        Column("x", Text, server_default="made by the server"),
    )
    return metadata, probe, defaulted


def _arrow_column(kind: str, values: list[Any]):  # noqa: ANN202
    import pyarrow as pa

    if kind == "dictionary":
        return pa.array(values, pa.string()).dictionary_encode()
    if kind.startswith("timestamp"):
        zone = kind.split("tz=")[1].rstrip("]") if "tz=" in kind else None
        moments = pd.Series(values, dtype="datetime64[us, UTC]" if zone else "datetime64[us]")
        if zone:
            moments = moments.dt.tz_convert(zone)
        return pa.Array.from_pandas(moments)
    return pa.array(values, pa.type_for_alias(kind) if kind != "null" else pa.null())


@pytest.mark.parametrize(
    "case",
    [(*c, True) for c in HELD_EQUAL] + [(*c, False) for c in HELD_REFUSED],
    ids=lambda c: c[0],
)
def test_held_rows_mac_equals_the_read_back_or_refuses(
    warehouse_url: str, case: tuple[str, str, str, list[Any], bool]
) -> None:
    """``held_rows_mac`` against ``rows_macs`` over the rows ``bulk_insert`` wrote from the
    same Arrow column, on both dialects (PostgreSQL's binary COPY, and its CSV path for a
    dictionary column): equal for the tested pairs of column and Arrow type; refused
    (``UnheldValues``) for the review's mismatches, which the code before digested
    silently wrong."""
    import pyarrow as pa

    from puhui.table_digests import RowsMac, Scoped, UnheldValues, held_rows_mac, rows_macs
    from puhui.warehouse.bulk import bulk_insert
    from puhui.warehouse.engine import create_warehouse_engine

    name, column, kind, values, held = case
    engine = create_warehouse_engine(warehouse_url)
    metadata, probe, _ = _probe_tables()
    metadata.create_all(engine)
    subkey = b"k" * 32
    data = pa.table({column: _arrow_column(kind, values)})
    if not held:
        with pytest.raises(UnheldValues, match=f"held_probe.{column}: Arrow type"):
            held_rows_mac(probe, data, subkey)
        return
    mac = held_rows_mac(probe, data, subkey)
    with engine.begin() as conn:
        bulk_insert(conn, probe, data)
        found = rows_macs(conn, Scoped(probe), subkey).get("", RowsMac())
    assert (mac.count, mac.hex()) == (found.count, found.hex()), name
    engine.dispose()


def test_held_rows_mac_refuses_an_absent_column_the_server_fills(warehouse_url: str) -> None:
    """A column absent from the data with a server default is not NULL once written: the
    code before digested it as NULL (a mismatch on every write)."""
    import pyarrow as pa

    from puhui.table_digests import UnheldValues, held_rows_mac

    _, _, defaulted = _probe_tables()
    with pytest.raises(UnheldValues, match="held_probe_default.x: absent"):
        held_rows_mac(defaulted, pa.table({"s": pa.array(["a"])}), b"k" * 32)
