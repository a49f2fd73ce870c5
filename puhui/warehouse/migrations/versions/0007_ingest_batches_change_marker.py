"""ingest_batches.change_marker: a remote landed file's change marker

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 11:10:00

Discovery compared a remote (fsspec) landed file with the ledger by path and size only
(0005's mtime_ns is a local file's os.stat time), so an object rewritten at the same size
was never read again. The row now keeps the marker the store's listing gave (an ETag or
md5, else a modification time) as ``key=value`` text: a tag is not a number, so mtime_ns
cannot hold it. Nullable: local files, rows from before and stores whose listing gives no
marker stay NULL and keep the comparison they had.

Idempotent, as 0004: a column already there is left alone; a downgrade finding it gone
leaves it so.
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = {c['name'] for c in sa.inspect(op.get_bind()).get_columns('ingest_batches')}
    if 'change_marker' in have:
        return
    with op.batch_alter_table('ingest_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            'change_marker', sa.Text(), nullable=True,
            comment="a remote file's change marker as its listing gave it (key=value)"))


def downgrade() -> None:
    have = {c['name'] for c in sa.inspect(op.get_bind()).get_columns('ingest_batches')}
    if 'change_marker' not in have:
        return  # removed by a downgrade that stopped before it was stamped
    with op.batch_alter_table('ingest_batches', schema=None) as batch_op:
        batch_op.drop_column('change_marker')
