"""keyed audit chain; on PostgreSQL an append-only audit_log and the application/auditor roles

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 15:00:00

- ``audit_log.chain_version``: rows already there are 1 (unkeyed SHA-256); new rows are 2
  (HMAC-SHA256 with ``PUHUI_AUDIT_KEY``). If unkeyed rows exist, an ``audit.rekey`` event is
  appended that seals them under the key (see ``puhui.audit.seal_legacy_chain``); this needs
  the key, which the local profile makes under ``PUHUI_HOME`` if none is set.
- PostgreSQL only: a trigger refusing UPDATE, DELETE and TRUNCATE on ``audit_log`` (for every
  role, owner included; a superuser can still switch triggers off, which is what the keyed
  chain and the anchor catch), and two NOLOGIN roles, named by ``PUHUI_PG_APP_ROLE``
  (default ``puhui_app``) and ``PUHUI_PG_AUDITOR_ROLE`` (default ``puhui_auditor``): the
  application role may read and write every table but only SELECT and INSERT on
  ``audit_log``; the auditor role may only read. Roles are cluster-wide: they are created if
  missing and kept on downgrade. Logins and passwords are the operator's (README).
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_APPEND_ONLY = "puhui_audit_log_append_only"


def _seal_unkeyed_rows() -> None:
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM audit_log")).scalar() == 0:
        return
    from puhui.audit import AuditWriter, audit_key_bytes, seal_legacy_chain
    from puhui.settings import ensure_local_audit_key, load_settings

    settings, _ = ensure_local_audit_key(load_settings())
    writer = AuditWriter(actor=settings.actor, config_hash="migration 0003",
                         key=audit_key_bytes(settings.audit_key))
    seal_legacy_chain(bind, writer)


def _create_roles_and_trigger() -> None:
    from puhui.settings import postgres_role_names

    app, auditor = postgres_role_names()
    for role in (app, auditor):
        # Two databases of one cluster may migrate at once: the second CREATE ROLE loses.
        op.execute(f"""
            DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                CREATE ROLE {role} NOLOGIN;
              END IF;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
            END $$""")
    op.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {app}")  # raw_<partner> at ingest
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app}")
    op.execute(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {app}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public "
               f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}")
    op.execute(f"REVOKE ALL ON audit_log FROM {app}")
    op.execute(f"GRANT SELECT, INSERT ON audit_log TO {app}")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {auditor}")
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {auditor}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {auditor}")
    # Tables the application creates itself (raw_<partner>): readable by the auditor too.
    # Needs membership in the app role (a superuser has it); otherwise granted by hand.
    op.execute(f"""
        DO $$ BEGIN
          ALTER DEFAULT PRIVILEGES FOR ROLE {app} IN SCHEMA public
            GRANT SELECT ON TABLES TO {auditor};
        EXCEPTION WHEN insufficient_privilege THEN
          RAISE NOTICE 'grant SELECT on tables created by {app} to {auditor} by hand';
        END $$""")
    op.execute(f"""
        CREATE OR REPLACE FUNCTION {_APPEND_ONLY}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
        END $$""")
    op.execute(f"CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log "
               f"FOR EACH ROW EXECUTE FUNCTION {_APPEND_ONLY}()")
    op.execute(f"CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
               f"FOR EACH STATEMENT EXECUTE FUNCTION {_APPEND_ONLY}()")


def upgrade() -> None:
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chain_version', sa.SmallInteger(), nullable=False,
                                      server_default='1'))
    _seal_unkeyed_rows()
    if op.get_bind().dialect.name == "postgresql":
        _create_roles_and_trigger()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update_delete ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
        op.execute(f"DROP FUNCTION IF EXISTS {_APPEND_ONLY}()")
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_column('chain_version')
