"""training_generations: the fencing token of each model's training lock

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 06:40:00

A training that lost its lock during the registration or the gate step (its PostgreSQL
session ended, its SQLite lock file replaced) went on writing beside the next holder. Each
taking of the training lock now takes a new, strictly increasing generation for the model
(one row per model); the training's register and gate writes check in their own
transaction that it is still the newest (puhui.lifecycle.fencing).

Idempotent, as 0004: a table already there is left alone.
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if 'training_generations' not in set(sa.inspect(op.get_bind()).get_table_names()):
        op.create_table(
            'training_generations',
            sa.Column('model_name', sa.String(length=64), nullable=False),
            sa.Column('generation', sa.BigInteger(), nullable=False),
            sa.Column('taken_at', sa.DateTime(timezone=True), nullable=False),
            sa.Column('flow_run_id', sa.String(length=64), nullable=True),
            sa.PrimaryKeyConstraint('model_name', name='pk_training_generations'),
        )


def downgrade() -> None:
    # Run again after a downgrade that stopped before alembic stamped it, as 0008's.
    if 'training_generations' in set(sa.inspect(op.get_bind()).get_table_names()):
        op.drop_table('training_generations')
