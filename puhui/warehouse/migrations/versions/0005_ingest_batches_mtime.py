"""ingest_batches.mtime_ns: a landed file's modification time

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 08:10:00

Discovery compared a landed file with the ledger by path and size only, so a file rewritten
in place at the same size was never read again. The row now keeps the local file's
modification time (nanoseconds) as it was read. Nullable: rows from before (and remote
files, whose times are not compared) stay NULL and keep the size-only comparison.

Idempotent, as 0004: a column already there is left alone; a downgrade finding it gone
leaves it so.
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = {c['name'] for c in sa.inspect(op.get_bind()).get_columns('ingest_batches')}
    if 'mtime_ns' in have:
        return
    with op.batch_alter_table('ingest_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            'mtime_ns', sa.BigInteger(), nullable=True,
            comment="the local file's modification time (ns) when it was read"))


def downgrade() -> None:
    have = {c['name'] for c in sa.inspect(op.get_bind()).get_columns('ingest_batches')}
    if 'mtime_ns' not in have:
        return  # removed by a downgrade that stopped before it was stamped
    with op.batch_alter_table('ingest_batches', schema=None) as batch_op:
        batch_op.drop_column('mtime_ns')
