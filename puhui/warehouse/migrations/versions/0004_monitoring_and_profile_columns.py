"""monitoring and profile columns the contract names

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 18:10:00

- ``model_evaluations``: keyed with ``as_of_date`` (NOT NULL; rows without one take the day
  they were evaluated), so every report's figures are kept; ``threshold`` and ``status``
  (ok / watch / act) beside the value.
- ``drift_reports``: ``threshold``.
- ``user_profiles`` and ``user_profile_history``: ``non_personalised_products``,
  ``personalisation_opt_out`` and ``model_versions`` (every model slot's name and version).

Idempotent: a column or key already there is left alone, so a database that an interrupted
or hand-applied run left half-way (PostgreSQL and SQLite both run this in one transaction,
but an operator may have added a column by hand) still reaches the same schema.
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

OLD_KEY = 'uq_model_evaluations_model_name_model_version_metric_segment'
NEW_KEY = 'uq_model_evaluations_key'
PROFILE_TABLES = ('user_profiles', 'user_profile_history')


def _columns(table: str) -> set[str]:
    return {c['name'] for c in sa.inspect(op.get_bind()).get_columns(table)}


def _unique_keys(table: str) -> set[str]:
    return {u['name'] for u in sa.inspect(op.get_bind()).get_unique_constraints(table)}


def _profile_columns() -> list[sa.Column]:
    return [sa.Column('non_personalised_products', sa.JSON(), nullable=True),
            sa.Column('personalisation_opt_out', sa.Boolean(), nullable=True),
            sa.Column('model_versions', sa.JSON(), nullable=True)]


def upgrade() -> None:
    bind = op.get_bind()
    have = _columns('model_evaluations')
    day = ('date(evaluated_at)' if bind.dialect.name == 'sqlite'
           else 'CAST(evaluated_at AS DATE)')
    op.execute(f"UPDATE model_evaluations SET as_of_date = {day} WHERE as_of_date IS NULL")
    keys = _unique_keys('model_evaluations')
    with op.batch_alter_table('model_evaluations', schema=None) as batch_op:
        if 'threshold' not in have:
            batch_op.add_column(sa.Column('threshold', sa.Float(), nullable=True,
                                          comment='the act level the value was judged against'))
        if 'status' not in have:
            batch_op.add_column(sa.Column('status', sa.String(length=16), nullable=True,
                                          comment='ok / watch / act; NULL: not judged'))
        batch_op.alter_column('as_of_date', existing_type=sa.Date(), nullable=False)
        if OLD_KEY in keys:
            batch_op.drop_constraint(OLD_KEY, type_='unique')
        if NEW_KEY not in keys:
            batch_op.create_unique_constraint(
                NEW_KEY, ['model_name', 'model_version', 'as_of_date', 'metric', 'segment'])
    if 'threshold' not in _columns('drift_reports'):
        with op.batch_alter_table('drift_reports', schema=None) as batch_op:
            batch_op.add_column(sa.Column(
                'threshold', sa.Float(), nullable=True,
                comment='the act level the PSI/CSI was judged against'))
    for table in PROFILE_TABLES:
        present = _columns(table)
        missing = [c for c in _profile_columns() if c.name not in present]
        if missing:
            with op.batch_alter_table(table, schema=None) as batch_op:
                for column in missing:
                    batch_op.add_column(column)


def downgrade() -> None:
    for table in PROFILE_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in ('model_versions', 'personalisation_opt_out',
                           'non_personalised_products'):
                batch_op.drop_column(column)
    with op.batch_alter_table('drift_reports', schema=None) as batch_op:
        batch_op.drop_column('threshold')
    # The old key has no as-of date: keep each (model, version, metric, segment)'s newest row.
    op.execute("""
        DELETE FROM model_evaluations WHERE evaluation_id NOT IN (
          SELECT max(evaluation_id) FROM model_evaluations
          GROUP BY model_name, model_version, metric, segment)""")
    with op.batch_alter_table('model_evaluations', schema=None) as batch_op:
        batch_op.drop_constraint(NEW_KEY, type_='unique')
        batch_op.create_unique_constraint(
            OLD_KEY, ['model_name', 'model_version', 'metric', 'segment'])
        batch_op.alter_column('as_of_date', existing_type=sa.Date(), nullable=True)
        batch_op.drop_column('status')
        batch_op.drop_column('threshold')
