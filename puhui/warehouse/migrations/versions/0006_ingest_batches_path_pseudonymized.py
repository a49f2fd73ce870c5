"""ingest_batches.path_pseudonymized: whether source_path is in its stored form

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:40:00

Ingestion gives rows written before file names were pseudonymized the stored name
(``ledger.pseudonymize_legacy_paths``). It picked them by ``mtime_ns IS NULL``, which remote
files and entries that are not regular files keep forever, so every run read them all again.
This column says a row's path is in its stored form: new rows are written with TRUE, the
pass sets it on each row it settles, and reads only rows where it is NULL, through a partial
index of those rows (empty once all are settled). Rows with a time
were written after names were pseudonymized (0005 came with that code): TRUE here. Rows
without one stay NULL for the pass, which needs the pseudonym key a migration does not have.

Idempotent, as 0004: a column already there is left alone; so is the downgrade.
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


INDEX = 'ix_ingest_batches_unsettled_paths'
UNSETTLED = sa.text('path_pseudonymized IS NULL')


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    have = {c['name'] for c in inspector.get_columns('ingest_batches')}
    if 'path_pseudonymized' not in have:
        with op.batch_alter_table('ingest_batches', schema=None) as batch_op:
            batch_op.add_column(sa.Column(
                'path_pseudonymized', sa.Boolean(), nullable=True,
                comment='source_path is in its stored form; NULL: not yet checked'))
    if INDEX not in {i['name'] for i in inspector.get_indexes('ingest_batches')}:
        # Partial: once every row is settled, ingest's look for unsettled ones is free.
        op.create_index(INDEX, 'ingest_batches', ['partner'],
                        sqlite_where=UNSETTLED, postgresql_where=UNSETTLED)
    rows = sa.table('ingest_batches', sa.column('mtime_ns', sa.BigInteger()),
                    sa.column('path_pseudonymized', sa.Boolean()))
    op.execute(rows.update()
               .where(rows.c.mtime_ns.is_not(None), rows.c.path_pseudonymized.is_(None))
               .values(path_pseudonymized=True))


def downgrade() -> None:
    # Idempotent too: SQLite's DDL is not transactional here, so a downgrade stopped between
    # its steps is run again over what it already removed.
    inspector = sa.inspect(op.get_bind())
    if INDEX in {i['name'] for i in inspector.get_indexes('ingest_batches')}:
        op.drop_index(INDEX, table_name='ingest_batches')
    if 'path_pseudonymized' in {c['name'] for c in inspector.get_columns('ingest_batches')}:
        with op.batch_alter_table('ingest_batches', schema=None) as batch_op:
            batch_op.drop_column('path_pseudonymized')
