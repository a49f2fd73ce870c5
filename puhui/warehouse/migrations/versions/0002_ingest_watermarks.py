"""ingest watermarks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 23:48:36.031659
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ingest_watermarks',
    sa.Column('partner', sa.String(length=64), nullable=False),
    sa.Column('delivery_date', sa.Date(), nullable=False, comment='latest delivery date ingested'),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('partner', name=op.f('pk_ingest_watermarks'))
    )


def downgrade() -> None:
    op.drop_table('ingest_watermarks')
