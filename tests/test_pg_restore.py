"""The test suite's PostgreSQL dump/restore (``restore_database`` in conftest): a database
of the template's name that this process did not build or restore (a restore or ingest
that failed part-way) is never taken for a whole one."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from puhui.throwaway_postgres import PostgresServer
from tests.conftest import _pg_tool, restore_database


def _rows(pg: PostgresServer, database: str) -> list[tuple]:
    with psycopg.connect(pg.libpq_url(database)) as conn:
        return conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " ORDER BY 1"
        ).fetchall()


def test_a_half_built_template_is_restored_again_and_a_failed_restore_leaves_none(
    pg_server: PostgresServer, tmp_path: Path
) -> None:
    pg, dump = pg_server, tmp_path / "dump"
    dump.mkdir()
    source = f"src_{tmp_path.name[-8:].lower()}"
    pg.create_database(source)
    with psycopg.connect(pg.libpq_url(source), autocommit=True) as conn:
        conn.execute("CREATE TABLE whole (id int)")
    _pg_tool(pg, "pg_dumpall", "--roles-only", "-f", str(dump / "roles.sql"))
    _pg_tool(pg, "pg_dump", "-Fc", "-f", str(dump / "database.dump"), pg.libpq_url(source))

    # What an ingest killed part-way leaves: the name, without the rows.
    name = f"tpl_half_{tmp_path.name[-8:].lower()}"
    pg.create_database(name)
    with psycopg.connect(pg.libpq_url(name), autocommit=True) as conn:
        conn.execute("CREATE TABLE half (id int)")
    restore_database(pg, name, dump)
    assert _rows(pg, name) == [("whole",)]
    restore_database(pg, name, dump)  # restored by this process: kept
    assert _rows(pg, name) == [("whole",)]

    # A restore that fails part-way (a truncated dump) fails the test and leaves no `other`.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "roles.sql").write_text((dump / "roles.sql").read_text())
    (broken / "database.dump").write_bytes((dump / "database.dump").read_bytes()[:200])
    other = f"tpl_broken_{tmp_path.name[-8:].lower()}"
    with pytest.raises(AssertionError, match="pg_restore"):
        restore_database(pg, other, broken)
    with psycopg.connect(pg.libpq_url(), autocommit=True) as conn:
        assert (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (other,)).fetchone()
            is None
        )


def test_the_roles_restore_fails_on_any_error_but_an_existing_role(
    pg_server: PostgresServer, tmp_path: Path
) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "roles.sql").write_text(f'CREATE ROLE "{pg_server.user}";\nCREATE ROLL puhui_typo;\n')
    (dump / "database.dump").write_bytes(b"")
    with pytest.raises(AssertionError, match="psql roles"):
        restore_database(pg_server, f"tpl_roles_{tmp_path.name[-8:].lower()}", dump)
