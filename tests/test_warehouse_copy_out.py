"""A query's rows as Arrow columns (``puhui.warehouse.copy_out``), on both dialects: NULL
stays NULL and an empty string stays empty, quoting survives, and no rows is an empty table
of the asked types. Real PostgreSQL (COPY CSV) and SQLite."""

from __future__ import annotations

import pyarrow as pa
from sqlalchemy import create_engine, text

from puhui.warehouse.copy_out import query_arrow

TYPES = {"n": pa.int64(), "label": pa.string(), "amount": pa.float64()}
ROWS = [
    (1, "plain", 1.5),
    (2, None, None),  # NULLs
    (3, "", 0.0),  # an empty string, not a NULL
    (4, 'a "quoted", comma\nand a new line', -2.25),
    (5, "NULL", 3.0),  # the word, not a NULL
]


def test_query_arrow_keeps_nulls_empty_strings_and_quoting(warehouse_url: str) -> None:
    engine = create_engine(warehouse_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE copy_out_t (n bigint, label text, amount float)"))
            conn.execute(text("INSERT INTO copy_out_t VALUES (:n, :label, :amount)"),
                         [{"n": n, "label": label, "amount": amount}
                          for n, label, amount in ROWS])
            found = query_arrow(conn, "SELECT n, label, amount FROM copy_out_t ORDER BY n",
                                TYPES)
            none = query_arrow(conn, "SELECT n, label, amount FROM copy_out_t WHERE n < 0",
                               TYPES)
    finally:
        engine.dispose()
    assert found.schema == pa.schema(TYPES)
    assert [tuple(r.values()) for r in found.to_pylist()] == ROWS
    assert found["label"].null_count == 1
    assert none.num_rows == 0 and none.schema == pa.schema(TYPES)
