"""ingest_batches.path_settled: the level of identifier shapes source_path was settled at

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 12:40:00

0006's boolean ``path_pseudonymized`` said a row's path was in its stored form, but not
in which: rows settled before round 14 kept a first-generation national ID (15 digits) or
a phone with a bracketed first group raw, shapes the finder learnt since, and nothing could
tell them from rows written after. This integer says which finder settled the path
(``ledger.PATH_SETTLED``: 1 = 18-digit IDs and phones, 2 = round 14's shapes too); ingest
reads rows below the current level again (``ledger.settle_ledger_paths``). Rows marked TRUE
take 1, NULL stays NULL. The boolean and its partial index go; an index on (partner,
path_settled) serves the look for rows below a level (a partial index's predicate would be
fixed to one level).

Idempotent, as 0004: each step skips what is already done; so does the downgrade (which
gives TRUE back to rows at level 1 or above).
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


OLD_INDEX = "ix_ingest_batches_unsettled_paths"
INDEX = "ix_ingest_batches_path_settled"
UNSETTLED = sa.text("path_pseudonymized IS NULL")


def _columns() -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns("ingest_batches")}


def _indexes() -> set[str]:
    return {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("ingest_batches")}


def upgrade() -> None:
    if "path_settled" not in _columns():
        with op.batch_alter_table("ingest_batches", schema=None) as batch_op:
            batch_op.add_column(
                sa.Column(
                    "path_settled",
                    sa.SmallInteger(),
                    nullable=True,
                    comment="identifier shapes source_path is settled at; NULL: not yet",
                )
            )
    if "path_pseudonymized" in _columns():
        rows = sa.table(
            "ingest_batches",
            sa.column("path_settled", sa.SmallInteger()),
            sa.column("path_pseudonymized", sa.Boolean()),
        )
        op.execute(
            rows.update()
            .where(rows.c.path_pseudonymized.is_(True), rows.c.path_settled.is_(None))
            .values(path_settled=1)
        )
        if OLD_INDEX in _indexes():
            op.drop_index(OLD_INDEX, table_name="ingest_batches")
        with op.batch_alter_table("ingest_batches", schema=None) as batch_op:
            batch_op.drop_column("path_pseudonymized")
    if INDEX not in _indexes():
        op.create_index(INDEX, "ingest_batches", ["partner", "path_settled"])


def downgrade() -> None:
    # Run again after a downgrade that stopped before alembic stamped it, as 0006's.
    if "path_pseudonymized" not in _columns():
        with op.batch_alter_table("ingest_batches", schema=None) as batch_op:
            batch_op.add_column(
                sa.Column(
                    "path_pseudonymized",
                    sa.Boolean(),
                    nullable=True,
                    comment="source_path is in its stored form; NULL: not yet checked",
                )
            )
    if "path_settled" in _columns():
        rows = sa.table(
            "ingest_batches",
            sa.column("path_settled", sa.SmallInteger()),
            sa.column("path_pseudonymized", sa.Boolean()),
        )
        op.execute(rows.update().where(rows.c.path_settled >= 1).values(path_pseudonymized=True))
        if INDEX in _indexes():
            op.drop_index(INDEX, table_name="ingest_batches")
        with op.batch_alter_table("ingest_batches", schema=None) as batch_op:
            batch_op.drop_column("path_settled")
    if OLD_INDEX not in _indexes():
        op.create_index(
            OLD_INDEX,
            "ingest_batches",
            ["partner"],
            sqlite_where=UNSETTLED,
            postgresql_where=UNSETTLED,
        )
