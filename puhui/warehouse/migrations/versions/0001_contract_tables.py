"""contract tables

Revision ID: 0001
Revises: 
Create Date: 2026-11-27 23:34:35.817325
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('occurred_at', sa.String(length=32), nullable=False, comment='UTC, ISO 8601, microseconds'),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=256), nullable=False),
    sa.Column('details', sa.Text(), nullable=False, comment='canonical JSON'),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.Column('mlflow_run_id', sa.String(length=64), nullable=True),
    sa.Column('code_version', sa.String(length=64), nullable=False),
    sa.Column('config_hash', sa.String(length=64), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('row_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_log')),
    sa.UniqueConstraint('event_id', name=op.f('uq_audit_log_event_id'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_occurred_at'), ['occurred_at'], unique=False)

    op.create_table('drift_reports',
    sa.Column('drift_id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=32), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('feature', sa.String(length=128), nullable=False),
    sa.Column('psi', sa.Float(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reported_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('drift_id', name=op.f('pk_drift_reports')),
    sa.UniqueConstraint('model_name', 'model_version', 'as_of_date', 'feature', name=op.f('uq_drift_reports_model_name_model_version_as_of_date_feature'))
    )
    op.create_table('ingest_batches',
    sa.Column('batch_id', sa.String(length=40), nullable=False),
    sa.Column('partner', sa.String(length=64), nullable=False),
    sa.Column('source_path', sa.Text(), nullable=False),
    sa.Column('delivery_date', sa.Date(), nullable=True),
    sa.Column('checksum', sa.String(length=64), nullable=False, comment="sha256 of the file's bytes"),
    sa.Column('content_key', sa.String(length=80), nullable=True),
    sa.Column('duplicate_of', sa.String(length=40), nullable=True),
    sa.Column('bytes', sa.BigInteger(), nullable=True),
    sa.Column('rows', sa.BigInteger(), nullable=True, comment='rows landed in the file'),
    sa.Column('rows_loaded', sa.BigInteger(), nullable=True),
    sa.Column('rows_held', sa.BigInteger(), nullable=True),
    sa.Column('rows_duplicate', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('warnings', sa.JSON(), nullable=True),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.Column('landed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decided_by', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('batch_id', name=op.f('pk_ingest_batches')),
    sa.UniqueConstraint('content_key', name=op.f('uq_ingest_batches_content_key'))
    )
    with op.batch_alter_table('ingest_batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ingest_batches_partner_delivery_date'), ['partner', 'delivery_date'], unique=False)
        batch_op.create_index(batch_op.f('ix_ingest_batches_status'), ['status'], unique=False)

    op.create_table('model_evaluations',
    sa.Column('evaluation_id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=32), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=True),
    sa.Column('metric', sa.String(length=64), nullable=False),
    sa.Column('segment', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('mlflow_run_id', sa.String(length=64), nullable=True),
    sa.Column('evaluated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('evaluation_id', name=op.f('pk_model_evaluations')),
    sa.UniqueConstraint('model_name', 'model_version', 'metric', 'segment', name=op.f('uq_model_evaluations_model_name_model_version_metric_segment'))
    )
    op.create_table('service_metrics',
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('segment', sa.String(length=64), nullable=False),
    sa.Column('metric', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('as_of_date', 'segment', 'metric', name=op.f('pk_service_metrics'))
    )
    op.create_table('user_features',
    sa.Column('person_key', sa.String(length=64), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('feature_set', sa.String(length=64), nullable=False),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('person_key', 'as_of_date', name=op.f('pk_user_features'))
    )
    op.create_table('user_profile_history',
    sa.Column('person_key', sa.String(length=64), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('customer_id', sa.String(length=16), nullable=True),
    sa.Column('risk_score', sa.Float(), nullable=True),
    sa.Column('risk_grade', sa.String(length=2), nullable=True),
    sa.Column('reasons', sa.JSON(), nullable=True),
    sa.Column('recommended_products', sa.JSON(), nullable=True),
    sa.Column('segment_tags', sa.JSON(), nullable=True),
    sa.Column('risk_model_version', sa.String(length=32), nullable=True),
    sa.Column('recommender_model_version', sa.String(length=32), nullable=True),
    sa.Column('refreshed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('person_key', 'as_of_date', name=op.f('pk_user_profile_history'))
    )
    op.create_table('user_profiles',
    sa.Column('person_key', sa.String(length=64), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('customer_id', sa.String(length=16), nullable=True),
    sa.Column('risk_score', sa.Float(), nullable=True),
    sa.Column('risk_grade', sa.String(length=2), nullable=True),
    sa.Column('reasons', sa.JSON(), nullable=True),
    sa.Column('recommended_products', sa.JSON(), nullable=True),
    sa.Column('segment_tags', sa.JSON(), nullable=True),
    sa.Column('risk_model_version', sa.String(length=32), nullable=True),
    sa.Column('recommender_model_version', sa.String(length=32), nullable=True),
    sa.Column('refreshed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('person_key', name=op.f('pk_user_profiles'))
    )
    op.create_table('validation_results',
    sa.Column('validation_id', sa.String(length=40), nullable=False),
    sa.Column('batch_id', sa.String(length=40), nullable=True),
    sa.Column('table_name', sa.String(length=128), nullable=True),
    sa.Column('suite_name', sa.String(length=128), nullable=False),
    sa.Column('success', sa.Boolean(), nullable=False),
    sa.Column('expectations_run', sa.Integer(), nullable=False),
    sa.Column('expectations_failed', sa.Integer(), nullable=False),
    sa.Column('critical_failed', sa.Integer(), nullable=False),
    sa.Column('warning_failed', sa.Integer(), nullable=False),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.Column('validated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('validation_id', name=op.f('pk_validation_results'))
    )
    with op.batch_alter_table('validation_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_validation_results_batch_id'), ['batch_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('validation_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_validation_results_batch_id'))

    op.drop_table('validation_results')
    op.drop_table('user_profiles')
    op.drop_table('user_profile_history')
    op.drop_table('user_features')
    op.drop_table('service_metrics')
    op.drop_table('model_evaluations')
    with op.batch_alter_table('ingest_batches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ingest_batches_status'))
        batch_op.drop_index(batch_op.f('ix_ingest_batches_partner_delivery_date'))

    op.drop_table('ingest_batches')
    op.drop_table('drift_reports')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_log_occurred_at'))
        batch_op.drop_index(batch_op.f('ix_audit_log_action'))

    op.drop_table('audit_log')
