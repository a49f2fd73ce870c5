"""ingest_keys: the primary keys each feed has loaded, across its batches

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 13:40:00

Ingestion kept the first row of a primary key within one file only, so a key repeated by a
later file of the same feed (an overlapping or corrected redelivery under a new name) was
loaded again. ``ingest_keys`` holds one row per 126-bit key hash with the batch that loaded it (the
feed keys the hash, so the primary key is the hash alone), written in the
load's own transaction; ``ingest_key_backfills`` records which feeds' existing raw rows have
been indexed, and under which key definition (a changed primary key is indexed again).
The backfill itself needs each feed's contract (its primary key columns), which lives in
configs/, not here: it runs on a feed's first load after this migration, and again after
a key definition change (puhui.ingest.key_index.ensure_key_index).

Idempotent, as 0004: a table already there is left alone.
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if 'ingest_keys' not in have:
        op.create_table(
            'ingest_keys',
            sa.Column('key_hi', sa.BigInteger(), autoincrement=False, nullable=False),
            sa.Column('key_lo', sa.BigInteger(), autoincrement=False, nullable=False),
            sa.Column('batch_id', sa.String(length=40), nullable=False,
                      server_default=sa.text("current_setting('puhui.batch_id')"),
                      comment='the batch that loaded the key'),
            sa.Column('value_hash', sa.BigInteger(), nullable=False,
                      comment="64-bit hash of the loaded row's values: tells a repeat from "
                              "a correction"),
            sa.PrimaryKeyConstraint('key_hi', 'key_lo', name='pk_ingest_keys'),
        )
    if 'ingest_key_backfills' not in have:
        op.create_table(
            'ingest_key_backfills',
            sa.Column('partner', sa.String(length=64), nullable=False),
            sa.Column('key_definition', sa.String(length=64), nullable=False,
                      comment="fingerprint of the primary key's columns, types and treatment"),
            sa.Column('rows_indexed', sa.BigInteger(), nullable=False),
            sa.Column('rows_repeated', sa.BigInteger(), nullable=False,
                      comment='raw rows repeating a key of an earlier batch, loaded before '
                              'the index'),
            sa.Column('built_at', sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint('partner', name='pk_ingest_key_backfills'),
        )


def downgrade() -> None:
    # Run again after a downgrade that stopped before alembic stamped it, as 0005-0007's
    have = set(sa.inspect(op.get_bind()).get_table_names())
    for table in ('ingest_key_backfills', 'ingest_keys'):
        if table in have:
            op.drop_table(table)
