"""Generic parts of the warehouse's keyed digests (the index keys' in
:mod:`puhui.ingest.key_digest`, the tables' in :mod:`puhui.table_digests`): a subkey derived
from the audit key, the driver's own cursor streamed in chunks, and the hex an event records
for a digest's figures. No workflow here: callers say what to read and how to digest it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

from sqlalchemy import Connection, Executable


def derive_subkey(label: bytes, audit_key: bytes | None = None, size: int = 32) -> bytes:
    """A ``size``-byte key for ``label``'s digests, derived from ``PUHUI_AUDIT_KEY`` (none or
    empty: the settings') and never stored: each digest is made under a key of its own."""
    from puhui.audit import environment_audit_key

    key = audit_key or environment_audit_key()
    return hmac.new(key, label, hashlib.sha256).digest()[:size]


def figures_hex(tag: str, *figures: int) -> str:
    """What an audit event records for a digest: a SHA-256 of its figures (the figures
    themselves are long integers, shaped like phone numbers or IDs to the trail's scrubber)."""
    return hashlib.sha256(f"{tag}:{','.join(map(str, figures))}".encode()).hexdigest()


def stream_driver_rows(
    conn: Connection, query: Executable, chunk_rows: int, cursor_name: str
) -> Iterator[list[tuple]]:
    """``query``'s rows as the driver's plain tuples, in chunks of ``chunk_rows``, in ``conn``'s
    transaction: on PostgreSQL a named cursor the server steps, on SQLite its own cursor.

    Not SQLAlchemy's rows: processing every row (SQLite's dates and times parsed from text)
    costs more than the digests; the values are the driver's (a date is SQLite's text). The
    parameters are rendered as SQLAlchemy renders literals (its literal processors: no
    driver adapter), since the drivers' parameter styles differ; psycopg's rendering doubles
    ``%``, undone here as nothing is passed for it to read as placeholders."""
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.paramstyle in ("format", "pyformat"):
        sql = sql.replace("%%", "%")  # every % was doubled: the exact inverse
    driver = conn.connection.dbapi_connection
    assert driver is not None
    cursor = (
        driver.cursor(name=cursor_name) if conn.dialect.name == "postgresql" else driver.cursor()
    )
    try:
        cursor.execute(sql)
        while part := cursor.fetchmany(chunk_rows):
            yield part
    finally:
        cursor.close()
